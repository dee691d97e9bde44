"""Bad inputs to `ecaml import embeddings`: one line on stderr, exit 2, and no run directory (not even a part)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ecaml.cli import main
from ecaml.serve.imports import ImportInputError, import_embeddings

GOOD_LABELS = np.arange(40) % 4


def good_vectors(count=40, dim=6):
    return np.random.default_rng(0).normal(size=(count, dim)).astype(np.float32)


def nan_vectors():
    vectors = good_vectors()
    vectors[7, 2] = np.nan
    return vectors


def inf_vectors():
    vectors = good_vectors()
    vectors[3, 0] = np.inf
    return vectors


BAD_INPUTS = {
    "nan": (dict(embeddings=nan_vectors(), labels=GOOD_LABELS), "row 7 holds NaN or inf"),
    "inf": (dict(embeddings=inf_vectors(), labels=GOOD_LABELS), "row 3 holds NaN or inf"),
    "n mismatch": (dict(embeddings=good_vectors(), labels=GOOD_LABELS[:39]), "'labels' has shape (39,)"),
    "one class": (dict(embeddings=good_vectors(), labels=np.zeros(40, int)), "holds one class"),
    "D = 0": (dict(embeddings=np.zeros((40, 0), np.float32), labels=GOOD_LABELS), "D = 0"),
    "int vectors": (dict(embeddings=np.ones((40, 6), np.int64), labels=GOOD_LABELS), "must be floating point"),
    "float labels": (dict(embeddings=good_vectors(), labels=GOOD_LABELS + 0.5), "integers or strings"),
    "1-D vectors": (dict(embeddings=np.ones(40, np.float32), labels=GOOD_LABELS), "must be 2-D"),
    "bad split": (dict(embeddings=good_vectors(), labels=GOOD_LABELS, split=np.full(40, "test")), "'test'"),
    "class in two parts": (
        dict(embeddings=good_vectors(), labels=GOOD_LABELS, split=np.where(np.arange(40) < 20, "seen", "unseen")),
        "more than one split part"),
    "path escapes": (dict(embeddings=good_vectors(), labels=GOOD_LABELS,
                          paths=np.asarray(["a.png"] * 39 + ["../../etc/passwd"])), "outside the image root"),
    "no embeddings": (dict(vectors=good_vectors(), labels=GOOD_LABELS), "no 'embeddings'"),
}


def write_pickled_labels(path):
    # An object array: np.savez pickles it; loading it would run whatever the pickle says.
    np.savez(path, embeddings=good_vectors(), labels=np.asarray([f"c{i % 4}" for i in range(40)], dtype=object))


def assert_refused(capsys, source, out, expected, *extra):
    assert main(["import", "embeddings", str(source), "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and "Traceback" not in error
    assert expected in error
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_arrays_are_refused_in_one_line_and_write_nothing(tmp_path, capsys, case):
    arrays, expected = BAD_INPUTS[case]
    source = tmp_path / "bad.npz"
    np.savez(source, **arrays)
    (tmp_path / "images").mkdir()
    assert_refused(capsys, source, tmp_path / "out", expected, "--image-root", str(tmp_path / "images"))


def test_a_pickled_object_array_is_refused_unread(tmp_path, capsys, monkeypatch):
    source = tmp_path / "pickled.npz"
    write_pickled_labels(source)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    assert_refused(capsys, source, tmp_path / "out", "pickled object array; refused")


def test_a_file_too_large_for_memory_is_refused_before_reading(tmp_path):
    source = tmp_path / "big.npz"
    np.savez(source, embeddings=good_vectors(), labels=GOOD_LABELS)
    with pytest.raises(ImportInputError, match="too large for memory"):
        import_embeddings(source, tmp_path / "out", memory_budget=1000)
    assert not (tmp_path / "out").exists()


def test_a_torch_pickle_renamed_npz_is_refused(tmp_path, capsys):
    source = tmp_path / "weights.npz"
    source.write_bytes(pickle.dumps({"embeddings": [1, 2]}))
    assert_refused(capsys, source, tmp_path / "out", "not a readable .npz file")


def test_an_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    source = tmp_path / "good.npz"
    np.savez(source, embeddings=good_vectors(), labels=GOOD_LABELS)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["import", "embeddings", str(source), "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_failure_while_writing_leaves_no_run_and_no_temporary_folder(tmp_path, monkeypatch):
    import ecaml.serve.imports as imports

    source = tmp_path / "good.npz"
    np.savez(source, embeddings=good_vectors(), labels=GOOD_LABELS)

    def fail_half_way(folder, *args):
        (folder / "vectors.npy").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imports, "_write_files", fail_half_way)
    with pytest.raises(OSError):
        import_embeddings(source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npz"]
