"""Every checkpoint of a run (--keep-checkpoints): each kept step loads as run@step; a resume drops stale later ones."""

from __future__ import annotations

import shutil

import torch

from ecaml.cli import main
from ecaml.runs import load_run
from ecaml.store.run_files import kept_steps, kept_weights_file


def test_kept_checkpoints_load_as_their_own_runs_and_a_resume_drops_steps_past_its_checkpoint(tmp_path):
    run_dir = tmp_path / "steps"
    assert main(["train", "--keep-checkpoints", "--max-steps", "4", "--eval-every", "0", "--quiet",
                 "--out", str(run_dir)]) == 0
    assert kept_steps(run_dir)[-1] == 4
    # A writer killed between keeping step 7 and committing it leaves a kept file past the last checkpoint.
    shutil.copyfile(run_dir / kept_weights_file(4), run_dir / kept_weights_file(7))
    assert main(["train", "--resume", str(run_dir), "--max-steps", "10", "--quiet"]) == 0
    assert 7 not in kept_steps(run_dir) and kept_steps(run_dir)[-2:] == [4, 10]
    early, last = load_run(run_dir, 4), load_run(run_dir)
    assert (early.step, early.name, last.step, last.name) == (4, "steps@4", 10, "steps")
    early_weights, last_weights = early.model.state_dict(), last.model.state_dict()
    assert not all(torch.equal(early_weights[k], last_weights[k]) for k in early_weights)
