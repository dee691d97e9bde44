"""The training loop and the run directory it writes.

One step: a single backbone pass gives the features f; the head gives z for the
metric loss; when EC is on, the head is re-applied to f (detached under the
reference routing) for log E and the row-norm penalty. One JSON line per step
goes to ``history.jsonl``; checkpoints are committed atomically (trainer state
first, then the weights, whose metadata names the step), so a kill at any
moment leaves a loadable run that ``--resume`` continues exactly.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ecaml.config import TrainConfig
from ecaml.confusion import EnergyConfusion
from ecaml.data import ClassSplit
from ecaml.data.sampling import ImageView, class_balanced_batches
from ecaml.data.transforms import build_transform
from ecaml.evaluate import embed_part, pick_device, score, split_for
from ecaml.film import FilmRecorder
from ecaml.losses import build_loss
from ecaml.models import BACKBONES, EmbeddingNet, build_model
from ecaml.runs import (
    HISTORY_FILE,
    LOCK_FILE,
    METRICS_FILE,
    TRAINER_STATE_PATTERN,
    WEIGHTS_FILE,
    RunError,
    append_jsonl,
    atomic_write_json,
    checkpoint_step,
    hold_run_lock,
    input_channels,
    open_safetensors,
    read_config,
    read_weights,
    remove_stale_temp_files,
    save_weights,
    truncate_history,
    write_config,
    write_status,
)


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (NaN loss, bad data...)."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    state: str  # "completed" or "stopped"
    metrics: dict[str, float] | None


class StopFlag:
    """Set by Ctrl-C / SIGTERM or by a caller; the loop finishes its step, checkpoints and returns."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self, *_: Any) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


@dataclass
class Plan:
    """Step counts derived from the config and the data."""

    steps_per_epoch: int
    total_steps: int


# ----------------------------------------------------------------------------- setup


def make_plan(config: TrainConfig, train_labels: np.ndarray) -> Plan:
    batch = min(config.classes_per_batch, len(np.unique(train_labels))) * config.images_per_class
    steps_per_epoch = max(1, len(train_labels) // batch)
    total = config.max_steps if config.max_steps else steps_per_epoch * config.epochs
    return Plan(steps_per_epoch, total)


def build_optimizer(model: EmbeddingNet, loss: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the reference's groups: backbone at lr, head (and any loss parameters) at lr x head_lr_mult.

    The reference also gives the head's bias twice the head's rate.
    """
    head_lr = config.lr * config.head_lr_mult
    groups = [
        {"params": list(model.backbone.parameters()), "lr": config.lr, "name": "backbone"},
        {"params": [model.head.weight], "lr": head_lr, "name": "head.weight"},
        {"params": [model.head.bias], "lr": 2 * head_lr if config.head_lr_mult > 1 else head_lr, "name": "head.bias"},
    ]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": head_lr, "name": "loss"})
    return torch.optim.Adam(groups, weight_decay=config.weight_decay)


@contextmanager
def stop_on_signals(flag: StopFlag):
    """Ctrl-C and SIGTERM ask for a clean stop instead of killing mid-write (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, flag.set) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Everything one training run holds: data, model, losses, optimiser and the run directory."""

    def __init__(self, config: TrainConfig, run_dir: Path, split: ClassSplit | None = None):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self.device = pick_device(self.config.device)
        self.amp_dtype = _amp_dtype(self.device)
        _set_cpu_threads(self.config, self.device)
        torch.manual_seed(self.config.seed)
        self.split = split or split_for(self.config)
        self.channels = input_channels(self.config)
        self.train_indices = self.split.indices("train")
        train_labels = self.split.dataset.labels[self.train_indices]
        self.label_map = {c: i for i, c in enumerate(self.split.train_classes)}
        self.plan = make_plan(self.config, train_labels)
        self.model = build_model(
            self.config.backbone, self.config.embedding_dim, self.channels, self.config.pretrained, self.config.weights_path
        ).to(self.device)
        self.metric_loss = build_loss(
            self.config.loss, self.config.embedding_dim, len(self.split.train_classes), self.config.loss_params
        ).to(self.device)
        self.confusion = EnergyConfusion(
            self.config.ec_weight, self.config.ec_pairs, self.config.ec_partners, self.config.ec_route
        )
        self.optimizer = build_optimizer(self.model, self.metric_loss, self.config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pair_generator = torch.Generator().manual_seed(self.config.seed + 1)
        self.step = 0
        self.checkpointed_step = 0
        spec = BACKBONES[self.config.backbone]
        self.view = ImageView(
            self.split.dataset,
            self.train_indices,
            build_transform(self.config.image_size, self.channels, spec.imagenet_input, train=True, flip=self.config.dataset == "folder"),
            self.label_map,
        )
        self.film = FilmRecorder.for_trainer(self)  # None unless config.film_every > 0

    # ------------------------------------------------------------------ one step

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metric loss on z = head(backbone(x)); EC on head(f) with f detached unless route is full.

        E, log E and R(W) are returned with or without EC, for the history.
        """
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            features = self.model.features(images)
            embeddings = self.model.head(features)
        terms = {"metric_loss": self.metric_loss(embeddings.float(), labels)}
        total = terms["metric_loss"]
        if self.config.ec_weight > 0:
            confusion = self.confusion(features.float(), self.model.head, labels, self.pair_generator)
            total = total + confusion.loss
        else:
            # The baseline measures the same energy without gradient (its pair draws use a
            # private generator, so training is unchanged): curves then compare like with like.
            with torch.no_grad():
                confusion = self.confusion(features.float(), self.model.head, labels, self.pair_generator)
        terms.update(energy=confusion.energy, log_energy=confusion.log_energy, row_norm=confusion.row_norm)
        terms["total_loss"] = total
        return terms

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        self.model.train()
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        terms = self.compute_losses(images, labels)
        if not torch.isfinite(terms["total_loss"]):
            raise TrainingError(
                f"loss became {terms['total_loss'].item()} at step {self.step + 1}; "
                f"training stopped, the checkpoint of step {self.checkpointed_step} is kept (try a lower --lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total_loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return {name: float(value.detach()) for name, value in terms.items()}

    # ------------------------------------------------------------------ loop

    def run(self, stop: StopFlag | None = None, progress: bool = True, on_step: Callable[[dict], None] | None = None) -> TrainResult:
        stop = stop if stop is not None else StopFlag()
        write_status(self.run_dir, "running", step=self.step, total_steps=self.plan.total_steps)
        bar = _progress_bar(progress, self.plan.total_steps, self.step)
        started = time.perf_counter()
        try:
            while self.step < self.plan.total_steps and not stop:
                epoch, offset = divmod(self.step, self.plan.steps_per_epoch)
                self._run_epoch(epoch, offset, stop, bar, started, on_step)
            if stop:
                self.save_checkpoint()
                write_status(self.run_dir, "stopped", step=self.step, total_steps=self.plan.total_steps)
                return TrainResult(self.run_dir, self.step, "stopped", None)
            self.save_checkpoint()
            metrics = self.finish()
            return TrainResult(self.run_dir, self.step, "completed", metrics)
        except BaseException as error:
            self._record_failure(error)
            raise
        finally:
            if bar is not None:
                bar.close()

    def _record_failure(self, error: BaseException) -> None:
        message = str(error) or error.__class__.__name__
        try:
            write_status(self.run_dir, "failed", step=self.checkpointed_step, total_steps=self.plan.total_steps, message=message)
        except OSError:
            pass  # the disk may be what failed; the original error is the one to report

    def _run_epoch(self, epoch: int, offset: int, stop: StopFlag, bar, started: float, on_step) -> None:
        positions = class_balanced_batches(
            self.view.dataset.labels[self.train_indices], self.config.classes_per_batch, self.config.images_per_class,
            self.config.seed, epoch,
        )[offset:]
        positions = positions[: self.plan.total_steps - self.step]
        # A private generator: creating a DataLoader otherwise draws from the global RNG,
        # and a resumed run would then augment differently from an uninterrupted one.
        loader = DataLoader(
            self.view, batch_sampler=[p.tolist() for p in positions], num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(self.config.seed + epoch),
        )
        for images, labels, _ in loader:
            if self.film is not None:
                self.film.before_step(self.step, self.model)
            values = self.train_step(images, labels)
            record = {"kind": "step", "step": self.step, "epoch": epoch, **values,
                      "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 4)}
            append_jsonl(self.run_dir / HISTORY_FILE, record)
            if self.film is not None:
                self.film.after_step(self.step, self.model)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['total_loss']:.4f}", epoch=epoch)
            if on_step:
                on_step(record)
            if stop:
                return
        finished_epoch = epoch + 1
        if self.step % self.plan.steps_per_epoch == 0:
            if self.config.eval_every and finished_epoch % self.config.eval_every == 0 and self.step < self.plan.total_steps:
                self.evaluate_into_history(epoch)
            if finished_epoch % self.config.checkpoint_every == 0:
                self.save_checkpoint()
                write_status(self.run_dir, "running", step=self.step, total_steps=self.plan.total_steps)

    # ------------------------------------------------------------------ evaluation

    def evaluate_into_history(self, epoch: int) -> dict[str, dict[str, float]]:
        """Unseen (and validation) metrics at this step, appended to the history."""
        results = {}
        parts = ["val", "unseen"] if self.split.val_classes else ["unseen"]
        for part in parts:
            metrics = score(embed_part(self.model, self.split, part, self.config, self.channels, self.device), self.config.recall_ks)
            append_jsonl(self.run_dir / HISTORY_FILE, {"kind": "eval", "step": self.step, "epoch": epoch, "split": part, **metrics})
            results[part] = metrics
        return results

    def finish(self) -> dict[str, float]:
        """Final evaluation: seen-train Recall@K for the generalisation gap, val, unseen; metrics.json = unseen."""
        epoch = max(0, (self.step - 1) // self.plan.steps_per_epoch)
        seen = score(embed_part(self.model, self.split, "train", self.config, self.channels, self.device), self.config.recall_ks)
        append_jsonl(self.run_dir / HISTORY_FILE, {"kind": "eval", "step": self.step, "epoch": epoch, "split": "train", **seen})
        metrics = self.evaluate_into_history(epoch)["unseen"]
        atomic_write_json(self.run_dir / METRICS_FILE, metrics)
        write_status(self.run_dir, "completed", step=self.step, total_steps=self.plan.total_steps)
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        """Trainer state for this step first, then the weights (the commit), then older states go.

        Weights that went NaN or infinite are never committed: the previous checkpoint stays the last good one.
        """
        self._refuse_non_finite_weights()
        state_file = self.run_dir / TRAINER_STATE_PATTERN.format(step=self.step)
        tensors, layout = _flatten_optimizer(self.optimizer.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.pairs"] = self.pair_generator.get_state()
        for name, value in self.metric_loss.state_dict().items():
            tensors[f"loss.{name}"] = value
        metadata = {"step": str(self.step), "optimizer_layout": json.dumps(layout), "scaler": json.dumps(self.scaler.state_dict())}
        save_weights(state_file, tensors, metadata)
        save_weights(self.run_dir / WEIGHTS_FILE, self.model.state_dict(), {"step": str(self.step), "format": "ecaml"})
        for old in self.run_dir.glob("trainer_state_*.safetensors"):
            if old != state_file:
                old.unlink(missing_ok=True)
        self.checkpointed_step = self.step

    def _refuse_non_finite_weights(self) -> None:
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
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
        truncate_history(self.run_dir, step)

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
        self.optimizer.load_state_dict(_unflatten_optimizer(saved, json.loads(metadata["optimizer_layout"])))
        _check_optimizer_shapes(self.optimizer)
        self.scaler.load_state_dict(json.loads(metadata["scaler"]))
        torch.set_rng_state(saved["rng.torch"])
        self.pair_generator.set_state(saved["rng.pairs"])
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


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU supports it (no loss scaling needed), else float16; none on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _set_cpu_threads(config: TrainConfig, device: torch.device) -> None:
    # Measured here: a smallcnn step takes ~8 ms on one thread and ~500 ms on two
    # when another process shares the cores (OpenMP threads spin on each other).
    if device.type == "cpu":
        threads = config.cpu_threads or (1 if config.backbone == "smallcnn" else 0)
        if threads:
            torch.set_num_threads(threads)


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


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    state = {}
    for param_id, values in layout["state"].items():
        state[int(param_id)] = {
            key: tensors[f"optimizer.{param_id}.{key}"] if value == "tensor" else value for key, value in values.items()
        }
    return {"state": state, "param_groups": layout["param_groups"]}


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------- entry points


def train(config: TrainConfig, run_dir: str | Path, progress: bool = True, stop: StopFlag | None = None) -> TrainResult:
    """Train a new run into ``run_dir`` (which must be new or empty)."""
    run_dir = Path(run_dir)
    _refuse_used_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_lock(run_dir):
        _refuse_used_folder(run_dir)  # again under the lock: another trainer may have started here meanwhile
        trainer = Trainer(config, run_dir)
        write_config(run_dir, trainer.config)
        (run_dir / HISTORY_FILE).touch()
        # A step-0 checkpoint makes the run loadable and resumable even if killed before its first epoch ends.
        trainer.save_checkpoint()
        return _run(trainer, progress, stop)


def _refuse_used_folder(run_dir: Path) -> None:
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists and is not empty; pick a new --out or use --resume {run_dir}")


def resume(run_dir: str | Path, progress: bool = True, stop: StopFlag | None = None, **overrides: Any) -> TrainResult:
    """Continue a run from its last complete checkpoint; ``overrides`` may extend epochs or max_steps."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory to resume")
    with hold_run_lock(run_dir):
        remove_stale_temp_files(run_dir)  # left by a writer that was killed; safe, we hold the lock
        config = read_config(run_dir)
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        trainer = Trainer(config, run_dir)
        trainer.restore_checkpoint()
        write_config(run_dir, trainer.config)
        return _run(trainer, progress, stop)


def _run(trainer: Trainer, progress: bool, stop: StopFlag | None) -> TrainResult:
    stop = stop if stop is not None else StopFlag()
    with stop_on_signals(stop):
        return trainer.run(stop, progress)
