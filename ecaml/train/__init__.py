"""Training: the loop (``trainer``), its checkpoints, history lines, stopping, entry points and the film recorder."""
