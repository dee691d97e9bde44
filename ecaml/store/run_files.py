"""The files of a run directory: their names, writing them atomically, reading them safely, the run lock.

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
What needs the core (the config, the model a config names, a whole ``Run``) is ``ecaml.runs``.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from ecaml.store.atomic import append_jsonl_records, atomic_write_bytes, atomic_write_json
from ecaml.store.locks import is_locked, try_lock

CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE = "config.json", "model.safetensors", "history.jsonl"
METRICS_FILE, STATUS_FILE = "metrics.json", "status.json"
FINAL_EVALUATION = "final evaluation"  # status.json's "phase" while a run that trained all its steps is scored
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


def checkpoint_step(run_dir: Path, metadata: dict[str, str]) -> int:
    """The step a weights file was saved at (0 when its metadata has none, as in hand-made files)."""
    value = metadata.get("step")
    if value is None:
        return 0
    if not (isinstance(value, str) and value.isdigit() and value.isascii()):
        raise RunError(f"{Path(run_dir).name}: {WEIGHTS_FILE} has an invalid step in its metadata ({value[:40]!r})")
    return int(value)


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
