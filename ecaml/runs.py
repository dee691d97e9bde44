"""Run directories: writing them atomically, reading and validating them safely.

A run directory is the unit everything exchanges::

    config.json              resolved TrainConfig + format version + library version
    model.safetensors        weights (metadata: step, epoch); the commit marker of a checkpoint
    trainer_state_<step>.safetensors   optimiser/RNG state to resume from that step
    history.jsonl            one JSON object a line: {"kind": "step", ...} or {"kind": "eval", ...}
    metrics.json             final unseen-class metrics (same keys as ``evaluate --json``)
    status.json              running / completed / stopped / failed, for live readers

Nothing here unpickles: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ecaml import RUN_FORMAT_VERSION, __version__
from ecaml.config import TrainConfig

CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE = "config.json", "model.safetensors", "history.jsonl"
METRICS_FILE, STATUS_FILE = "metrics.json", "status.json"
TRAINER_STATE_PATTERN = "trainer_state_{step:08d}.safetensors"
MAX_JSON_BYTES = 16 * 1024 * 1024  # a config or metrics file this large is not ours


class RunError(ValueError):
    """A run directory that cannot be used, with a one-line reason."""


# ----------------------------------------------------------------------------- writing


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The temporary file lives in the same folder (same filesystem, so the rename
    is atomic) and is fsynced first; on any failure, a full disk included, it is
    removed and the old file is untouched.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line with a single write, so a kill leaves at most one partial last line (which readers skip)."""
    line = (json.dumps(record, allow_nan=False) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=metadata))


def write_config(run_dir: Path, config: TrainConfig) -> None:
    record = {"format_version": RUN_FORMAT_VERSION, "ecaml_version": __version__, **config.to_dict()}
    atomic_write_json(run_dir / CONFIG_FILE, record)


def write_status(run_dir: Path, state: str, **details: Any) -> None:
    atomic_write_json(run_dir / STATUS_FILE, {"state": state, "updated": time.time(), "pid": os.getpid(), **details})


def truncate_history(run_dir: Path, last_step: int) -> None:
    """Drop history lines past ``last_step`` (work done after the checkpoint that a resume redoes)."""
    kept = [record for record in read_history(run_dir) if record.get("step", 0) <= last_step]
    atomic_write_bytes(run_dir / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in kept).encode())


# ----------------------------------------------------------------------------- reading


def read_json_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise RunError(f"{path.parent.name}: missing {path.name}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise RunError(f"{path.parent.name}: {path.name} is too large to be a {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path.parent.name}: {path.name} is not valid JSON ({error.__class__.__name__})") from None


def read_config(run_dir: Path) -> TrainConfig:
    record = read_json_file(run_dir / CONFIG_FILE, "config")
    if not isinstance(record, dict):
        raise RunError(f"{run_dir.name}: {CONFIG_FILE} is not a JSON object")
    version = record.pop("format_version", None)
    record.pop("ecaml_version", None)
    if not isinstance(version, int):
        raise RunError(f"{run_dir.name}: {CONFIG_FILE} has no format_version; not an ecaml run")
    if version > RUN_FORMAT_VERSION:
        raise RunError(
            f"{run_dir.name}: run format {version} is newer than this ecaml understands ({RUN_FORMAT_VERSION}); upgrade ecaml"
        )
    try:
        return TrainConfig.from_dict(record).resolved()
    except (TypeError, ValueError) as error:
        raise RunError(f"{run_dir.name}: invalid {CONFIG_FILE}: {error}") from None


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete history line; a partial last line (a killed write) is skipped, other bad lines refused."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the unterminated tail of an interrupted append
                continue
            raise RunError(f"{Path(run_dir).name}: {HISTORY_FILE} line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise RunError(f"{Path(run_dir).name}: {HISTORY_FILE} line {number} is not a JSON object")
        records.append(record)
    return records


def read_metrics(run_dir: Path) -> dict[str, float] | None:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None
    metrics = read_json_file(path, "metrics file")
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in metrics.values()
    ):
        raise RunError(f"{Path(run_dir).name}: {METRICS_FILE} must map metric names to finite numbers")
    return {k: float(v) for k, v in metrics.items()}


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        status = read_json_file(Path(run_dir) / STATUS_FILE, "status")
    except RunError:
        return None
    return status if isinstance(status, dict) else None


def read_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of ``model.safetensors``; anything that is not a safetensors file is refused."""
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise RunError(f"{Path(run_dir).name}: missing {WEIGHTS_FILE}")
    data = path.read_bytes()
    if not data:
        raise RunError(f"{Path(run_dir).name}: {WEIGHTS_FILE} is empty")
    try:
        state = load_safetensors_bytes(data)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, ValueError, RuntimeError, OSError) as error:
        raise RunError(f"{Path(run_dir).name}: {WEIGHTS_FILE} is not a valid safetensors file ({_first_line(error)})") from None
    return state, metadata


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else error.__class__.__name__


@dataclass
class Run:
    """A validated run directory, its model ready for inference."""

    path: Path
    config: TrainConfig
    model: torch.nn.Module
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def step_records(self) -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("kind") == "step"]

    def eval_records(self, split: str = "unseen") -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("kind") == "eval" and r.get("split") == split]


def load_run(run_dir: str | Path) -> Run:
    """Read and validate every file of a run; the model is rebuilt from the config and its weights checked key by key."""
    from ecaml.models import build_model  # local: keeps `runs` importable without torchvision at import time

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a run directory (no such folder)")
    config = read_config(run_dir)
    state, metadata = read_weights(run_dir)
    model = build_model(config.backbone, config.embedding_dim, in_channels=input_channels(config))
    _check_state_matches(run_dir, config, model, state)
    model.load_state_dict(state)
    model.eval()
    step = _int_or_zero(metadata.get("step"))
    return Run(run_dir, config, model, step, read_history(run_dir), read_metrics(run_dir), read_status(run_dir))


def _check_state_matches(run_dir: Path, config: TrainConfig, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        sample = (missing or unexpected)[0]
        raise RunError(
            f"{run_dir.name}: weights do not fit a {config.backbone}/{config.embedding_dim}-d model "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {sample!r})"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise RunError(
                f"{run_dir.name}: weights do not fit the config: {name} has shape {tuple(state[name].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
        if state[name].is_floating_point() and not torch.isfinite(state[name]).all():
            raise RunError(f"{run_dir.name}: weights contain NaN or infinite values ({name})")


def input_channels(config: TrainConfig) -> int:
    from ecaml.models import BACKBONES

    if BACKBONES[config.backbone].imagenet_input or config.dataset == "folder":
        return 3
    return 1


def _int_or_zero(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def find_runs(*roots: str | Path) -> list[Path]:
    """Folders directly under ``roots`` that look like run directories (have a config.json), sorted by name."""
    found = []
    for root in roots:
        root = Path(root)
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).exists())
    return found


def scan_runs(*roots: str | Path) -> list[tuple[Path, Run | None, str | None]]:
    """Every run under ``roots`` as (path, run, None) or, when unusable, (path, None, reason)."""
    results = []
    for path in find_runs(*roots):
        try:
            results.append((path, load_run(path), None))
        except RunError as error:
            results.append((path, None, str(error)))
    return results
