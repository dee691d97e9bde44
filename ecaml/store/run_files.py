"""Run directories: writing them atomically, reading and validating them safely.

A run directory is the unit everything exchanges::

    config.json              resolved TrainConfig + format version + library version
    model.safetensors        weights (metadata: step, epoch); the commit marker of a checkpoint
    trainer_state_<step>.safetensors   optimiser/RNG state to resume from that step
    history.jsonl            one JSON object a line: {"kind": "step", ...} or {"kind": "eval", ...}
    metrics.json             final unseen-class metrics (same keys as ``evaluate --json``)
    status.json              running / completed / stopped / failed, for live readers
    .ecaml.lock              flock held by the one process training the run
    .<name>.<random>.tmp     an atomic write in progress (or left by a killed writer)

Nothing here unpickles: weights are safetensors, everything else JSON. Readers
bound what they read (file sizes, safetensors header lengths, model sizes named
by a config) before reading it, and turn every way a file can be damaged,
foreign or hostile into a one-line ``RunError``. Writers never leave a partial
file: a full disk raises ``DiskFullError`` with the previous version intact.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from ecaml import RUN_FORMAT_VERSION, __version__
from ecaml.store.atomic import (
    TEMP_SUFFIX,
    DiskFullError,
    append_jsonl_records,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temp_files,
)
from ecaml.config import TrainConfig
from ecaml.store.locks import is_locked, try_lock

CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE = "config.json", "model.safetensors", "history.jsonl"
METRICS_FILE, STATUS_FILE = "metrics.json", "status.json"
# metrics.json's one key that is not a metric: the Recall@K that the unseen classes were too few to measure
DROPPED_KS_KEY = "dropped_recall_ks"
TRAINER_STATE_PATTERN = "trainer_state_{step:08d}.safetensors"
MAX_JSON_BYTES = 16 * 1024 * 1024  # a config or metrics file this large is not ours
MAX_HISTORY_BYTES = 512 * 1024 * 1024  # about two million steps; more is a hostile or runaway file
# A resnet50 checkpoint header is ~40 KB; safetensors itself allows 100 MB, which we never need.
MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024 * 1024
# Sizes a run's config may ask for before rebuilding its model or its input transform
# could exhaust memory; far beyond anything this project trains.


class RunError(ValueError):
    """A run directory that cannot be used, with a one-line reason."""


# ----------------------------------------------------------------------------- writing


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line with a single write, so a kill leaves at most one partial last line (which readers skip)."""
    append_jsonl_records(path, [record])


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
    kept = [record for record in read_history(run_dir) if _record_step(record) <= last_step]
    atomic_write_bytes(run_dir / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in kept).encode())


def _record_step(record: dict[str, Any]) -> float:
    step = record.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


# ----------------------------------------------------------------------------- reading


def _read_prefix(path: Path, count: int) -> tuple[bytes, int]:
    """(at most ``count`` leading bytes, file size) of a regular file; anything else is a RunError naming it.

    FIFOs and devices count as missing: reading them would block or never end.
    The type is checked on the opened descriptor (O_NONBLOCK, so opening a FIFO
    cannot hang), not on the name, so swapping the file in between changes nothing.
    """
    missing = RunError(f"{path.parent.name}: missing {path.name}")
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise missing from None
    except OSError as error:
        raise RunError(f"{path.parent.name}: {path.name} cannot be read ({_reason(error)})") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise missing
        try:
            return handle.read(count), info.st_size
        except OSError as error:
            raise RunError(f"{path.parent.name}: {path.name} cannot be read ({_reason(error)})") from None


def _reason(error: OSError) -> str:
    return error.strerror or error.__class__.__name__


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    data, _ = _read_prefix(path, limit + 1)  # bounded even if the file grows while we read
    if len(data) > limit:
        raise RunError(f"{path.parent.name}: {path.name} is too large to be a {what}")
    return data


def read_json_file(path: Path, what: str) -> Any:
    data = _read_bounded(path, MAX_JSON_BYTES, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RunError(f"{path.parent.name}: {path.name} is not valid JSON ({error.__class__.__name__})") from None


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


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete history line; a partial last line (a killed write) is skipped, other bad lines refused.

    A missing file reads as no history (a run being created); ``load_run`` is the one that insists on it.
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    text = _read_bounded(path, MAX_HISTORY_BYTES, "training history").decode("utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
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
    if isinstance(metrics, dict) and DROPPED_KS_KEY in metrics:
        metrics = dict(metrics)
        dropped = metrics.pop(DROPPED_KS_KEY)
        if not (isinstance(dropped, list) and all(type(k) is int and k > 0 for k in dropped)):
            raise RunError(f"{Path(run_dir).name}: {METRICS_FILE} {DROPPED_KS_KEY} must list positive integers")
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


@contextmanager
def open_safetensors(path: Path):
    """``safe_open`` after our own header checks, with every failure turned into a one-line RunError.

    safetensors never unpickles, but it trusts the 8-byte header length up to
    100 MB; we refuse anything over ``MAX_SAFETENSORS_HEADER_BYTES`` or past the
    end of the file, and name pickles and zip archives for what they are.
    """
    path = Path(path)
    _check_safetensors_header(path)
    label = f"{path.parent.name}: {path.name}"
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, ValueError, RuntimeError, OSError, TypeError) as error:
        if isinstance(error, RunError):
            raise
        raise RunError(f"{label} is not a valid safetensors file ({_first_line(error)})") from None


def _check_safetensors_header(path: Path) -> None:
    label = f"{path.parent.name}: {path.name}"
    head, size = _read_prefix(path, 9)
    if size == 0:
        raise RunError(f"{label} is empty")
    foreign = _foreign_format(head)
    if foreign:
        raise RunError(f"{label} is {foreign}, not safetensors; refused (ecaml never unpickles)")
    if size < 8:
        raise RunError(f"{label} is truncated ({size} bytes)")
    (header_bytes,) = struct.unpack("<Q", head[:8])
    if header_bytes > MAX_SAFETENSORS_HEADER_BYTES:
        raise RunError(
            f"{label} claims a {header_bytes:,}-byte header; refused (over {MAX_SAFETENSORS_HEADER_BYTES:,})"
        )
    if 8 + header_bytes > size:
        raise RunError(f"{label} is truncated (its header needs {8 + header_bytes:,} bytes, the file has {size:,})")
    needed = 8 + header_bytes + _data_bytes(_read_prefix(path, 8 + header_bytes)[0][8:], label)
    if needed > size:
        raise RunError(f"{label} is truncated (its header needs {needed:,} bytes, the file has {size:,})")


def _data_bytes(header: bytes, label: str) -> int:
    """How many tensor bytes a safetensors header says follow it (safetensors checks the rest of the layout)."""
    try:
        entries = json.loads(header)
        ends = [entry["data_offsets"][1] for key, entry in entries.items() if key != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        raise RunError(f"{label} is not a valid safetensors file (unreadable header)") from None
    if not all(isinstance(end, int) and end >= 0 for end in ends):
        raise RunError(f"{label} is not a valid safetensors file (bad tensor offsets)")
    return max(ends, default=0)


def _foreign_format(head: bytes) -> str | None:
    """A name for the formats people most often rename to .safetensors: both could run code if unpickled.

    A safetensors header (JSON) starts at byte 8, whatever its length's bytes happen to be.
    """
    if head[8:9] == b"{":
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head[:2] == b"PK":
        return "a zip archive (a torch.save file?)"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else error.__class__.__name__


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


def checkpoint_step(run_dir: Path, metadata: dict[str, str]) -> int:
    """The step a weights file was saved at (0 when its metadata has none, as in hand-made files)."""
    value = metadata.get("step")
    if value is None:
        return 0
    if not (isinstance(value, str) and value.isdigit() and value.isascii()):
        raise RunError(f"{Path(run_dir).name}: {WEIGHTS_FILE} has an invalid step in its metadata ({value[:40]!r})")
    return int(value)


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


# Every checkpoint's weights, kept when a run trains with keep_checkpoints (each opens as run@step).
KEPT_WEIGHTS_FOLDER, KEPT_WEIGHTS_PATTERN = "steps", "model_{step:08d}.safetensors"
IMPORTED_MANIFEST, IMPORTED_VECTORS = "imported.json", "vectors.npy"  # ecaml.data.imported's file names


def kept_weights_file(step: int) -> str:
    return f"{KEPT_WEIGHTS_FOLDER}/{KEPT_WEIGHTS_PATTERN.format(step=int(step))}"


def kept_steps(run_dir: str | Path) -> list[int]:
    """The steps whose weights the run kept (``steps/model_<step>.safetensors``), in order."""
    folder = Path(run_dir) / KEPT_WEIGHTS_FOLDER
    steps = []
    for path in folder.glob("model_*.safetensors") if folder.is_dir() else []:
        digits = path.name[len("model_"):-len(".safetensors")]
        if digits.isdigit() and digits.isascii():
            steps.append(int(digits))
    return sorted(steps)


def load_imported_run(run_dir: Path) -> Run:
    """An imported run: its vectors stand in for a model (none), its items for a dataset (``ecaml.data.imported``)."""
    from ecaml.data import DatasetError
    from ecaml.data.imported import IMPORTED_DATASET, read_manifest

    try:
        manifest = read_manifest(run_dir)
    except DatasetError as error:
        raise RunError(str(error)) from None
    if not (run_dir / IMPORTED_VECTORS).is_file():
        raise RunError(f"{run_dir.name}: missing {IMPORTED_VECTORS}")
    dim = manifest.get("dim")
    # Not resolved(): the config only names the items (dataset "imported", data_root the run) for the readers.
    config = TrainConfig(dataset=IMPORTED_DATASET, data_root=str(run_dir.resolve()), loss=IMPORTED_DATASET,
                         ec_weight=0.0, embedding_dim=dim if isinstance(dim, int) else None,
                         recall_ks=manifest.get("recall_ks") or [1, 2, 4, 8], image_size=8, epochs=1)
    return Run(run_dir, config, None, 0, [], read_metrics(run_dir), read_status(run_dir), kind=IMPORTED_DATASET,
               weights_file=IMPORTED_VECTORS)


def input_channels(config: TrainConfig) -> int:
    from ecaml.models import BACKBONES

    from ecaml.data import COLOUR_DATASETS

    if BACKBONES[config.backbone].imagenet_input or config.dataset in COLOUR_DATASETS:
        return 3
    return 1


RUN_MARKERS = (CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE, STATUS_FILE, IMPORTED_MANIFEST)


def find_runs(*roots: str | Path) -> list[Path]:
    """Folders directly under ``roots`` that look like run directories (have any run file), sorted by name.

    A folder with weights but no config.json is listed too, so that it shows up as unusable, not vanishes.
    """
    found = []
    for root in roots:
        root = Path(root)
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if p.is_dir() and any((p / m).exists() for m in RUN_MARKERS))
    return found


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


LOCK_FILE = ".ecaml.lock"


@contextmanager
def hold_run_lock(run_dir: Path):
    """Exclusive right to write ``run_dir`` for one trainer; a second one gets a RunError instead of a corrupted run.

    A kernel lock (``ecaml.store.locks``): the operating system drops it when its process dies, ``kill -9`` included, so a
    crash never leaves a stale lock. Readers ask ``run_is_training``. Where ``fcntl`` does not exist (Windows) runs
    are not locked.
    """
    descriptor = try_lock(Path(run_dir) / LOCK_FILE)
    if descriptor is None:
        raise RunError(f"{Path(run_dir).name}: another process is training this run right now")
    try:
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def run_is_training(run_dir: Path) -> bool:
    """Whether a process holds the run's lock, i.e. is training it now (the kernel's word: no pid is guessed at)."""
    return is_locked(Path(run_dir) / LOCK_FILE)
