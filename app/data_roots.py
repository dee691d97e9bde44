"""The folders the app may read training inputs from: image folders, benchmark folders and initial weights.

Every path a page accepts (the form's data root, a twin's data root and weights, whatever a run's config names)
goes through ``confine_config`` before a job sees it. The default data folder (``data/``, or ``ECAML_DATA_DIR``)
is created on first use; whoever runs the server can allow more folders from the Train page (kept in the runs
folder, ``.allowed_data_roots.json``). A read-only server allows nothing to be added and starts no job anyway.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import streamlit as st

from app import errors, locations
from app.deployment import read_only
from ecaml.config import TrainConfig
from ecaml.store.atomic import atomic_write_json
from ecaml.store.paths import PathError, confine

SETTINGS_NAME = ".allowed_data_roots.json"
NEW_ROOT_KEY, MESSAGE_KEY = "data_root_new", "data_root_message"


def settings_path() -> Path:
    return locations.runs_dir() / SETTINGS_NAME


def added_roots() -> list[Path]:
    """The folders allowed from the page (a damaged settings file allows nothing more)."""
    try:
        listed = json.loads(settings_path().read_text())["roots"]
        return [Path(root) for root in listed if isinstance(root, str) and Path(root).is_absolute()]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def allowed_roots() -> list[Path]:
    """The default data folder first, then the added ones."""
    return [locations.data_dir(), *(root for root in added_roots() if root != locations.data_dir())]


def ensure_data_dir() -> Path:
    """The default data folder, created when missing (a fresh clone has none)."""
    folder = locations.data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_root(text: str) -> Path:
    """Allow one more folder: an existing absolute folder, not the filesystem's root. ValueError (one line) else."""
    if read_only():
        raise PathError("this server is read-only: no folder can be allowed")
    folder = Path(text.strip()).expanduser()
    if not text.strip() or not folder.is_absolute():
        raise PathError(f"give the folder's absolute path, e.g. {Path.home() / 'datasets'}")
    folder = folder.resolve()
    if not folder.is_dir():
        raise PathError(f"{folder} is not a folder")
    if folder == Path(folder.anchor):
        raise PathError("the filesystem's root would allow every file: allow a narrower folder")
    roots = [root for root in added_roots() if root != folder] + [folder]
    locations.runs_dir().mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings_path(), {"roots": [str(root) for root in roots]})
    return folder


def remove_root(folder: Path) -> None:
    roots = [root for root in added_roots() if root != Path(folder)]
    atomic_write_json(settings_path(), {"roots": [str(root) for root in roots]})


def confine_config(config: TrainConfig) -> TrainConfig:
    """The config with its data root inside an allowed folder and its initial weights inside an allowed folder, the
    runs or the shipped checkpoints (all resolved); PathError naming the path otherwise. Relative data roots are
    taken inside the default data folder."""
    values = {}
    if config.data_root:
        values["data_root"] = str(confine(config.data_root, allowed_roots(), base=locations.data_dir()))
    if config.weights_path:
        roots = [*allowed_roots(), locations.runs_dir(), locations.checkpoints_dir()]
        values["weights_path"] = str(confine(config.weights_path, roots, base=locations.data_dir()))
    return dataclasses.replace(config, **values)


def show_roots_panel() -> None:
    """The allowed folders, and a way to allow another one or take one back (not on a read-only server)."""
    if read_only():
        return
    data_dir = ensure_data_dir()
    with st.expander("Folders the app may read data from"):
        st.caption("Image folders, benchmark folders and initial weights must lie inside one of these; a data root "
                   f"you type is taken inside `{locations.shown_path(data_dir)}/` unless it is absolute.")
        st.markdown(f"- `{data_dir}` (the default data folder)")
        for index, root in enumerate(added_roots()):
            line = st.columns([6, 1], vertical_alignment="center")
            line[0].markdown(f"- `{root}`")
            line[1].button("Remove", key=f"data_root_remove_{index}", on_click=remove_root, args=(root,))
        adding = st.columns([6, 1], vertical_alignment="bottom")
        adding[0].text_input("Allow another folder (absolute path)", key=NEW_ROOT_KEY,
                             placeholder=str(Path.home() / "datasets"))
        adding[1].button("Allow", key="data_root_add", on_click=_allow_typed_folder)
        kind, message = st.session_state.pop(MESSAGE_KEY, (None, None))
        if kind is not None:
            (st.success if kind == "success" else st.error)(message)


def _allow_typed_folder() -> None:
    """The Allow button's callback: runs before the page redraws, so the list below already holds the new folder."""
    try:
        added = add_root(st.session_state.get(NEW_ROOT_KEY) or "")
        st.session_state[MESSAGE_KEY] = ("success", f"The app may now read data from `{added}`.")
    except errors.USER_ERRORS as error:
        st.session_state[MESSAGE_KEY] = ("error", f"Could not allow this folder: {errors.one_sentence(error)}")
