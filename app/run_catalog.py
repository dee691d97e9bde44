"""The runs the app knows: every run folder under checkpoints/ and runs/, each loaded once per process.

Loaded runs are cached per process with ``st.cache_resource``, keyed by the run
folder and the modification times of its files, so a finished or re-trained run
is picked up on the next rerun while an unchanged one is never read twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.errors import one_sentence
from app.locations import checkpoints_dir, runs_dir
from ecaml.config import TrainConfig
from ecaml.data import fashion
from ecaml.eval.evaluate import split_settings
from ecaml.runs import Run, load_run, read_config
from ecaml.store.run_files import RunError, find_runs, kept_steps, read_status


# The files whose change means a run must be read again (a checkpoint, a finished evaluation...).
RUN_FILES = ("config.json", "model.safetensors", "history.jsonl", "metrics.json", "status.json")


LIVE_STATES = ("starting", "running")


# Names the shipped runs the app opens on, so the first screen shows the clearest comparison: its "runs" (digits),
# and under "fashion-mnist" the real-photos pair, opened on instead when Fashion-MNIST's files are present.
FEATURED_FILE = "featured.json"
FASHION = fashion.NAME
PHOTOS_HINT = ("Real photos: Fashion-MNIST is not installed here; get it with `apt-get install dataset-fashion-mnist` "
               "or `python -m ecaml data fetch fashion-mnist`.")


@dataclass(frozen=True)
class RunEntry:
    """One folder under a run root: its run when usable, else why not."""

    path: Path
    shipped: bool  # under checkpoints/ (read-only) rather than runs/
    run: Run | None
    problem: str | None = None
    step: int | None = None  # one of the run's kept checkpoints (run@step); None: its last weights

    @property
    def key(self) -> str:
        return str(self.path) if self.step is None else f"{self.path}@{self.step}"

    @property
    def name(self) -> str:
        name = self.path.name if self.step is None else f"{self.path.name}@{self.step}"
        return name if self.shipped else f"{name} (yours)"

    @property
    def label(self) -> str:
        """Name plus what matters for the comparison: dataset, loss and whether EC is on."""
        if self.run is None:
            return self.name
        config = self.run.config
        if self.run.kind == "imported":
            over = "" if config.dataset == "imported" else f" of {config.dataset} unseen images"  # --same-items-as
            return f"{self.name} · imported vectors{over} · {config.embedding_dim}-d"
        training = " · training…" if (self.run.status or {}).get("state") in LIVE_STATES else ""
        return f"{self.name} · {config.dataset} · {config.loss} · {ec_summary(config.ec_weight)}{training}"


def ec_summary(ec_weight: float) -> str:
    return "EC off" if ec_weight == 0 else f"EC λ={ec_weight:g}"


def setting_summary(run) -> str:
    """What a panel or caption says of how a run was made: its EC setting, or that its vectors were imported (an
    import has no EC weight: its placeholder config's 0 read as "EC off")."""
    return "imported vectors" if run.kind == "imported" else ec_summary(run.config.ec_weight)


def run_fingerprint(path: Path) -> tuple:
    """(name, mtime, size) of each run file, so any change to the run gives a new cache key."""
    stamps = []
    for name in RUN_FILES:
        try:
            stat = (path / name).stat()
            stamps.append((name, stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((name, None, None))
    return tuple(stamps)


@st.cache_resource(show_spinner=False)
def _loaded_runs() -> dict[str, tuple[tuple, Run | None, str | None]]:
    """Per process: run folder -> (fingerprint, run, problem) of its latest load.

    One entry per folder, so a run that checkpoints every epoch replaces its model instead of piling up copies.
    """
    return {}


def _load_run(path: Path, step: int | None = None) -> tuple[Run | None, str | None]:
    """(run, None) or (None, reason), read again only when one of the run's files changed."""
    fingerprint = run_fingerprint(path)
    cache_key = str(path) if step is None else f"{path}@{step}"
    known = _loaded_runs().get(cache_key)
    if known is not None and known[0] == fingerprint:
        return known[1], known[2]
    try:
        run, problem = load_run(path, step), None
    except RunError as error:
        run, problem = None, str(error)
    except (OSError, ValueError) as error:  # a folder vanishing while read, an odd file system
        run, problem = None, f"{path.name}: {one_sentence(error)}"
    _loaded_runs()[cache_key] = (fingerprint, run, problem)
    return run, problem


# Files that make a folder look like a model someone meant to use, though not a run folder of this project.
FOREIGN_MODEL_FILES = {
    "model.pt": "a PyTorch pickle (model.pt), which this app never loads: it could run code. Save the weights as "
                "model.safetensors beside a config.json (python -m ecaml train writes both)",
    "embeddings.npz": "embeddings alone (embeddings.npz): the app needs the run that made them (config.json, "
                      "model.safetensors, history.jsonl) to embed queries",
}


def scan_all_runs() -> list[RunEntry]:
    """Every run folder under checkpoints/ then runs/, loaded through the cache (listing itself is cheap), and any
    folder there holding only a model the app cannot use, with the reason."""
    entries = []
    for root, shipped in ((checkpoints_dir(), True), (runs_dir(), False)):
        found = find_runs(root)
        for path in found:
            run, problem = _load_run(path)
            if run is None and _still_training(path):
                problem = "still training: it becomes usable at its first checkpoint"
            entries.append(RunEntry(path, shipped, run, problem))
            if run is not None:
                entries += _earlier_checkpoints(path, shipped, run.step)
        entries += [RunEntry(path, shipped, None, reason) for path, reason in foreign_models(root, found)]
    return entries


def _earlier_checkpoints(path: Path, shipped: bool, last_step: int) -> list[RunEntry]:
    """An entry (run@step) for each kept checkpoint before the last, so two steps of one run compare side by side."""
    entries = []
    for step in kept_steps(path):
        if step != last_step:
            run, problem = _load_run(path, step)
            entries.append(RunEntry(path, shipped, run, problem, step))
    return entries


def foreign_models(root: Path, runs: list[Path]) -> list[tuple[Path, str]]:
    """Folders directly under ``root`` (not run folders) holding a model file of another kind, with why not."""
    try:
        folders = sorted(path for path in Path(root).iterdir() if path.is_dir() and path not in runs)
    except OSError:
        return []
    found = []
    for folder in folders:
        reasons = [reason for name, reason in FOREIGN_MODEL_FILES.items() if (folder / name).is_file()]
        if reasons:
            found.append((folder, f"not a run folder: it holds {'; and '.join(reasons)}."))
    return found


def _still_training(path: Path) -> bool:
    status = read_status(path) or {}
    return status.get("state") in LIVE_STATES


def usable(entries: list[RunEntry]) -> list[RunEntry]:
    return [entry for entry in entries if entry.run is not None]


def _featured_file() -> dict:
    try:
        featured = json.loads((checkpoints_dir() / FEATURED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return featured if isinstance(featured, dict) else {}


def _names(entry) -> list[str]:
    names = entry.get("runs", []) if isinstance(entry, dict) else []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def photos_available() -> bool:
    """Whether Fashion-MNIST's files are on this machine (a few file checks; nothing is read)."""
    return fashion.available()


def opening_dataset() -> str | None:
    """The data set of the pair the app opens on: Fashion-MNIST when its photos are here and featured.json
    names a pair for it (its ``"fashion-mnist"`` entry), else None: the top-level pair (digits)."""
    return FASHION if _names(_featured_file().get(FASHION)) and photos_available() else None


def featured_run_names(dataset: str | None = None) -> list[str]:
    """Run names of a featured pair in ``checkpoints/featured.json``: Fashion-MNIST's entry (``"fashion-mnist":
    {"runs": [...]}``) for ``dataset`` "fashion-mnist", the top-level ``"runs"`` for any other; None: the pair the
    app opens on (``opening_dataset``). [] when absent or unreadable."""
    featured = _featured_file()
    return _names(featured.get(FASHION) if (dataset or opening_dataset()) == FASHION else featured)


def featured_why(dataset: str | None = None) -> str | None:
    """How the featured pair was chosen, in the study's words (its "why" in featured.json); None when absent."""
    featured = _featured_file()
    entry = featured.get(FASHION) if (dataset or opening_dataset()) == FASHION else featured
    why = entry.get("why") if isinstance(entry, dict) else None
    return why if isinstance(why, str) and why.strip() else None


def featured_setting(dataset: str | None = None) -> TrainConfig | None:
    """The config of the featured EC-on run (the setting the app teaches with), or None when there is none."""
    for name in featured_run_names(dataset):
        try:
            config = read_config(checkpoints_dir() / name)
        except (RunError, OSError, ValueError):
            continue
        if config.ec_weight > 0:
            return config
    return None


def featured_steps_per_epoch(dataset: str | None = None) -> int | None:
    """Training steps per epoch of the featured EC-on run of ``dataset`` (as in ``featured_run_names``; its status's
    total over its epochs), or None."""
    for name in featured_run_names(dataset):
        try:
            config = read_config(checkpoints_dir() / name)
            total = int((read_status(checkpoints_dir() / name) or {}).get("total_steps") or 0)
        except (RunError, OSError, ValueError, TypeError):
            continue
        if config.ec_weight > 0 and total > 0 and config.epochs and not config.max_steps:
            return max(1, total // config.epochs)
    return None


def default_selection(entries: list[RunEntry]) -> list[str]:
    """The featured shipped runs; else the first shipped EC-off / EC-on pair of one dataset and loss; else two runs."""
    candidates = [e for e in usable(entries) if e.shipped] or usable(entries)
    by_name = {e.path.name: e for e in candidates if e.shipped and e.step is None}
    featured = [by_name[name].key for name in featured_run_names() if name in by_name]
    if len(featured) >= 2:
        return featured
    for off in (e for e in candidates if e.run.config.ec_weight == 0):
        for on in (e for e in candidates if e.run.config.ec_weight > 0):
            if (on.run.config.dataset, on.run.config.loss) == (off.run.config.dataset, off.run.config.loss):
                return [off.key, on.key]
    return [e.key for e in candidates[:2]]


def same_data(chosen: list[RunEntry]) -> list[RunEntry]:
    """The runs trained on the same images as the first one."""

    first = split_settings(chosen[0].run.config)
    return [entry for entry in chosen if split_settings(entry.run.config) == first]
