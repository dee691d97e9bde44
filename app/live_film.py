"""The lesson's film while its pair trains: each run's newest frame side by side, growing with the curves.

A background job (``app.background_jobs``) lays out each frame as both runs film it (``ecaml.serve.film.grow_film``:
the same layouts, started from the frame before, as the finished film), so the page only draws the newest one.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app import background_jobs, charts, run_catalog
from app.background_jobs import BackgroundJob
from ecaml.serve.jobs import FINAL_STATES
from ecaml.store.run_files import RunError, read_status

POLL_SECONDS = 1.0
WHOLE_FILM = "whole film"
GIVE_UP_SECONDS = 600.0  # a run killed without a final status: stop watching once its film has not grown this long


def runs_ended(folders: tuple[str, ...]) -> bool:
    return all((read_status(Path(folder)) or {}).get("state") in FINAL_STATES for folder in folders)


def live_film_job(folders: tuple[str, ...]) -> BackgroundJob:
    """The job laying out the lesson's frames as they are filmed (the one already started for these runs, if any)."""

    def work(job: BackgroundJob) -> None:
        import torch

        from ecaml.serve.film import grow_film, read_film

        # One torch thread for this thread alone (the setting is per thread): beside the pair's two training
        # processes, a two-thread layout stalled at every parallel step's barrier. A 896-point frame took 1-22 s
        # and the first frame came at 20-70 s; with one thread 0.4-0.7 s, and every snapshot gets its frame
        # (benchmarks/live_film_pace.py: one thread laid out all 31 frames of the digits lesson, the longest wait
        # 6.1 s; two threads laid out 16 of them).
        torch.set_num_threads(1)
        so_far, grown_at = None, time.monotonic()
        while time.monotonic() - grown_at < GIVE_UP_SECONDS and not background_jobs.SHUTTING_DOWN.is_set():
            ended = runs_ended(folders)  # before reading: the frames read next then include the last one
            try:
                grown = grow_film([read_film(Path(folder)) for folder in folders], so_far)
            except RunError:  # a run folder removed or damaged while it trained: the lesson reports it
                return
            if grown is not so_far:
                so_far, grown_at, job.result = grown, time.monotonic(), grown
            elif ended:
                return
            time.sleep(POLL_SECONDS)

    # Not at a lower priority: the pair's two training processes fill both cores of a small machine, and a
    # yielding thread got almost no time beside them (no frame in two minutes); the film is what the room watches.
    return background_jobs.start(("live film", folders), "the lesson's live film", work, yield_cpu=False)


def lay_out_whole_film(folders: tuple[str, ...]) -> BackgroundJob:
    """The pair's whole film laid out in the background (the job already started for these folders, if any), from
    when both runs have trained their steps: their final evaluation takes a minute on Fashion-MNIST, and the film
    another (22 frames of 2,000 points a run), so the film the lecturer opens next is ready or nearly."""

    def work(job: BackgroundJob) -> None:
        import torch

        from ecaml.serve.film import lay_out_films

        torch.set_num_threads(1)  # beside the pair's two evaluating processes, as the live film (see above)
        job.result = lay_out_films([Path(folder) for folder in folders])

    return background_jobs.start((WHOLE_FILM, folders), "the lesson's whole film", work, yield_cpu=False)


def whole_film_laid_out(folders: tuple[str, ...]):
    """The whole film of ``folders`` as the lesson laid it out, once that job ends (waiting for it rather than
    laying it out twice); None when no such job ran, it failed, or the films have grown since it read them."""
    from ecaml.serve.film import common_steps, read_film

    job = background_jobs.job_by_key((WHOLE_FILM, folders))
    if job is None or job.thread is None:
        return None
    job.thread.join()
    films = [read_film(Path(folder)) for folder in folders]
    if job.result is None or any(film is None for film in films) or job.result.steps != common_steps(films):
        return None
    return job.result


def run_title(folder: str) -> str:
    """"EC off" or "EC on (λ 1)", from the λ tag the lesson puts in its folder names (lesson-…-ec1-<time>)."""
    tag = Path(folder).name.rsplit("-", 2)[0].rsplit("-", 1)[-1]
    try:
        return run_catalog.ec_summary(float(tag.removeprefix("ec")))
    except ValueError:
        return Path(folder).name


def show_live_film(folders: tuple[str, ...]) -> None:
    """The newest frame of each run, titled with its step and what that frame's embeddings score."""
    so_far = live_film_job(folders).result
    if so_far is None:
        st.caption("The film's first frame shows once both runs have filmed their untrained start.")
        return
    step = so_far.steps[-1]
    titles = [f"{run_title(folder)} · step {step:,}: R@1 {100 * scores[-1]['recall@1']:.1f} %, "
              f"MAP@R {100 * scores[-1]['map@r']:.1f} %" for folder, scores in zip(folders, so_far.scores)]
    signature = ("live film", folders, step)
    figure = charts.cached_figure(
        signature, lambda: charts.frames_chart([run[-1] for run in so_far.frames], so_far.labels, titles))
    st.plotly_chart(figure, key="lesson_live_film", width="stretch")
    st.caption(
        f"The film so far: frame {len(so_far.steps)}, the classes neither network trains on, each colour one class. "
        "Each frame is laid out from the one before, as in the finished film."
    )
