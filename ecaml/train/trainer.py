"""The training loop: one ``Trainer`` holds a run's data, model, losses and optimiser, and steps it.

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
states and optimiser state all come back (``ecaml.train.checkpoint``). ``ecaml.train.launch``
starts and resumes runs; under ``torchrun`` see ``ecaml.train.distributed``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecaml.config import TrainConfig
from ecaml.confusion import EnergyConfusion
from ecaml.data import ClassSplit, mirroring_allowed
from ecaml.data.loading import RunBatchSampler, resolve_num_workers, training_loader
from ecaml.data.sampling import ImageView
from ecaml.data.transforms import build_transform
from ecaml.eval.evaluate import dropped_recall_ks, pick_device, score_part, split_for
from ecaml.losses import build_loss
from ecaml.models import EmbeddingNet, build_model
from ecaml.registry import BACKBONES
from ecaml.runs import input_channels
from ecaml.store.atomic import atomic_write_json
from ecaml.store.run_files import (
    DROPPED_KS_KEY, FINAL_EVALUATION, HISTORY_FILE, METRICS_FILE, append_jsonl, write_status,
)
from ecaml.train import distributed
from ecaml.train.checkpoint import Checkpoints
from ecaml.train.film_recorder import FilmRecorder
from ecaml.train.history import TERM_NAMES, HistoryBuffer
from ecaml.train.stopping import StopFlag, TrainingError, TrainResult


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


class Trainer(Checkpoints):
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
        # Scoring every split can take minutes after the last step (Fashion-MNIST: ~2 on 2 busy cores): say so.
        self._write_status("running", phase=FINAL_EVALUATION)
        metrics = self.evaluate_into_history(epoch, self.final_parts())["unseen"]
        dropped = dropped_recall_ks(self.split, "unseen", self.config.recall_ks)
        atomic_write_json(self.run_dir / METRICS_FILE, {**metrics, **({DROPPED_KS_KEY: dropped} if dropped else {})})
        write_status(self.run_dir, "completed", step=self.step, total_steps=self.plan.total_steps)
        return metrics


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


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True)
