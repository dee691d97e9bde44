"""Faults while training: NaN/inf losses, NaN weights, a full disk, damaged trainer state, a second trainer.

Each fault must end in one line on stderr naming what happened, leave the last
good checkpoint loadable and the files it did not commit untouched, and allow
``--resume`` to finish the run once the cause is gone.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch
from robustness_helpers import STEPS_PER_EPOCH, digests, temp_files
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ecaml.runs import load_run
from ecaml.store.run_files import hold_run_lock, read_history, read_status
from ecaml.train.trainer import Trainer

STATE = "trainer_state_00000016.safetensors"


def poison_loss_at(monkeypatch, step: int, factor: float) -> None:
    """Multiply the total loss of optimiser step ``step`` by ``factor`` (nan or inf)."""
    original = Trainer.compute_losses

    def poisoned(self, images, labels):
        terms = original(self, images, labels)
        if self.step + 1 == step:
            terms["total_loss"] = terms["total_loss"] * factor
        return terms

    monkeypatch.setattr(Trainer, "compute_losses", poisoned)


def test_nan_loss_stops_at_its_step_keeping_the_last_checkpoint(tmp_path, cli, monkeypatch, fault_case):
    fault_case()
    poison_loss_at(monkeypatch, 35, float("nan"))
    out = tmp_path / "run"
    result = cli("train", "--dataset", "digits", "--seen-test-per-class", "0", "--max-steps", "40", "--eval-every", "0", "--quiet", "--out", out)
    assert result.code == 1
    expected = "error: loss became nan at step 35; training stopped, the checkpoint of step 30 is kept (try a lower --lr)"
    assert result.one_error_line() == expected
    assert load_run(out).step == 2 * STEPS_PER_EPOCH
    assert read_status(out)["state"] == "failed" and read_status(out)["step"] == 30

    monkeypatch.undo()
    resumed = cli("train", "--resume", out, "--quiet")
    assert resumed.code == 0 and load_run(out).step == 40
    assert [r["step"] for r in read_history(out) if r["kind"] == "step"] == list(range(1, 41))


def test_infinite_loss_during_a_resume_keeps_the_resumed_checkpoint(run_copy, cli, monkeypatch, fault_case):
    fault_case()
    poison_loss_at(monkeypatch, 20, float("inf"))
    result = cli("train", "--resume", run_copy, "--max-steps", "25", "--quiet")
    assert result.code == 1
    assert "loss became inf at step 20" in result.one_error_line() and "checkpoint of step 16 is kept" in result.err
    assert load_run(run_copy).step == 16


def test_a_huge_learning_rate_really_diverges_and_is_reported(tmp_path, cli, fault_case):
    fault_case()
    out = tmp_path / "run"
    result = cli("train", "--dataset", "digits", "--seen-test-per-class", "0", "--lr", "1e30", "--max-steps", "30", "--eval-every", "0", "--quiet", "--out", out)
    assert result.code == 1
    line = result.one_error_line()
    assert "loss became nan at step 2" in line and "the checkpoint of step 0 is kept" in line
    assert load_run(out).step == 0


def test_weights_gone_nan_are_never_committed(tmp_path, cli, monkeypatch, fault_case):
    """A finite loss can still leave NaN weights (inf gradients); the epoch-end checkpoint must refuse them."""
    fault_case()
    original = Trainer.train_step

    def corrupting(self, images, labels):
        values = original(self, images, labels)
        if self.step == STEPS_PER_EPOCH:
            with torch.no_grad():
                self.model.head.weight.fill_(float("nan"))
        return values

    monkeypatch.setattr(Trainer, "train_step", corrupting)
    out = tmp_path / "run"
    result = cli("train", "--dataset", "digits", "--seen-test-per-class", "0", "--max-steps", "20", "--eval-every", "0", "--quiet", "--out", out)
    assert result.code == 1
    assert result.one_error_line() == (
        "error: weights became NaN or infinite by step 15 (head.weight); training stopped, "
        "the checkpoint of step 0 is kept (try a lower --lr)"
    )
    assert load_run(out).step == 0


# ----------------------------------------------------------------------------- a full disk


class FullDisk:
    """``os.write`` for a disk that fills up during the first write to a matching file and stays full.

    That write gets half its bytes out (the last space there was), every later
    write to a file fails with ENOSPC, as on a real full disk.
    """

    def __init__(self, matches, real_write=os.write):
        self.matches, self.real_write, self.full = matches, real_write, False

    def __call__(self, descriptor: int, data) -> int:
        if descriptor <= 2:  # the terminal: not the disk under test
            return self.real_write(descriptor, data)
        if not self.full and self.matches(os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}"))):
            self.full = True
            if len(data) > 1:
                return self.real_write(descriptor, bytes(data)[: len(data) // 2])
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real_write(descriptor, data)


RUN_FILES = ("model.safetensors", STATE, "config.json", "history.jsonl", "metrics.json", "status.json")

# Resuming the finished run (step 16) to step 45 writes, in order: the truncated history, the config,
# a status, history lines 17..30, the step-30 checkpoint (trainer state, then weights), ..., metrics.
# case -> (which file the disk fills on, the files that must stay byte-identical)
DISK_FILLS = {
    "history-rewrite": (lambda name: name.startswith(".history.jsonl."), RUN_FILES),
    "config": (lambda name: name.startswith(".config.json."), RUN_FILES),
    "status": (lambda name: name.startswith(".status.json."), ("model.safetensors", STATE, "history.jsonl", "metrics.json")),
    "history-append": (lambda name: name == "history.jsonl", ("model.safetensors", STATE, "history.jsonl", "metrics.json")),
    "trainer-state": (lambda name: name.startswith(".trainer_state_00000030"), ("model.safetensors", STATE, "metrics.json")),
    "weights": (lambda name: name.startswith(".model.safetensors."), ("model.safetensors", STATE, "metrics.json")),
    "metrics": (lambda name: name.startswith(".metrics.json."), ("metrics.json",)),
}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell which file a write goes to")
@pytest.mark.parametrize("case", list(DISK_FILLS))
def test_full_disk_is_one_line_and_changes_nothing_it_did_not_finish(case, run_copy, cli, monkeypatch, fault_case):
    fault_case()
    matches, untouched = DISK_FILLS[case]
    before = digests(run_copy)
    disk = FullDisk(matches)
    monkeypatch.setattr(os, "write", disk)
    result = cli("train", "--resume", run_copy, "--max-steps", "45", "--quiet")
    monkeypatch.undo()

    assert disk.full, "the fault was never injected"
    assert result.code == 1
    assert result.one_error_line().startswith("error: disk full: could not write ")
    after = digests(run_copy)
    assert {name: after.get(name) for name in untouched} == {name: before[name] for name in untouched}
    assert temp_files(run_copy) == []
    assert (run_copy / "history.jsonl").read_bytes().endswith(b"\n")  # no half line for the next append to glue onto
    read_history(run_copy)
    load_run(run_copy)

    freed = cli("train", "--resume", run_copy, "--max-steps", "45", "--quiet")  # the disk has room again
    assert freed.code == 0, freed.err
    assert load_run(run_copy).step == 45
    assert [r["step"] for r in read_history(run_copy) if r["kind"] == "step"] == list(range(1, 46))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell which file a write goes to")
def test_full_disk_while_exporting_embeddings(finished_run, tmp_path, cli, monkeypatch, fault_case):
    fault_case()
    monkeypatch.setattr(os, "write", FullDisk(lambda name: name.startswith(".emb.npz.")))
    result = cli("embed", finished_run, "--out", tmp_path / "emb.npz")
    assert result.code == 1 and result.one_error_line().startswith("error: disk full: could not write ")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- damaged trainer state


def edit_state(change):
    """Rewrite the trainer state after ``change(tensors, metadata)``: a state that is valid safetensors but wrong."""

    def damage(run):
        tensors = load_file(str(run / STATE))
        with safe_open(str(run / STATE), framework="pt") as reader:
            metadata = dict(reader.metadata())
        change(tensors, metadata)
        save_file(tensors, str(run / STATE), metadata=metadata)

    return damage


def shrink_first_moment(tensors, metadata):
    name = next(key for key in tensors if key.endswith(".exp_avg"))
    tensors[name] = tensors[name].flatten()[:3].clone()


DAMAGED_STATES = {
    "missing": (lambda run: (run / STATE).unlink(), "the trainer state of step 16 is missing"),
    "truncated": (lambda run: (run / STATE).write_bytes((run / STATE).read_bytes()[:5000]), f"{STATE} is truncated"),
    "other-step": (edit_state(lambda t, m: m.update(step="15")), f"{STATE} does not say it is of step 16"),
    "moment-shape": (edit_state(shrink_first_moment), "does not fit this run (optimizer exp_avg has shape (3,)"),
    "no-rng": (edit_state(lambda t, m: t.pop("rng.torch")), "does not fit this run ('rng.torch')"),
    "layout-not-json": (edit_state(lambda t, m: m.update(optimizer_layout="{oops")), "does not fit this run"),
    "layout-wrong-shape": (edit_state(lambda t, m: m.update(optimizer_layout="[]")), "does not fit this run"),
}


@pytest.mark.parametrize("case", list(DAMAGED_STATES))
def test_damaged_trainer_state_refuses_to_resume_and_changes_nothing(case, run_copy, cli, fault_case):
    fault_case()
    damage, reason = DAMAGED_STATES[case]
    damage(run_copy)
    before = digests(run_copy)
    result = cli("train", "--resume", run_copy, "--max-steps", "20", "--quiet")
    assert result.code == 2
    line = result.one_error_line()
    assert line.startswith("error: victim: ") and reason in line
    assert digests(run_copy) == before
    assert load_run(run_copy).step == 16  # evaluation still works on the weights


# ----------------------------------------------------------------------------- other trainers, old leftovers


def test_a_second_trainer_on_the_same_run_is_refused(run_copy, cli, fault_case):
    fault_case()
    before = digests(run_copy)
    with hold_run_lock(run_copy):
        result = cli("train", "--resume", run_copy, "--max-steps", "20", "--quiet")
    assert result.code == 2
    assert result.one_error_line() == "error: victim: another process is training this run right now"
    assert digests(run_copy) == before


def test_resume_clears_temporary_files_a_killed_writer_left(run_copy, cli, fault_case):
    fault_case()
    leftover = run_copy / ".model.safetensors.k1ll3d.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert cli("train", "--resume", run_copy, "--quiet").code == 0
    assert temp_files(run_copy) == []
