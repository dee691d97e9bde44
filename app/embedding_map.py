"""The embedding map: a small custom component (app/map_frontend) drawing every point of every run with WebGL2.

Why a component of our own rather than Plotly, Bokeh or deck.gl:
* Plotly (what the page used) draws one trace per class and sends a selection back
  to the server for each click; hover shows text only. At 60,000 points x 2 panels
  its SVG/scattergl mix and per-class legend become the bottleneck.
* Bokeh (WebGL + HTML tooltips with images, shared ColumnDataSource selections) would
  fit, but its Streamlit bridge ``streamlit-bokeh`` pins Bokeh versions and loads
  BokehJS per chart; and image tooltips need one URL per point.
* deck.gl / regl-scatterplot are excellent but would mean a bundled npm build (hundreds
  of kB of JS) for what is about 500 lines of plain WebGL2 here.
So every panel lives in ONE iframe: hovering or selecting in one panel lights up the
same images in all the others without a server round trip, and only a finished
selection comes back to Python. Hover thumbnails are cut from sprite sheets
(``ecaml.serve.thumbnails``, written by a background job) that the component serves from
its own folder: Streamlit serves a v1 component's files from the folder it is
declared with, so that folder is made under the cache (the frontend files are
copied in beside the sheets). Nothing is fetched from anywhere but this server.
"""

from __future__ import annotations

import filecmp
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st
import streamlit.components.v1 as components

from app import background_jobs
from app.background_jobs import BackgroundJob
from app.errors import LOG
from app.locations import cache_dir
from ecaml.store.atomic import atomic_write_bytes

FRONTEND = Path(__file__).resolve().parent / "map_frontend"
FRONTEND_FILES = ("index.html", "map.js", "map.css")
COMPONENT_FOLDER = "map-component"
THUMBNAILS_FOLDER = "thumbs"
COLOUR_BY_CLASS_UP_TO = 20  # more classes than palette colours: grey, with searched / selected classes coloured


@dataclass
class MapPanel:
    title: str
    frames: list[np.ndarray]  # float32 [N, 2] each: one for a map, one per step for a film
    frame_labels: list[str] = field(default_factory=list)  # a film's: what each frame measures, after the title


@dataclass
class MapData:
    """What every panel shares: row i is the same image in every panel."""

    labels: np.ndarray
    dataset_indices: np.ndarray
    class_names: list[str]
    thumbnail_slots: np.ndarray | None = None  # each row's slot in the sprite sheets, -1 for none
    thumbnails: str | None = None  # the sheets' folder name under the component folder
    frame_steps: list[int] = field(default_factory=list)


def component_root() -> Path:
    """The component's folder under the cache: the frontend files (copied when they differ) and the sheets.

    A cache folder that cannot be written (read-only) falls back to one under the system's temporary folder.
    """
    try:
        return _prepared(cache_dir() / COMPONENT_FOLDER)
    except OSError as error:
        LOG.warning("cannot write the map component into the cache (%s); using the temporary folder", error)
        return _prepared(Path(tempfile.gettempdir()) / f"ecaml-{COMPONENT_FOLDER}-{os.getuid()}")


def _prepared(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in FRONTEND_FILES:
        source, target = FRONTEND / name, root / name
        if not target.is_file() or not filecmp.cmp(source, target, shallow=False):
            atomic_write_bytes(target, source.read_bytes())
    return root


@st.cache_resource(show_spinner=False)
def _component(root: str):
    # One declaration per folder (and so per cache folder): tests and deployments may move the cache.
    return components.declare_component("embedding_map", path=root)


def thumbnails_folder_name(identity: dict) -> str:
    from ecaml.serve.thumbnails import sheets_key

    return f"{THUMBNAILS_FOLDER}/{sheets_key(identity)}"


def thumbnails_in_background(split, part: str, identity: dict) -> tuple[str, BackgroundJob]:
    """The sheets' folder name (relative to the component) and the job writing them (re-attached when running)."""
    name = thumbnails_folder_name(identity)
    folder = component_root() / name

    def work(job: BackgroundJob) -> None:
        from ecaml.serve.thumbnails import write_sheets

        write_sheets(split, part, folder, progress=job.report)

    job = background_jobs.start(thumbnails_job_key(name), f"thumbnails of {identity.get('dataset')}", work)
    return name, job


def thumbnails_job_key(name: str) -> tuple:
    return ("thumbnails", str(component_root() / name))


def embedding_map(
    panels: list[MapPanel],
    data: MapData,
    key: str,
    highlight_classes: list[int] | None = None,
    height: int = 460,
    per_row: int = 2,
    palette: list[tuple[int, int, int]] | None = None,
) -> list[int]:
    """Draw the panels; the rows selected (lasso or click, in any panel), [] when none.

    ``palette``: RGB (0-255) per label instead of the categorical one, for labels that are ordered bins.
    """
    from ecaml.serve.thumbnails import PER_SHEET, SHEET_COLUMNS

    count = len(data.labels)
    arrays = {f"coords_{i}": np.concatenate([np.asarray(f, np.float32).reshape(count, 2) for f in p.frames]).tobytes()
              for i, p in enumerate(panels)}
    slots = data.thumbnail_slots if data.thumbnail_slots is not None else np.full(count, -1)
    value = _component(str(component_root()))(
        key=key,
        default=None,
        data_key=_data_key(panels, data),
        panels=[{"title": p.title, "frame_labels": p.frame_labels} for p in panels],
        labels=np.asarray(data.labels, np.int32).tobytes(),
        dataset_indices=np.asarray(data.dataset_indices, np.int32).tobytes(),
        thumbs=np.asarray(slots, np.int32).tobytes(),
        class_names=list(data.class_names),
        colour_by_class=len(data.class_names) <= COLOUR_BY_CLASS_UP_TO,
        highlight_classes=[int(c) for c in highlight_classes or []],
        thumbnail_url=f"{data.thumbnails}/sheet_{{sheet}}.jpg" if data.thumbnails else None,
        per_sheet=PER_SHEET,
        sheet_columns=SHEET_COLUMNS,
        frame_steps=[int(s) for s in data.frame_steps],
        height=height,
        per_row=per_row,
        palette=[list(map(int, rgb)) for rgb in palette] if palette else None,
        **arrays,
    )
    rows = (value or {}).get("rows") or []
    return [int(row) for row in rows if isinstance(row, int) and 0 <= row < count]


def _data_key(panels: list[MapPanel], data: MapData) -> str:
    """Changes whenever the points do, so the frontend rebuilds its buffers only then (not on every rerun)."""
    import hashlib

    digest = hashlib.sha256()
    for panel in panels:
        digest.update("\n".join([panel.title, *panel.frame_labels]).encode())
        for frame in panel.frames:
            digest.update(np.ascontiguousarray(frame, np.float32).tobytes())
    digest.update(np.asarray(data.dataset_indices, np.int64).tobytes())
    digest.update(np.asarray(data.labels, np.int64).tobytes())  # a map recoloured by other labels is rebuilt
    digest.update(str(data.thumbnails).encode())
    return digest.hexdigest()[:20]
