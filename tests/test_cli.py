"""`python -m ecaml` end to end on digits, and its error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ecaml.cli import main
from ecaml.runs import load_run
from ecaml.store.run_files import read_history

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecaml", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``python -m ecaml ARGS`` in this process (the same ``main``): no torch import of a new process to pay for.

    Where the process itself is under test (exit status, nothing else on stderr), the tests use ``run_cli``.
    """
    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["ecaml", *args], status, captured.out, captured.err)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits-ec"
    result = run_cli("train", "--dataset", "digits", "--loss", "binomial", "--ec-weight", "0.5",
                     "--max-steps", "8", "--eval-every", "0", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "unseen Recall@1" in result.stdout
    return out


def test_train_writes_a_complete_run(cli_run):
    names = {p.name for p in cli_run.iterdir()}
    assert {"config.json", "model.safetensors", "history.jsonl", "metrics.json", "status.json"} <= names
    config = json.loads((cli_run / "config.json").read_text())
    assert config["ec_weight"] == 0.5 and config["dataset"] == "digits" and config["format_version"] == 1
    assert {"loss", "seed", "backbone", "embedding_dim", "ecaml_version"} <= set(config)
    steps = [r for r in read_history(cli_run) if r["kind"] == "step"]
    assert len(steps) == 8
    assert {"step", "epoch", "metric_loss", "energy", "log_energy", "row_norm", "total_loss", "lr", "seconds"} <= set(steps[0])
    assert json.loads((cli_run / "status.json").read_text())["state"] == "completed"


def test_state_dict_keys_name_backbone_and_head(cli_run):
    keys = load_run(cli_run).model.state_dict().keys()
    assert all(k.startswith(("backbone.", "head.")) for k in keys)
    assert {"head.weight", "head.bias"} <= set(keys)


def test_evaluate_json_reproduces_metrics_json(cli_run, capsys):
    result = run_main(capsys, "evaluate", str(cli_run), "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert list(printed) == ["recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "r_precision"]
    saved = json.loads((cli_run / "metrics.json").read_text())
    assert printed == pytest.approx(saved, abs=1e-6)


def test_compare_shows_each_metric_with_its_difference(cli_run, tiny_baseline_run, capsys):
    assert main(["compare", str(tiny_baseline_run), str(cli_run)]) == 0
    table = capsys.readouterr().out
    base = json.loads((tiny_baseline_run / "metrics.json").read_text())
    ec = json.loads((cli_run / "metrics.json").read_text())
    line = next(row for row in table.splitlines() if row.startswith("recall@1"))
    assert f"{ec['recall@1'] - base['recall@1']:+.4f}" in line


def test_embed_writes_arrays_for_other_tools(cli_run, tmp_path):
    out = tmp_path / "unseen.npz"
    assert main(["embed", str(cli_run), "--split", "unseen", "--out", str(out)]) == 0
    arrays = np.load(out, allow_pickle=False)
    assert set(arrays.files) == {"embeddings", "labels", "indices"}
    assert np.allclose(np.linalg.norm(arrays["embeddings"], axis=1), 1.0, atol=1e-5)
    assert set(np.unique(arrays["labels"])) == {5, 6, 7, 8, 9}
    from sklearn.datasets import load_digits

    assert np.array_equal(load_digits().target[arrays["indices"]], arrays["labels"])


def same_weights(first: Path, second: Path) -> bool:
    # Tensors, not bytes: safetensors may order its metadata differently from run to run.
    a, b = (load_file(str(run / "model.safetensors")) for run in (first, second))
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_same_seed_same_run_on_the_cpu(tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["train", "--max-steps", "5", "--eval-every", "0", "--quiet", "--out", str(out)]) == 0
    first, second = (read_history(o) for o in outs)
    assert [r["total_loss"] for r in first if r["kind"] == "step"] == [r["total_loss"] for r in second if r["kind"] == "step"]
    assert same_weights(outs[0], outs[1])


# The reference's bias settings put every backbone bias in a group of its own: resuming must keep them.
@pytest.mark.parametrize("optimiser", [[], ["--bias-lr-mult", "2", "--bias-decay-mult", "0", "--head-lr-mult", "10"]],
                         ids=["default groups", "reference bias groups"])
def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(tmp_path, optimiser):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", "--max-steps", "10", "--eval-every", "0", "--quiet", "--out", str(whole), *optimiser]) == 0
    assert main(["train", "--max-steps", "4", "--eval-every", "0", "--quiet", "--out", str(split), *optimiser]) == 0
    assert main(["train", "--resume", str(split), "--max-steps", "10", "--quiet"]) == 0
    assert same_weights(whole, split)
    steps = [r["step"] for r in read_history(split) if r["kind"] == "step"]
    assert steps == list(range(1, 11))


def test_config_file_with_flags_winning(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('loss = "triplet"\nec_weight = 0.3\nseed = 7\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--seed", "3", "--max-steps", "2", "--eval-every", "0", "--quiet", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["loss"], saved["ec_weight"], saved["seed"]) == ("triplet", 0.3, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "/no/such/run"], "not a run directory"),
        (["train", "--out", "{tmp}/x", "--dataset", "imagenet"], "invalid choice"),
        (["train", "--out", "{tmp}/x", "--ec-weight", "-1"], "ec_weight"),
        (["train", "--out", "{tmp}/x", "--lr", "abc"], "invalid float value"),
        (["train", "--out", "{tmp}/x", "--dataset", "folder", "--data-root", "{tmp}/missing"], "does not exist"),
        (["train", "--out", "{tmp}/x", "--dataset", "folder"], "needs --data-root"),
        (["train", "--out", "{tmp}/x", "--loss", "pml:Nope"], "no loss called"),
        (["train", "--out", "{tmp}/x", "--config", "{tmp}/missing.toml"], "does not exist"),
        (["train", "--out", "{tmp}/x", "--backbone", "resnet18", "--pretrained"], "not found"),
        (["train"], "--out"),
        (["embed", "{tmp}", "--out", "{tmp}/e.npz"], "missing config.json"),
        ([], "required"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    (tmp_path / "empty-home").mkdir()
    result = run_main(capsys, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_the_process_exits_with_the_status_main_returns_and_one_line(tmp_path):
    result = run_cli("train", "--out", str(tmp_path / "x"), "--dataset", "imagenet")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "invalid choice" in result.stderr
    assert result.stdout == ""


def test_train_refuses_to_overwrite_a_run(cli_run, capsys):
    before = (cli_run / "model.safetensors").read_bytes()
    result = run_main(capsys, "train", "--max-steps", "1", "--out", str(cli_run))
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (cli_run / "model.safetensors").read_bytes() == before


def test_every_subcommand_documents_its_flags():
    from ecaml.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(subcommands) == {"train", "evaluate", "compare", "embed", "import", "data"}
    for name, parser in subcommands.items():
        undocumented = [a.dest for a in parser._actions if a.dest != "help" and not a.help]
        assert not undocumented, f"{name}: flags without help: {undocumented}"
    train_help = run_cli("train", "--help").stdout
    for flag in ("--ec-weight", "--ec-route", "--ec-pairs", "--max-steps", "--resume", "--device", "--config"):
        assert flag in train_help
