"""The store: files on disk and nothing above them (no torch model, no dataset, no config).

Atomic writes, kernel locks, the one cache root and confined user paths, and the files of a run directory
(names, bounded readers, safetensors guards, the run lock).
"""
