"""The training loop and the run directory it writes.

One step: a single backbone pass gives the features f; the head gives z for the
metric loss; when EC is on, the head is re-applied to f (detached under the
reference routing) for log E and the row-norm penalty. The loss terms stay on the
device; every ``log_every`` steps (1 on the CPU, 10 on CUDA by default) their
*mean* over those steps becomes one history line (``steps_averaged`` says how
many), which is also where a NaN or infinite loss is caught, with the step it
first appeared at. History lines are buffered and appended at most every few
seconds and always before a checkpoint commits, so a kill loses only lines past
the last checkpoint, which ``--resume`` redoes. Checkpoints are committed
atomically (trainer state first, then the weights, whose metadata names the
step), so a kill at any moment leaves a loadable run that ``--resume``
continues exactly: batches, per-sample augmentation seeds, CPU and CUDA random
states and optimiser state all come back. Under ``torchrun`` see
``ecaml.train.distributed``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecaml.train import distributed
from ecaml.config import TrainConfig
from ecaml.confusion import EnergyConfusion
from ecaml.data import ClassSplit, mirroring_allowed
from ecaml.data.loading import RunBatchSampler, resolve_num_workers, training_loader
from ecaml.data.sampling import ImageView
from ecaml.data.transforms import build_transform
from ecaml.eval.evaluate import dropped_recall_ks, pick_device, score_part, split_for
from ecaml.serve.film import FilmRecorder
from ecaml.losses import build_loss
from ecaml.models import BACKBONES, EmbeddingNet, build_model
from ecaml.store.run_files import (
    DROPPED_KS_KEY,
    KEPT_WEIGHTS_FOLDER,
    HISTORY_FILE,
    LOCK_FILE,
    METRICS_FILE,
    TRAINER_STATE_PATTERN,
    WEIGHTS_FILE,
    RunError,
    append_jsonl,
    append_jsonl_records,
    atomic_write_json,
    checkpoint_step,
    hold_run_lock,
    input_channels,
    open_safetensors,
    read_config,
    read_weights,
    remove_stale_temp_files,
    kept_steps,
    kept_weights_file,
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


def make_plan(config: TrainConfig, train_labels: np.ndarray, world_size: int = 1) -> Plan:
    """Steps an epoch (each step takes ``world_size`` batches, one a process) and in all."""
    batch = min(config.classes_per_batch, len(np.unique(train_labels))) * config.images_per_class
    batches = max(1, len(train_labels) // batch)
    if batches < world_size:
        raise ValueError(f"an epoch holds {batches} batches of {batch} images, fewer than the {world_size} processes")
    steps_per_epoch = batches // world_size
    total = config.max_steps if config.max_steps else steps_per_epoch * config.epochs
    return Plan(steps_per_epoch, total)


def build_optimizer(model: EmbeddingNet, loss: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the reference's per-parameter settings (train_confusion.prototxt's ``param`` blocks).

    Backbone weights at lr, the head's weight (and any loss parameters) at lr x head_lr_mult; every bias at
    bias_lr_mult x its layer's weight rate, with weight decay x bias_decay_mult. Consecutive parameters with
    the same settings share a group, in the model's parameter order, so the optimiser's saved state keeps
    its parameter ids (and with the default multipliers, its three groups).
    """
    head_lr = config.lr * config.head_lr_mult
    groups: list[dict[str, Any]] = []

    def add(group_name: str, parameter: torch.nn.Parameter, lr: float, bias: bool) -> None:
        group = {"name": group_name, "lr": lr * config.bias_lr_mult if bias else lr,
                 "weight_decay": config.weight_decay * (config.bias_decay_mult if bias else 1.0)}
        if groups and all(groups[-1][key] == value for key, value in group.items()):
            groups[-1]["params"].append(parameter)
        else:
            groups.append({**group, "params": [parameter]})

    for name, parameter in model.backbone.named_parameters():
        bias = name.endswith("bias")
        own_group = bias and (config.bias_lr_mult, config.bias_decay_mult) != (1.0, 1.0)
        add("backbone.bias" if own_group else "backbone", parameter, config.lr, bias)
    add("head.weight", model.head.weight, head_lr, bias=False)
    add("head.bias", model.head.bias, head_lr, bias=True)
    for parameter in (p for p in loss.parameters() if p.requires_grad):
        add("loss", parameter, head_lr, bias=False)
    return torch.optim.Adam(groups)


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


# Loss terms in the order of a history line; total_loss is the one checked for NaN.
TERM_NAMES = ("metric_loss", "energy", "log_energy", "row_norm", "total_loss")
# The longest history lines wait in memory before they are appended (they are always appended before a checkpoint).
HISTORY_FLUSH_SECONDS = 2.0


class HistoryBuffer:
    """Step lines of the history, appended in one write per flush instead of one per step."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.pending: list[dict[str, Any]] = []
        self.flushed_at = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.pending.append(record)

    def flush(self, force: bool = False) -> None:
        if not self.pending or not (force or time.monotonic() - self.flushed_at >= HISTORY_FLUSH_SECONDS):
            return
        append_jsonl_records(self.path, self.pending)
        self.pending = []
        self.flushed_at = time.monotonic()


class Trainer:
    """Everything one training run holds: data, model, losses, optimiser and the run directory.

    With a ``group`` (several processes under torchrun) only its rank 0 writes files.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, split: ClassSplit | None = None,
                 group: distributed.ProcessGroup | None = None):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self.group = group
        self.writes_files = group is None or group.is_main
        self.device = group.device if group is not None else pick_device(self.config.device)
        self.amp_dtype = _amp_dtype(self.device)
        _set_cpu_threads(self.config, self.device)
        torch.manual_seed(self.config.seed)
        self.split = split or split_for(self.config)
        self.channels = input_channels(self.config)
        self.train_indices = self.split.indices("train")
        self.train_labels = self.split.dataset.labels[self.train_indices]
        self.label_map = {c: i for i, c in enumerate(self.split.train_classes)}
        self.plan = make_plan(self.config, self.train_labels, group.world_size if group else 1)
        self.num_workers = resolve_num_workers(self.config.num_workers, self.config.dataset)
        self.log_every = self.config.log_every or (10 if self.device.type == "cuda" else 1)
        self.model = build_model(
            self.config.backbone, self.config.embedding_dim, self.channels, self.config.pretrained, self.config.weights_path
        ).to(self.device)
        self.network: torch.nn.Module | None = None  # the model under DDP, made when the run starts
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
        self.history = HistoryBuffer(self.run_dir / HISTORY_FILE, enabled=self.writes_files)
        self._window: list[torch.Tensor] = []  # stacked TERM_NAMES of each step since the last history line
        spec = BACKBONES[self.config.backbone]
        self.view = ImageView(
            self.split.dataset,
            self.train_indices,
            build_transform(self.config.image_size, self.channels, spec.imagenet_input, train=True,
                            flip=mirroring_allowed(self.config.dataset), resize=self.config.resize_size),
            self.label_map,
        )
        # None unless config.film_every > 0; only the process that writes the run films it.
        self.film = FilmRecorder.for_trainer(self) if self.writes_files else None

    # ------------------------------------------------------------------ one step

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metric loss on z = head(backbone(x)); EC on head(f) with f detached unless route is full.

        E, log E and R(W) are returned with or without EC, for the history. ``labels`` may be on the CPU
        (as the loader gives them): EC draws its pairs there, without waiting for the device.
        """
        pair_labels = labels.cpu()
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            features, embeddings = self._forward(images)
        terms = {"metric_loss": self.metric_loss(embeddings.float(), labels)}
        total = terms["metric_loss"]
        features = features.float()
        if self.group is not None and self.config.ec_gather:
            features, gathered_labels = distributed.gather_batch(features, labels, self.config.ec_route == "full")
            pair_labels = gathered_labels.cpu()
        if self.config.ec_weight > 0:
            confusion = self.confusion(features, self.model.head, pair_labels, self.pair_generator)
            total = total + confusion.loss
        else:
            # The baseline measures the same energy without gradient (its pair draws use a
            # private generator, so training is unchanged): curves then compare like with like.
            with torch.no_grad():
                confusion = self.confusion(features, self.model.head, pair_labels, self.pair_generator)
        terms.update(energy=confusion.energy, log_energy=confusion.log_energy, row_norm=confusion.row_norm)
        terms["total_loss"] = total
        return terms

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.network is not None:
            return self.network(images)
        features = self.model.features(images)
        return features, self.model.head(features)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step; the loss terms come back as (detached) device tensors: reading them waits for the
        device, which only logging does, every ``log_every`` steps."""
        self.model.train()
        images = images.to(self.device, non_blocking=True)
        terms = self.compute_losses(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total_loss"]).backward()
        if self.group is not None:
            distributed.average_gradients(self.metric_loss.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return {name: value.detach() for name, value in terms.items()}

    # ------------------------------------------------------------------ loop

    def run(self, stop: StopFlag | None = None, progress: bool = True, on_step: Callable[[dict], None] | None = None) -> TrainResult:
        stop = stop if stop is not None else StopFlag()
        self._write_status("running")
        bar = _progress_bar(progress and self.writes_files, self.plan.total_steps, self.step)
        started = time.perf_counter()
        try:
            if self.group is not None:
                self.network = distributed.wrap(self.model, self.group)
            if self.group is None and stop:
                stopped = True
            else:
                stopped = self.step < self.plan.total_steps and self._train(stop, bar, started, on_step)
            self.save_checkpoint()
            if stopped:
                self._write_status("stopped")
                return TrainResult(self.run_dir, self.step, "stopped", None)
            metrics = self.finish() if self.writes_files else None
            return TrainResult(self.run_dir, self.step, "completed", metrics)
        except BaseException as error:
            self._record_failure(error)
            raise
        finally:
            if bar is not None:
                bar.close()

    def _write_status(self, state: str, **details: Any) -> None:
        if self.writes_files:
            write_status(self.run_dir, state, step=self.step, total_steps=self.plan.total_steps, **details)

    def _record_failure(self, error: BaseException) -> None:
        if not self.writes_files:
            return
        message = str(error) or error.__class__.__name__
        try:
            if isinstance(error, TrainingError):
                self.history.flush(force=True)  # the steps before the bad one are worth keeping
            write_status(self.run_dir, "failed", step=self.checkpointed_step, total_steps=self.plan.total_steps, message=message)
        except OSError:
            pass  # the disk may be what failed; the original error is the one to report

    def _train(self, stop: StopFlag, bar, started: float, on_step) -> bool:
        """Steps from ``self.step`` to the end of the plan through one loader; True if asked to stop first."""
        sampler = RunBatchSampler(
            self.train_labels, self.config.classes_per_batch, self.config.images_per_class, self.config.seed,
            self.plan.steps_per_epoch, self.step, self.plan.total_steps,
            self.group.rank if self.group else 0, self.group.world_size if self.group else 1,
        )
        batches = iter(training_loader(self.view, sampler, self.num_workers, self.device, self.config.seed))
        try:
            for images, labels, _ in batches:
                if self.film is not None:
                    self.film.before_step(self.step, self.model)
                self._window.append(torch.stack([value.float() for value in self.train_step(images, labels).values()]))
                if self.film is not None:
                    self.film.after_step(self.step, self.model)
                if bar is not None:
                    bar.update(1)
                epoch_ended = self.step % self.plan.steps_per_epoch == 0
                # Single process: a stop request is honoured after the step it arrived in. Several: at log points,
                # where all processes agree on it (one stopping alone would leave the others waiting forever).
                asked_to_stop = bool(stop) and self.group is None
                if asked_to_stop or epoch_ended or self.step % self.log_every == 0 or self.step == self.plan.total_steps:
                    record = self._log_window(started)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['total_loss']:.4f}", epoch=record["epoch"])
                    if on_step:
                        on_step(record)
                    if self._stop_agreed(stop):
                        return True
                if epoch_ended:
                    self._end_epoch(self.step // self.plan.steps_per_epoch - 1)
            return False
        finally:
            del batches  # shuts the loader's workers down now rather than whenever the iterator is collected

    def _log_window(self, started: float) -> dict[str, Any]:
        """The mean of the loss terms since the last history line, as the next line; a NaN or inf loss raises."""
        values = torch.stack(self._window)
        self._window = []
        if self.group is not None:
            values = distributed.mean_over_processes(values)
        values = values.cpu().double().numpy()  # the one wait for the device in these steps
        first_step = self.step - len(values) + 1
        total = values[:, TERM_NAMES.index("total_loss")]
        bad = np.flatnonzero(~np.isfinite(total))
        if bad.size:
            raise TrainingError(
                f"loss became {float(total[bad[0]])} at step {first_step + int(bad[0])}; "
                f"training stopped, the checkpoint of step {self.checkpointed_step} is kept (try a lower --lr)"
            )
        means = dict(zip(TERM_NAMES, (float(v) for v in values.mean(axis=0))))
        record = {"kind": "step", "step": self.step, "epoch": (self.step - 1) // self.plan.steps_per_epoch, **means,
                  "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 4),
                  "steps_averaged": len(values)}
        self.history.add(record)
        self.history.flush()
        return record

    def _stop_agreed(self, stop: StopFlag) -> bool:
        if self.group is None:
            return bool(stop)
        return distributed.any_process(bool(stop), self.group.device)

    def _end_epoch(self, epoch: int) -> None:
        finished_epoch = epoch + 1
        evaluates = self.config.eval_every and self.config.eval_splits and finished_epoch % self.config.eval_every == 0
        if evaluates and self.step < self.plan.total_steps and self.writes_files:
            self.history.flush(force=True)  # step lines before the evaluation's
            self.evaluate_into_history(epoch)
        if finished_epoch % self.config.checkpoint_every == 0:
            self.save_checkpoint()
            self._write_status("running")

    # ------------------------------------------------------------------ evaluation

    def evaluate_into_history(self, epoch: int, parts: list[str] | None = None) -> dict[str, dict[str, float]]:
        """Metrics of ``parts`` (default: the config's ``eval_splits``) at this step, appended to the history.

        During training only what ``eval_splits`` names is scored (by default the
        validation classes, when there are any): the unseen test classes are
        scored at the end, so nobody stops early on them by accident.
        """
        results = {}
        for part in self.config.eval_splits if parts is None else parts:
            if len(self.split.queries_and_gallery(part)[0]) == 0:
                continue  # e.g. seen_test when every training class was too small to spare images
            metrics = score_part(self.model, self.split, part, self.config, self.channels, self.device)
            append_jsonl(self.run_dir / HISTORY_FILE, {"kind": "eval", "step": self.step, "epoch": epoch, "split": part, **metrics})
            results[part] = metrics
        return results

    def final_parts(self) -> list[str]:
        """What the end of training scores: seen-class retrieval on held-out images, validation, unseen.

        Without a hold-out (runs made before it, or classes too small to spare
        images) the seen classes are measured on the training images themselves,
        logged as "train" so that nobody mistakes it for new images.
        """
        seen = "seen_test" if len(self.split.indices("seen_test")) else "train"
        return [seen] + (["val"] if self.split.val_classes else []) + ["unseen"]

    def finish(self) -> dict[str, float]:
        """Final evaluation (seen_test or train, val, unseen) into the history; metrics.json = the unseen metrics."""
        epoch = max(0, (self.step - 1) // self.plan.steps_per_epoch)
        metrics = self.evaluate_into_history(epoch, self.final_parts())["unseen"]
        dropped = dropped_recall_ks(self.split, "unseen", self.config.recall_ks)
        atomic_write_json(self.run_dir / METRICS_FILE, {**metrics, **({DROPPED_KS_KEY: dropped} if dropped else {})})
        write_status(self.run_dir, "completed", step=self.step, total_steps=self.plan.total_steps)
        return metrics

    # ------------------------------------------------------------------ checkpoints

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


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------- entry points


def train(config: TrainConfig, run_dir: str | Path, progress: bool = True, stop: StopFlag | None = None) -> TrainResult:
    """Train a new run into ``run_dir`` (which must be new or empty); under torchrun, one process of several."""
    run_dir = Path(run_dir)
    group = distributed.start(config.device)
    try:
        if group is not None and not group.is_main:
            _wait_for_main(group)
            return _run(Trainer(config, run_dir, group=group), progress, stop)
        with ExitStack() as held:
            with _announced_to_followers(group):
                _refuse_used_folder(run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(hold_run_lock(run_dir))
                _refuse_used_folder(run_dir)  # again under the lock: another trainer may have started here meanwhile
                trainer = Trainer(config, run_dir, group=group)
                write_config(run_dir, trainer.config)
                (run_dir / HISTORY_FILE).touch()
                # A step-0 checkpoint makes the run loadable and resumable even if killed before its first epoch ends.
                trainer.save_checkpoint()
            return _run(trainer, progress, stop)
    finally:
        distributed.stop(group)


def _refuse_used_folder(run_dir: Path) -> None:
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists and is not empty; pick a new --out or use --resume {run_dir}")


def resume(run_dir: str | Path, progress: bool = True, stop: StopFlag | None = None, **overrides: Any) -> TrainResult:
    """Continue a run from its last complete checkpoint; ``overrides`` may extend epochs or max_steps."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory to resume")
    group = distributed.start(read_config(run_dir).device) if distributed.requested() else None
    try:
        if group is not None and not group.is_main:
            _wait_for_main(group)  # rank 0 has cleaned the folder and rewritten the config by now
            trainer = Trainer(_overridden(read_config(run_dir), overrides), run_dir, group=group)
            trainer.restore_checkpoint()
            return _run(trainer, progress, stop)
        with ExitStack() as held:
            with _announced_to_followers(group):
                held.enter_context(hold_run_lock(run_dir))
                remove_stale_temp_files(run_dir)  # left by a writer that was killed; safe, we hold the lock
                trainer = Trainer(_overridden(read_config(run_dir), overrides), run_dir, group=group)
                trainer.restore_checkpoint()
                write_config(run_dir, trainer.config)
            return _run(trainer, progress, stop)
    finally:
        distributed.stop(group)


def _overridden(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    return config


@contextmanager
def _announced_to_followers(group: distributed.ProcessGroup | None):
    """Rank 0 sets the run up, then tells the other processes whether it could (they wait for that word)."""
    if group is None:
        yield
        return
    try:
        yield
    except BaseException:
        distributed.main_succeeded(False, group.device)
        raise
    distributed.main_succeeded(True, group.device)


def _wait_for_main(group: distributed.ProcessGroup) -> None:
    if not distributed.main_succeeded(False, group.device):
        raise TrainingError("process 0 could not set the run up; its error says why")


def _run(trainer: Trainer, progress: bool, stop: StopFlag | None) -> TrainResult:
    stop = stop if stop is not None else StopFlag()
    with stop_on_signals(stop):
        return trainer.run(stop, progress)
