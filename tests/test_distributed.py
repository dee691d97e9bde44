"""Training under torchrun: 2 CPU processes with gloo train, evaluate, write one loadable run, and resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ddp_probe, the script torchrun runs here

from ecaml.data.loading import RunBatchSampler
from ecaml.runs import load_run
from ecaml.store.run_files import read_history

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--dataset", "digits", "--classes-per-batch", "2", "--images-per-class", "4", "--eval-every", "0",
         "--device", "cpu", "--seed", "3", "--quiet", "--ec-gather"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(args: list[str], record_dir: Path) -> subprocess.CompletedProcess:
    record_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ECAML_PROBE_DIR": str(record_dir), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(REPO / "tests" / "ddp_probe.py"), *args]
    return subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def ranks(record_dir: Path) -> list[dict]:
    return [json.loads((record_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """4 steps on 2 processes, then resumed by 2 processes to 6 steps."""
    root = tmp_path_factory.mktemp("ddp")
    run_dir = root / "run"
    first = torchrun(TRAIN + ["--max-steps", "4", "--out", str(run_dir)], root / "first")
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(["train", "--resume", str(run_dir), "--max-steps", "6", "--quiet"], root / "second")
    assert second.returncode == 0, second.stderr[-3000:]
    return run_dir, first, ranks(root / "first"), ranks(root / "second")


def test_two_processes_train_evaluate_and_write_one_loadable_run(two_process_run):
    run_dir, first, _, _ = two_process_run
    assert first.stdout.count("unseen Recall@1") == 1, "only process 0 reports"
    run = load_run(run_dir)
    assert run.step == 6 and run.config.ec_gather
    assert run.metrics is not None and 0 <= run.metrics["recall@1"] <= 1
    steps = [r["step"] for r in read_history(run_dir) if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6], "one history, written once, resumed without gaps or repeats"
    assert sorted(p.name for p in run_dir.glob("trainer_state_*")) == ["trainer_state_00000006.safetensors"]


def test_the_processes_took_different_batches_of_one_epoch_list(two_process_run):
    run_dir, _, first, second = two_process_run
    from ecaml.eval.evaluate import split_for

    split = split_for(load_run(run_dir).config)
    train_labels = split.dataset.labels[split.indices("train")]
    for rank, (before, after) in enumerate(zip(first, second)):
        expected = RunBatchSampler(train_labels, 2, 4, 3, steps_per_epoch=len(train_labels) // 8 // 2,
                                   start_step=0, end_step=6, rank=rank, world_size=2)
        assert before["batches"] + after["batches"] == [[p for p, _ in b] for b in expected]
    zero, one = (first[r]["batches"] + second[r]["batches"] for r in (0, 1))
    assert all(sorted(zero[step]) != sorted(one[step]) for step in range(6)), "two processes trained on one batch"
    classes = [[{int(train_labels[p]) for p in batch} for batch in share] for share in (zero, one)]
    assert classes[0] != classes[1], "the processes saw the same classes at every step"


def test_the_processes_end_with_identical_parameters_and_rank_0_saves_its_state(two_process_run):
    from ddp_probe import tensor_digest

    run_dir, _, first, second = two_process_run
    assert first[0]["parameters"] == first[1]["parameters"] and second[0]["parameters"] == second[1]["parameters"]
    assert first[0]["parameters"] != second[0]["parameters"], "the resumed steps changed nothing"
    assert tensor_digest(load_run(run_dir).model.state_dict().items()) == second[0]["state"]


def test_gathered_features_carry_no_gradient_under_head_routing(tmp_path):
    """ec_gather with the reference routing: what EC sees of the batch is detached from every backbone."""
    import torch.distributed as dist

    from ecaml.train.distributed import gather_batch

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        features = torch.randn(6, 4, requires_grad=True)
        labels = torch.tensor([0, 0, 1, 1, 2, 2])
        gathered, gathered_labels = gather_batch(features, labels, keep_gradient=False)
        assert not gathered.requires_grad and torch.equal(gathered, features.detach())
        assert torch.equal(gathered_labels, labels)
        kept, _ = gather_batch(features, labels, keep_gradient=True)
        kept.sum().backward()
        assert torch.equal(features.grad, torch.ones_like(features))
    finally:
        dist.destroy_process_group()


def test_rank_shares_partition_each_epoch():
    labels = np.repeat(np.arange(12), 9)
    for seed in range(5):
        shares = [list(RunBatchSampler(labels, 3, 3, seed, steps_per_epoch=6, start_step=0, end_step=18, rank=r,
                                       world_size=2)) for r in (0, 1)]
        whole = RunBatchSampler(labels, 3, 3, seed, steps_per_epoch=6, start_step=0, end_step=18)
        for step in range(18):
            epoch, offset = divmod(step, 6)
            epoch_list = whole.epoch_batches(epoch)
            for rank in (0, 1):
                assert [p for p, _ in shares[rank][step]] == epoch_list[offset * 2 + rank].tolist()
