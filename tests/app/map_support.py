"""Reading the embedding map component (app/embedding_map.py) as a page sent it, and waiting for background jobs."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from app import background_jobs

JOB_TIMEOUT_S = 180


@dataclass
class MapArgs:
    args: dict
    arrays: dict[str, bytes]

    @property
    def titles(self) -> list[str]:
        return [panel["title"] for panel in self.args["panels"]]

    def ints(self, name: str) -> np.ndarray:
        return np.frombuffer(self.arrays[name], dtype=np.int32)

    def frames(self, panel: int) -> np.ndarray:
        """[frames, N, 2] coordinates of one panel."""
        count = len(self.ints("labels"))
        return np.frombuffer(self.arrays[f"coords_{panel}"], dtype=np.float32).reshape(-1, count, 2)


def maps(app) -> list[MapArgs]:
    found = []
    for element in app.get("component_instance"):
        proto = element.proto
        if proto.component_name.endswith("embedding_map"):
            found.append(MapArgs(json.loads(proto.json_args), {a.key: a.bytes for a in proto.special_args}))
    return found


def finish_background_jobs() -> None:
    """Wait for every background job of this process to end (what the pages' polling fragments wait for)."""
    for job in list(background_jobs._jobs().values()):
        if job.thread is not None:
            job.thread.join(timeout=JOB_TIMEOUT_S)
            assert not job.running, f"{job.label} did not finish in time"


def open_ready(open_page, page: str, state: dict | None = None):
    """The page once the background jobs it started (embeddings, thumbnails) have ended and it has rerun."""
    app = open_page(page, state)
    for _ in range(3):  # embeddings first, then the jobs the next run starts (thumbnails, a UMAP asked for)
        finish_background_jobs()
        app.run()
    return app
