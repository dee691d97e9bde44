"""The run picker every page opens with, and what a page says when the chosen runs do not fit together."""

from __future__ import annotations

import streamlit as st

from app.locations import checkpoints_dir, runs_dir, shown_path
from app.run_catalog import RunEntry, default_selection, same_data, scan_all_runs, usable


SELECTION_KEY = "selected_run_paths"  # the runs chosen on one page, offered again on the others
# Streamlit caps a multiselect at four and a half rows of tags and scrolls the rest, so with many runs the top row
# is cut in half (the box scrolls to its end, where the typing cursor is). Every chosen run stays in view instead.
ALL_TAGS_SHOWN = (
    '<style>.st-key-{key} [role="group"]:has(> [data-testid="stMultiSelectTagsContainer"])'
    " {{max-height: none;}}</style>"
)


def current_selection(page: str) -> list[str] | None:
    """The run keys chosen on ``page`` (or carried over from another page); None before anything was chosen."""
    chosen = st.session_state.get(f"runs_{page}", st.session_state.get(SELECTION_KEY))
    return None if chosen is None else list(chosen)


def open_runs_on(page: str, selection: list[str]) -> None:
    """Switch to ``page`` ("compare", "embeddings", "retrieval") with the runs ``selection`` (their keys) chosen."""
    st.session_state[SELECTION_KEY] = list(selection)
    st.session_state.pop(f"runs_{page}", None)  # the page's own picker state would win over the selection
    st.switch_page(f"views/{page}.py")


def _remember_selection(widget_key: str) -> None:
    st.session_state[SELECTION_KEY] = list(st.session_state[widget_key])


def pick_runs(entries: list[RunEntry], page: str, help_text: str | None = None) -> list[RunEntry]:
    """A multiselect of the usable runs; the choice carries over to the other pages."""
    choices = {e.key: e for e in usable(entries)}
    remembered = [key for key in st.session_state.get(SELECTION_KEY, []) if key in choices]
    widget_key = f"runs_{page}"
    st.html(ALL_TAGS_SHOWN.format(key=widget_key))
    chosen = st.multiselect(
        "Runs",
        options=list(choices),
        default=remembered or default_selection(entries),
        format_func=lambda key: choices[key].label,
        key=widget_key,
        on_change=_remember_selection,
        args=(widget_key,),
        help=help_text
        or "Runs from checkpoints/ (shipped) and runs/ (yours). Differences are measured against the baseline "
        "chosen below, and only between runs of the same data, split and base loss.",
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


def same_data_only(chosen: list[RunEntry], consequence: str) -> list[RunEntry]:
    """The runs trained on the same images as the first one; any other is named in a warning ending in ``consequence``.

    Pages that put runs side by side image for image (aligned maps, one query's neighbours) need this.
    """
    kept = same_data(chosen)
    left_out = [entry.name for entry in chosen if entry not in kept]
    if left_out:
        st.warning(f"Left out {', '.join(left_out)}: trained on other data than {chosen[0].name}, {consequence}.")
    return kept
