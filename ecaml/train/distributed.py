"""Training on several processes: ``torchrun --nproc_per_node N -m ecaml train ...`` under DistributedDataParallel.

What this module decides:

- **Who is who.** torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...)
  starts a process group: NCCL when the run trains on CUDA (one GPU a process,
  ``cuda:LOCAL_RANK``), gloo on the CPU. Multi-node runs use torchrun's usual
  ``--nnodes/--node-rank/--rdzv-*`` flags; nothing here changes. Without
  WORLD_SIZE > 1 everything is a single process and this module does nothing.
- **Data.** Every process builds the same epoch batch list from the run's seed and
  takes batches ``rank::world_size`` (``ecaml.data.loading.RunBatchSampler``), so
  processes see different classes and one optimiser step consumes ``world_size``
  batches of m x n images.
- **Losses.** The metric loss is computed on each process's own batch and DDP
  averages gradients, the usual data-parallel rule. Energy Confusion is also
  computed on each process's batch by default: the reference defines it over one
  batch of m x n images, and that is what a process holds, so adding GPUs leaves
  the term unchanged. ``ec_gather`` instead all-gathers the backbone features
  (and labels) of every process first, so E covers inter-class pairs across the
  global batch. The gathered features are *detached*, so under the reference
  routing EC's gradient still reaches only W and b; each process then computes
  the same EC term on the same pairs and DDP's averaging leaves its gradient
  whole. ``ec_route="full"`` with ``ec_gather`` uses an autograd all-gather whose
  backward sums, over the processes, the gradient each computed for this process's
  features: every process computes the same EC term, so that is world_size times the
  term's gradient, and DDP's averaging over world_size processes makes it the
  gradient of one term again. Batches of different sizes are gathered whole.
  tests/test_ddp_gradients.py checks, with two gloo processes, that every
  parameter's gradient equals one process's on both batches, for each setting.
- **Files.** Only rank 0 writes the run directory (config, history, checkpoints,
  status, metrics) and evaluates; every process checks the weights before a
  checkpoint and agrees on NaN losses and stop requests at log points, so all
  stop together with the same message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

# Rank 0 evaluates while the others wait at their next collective: long enough for an evaluation of
# Stanford Online Products' 60,502 test images on a slow disk, short enough that a dead peer is noticed.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class ProcessGroup:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def requested() -> bool:
    """Whether this process was started by torchrun (or alike) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_name: str) -> ProcessGroup | None:
    """Join the process group torchrun's environment describes (once); None when training on one process.

    ``device_name`` is the run's ``device`` setting: auto/cuda train on ``cuda:LOCAL_RANK`` with NCCL,
    cpu (or auto without CUDA) on the CPU with gloo.
    """
    if not requested():
        return None
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE > 1 but {name} is not set; start several processes with torchrun")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"process {local_rank} of this node has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return ProcessGroup(rank, world_size, local_rank, device)


def stop(group: ProcessGroup | None) -> None:
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()


class FeaturesAndEmbeddings(nn.Module):
    """``x -> (f, head(f))`` in one forward: what DDP wraps, so both come out of one synchronised pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(images)
        return features, self.model.head(features)


def wrap(model: nn.Module, group: ProcessGroup) -> nn.Module:
    """The model under DDP (rank 0's weights are broadcast to every process here)."""
    device_ids = [group.device.index] if group.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(FeaturesAndEmbeddings(model), device_ids=device_ids)


def gather_batch(features: torch.Tensor, labels: torch.Tensor, keep_gradient: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's features and labels, concatenated in rank order (the same tensor in each process).

    ``keep_gradient``: an autograd all-gather (see the module's docstring for what its backward returns);
    otherwise the features are detached, so nothing gathered carries gradient to any backbone.
    """
    sizes = _batch_sizes(len(features), features.device)
    gathered = _GatherRows.apply(features, sizes) if keep_gradient else _gather_rows(features.detach(), sizes)
    return gathered, _gather_rows(labels, sizes)


def _batch_sizes(size: int, device: torch.device) -> list[int]:
    mine = torch.tensor([size], device=device)
    sizes = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def _gather_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every process's rows in rank order; all_gather moves equal shapes, so each batch is padded to the largest."""
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """All-gather whose backward gives each process its own rows of the gradient, summed over the processes."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return _gather_rows(tensor, sizes)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        total = gradient.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None


def average_gradients(parameters) -> None:
    """Average the gradients of parameters DDP does not own (a loss's proxies or class weights)."""
    world_size = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world_size


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over all processes (NaN anywhere stays NaN everywhere)."""
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def any_process(flag: bool, device: torch.device) -> bool:
    """True in every process when ``flag`` is true in any (e.g. one process was asked to stop)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def main_succeeded(ok: bool, device: torch.device) -> bool:
    """Rank 0 tells the others whether it set the run up (folder, lock, config); all learn the same answer."""
    value = torch.tensor([1.0 if ok else 0.0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item() > 0)
