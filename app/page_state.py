"""Session-state keys that one part of the app sets for a page, so that shared code never imports a page."""

from __future__ import annotations

EMBEDDINGS_VIEW_KEY = "embeddings_view"  # which view the Embeddings page opens on
MAP_VIEW = "map"
FILM_VIEW = "film"
