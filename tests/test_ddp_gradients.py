"""Two real gloo processes under DDP: every parameter's gradient is what one process computes for both batches.

One process "on the concatenated batch" means the objective the processes optimise together: the metric loss
as the mean of the per-process batches' losses (DDP's data-parallel rule), and EC over the whole global batch
with ``ec_gather`` (else the mean of each batch's EC). Checked for both routes, with and without the gather,
with equal batches and with uneven ones (the processes' batches differ in size). A tiny model: a few seconds.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.multiprocessing as mp

CASES = [(route, gather, sizes) for route in ("head", "full") for gather in (False, True)
         for sizes in ((6, 6), (6, 4))]


def _batches(sizes):
    generator = torch.Generator().manual_seed(sum(sizes))
    batches = []
    for rank, size in enumerate(sizes):
        images = torch.randn(size, 6, generator=generator)
        labels = torch.arange(size) // 2 + 3 * rank  # two images a class; the processes share no class
        batches.append((images, labels))
    return batches


def _tiny_trainer(route: str, gather: bool, group):
    from ecaml.confusion import EnergyConfusion
    from ecaml.losses import BinomialDevianceLoss
    from ecaml.models import EmbeddingNet
    from ecaml.train.trainer import Trainer

    torch.manual_seed(0)
    trainer = Trainer.__new__(Trainer)  # the real compute_losses, without data or a run directory
    trainer.model = EmbeddingNet(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh()), 5, 4)
    trainer.metric_loss = BinomialDevianceLoss()
    trainer.confusion = EnergyConfusion(0.5, "dense", route=route)
    trainer.config = types.SimpleNamespace(ec_weight=0.5, ec_gather=gather, ec_route=route)
    trainer.group, trainer.network, trainer.device, trainer.amp_dtype = group, None, torch.device("cpu"), None
    trainer.pair_generator = torch.Generator().manual_seed(1)
    return trainer


def _expected_gradients(route: str, gather: bool, batches) -> dict[str, torch.Tensor]:
    trainer = _tiny_trainer(route, gather, None)
    model = trainer.model
    features = [model.features(images) for images, _ in batches]
    metric = sum(trainer.metric_loss(model.head(f), labels) for f, (_, labels) in zip(features, batches)) / len(batches)
    if gather:
        ec = trainer.confusion(torch.cat(features), model.head, torch.cat([labels for _, labels in batches])).loss
    else:
        ec = sum(trainer.confusion(f, model.head, labels).loss for f, (_, labels) in zip(features, batches)) / len(batches)
    (metric + ec).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from ecaml.train import distributed

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    group = distributed.ProcessGroup(rank, 2, rank, torch.device("cpu"))
    report = []
    for route, gather, sizes in CASES:
        batches = _batches(sizes)
        trainer = _tiny_trainer(route, gather, group)
        trainer.network = distributed.wrap(trainer.model, group)
        images, labels = batches[rank]
        trainer.compute_losses(images, labels)["total_loss"].backward()
        got = {name: p.grad for name, p in trainer.model.named_parameters()}
        expected = _expected_gradients(route, gather, batches)
        worst = max(float((got[n] - expected[n]).abs().max() / expected[n].abs().max().clamp_min(1e-12)) for n in got)
        report.append({"case": [route, gather, list(sizes)], "worst_relative_error": worst})
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as handle:
        json.dump(report, handle)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-gradients")
    # A spawned child re-runs the parent's __main__ file; after an AppTest in this session that is app/main.py, a
    # Streamlit script that cannot run bare. The workers need nothing from __main__, so the children skip it.
    with pytest.MonkeyPatch.context() as patch:
        patch.delattr(sys.modules["__main__"], "__file__", raising=False)
        mp.start_processes(_worker, args=(str(root / "store"), str(root / "report")), nprocs=2, start_method="spawn")
    return [json.loads((root / f"report.{rank}").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{r}-{'gather' if g else 'own'}-{s[0]}+{s[1]}" for r, g, s in CASES])
def test_every_gradient_after_ddp_is_that_of_one_process_on_both_batches(reports, case):
    for rank in (0, 1):
        assert reports[rank][case]["case"][:2] == list(CASES[case][:2])
        assert reports[rank][case]["worst_relative_error"] < 1e-5, (rank, reports[rank][case])
