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


def test_the_final_evaluation_is_announced_in_the_status_and_the_progress_text_then_cleared(tmp_path, monkeypatch):
    """After its last step a run is scored on every split (minutes on Fashion-MNIST); the status says so meanwhile
    and the app's progress line reads it, instead of a bare "step 699 of 699"."""
    from app.lesson import lesson_progress
    from app.training_job import progress_text
    from ecaml.serve.jobs import JobManager
    from ecaml.store.run_files import FINAL_EVALUATION, read_status
    from ecaml.train import trainer

    run_dir = tmp_path / "scored"
    seen = {}
    score = trainer.Trainer.evaluate_into_history

    def watched(self, epoch, parts=None):
        if parts is not None:  # the final evaluation
            seen["status"] = read_status(run_dir)
            seen["text"] = progress_text(JobManager(tmp_path).progress(run_dir))
            seen["lesson"] = lesson_progress((str(run_dir),))
        return score(self, epoch, parts)

    monkeypatch.setattr(trainer.Trainer, "evaluate_into_history", watched)
    assert main(["train", "--max-steps", "3", "--eval-every", "0", "--quiet", "--out", str(run_dir)]) == 0
    assert seen["status"]["state"] == "running" and seen["status"]["phase"] == FINAL_EVALUATION
    assert seen["text"].startswith("step 3 of 3") and "evaluating" in seen["text"]
    assert seen["lesson"].evaluating and seen["lesson"].done == 3 and not lesson_progress((str(run_dir),)).evaluating
    assert "phase" not in read_status(run_dir) and read_status(run_dir)["state"] == "completed"
    assert "evaluating" not in progress_text(JobManager(tmp_path).progress(run_dir))
