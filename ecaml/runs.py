"""Run directories as the core reads them: the config, the weights checked against the config's model, a whole run.

The files themselves (names, bounded reads, safetensors guards, the run lock) are ``ecaml.store.run_files``;
this module adds what needs the core: ``TrainConfig``, the model a config names, the data sets an imported
run stands for. Every way a run can be unusable is a one-line ``RunError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ecaml import RUN_FORMAT_VERSION, __version__
from ecaml.config import TrainConfig
from ecaml.store.atomic import atomic_write_json
from ecaml.store.run_files import (
    CONFIG_FILE,
    HISTORY_FILE,
    IMPORTED_MANIFEST,
    IMPORTED_VECTORS,
    WEIGHTS_FILE,
    RunError,
    _first_line,
    checkpoint_step,
    find_runs,
    kept_weights_file,
    open_safetensors,
    read_history,
    read_json_file,
    read_metrics,
    read_status,
)


def write_config(run_dir: Path, config: TrainConfig) -> None:
    record = {"format_version": RUN_FORMAT_VERSION, "ecaml_version": __version__, **config.to_dict()}
    atomic_write_json(run_dir / CONFIG_FILE, record)


def read_config(run_dir: Path) -> TrainConfig:
    record = read_json_file(run_dir / CONFIG_FILE, "config")
    if not isinstance(record, dict):
        raise RunError(f"{run_dir.name}: {CONFIG_FILE} is not a JSON object")
    version = record.pop("format_version", None)
    record.pop("ecaml_version", None)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunError(f"{run_dir.name}: {CONFIG_FILE} has no valid format_version; not an ecaml run")
    if version > RUN_FORMAT_VERSION:
        raise RunError(
            f"{run_dir.name}: run format {version} is newer than this ecaml understands ({RUN_FORMAT_VERSION}); upgrade ecaml"
        )
    try:
        config = TrainConfig.from_saved(record).resolved()
    except (TypeError, ValueError, AttributeError) as error:  # wrong types in a hand-edited or hostile file
        raise RunError(f"{run_dir.name}: invalid {CONFIG_FILE}: {error}") from None
    return config


def read_weights(run_dir: Path, config: TrainConfig | None = None, weights_file: str = WEIGHTS_FILE
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of ``model.safetensors``; anything that is not a safetensors file is refused.

    With ``config``, the tensor names and shapes in the file's header are checked
    against that config's model before a single tensor is read, so a file made
    for another architecture fails fast and cannot make us allocate its sizes.
    """
    run_dir = Path(run_dir)
    with open_safetensors(run_dir / weights_file) as handle:
        metadata = handle.metadata() or {}
        if config is not None:
            _check_layout(run_dir, config, {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()})
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RunError(f"{run_dir.name}: weights contain NaN or infinite values ({name})")
    return state, metadata


def _check_layout(run_dir: Path, config: TrainConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """The file's tensor names and shapes against the config's model, built on the meta device (no memory)."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        sample = (missing or unexpected)[0]
        raise RunError(
            f"{run_dir.name}: weights do not fit a {config.backbone}/{config.embedding_dim}-d model "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {sample!r})"
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise RunError(
                f"{run_dir.name}: weights do not fit the config: {name} has shape {shapes[name]}, expected {shape}"
            )


def expected_shapes(config: TrainConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state dict of ``config``'s model."""
    with torch.device("meta"):
        model = _build_model_for(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _build_model_for(config: TrainConfig) -> torch.nn.Module:
    from ecaml.models import build_model  # local: keeps `runs` importable without torchvision at import time

    try:
        return build_model(config.backbone, config.embedding_dim, in_channels=input_channels(config))
    except (ImportError, ValueError, RuntimeError) as error:
        raise RunError(f"cannot build the {config.backbone} model of this run ({_first_line(error)})") from None


@dataclass
class Run:
    """A validated run directory, its model ready for inference."""

    path: Path
    config: TrainConfig
    model: torch.nn.Module | None  # None for an imported run
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    status: dict[str, Any] | None = None
    kind: str = "trained"  # or "imported": vectors made elsewhere (ecaml.data.imported), no model
    weights_file: str = WEIGHTS_FILE  # what names this run's embeddings: its weights (or kept step), or its vectors

    @property
    def name(self) -> str:
        return self.path.name if self.weights_file in (WEIGHTS_FILE, IMPORTED_VECTORS) else f"{self.path.name}@{self.step}"

    @property
    def weights_path(self) -> Path:
        return self.path / self.weights_file

    def step_records(self) -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("kind") == "step"]

    def eval_records(self, split: str = "unseen") -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("kind") == "eval" and r.get("split") == split]


def load_run(run_dir: str | Path, step: int | None = None) -> Run:
    """Read and validate every file of a run; the model is rebuilt from the config and its weights checked key by key.

    ``step``: one of the run's kept checkpoints (``kept_steps``) instead of its last weights.
    Every way a run can be unusable (missing, malformed, truncated, foreign or
    hostile files, a newer format) is a ``RunError`` with a one-line reason.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a run directory (no such folder)")
    if (run_dir / IMPORTED_MANIFEST).is_file():
        return load_imported_run(run_dir)
    config = read_config(run_dir)
    if not (run_dir / HISTORY_FILE).is_file():
        raise RunError(f"{run_dir.name}: missing {HISTORY_FILE}")
    history, metrics = read_history(run_dir), read_metrics(run_dir)
    weights_file = WEIGHTS_FILE if step is None else kept_weights_file(step)
    state, metadata = read_weights(run_dir, config, weights_file)
    step = checkpoint_step(run_dir, metadata)
    model = _build_model_for(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # names and shapes were checked; only odd dtypes get here
        raise RunError(f"{run_dir.name}: weights do not load into the model ({_first_line(error)})") from None
    model.eval()
    return Run(run_dir, config, model, step, history, metrics, read_status(run_dir), weights_file=weights_file)


def load_imported_run(run_dir: Path) -> Run:
    """An imported run: its vectors stand in for a model (none), its items for a dataset (``ecaml.data.imported``)."""
    from ecaml.data import DatasetError
    from ecaml.data.imported import IMPORTED_DATASET, SAME_ITEMS_KEY, read_manifest

    try:
        manifest = read_manifest(run_dir)
    except DatasetError as error:
        raise RunError(str(error)) from None
    if not (run_dir / IMPORTED_VECTORS).is_file():
        raise RunError(f"{run_dir.name}: missing {IMPORTED_VECTORS}")
    dim = manifest.get("dim")
    own = {"loss": IMPORTED_DATASET, "ec_weight": 0.0, "embedding_dim": dim if isinstance(dim, int) else None,
           "recall_ks": manifest.get("recall_ks") or [1, 2, 4, 8]}
    aligned = manifest.get(SAME_ITEMS_KEY)  # the unseen images of a trained run: its data set, folder and split
    if isinstance(aligned, dict) and isinstance(aligned.get("config"), dict):
        try:
            config = replace(TrainConfig.from_saved(aligned["config"]), **own, pretrained=False)
        except (TypeError, ValueError) as error:
            raise RunError(f"{run_dir.name}: {IMPORTED_MANIFEST} names a run config that cannot be read ({error})") from None
    else:  # Not resolved(): the config only names the items (dataset "imported", data_root the run) for the readers.
        config = TrainConfig(dataset=IMPORTED_DATASET, data_root=str(run_dir.resolve()), image_size=8, epochs=1, **own)
    return Run(run_dir, config, None, 0, [], read_metrics(run_dir), read_status(run_dir), kind=IMPORTED_DATASET,
               weights_file=IMPORTED_VECTORS)


def input_channels(config: TrainConfig) -> int:
    from ecaml.registry import BACKBONES

    from ecaml.data import COLOUR_DATASETS

    if BACKBONES[config.backbone].imagenet_input or config.dataset in COLOUR_DATASETS:
        return 3
    return 1


def scan_runs(*roots: str | Path) -> list[tuple[Path, Run | None, str | None]]:
    """Every run under ``roots`` as (path, run, None) or, when unusable, (path, None, reason)."""
    results = []
    for path in find_runs(*roots):
        try:
            results.append((path, load_run(path), None))
        except RunError as error:
            results.append((path, None, str(error)))
        except OSError as error:  # a folder removed or made unreadable while we looked
            results.append((path, None, f"{path.name}: {error.strerror or error.__class__.__name__}"))
    return results
