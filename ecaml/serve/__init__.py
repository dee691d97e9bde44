"""Serving code: what the app and the CLI read and bring in (imports of vectors and weights made elsewhere)."""
