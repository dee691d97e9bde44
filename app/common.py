"""Plumbing every page shares: where runs live, loading them once, picking them, errors, pictures, the training job,
and projections computed in background threads.

Pages import this module and ``ecaml``; nothing here trains, embeds or scores.
Loaded runs are cached per process with ``st.cache_resource``, keyed by the run
folder and the modification times of its files, so a finished or re-trained run
is picked up on the next rerun while an unchanged one is never read twice.
"""

from __future__ import annotations

import json

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st
from PIL import Image, ImageOps

from ecaml.data import ImageError, load_split
from ecaml.jobs import JobError, JobManager
from ecaml.runs import Run, RunError, find_runs, load_run, read_status

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS_ENV, RUNS_ENV, CACHE_ENV = "ECAML_CHECKPOINTS_DIR", "ECAML_RUNS_DIR", "ECAML_CACHE_DIR"
DATA_ENV = "ECAML_DATA_DIR"
WARM_CACHE_ENV = "ECAML_WARM_CACHE"  # 0: no warm-up at start; pca: warm the PCA maps only; else the aligned UMAP

# Errors the library raises with a one-line, user-facing message.
USER_ERRORS = (RunError, ImageError, JobError, ValueError, OSError)

# The files whose change means a run must be read again (a checkpoint, a finished evaluation...).
RUN_FILES = ("config.json", "model.safetensors", "history.jsonl", "metrics.json", "status.json")

# Distinct, colour-blind-friendly colours (Okabe-Ito); run i of a selection always gets colour i.
RUN_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
VERDICT_COLOURS = {True: (34, 160, 70), False: (214, 39, 40), None: (160, 160, 160)}  # green, red, grey

SELECTION_KEY = "selected_run_paths"  # the runs chosen on one page, offered again on the others
LIVE_STATES = ("starting", "running")

LOG = logging.getLogger("ecaml.app")
T = TypeVar("T")


# ----------------------------------------------------------------------------- where things live


# Names the shipped runs the app opens on, so the first screen shows the clearest comparison.
FEATURED_FILE = "featured.json"


def _configured(variable: str, default: Path) -> Path:
    # Resolved, so that run paths compare equal to the ones the job manager (which resolves) hands back.
    return Path(os.environ.get(variable) or default).expanduser().resolve()


def checkpoints_dir() -> Path:
    """Shipped runs (read-only for the app)."""
    return _configured(CHECKPOINTS_ENV, REPO_ROOT / "checkpoints")


def runs_dir() -> Path:
    """The user's own runs, where the Train page writes."""
    return _configured(RUNS_ENV, REPO_ROOT / "runs")


def cache_dir() -> Path:
    """Embeddings and projections the library caches on disk (git-ignored)."""
    return _configured(CACHE_ENV, REPO_ROOT / ".cache")


def data_dir() -> Path:
    """The only place the Train page may read a folder dataset from."""
    return _configured(DATA_ENV, REPO_ROOT / "data")


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it: shorter, and the same on every machine."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- errors


def one_sentence(error: BaseException) -> str:
    """The first line of an error's message, ending with a full stop."""
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else error.__class__.__name__
    return text if text.endswith((".", "!", "?")) else text + "."


def attempt(action: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``function(*args, **kwargs)``, or ``None`` after one ``st.error`` sentence saying what could not be done."""
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as error:
        LOG.info("could not %s: %s", action, error)
        st.error(f"Could not {action}: {one_sentence(error)}")
        return None


# ----------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunEntry:
    """One folder under a run root: its run when usable, else why not."""

    path: Path
    shipped: bool  # under checkpoints/ (read-only) rather than runs/
    run: Run | None
    problem: str | None = None

    @property
    def key(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name if self.shipped else f"{self.path.name} (yours)"

    @property
    def label(self) -> str:
        """Name plus what matters for the comparison: dataset, loss and whether EC is on."""
        if self.run is None:
            return self.name
        config = self.run.config
        training = " · training…" if (self.run.status or {}).get("state") in LIVE_STATES else ""
        return f"{self.name} · {config.dataset} · {config.loss} · {ec_summary(config.ec_weight)}{training}"


def ec_summary(ec_weight: float) -> str:
    return "EC off" if ec_weight == 0 else f"EC λ={ec_weight:g}"


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


def _load_run(path: Path) -> tuple[Run | None, str | None]:
    """(run, None) or (None, reason), read again only when one of the run's files changed."""
    fingerprint = run_fingerprint(path)
    known = _loaded_runs().get(str(path))
    if known is not None and known[0] == fingerprint:
        return known[1], known[2]
    try:
        run, problem = load_run(path), None
    except RunError as error:
        run, problem = None, str(error)
    except (OSError, ValueError) as error:  # a folder vanishing while read, an odd file system
        run, problem = None, f"{path.name}: {one_sentence(error)}"
    _loaded_runs()[str(path)] = (fingerprint, run, problem)
    return run, problem


def scan_all_runs() -> list[RunEntry]:
    """Every run folder under checkpoints/ then runs/, loaded through the cache (listing itself is cheap)."""
    entries = []
    for root, shipped in ((checkpoints_dir(), True), (runs_dir(), False)):
        for path in find_runs(root):
            run, problem = _load_run(path)
            if run is None and _still_training(path):
                problem = "still training: it becomes usable at its first checkpoint"
            entries.append(RunEntry(path, shipped, run, problem))
    return entries


def _still_training(path: Path) -> bool:
    status = read_status(path) or {}
    return status.get("state") in LIVE_STATES


def usable(entries: list[RunEntry]) -> list[RunEntry]:
    return [entry for entry in entries if entry.run is not None]


def featured_run_names() -> list[str]:
    """Run names listed in ``checkpoints/featured.json`` (the pair the app opens on); [] when absent or unreadable."""
    try:
        names = json.loads((checkpoints_dir() / FEATURED_FILE).read_text(encoding="utf-8")).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def default_selection(entries: list[RunEntry]) -> list[str]:
    """The featured shipped runs; else the first shipped EC-off / EC-on pair of one dataset and loss; else two runs."""
    candidates = [e for e in usable(entries) if e.shipped] or usable(entries)
    by_name = {e.path.name: e for e in candidates if e.shipped}
    featured = [by_name[name].key for name in featured_run_names() if name in by_name]
    if len(featured) >= 2:
        return featured
    for off in (e for e in candidates if e.run.config.ec_weight == 0):
        for on in (e for e in candidates if e.run.config.ec_weight > 0):
            if (on.run.config.dataset, on.run.config.loss) == (off.run.config.dataset, off.run.config.loss):
                return [off.key, on.key]
    return [e.key for e in candidates[:2]]


def _remember_selection(widget_key: str) -> None:
    st.session_state[SELECTION_KEY] = list(st.session_state[widget_key])


def pick_runs(entries: list[RunEntry], page: str, help_text: str | None = None) -> list[RunEntry]:
    """A multiselect of the usable runs; the choice carries over to the other pages."""
    choices = {e.key: e for e in usable(entries)}
    remembered = [key for key in st.session_state.get(SELECTION_KEY, []) if key in choices]
    widget_key = f"runs_{page}"
    chosen = st.multiselect(
        "Runs",
        options=list(choices),
        default=remembered or default_selection(entries),
        format_func=lambda key: choices[key].label,
        key=widget_key,
        on_change=_remember_selection,
        args=(widget_key,),
        help=help_text
        or "Runs from checkpoints/ (shipped) and runs/ (yours). The first one is the reference for differences.",
        placeholder="Choose one or more runs",
    )
    return [choices[key] for key in chosen]


def choose_runs(page: str) -> list[RunEntry]:
    """The run picker every page opens with: runs found, the user's choice, the unusable ones listed.

    Returns [] (after saying what to do) when nothing is chosen.
    """
    entries = scan_all_runs()
    require_runs(entries)
    chosen = pick_runs(entries, page)
    show_unusable(entries)
    if not chosen:
        st.info("Choose at least one run above.")
    return chosen


def require_runs(entries: list[RunEntry]) -> None:
    """Stop the page with directions when there is no usable run at all; say so when only shipped runs are missing."""
    if any(entry.shipped for entry in usable(entries)):
        return
    if usable(entries):
        st.info(
            f"No shipped runs in `{shown_path(checkpoints_dir())}/` (missing or empty), so the EC off / EC on "
            f"comparison it normally opens on is not available; showing your runs from `{shown_path(runs_dir())}/`."
        )
        return
    st.info(
        f"No usable runs yet. Shipped runs are read from `{shown_path(checkpoints_dir())}/` and your own from "
        f"`{shown_path(runs_dir())}/`, and both are empty or missing. Train one on the **Train** page "
        "(a digits run takes under a minute), or from a shell: "
        "`python -m ecaml train --dataset digits --ec-weight 0.13 --out runs/digits-ec-on`."
    )
    st.page_link("views/train.py", label="Go to the Train page", icon=":material/model_training:")
    show_unusable(entries)
    st.stop()


def show_unusable(entries: list[RunEntry]) -> None:
    """List the run folders that cannot be used, each with its one-line reason; the others stay usable."""
    broken = [entry for entry in entries if entry.run is None]
    if not broken:
        return
    with st.expander(f"{len(broken)} run folder(s) cannot be used", icon=":material/warning:"):
        for entry in broken:
            st.markdown(f"- `{shown_path(entry.path)}`: {entry.problem}")


def same_data(chosen: list[RunEntry]) -> list[RunEntry]:
    """The runs trained on the same images as the first one."""

    def data_of(entry: RunEntry) -> tuple:
        config = entry.run.config
        return (config.dataset, config.data_root, config.val_classes, config.split_seed)

    return [entry for entry in chosen if data_of(entry) == data_of(chosen[0])]


def same_data_only(chosen: list[RunEntry], consequence: str) -> list[RunEntry]:
    """The runs trained on the same images as the first one; any other is named in a warning ending in ``consequence``.

    Pages that put runs side by side image for image (aligned maps, one query's neighbours) need this.
    """
    kept = same_data(chosen)
    left_out = [entry.name for entry in chosen if entry not in kept]
    if left_out:
        st.warning(f"Left out {', '.join(left_out)}: trained on other data than {chosen[0].name}, {consequence}.")
    return kept


def colour_of(position: int) -> str:
    return RUN_COLOURS[position % len(RUN_COLOURS)]


def panels(count: int, per_row: int = 3) -> list:
    """``count`` equally wide containers, ``per_row`` to a row: one panel per run, lined up across rows."""
    width = max(1, min(per_row, count))
    containers = []
    for start in range(0, count, width):
        containers += st.columns(width)[: count - start]
    return containers


# ----------------------------------------------------------------------------- data and pictures


@st.cache_resource(max_entries=8, show_spinner=False)
def _split(dataset: str, data_root: str | None, val_classes: float, split_seed: int):
    return load_split(dataset, data_root, val_classes, split_seed)


def split_of(run: Run):
    """The run's class split (its images and class names), loaded once per dataset."""
    config = run.config
    return _split(config.dataset, config.data_root, config.val_classes, config.split_seed)


def enlarged(image: Image.Image, size: int) -> Image.Image:
    """``image`` scaled so its longer side is ``size`` pixels; tiny images keep crisp pixels."""
    width, height = image.size
    scale = size / max(width, height)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample)


def framed(image: Image.Image, verdict: bool | None, size: int, border: int = 5) -> Image.Image:
    """A thumbnail with a green (right class), red (wrong class) or grey (unknown) frame."""
    picture = enlarged(image, size).convert("RGB")
    return ImageOps.expand(picture, border=border, fill=VERDICT_COLOURS[verdict])


# ----------------------------------------------------------------------------- the training job


def job_manager() -> JobManager:
    """The manager of the runs folder's one training job; it keeps its state in that folder, so any instance will do."""
    return JobManager(runs_dir())


def current_job() -> Path | None:
    """The run directory of the job training now, or None."""
    try:
        return job_manager().current()
    except USER_ERRORS as error:
        LOG.warning("cannot read the training job: %s", error)
        return None


def job_progress(run_dir: Path):
    try:
        return job_manager().progress(run_dir)
    except USER_ERRORS as error:
        LOG.warning("cannot read the progress of %s: %s", run_dir, error)
        return None


def show_training_in_sidebar() -> None:
    """A small progress bar in the sidebar while a job trains, refreshed every two seconds."""
    run_dir = current_job()
    progress = job_progress(run_dir) if run_dir else None
    if progress is None or progress.state not in LIVE_STATES:
        return
    with st.sidebar:
        _sidebar_progress(str(run_dir))


@st.fragment(run_every=2.0)
def _sidebar_progress(run_dir: str) -> None:
    progress = job_progress(Path(run_dir))
    if progress is None or progress.state not in LIVE_STATES:
        st.rerun()  # the job ended: redraw the whole page once, without this refresher
    st.caption(f"Training **{Path(run_dir).name}**")
    st.progress(progress_fraction(progress), text=progress_text(progress))


def progress_fraction(progress) -> float:
    total = progress.total_steps or 0
    return min(1.0, progress.step / total) if total else 0.0


def progress_text(progress) -> str:
    if progress.state == "starting" or not progress.total_steps:
        return "starting: loading the libraries and the data…"
    return f"step {progress.step:,} of {progress.total_steps:,}"


# ----------------------------------------------------------------------------- projections in the background

# The projection the Embeddings page shows (with method "umap" or "pca"); a warm-up must compute exactly this one.
PROJECTION = {"part": "unseen", "aligned": True, "seed": 0, "max_points": 3000}
MAX_FINISHED_JOBS = 16


@dataclass
class ProjectionJob:
    """A projection being computed (and cached on disk) by a background thread; the page polls it."""

    run_names: list[str]
    method: str
    started: float = field(default_factory=time.monotonic)
    error: Exception | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@st.cache_resource(show_spinner=False)
def _projection_jobs() -> dict[tuple, ProjectionJob]:
    """Per process: job key -> its latest job, shared by every session (the disk cache is shared too)."""
    return {}


_jobs_lock = threading.Lock()


def projection_job_key(chosen: list[RunEntry], method: str) -> tuple:
    """Which projection a job computes: the runs (their files as they are now), the method and the cache."""
    return (method, str(cache_dir()), tuple((entry.key, run_fingerprint(entry.path)) for entry in chosen))


def projection_job(chosen: list[RunEntry], method: str) -> ProjectionJob | None:
    return projection_job_by_key(projection_job_key(chosen, method))


def projection_job_by_key(key: tuple) -> ProjectionJob | None:
    return _projection_jobs().get(key)


def forget_projection_job(chosen: list[RunEntry], method: str) -> None:
    with _jobs_lock:
        _projection_jobs().pop(projection_job_key(chosen, method), None)


def project_in_background(chosen: list[RunEntry], method: str) -> ProjectionJob:
    """The job computing this projection into the disk cache: the one already known, else a thread started now."""
    key = projection_job_key(chosen, method)
    with _jobs_lock:
        jobs = _projection_jobs()
        if key in jobs:
            return jobs[key]
        for old in [k for k, job in jobs.items() if not job.running][: max(0, len(jobs) - MAX_FINISHED_JOBS)]:
            del jobs[old]
        job = ProjectionJob([entry.name for entry in chosen], method)
        job.thread = threading.Thread(
            target=_compute_projection,
            args=(job, [entry.run for entry in chosen], cache_dir()),
            name=f"ecaml-{method}-projection",
            daemon=True,  # never holds up the server's exit
        )
        job.thread.start()  # before it is listed: a listed job that is not running has ended
        jobs[key] = job
        return job


def _compute_projection(job: ProjectionJob, runs: list[Run], cache: Path) -> None:
    """The body of a background job: never raises, so the thread cannot take anything down; failures are logged."""
    try:
        _lower_thread_priority()
        from ecaml.projection import warm_projection_cache  # slow first import (scikit-learn, umap): off the page

        computed = warm_projection_cache(runs, method=job.method, cache_dir=cache, **PROJECTION)
        LOG.info(
            "%s projection of %s %s in %.1f s",
            job.method, ", ".join(job.run_names), "computed and cached" if computed else "was already cached",
            job.seconds,
        )
    except Exception as error:  # noqa: BLE001 - a background thread must never take the app down
        job.error = error
        LOG.exception("computing the %s projection of %s in the background failed", job.method, job.run_names)


def _lower_thread_priority() -> None:
    """Let the pages' own threads go first on a busy CPU (Linux: a nice value per thread); elsewhere nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def warm_projection_setting() -> str | None:
    """The method the start-up warm-up computes, or None when ``ECAML_WARM_CACHE`` turns it off."""
    value = os.environ.get(WARM_CACHE_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return None
    return "pca" if value == "pca" else "umap"


def start_projection_warmup() -> ProjectionJob | None:
    """Once per server process (and cache folder): project the default pair in the background, as Embeddings shows it.

    Called by main.py after the first page has run, so the aligned UMAP (half a minute the first
    time) is usually cached by the time someone opens Embeddings. Off with ``ECAML_WARM_CACHE=0``.
    """
    method = warm_projection_setting()
    if method is None:
        return None
    try:
        return _start_warmup(method, str(cache_dir()), str(checkpoints_dir()), str(runs_dir()))
    except _NothingToWarm:
        return None  # not remembered: the next page load looks again
    except Exception:  # noqa: BLE001 - a warm-up is an optimisation: it must never break a page
        LOG.exception("could not start warming the projection cache")
        return None


class _NothingToWarm(Exception):
    pass


@st.cache_resource(show_spinner=False)
def _start_warmup(method: str, cache: str, checkpoints: str, runs: str) -> ProjectionJob:
    # The folders are arguments only to key the cache: another configuration is another warm-up.
    entries = scan_all_runs()
    by_key = {entry.key: entry for entry in usable(entries)}
    chosen = [by_key[key] for key in default_selection(entries) if key in by_key]
    if not chosen:
        raise _NothingToWarm
    return project_in_background(same_data(chosen), method)
