"""scripts/study.py's statistics and outputs: Holm's adjustment, the featured pair chosen on validation classes,
re-making some rows while keeping the others, and files written atomically (the app reads them live)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from studykit import shipping  # noqa: E402
from studykit.report import render_markdown  # noqa: E402
from studykit.statistics import adjust_for_comparisons, holm, merge_results  # noqa: E402

STUDY = json.loads((ROOT / "results" / "study.json").read_text())


def test_holm_matches_the_step_down_definition():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_every_tested_p_value_gets_its_holm_adjustment_and_both_are_printed():
    results = copy.deepcopy(STUDY)
    results["comparisons"] = adjust_for_comparisons(results["summary"])
    raw = [results["summary"][k]["diff"][m]["p_value"] for k in results["summary"] for m in ("recall@1", "map@r")]
    adjusted = [results["summary"][k]["diff"][m]["p_holm"] for k in results["summary"] for m in ("recall@1", "map@r")]
    tested = 2 * len(results["summary"])  # Recall@1 and MAP@R of every (dataset, loss) row of the study
    assert results["comparisons"]["comparisons"] == len(raw) == tested
    assert adjusted == pytest.approx(holm(raw)) and all(a >= r for a, r in zip(adjusted, raw))
    markdown = render_markdown(results)
    assert "Holm p (MAP@R)" in markdown and f"{tested} comparisons" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| digits | triplet | 1 |"))
    assert row.count(" | ") == 11  # dataset, loss, λ, five differences, two raw and two adjusted p-values


def _with_validation_gains(gains: dict[str, float]) -> dict:
    results = copy.deepcopy(STUDY)
    results["comparisons"] = adjust_for_comparisons(results["summary"])
    for key, gain in gains.items():
        weights = results["search"][key]["ec_weight"]
        weights["val_map@r_mean"][f"{weights['chosen']:g}"] = weights["baseline_val_map@r_mean"] + gain
    return results


def test_the_featured_pair_is_chosen_on_validation_classes_not_on_the_unseen_effect(tmp_path):
    """Whichever digits row has the largest unseen MAP@R effect, the row that gained most on validation is shown."""
    unseen = {k: v["diff"]["map@r"]["mean"] for k, v in STUDY["summary"].items() if k.startswith("digits/")}
    largest_unseen = max(unseen, key=unseen.get)
    chosen = min(unseen, key=unseen.get)  # the smallest unseen effect, given the largest validation gain
    results = _with_validation_gains({key: 0.05 if key == chosen else 0.01 for key in unseen})
    assert chosen != largest_unseen
    shipping.write_featured(results, tmp_path / "featured.json", log=lambda _: None)
    featured = json.loads((tmp_path / "featured.json").read_text())
    entry = results["summary"][chosen]
    loss = chosen.split("/")[1]
    assert featured["runs"] == [f"digits-{loss}-ec0-seed0", f"digits-{loss}-ec{entry['ec_weight']:g}-seed0"]
    assert featured["chosen_on"] == "validation classes" and "validation" in featured["why"]
    assert featured["validation_map@r_gain"][chosen] == pytest.approx(0.05)
    assert "Holm" in featured["why"]


def test_remaking_some_rows_keeps_the_others_and_adjusts_again():
    remade = copy.deepcopy(STUDY)
    remade["command"] = "python scripts/study.py --out results/ --jobs 2 --losses npair"
    for key in ("digits/npair", "glyphs/npair"):
        remade["summary"][key]["diff"]["map@r"]["p_value"] = 0.5
        remade["summary"][key]["off"]["map@r"]["mean"] = 0.123
    merged = merge_results(STUDY, remade, ["digits/npair", "glyphs/npair"])
    assert merged["summary"]["digits/binomial"] == {**STUDY["summary"]["digits/binomial"],
                                                    "diff": merged["summary"]["digits/binomial"]["diff"]}
    assert merged["summary"]["glyphs/npair"]["off"]["map@r"]["mean"] == 0.123
    assert merged["command"] == STUDY["command"] and merged["remade"][-1]["rows"] == ["digits/npair", "glyphs/npair"]
    assert merged["comparisons"]["comparisons"] == 2 * len(merged["summary"])
    assert len(merged["runs"]) == len(STUDY["runs"])
    assert "re-made by `python scripts/study.py --out results/ --jobs 2 --losses npair`" in render_markdown(merged)


def test_featured_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that dies midway leaves the previous featured.json as it was, and no temporary file."""
    import ecaml.store.atomic

    path = tmp_path / "featured.json"
    path.write_text('{"runs": ["a", "b"], "why": "before"}\n')
    before = path.read_text()

    def dies_after_a_few_bytes(descriptor, data):
        ecaml.store.atomic.os.write(descriptor, bytes(data[:10]))
        raise OSError("killed mid-write")

    monkeypatch.setattr(ecaml.store.atomic, "_write_all", dies_after_a_few_bytes)
    with pytest.raises(OSError, match="killed mid-write"):
        shipping.write_featured(_with_validation_gains({}), path, log=lambda _: None)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["featured.json"]


def test_a_shipped_run_folder_is_swapped_in_whole(tmp_path):
    """Copying a new run over a shipped one: a copy that fails (here, a file missing) leaves the shipped run whole."""
    target, staging = tmp_path / "checkpoints", tmp_path / shipping.STAGING
    shipped, source = target / "digits-npair-ec0-seed0", tmp_path / "new-run"
    for folder, text in ((shipped, "old"), (source, "new")):
        folder.mkdir(parents=True)
        for name in shipping.SHIPPED_FILES:
            (folder / name).write_text(text)
    staging.mkdir()
    (source / "status.json").unlink()
    with pytest.raises(FileNotFoundError):
        shipping._ship_run(source, shipped, staging)
    assert {p.name: p.read_text() for p in shipped.iterdir()} == {name: "old" for name in shipping.SHIPPED_FILES}
    (source / "status.json").write_text("new")
    shipping._ship_run(source, shipped, staging)
    assert {p.name: p.read_text() for p in shipped.iterdir()} == {name: "new" for name in shipping.SHIPPED_FILES}
    assert not list(staging.iterdir())


def test_the_study_plans_fashion_mnist_on_two_splits_with_triplet_and_a_subset_keeps_its_rows():
    from studykit.plan import FULL, final_config, tune_config

    fashion = [(d, loss) for d, loss in FULL.rows() if d.startswith("fashion-mnist")]
    assert fashion == [("fashion-mnist", "triplet"), ("fashion-mnist-even", "triplet")]
    default, even = (final_config(FULL, d, "triplet", 0.3, 1, 2) for d, _ in fashion)
    assert (default["dataset"], "unseen_classes" in default) == ("fashion-mnist", False)
    assert (even["dataset"], even["unseen_classes"]) == ("fashion-mnist", [0, 2, 4, 6, 8])
    tuning = tune_config(FULL, "fashion-mnist-even", "triplet", 0.0, 100, 4)
    assert (tuning["val_classes"], tuning["split_seed"], tuning["unseen_classes"]) == (2, 100, [0, 2, 4, 6, 8])
    assert FULL.film_frames["fashion-mnist"] > 0 and "fashion-mnist-even" not in FULL.film_frames
    subset = FULL.subset(["digits"], ["npair"])
    assert subset.keys() == ["digits/npair"]
    with pytest.raises(ValueError, match="unknown dataset"):
        FULL.subset(["cifar"], None)
