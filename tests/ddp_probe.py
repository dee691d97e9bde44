"""Run by tests/test_distributed.py under torchrun: ``python -m ecaml train`` with each rank's view recorded.

Every process writes ``<record dir>/rank<R>.json``: the batches of dataset positions its sampler gave it
and digests of its final parameters and state dict, so the test can check that ranks saw different batches
and ended with the same parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from ecaml.cli import main
from ecaml.data import loading
from ecaml.train.trainer import Trainer

batches: list[list[int]] = []
digest: dict[str, str] = {}

original_batch_at = loading.RunBatchSampler.batch_at
original_run = Trainer.run


def recording_batch_at(self, step):
    batch = original_batch_at(self, step)
    batches.append([position for position, _ in batch])
    return batch


def tensor_digest(tensors) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(tensors):
        hasher.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def recording_run(self, *args, **kwargs):
    result = original_run(self, *args, **kwargs)
    # Parameters must be equal everywhere; BatchNorm's running statistics are each process's own after its
    # last forward (DDP broadcasts rank 0's at the start of each), and rank 0's are the ones saved.
    digest["parameters"] = tensor_digest(self.model.named_parameters())
    digest["state"] = tensor_digest(self.model.state_dict().items())
    return result


def main_recording(argv: list[str]) -> int:
    loading.RunBatchSampler.batch_at = recording_batch_at
    Trainer.run = recording_run
    status = main(argv)
    record = Path(os.environ["ECAML_PROBE_DIR"]) / f"rank{os.environ['RANK']}.json"
    record.write_text(json.dumps({"batches": batches, **digest}))
    return status


if __name__ == "__main__":
    sys.exit(main_recording(sys.argv[1:]))
