"""Checkpoints of a training run: committed atomically, restored exactly.

Trainer state first (optimiser moments, CPU and CUDA random states, loss parameters, flattened into
safetensors with a JSON layout: nothing is pickled), then the weights, whose metadata names the step:
the commit. A kill at any moment leaves a loadable run that ``resume`` continues exactly.
"""

from __future__ import annotations

import json

import torch

from ecaml.runs import read_weights
from ecaml.store.run_files import (
    KEPT_WEIGHTS_FOLDER,
    TRAINER_STATE_PATTERN,
    WEIGHTS_FILE,
    RunError,
    checkpoint_step,
    kept_steps,
    kept_weights_file,
    open_safetensors,
    save_weights,
    truncate_history,
)
from ecaml.train.stopping import TrainingError


class Checkpoints:
    """The checkpoint half of ``Trainer``: saving this step, restoring the last committed one."""

    def save_checkpoint(self) -> None:
        """Trainer state for this step first, then the weights (the commit), then older states go.

        Weights that went NaN or infinite are never committed: the previous checkpoint stays the last good one.
        """
        self._refuse_non_finite_weights()
        if not self.writes_files:
            self.checkpointed_step = self.step
            return
        self.history.flush(force=True)  # a checkpoint's steps are in the history before it commits
        state_file = self.run_dir / TRAINER_STATE_PATTERN.format(step=self.step)
        tensors, layout = _flatten_optimizer(self.optimizer.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.pairs"] = self.pair_generator.get_state()
        if self.device.type == "cuda":
            for index, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{index}"] = state
        for name, value in self.metric_loss.state_dict().items():
            tensors[f"loss.{name}"] = value
        metadata = {"step": str(self.step), "optimizer_layout": json.dumps(layout), "scaler": json.dumps(self.scaler.state_dict())}
        save_weights(state_file, tensors, metadata)
        weights_metadata = {"step": str(self.step), "format": "ecaml"}
        if self.config.keep_checkpoints:  # before the commit: a kept step never lacks its file
            (self.run_dir / KEPT_WEIGHTS_FOLDER).mkdir(exist_ok=True)
            save_weights(self.run_dir / kept_weights_file(self.step), self.model.state_dict(), weights_metadata)
        save_weights(self.run_dir / WEIGHTS_FILE, self.model.state_dict(), weights_metadata)
        for old in self.run_dir.glob("trainer_state_*.safetensors"):
            if old != state_file:
                old.unlink(missing_ok=True)
        self.checkpointed_step = self.step

    def _refuse_non_finite_weights(self) -> None:
        tensors = {name: t for name, t in self.model.state_dict().items() if t.is_floating_point()}
        finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).cpu()  # one wait, not one a tensor
        if finite.all():
            return
        for name, ok in zip(tensors, finite.tolist()):
            if not ok:
                raise TrainingError(
                    f"weights became NaN or infinite by step {self.step} ({name}); training stopped, "
                    f"the checkpoint of step {self.checkpointed_step} is kept (try a lower --lr)"
                )

    def restore_checkpoint(self) -> None:
        """Everything the last committed checkpoint holds; a damaged or foreign trainer state is a RunError."""
        weights, metadata = read_weights(self.run_dir, self.config)
        step = checkpoint_step(self.run_dir, metadata)
        tensors, saved_meta = self._read_trainer_state(step)
        try:
            self._load_states(weights, tensors, saved_meta)
        except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as error:
            reason = (str(error).strip().splitlines() or [error.__class__.__name__])[0][:160]
            raise RunError(
                f"{self.run_dir.name}: cannot resume, the trainer state of step {step} does not fit this run ({reason})"
            ) from None
        self.step = self.checkpointed_step = step
        if self.writes_files:
            truncate_history(self.run_dir, step)
            for later in (s for s in kept_steps(self.run_dir) if s > step):  # kept by a writer killed before its commit
                (self.run_dir / kept_weights_file(later)).unlink(missing_ok=True)

    def _read_trainer_state(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        state_file = self.run_dir / TRAINER_STATE_PATTERN.format(step=step)
        if not state_file.is_file():
            raise RunError(f"{self.run_dir.name}: cannot resume, the trainer state of step {step} is missing")
        with open_safetensors(state_file) as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
        if metadata.get("step") != str(step):
            raise RunError(f"{self.run_dir.name}: cannot resume, {state_file.name} does not say it is of step {step}")
        return tensors, metadata

    def _load_states(
        self, weights: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> None:
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(_unflatten_optimizer(saved, json.loads(metadata["optimizer_layout"]), self.optimizer))
        _check_optimizer_shapes(self.optimizer)
        self.scaler.load_state_dict(json.loads(metadata["scaler"]))
        torch.set_rng_state(saved["rng.torch"])
        self.pair_generator.set_state(saved["rng.pairs"])
        cuda_states = [saved[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in saved))]
        if cuda_states and self.device.type == "cuda" and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        loss_state = {k[len("loss."):]: v for k, v in saved.items() if k.startswith("loss.")}
        if loss_state:
            self.metric_loss.load_state_dict(loss_state)


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Adam's load_state_dict does not compare moment shapes with their parameters; a mismatch fails mid-step."""
    for parameter, values in optimizer.state.items():
        for key, value in values.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != parameter.shape:
                shapes = f"{tuple(value.shape)}, its parameter {tuple(parameter.shape)}"
                raise ValueError(f"optimizer {key} has shape {shapes}")


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state as flat tensors plus a JSON layout: safetensors holds tensors only, and nothing is pickled."""
    tensors, layout = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for param_id, values in state_dict["state"].items():
        layout["state"][str(param_id)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_id}.{key}"] = value
                layout["state"][str(param_id)][key] = "tensor"
            else:
                layout["state"][str(param_id)][key] = value
    return tensors, layout


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], layout: dict, optimizer: torch.optim.Optimizer) -> dict:
    """The saved state dict, with ``optimizer``'s own groups when they hold the same parameters in the same order.

    Groups are the config's settings, and earlier versions grouped the same parameters differently (before
    bias_lr_mult, one backbone group); the moments are per parameter id and carry over unchanged.
    """
    groups = optimizer.state_dict()["param_groups"]
    same_parameters = [i for g in groups for i in g["params"]] == [i for g in layout["param_groups"] for i in g["params"]]
    state = {}
    for param_id, values in layout["state"].items():
        state[int(param_id)] = {
            key: tensors[f"optimizer.{param_id}.{key}"] if value == "tensor" else value for key, value in values.items()
        }
    return {"state": state, "param_groups": groups if same_parameters else layout["param_groups"]}
