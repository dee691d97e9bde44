"""The parts of scripts/study.py, one concern a module.

plan        what a study trains: datasets, losses, grids, seeds, run names and configs
runner      training the runs (resumable, ``jobs`` at a time) and the selection on validation classes
statistics  per-run records, summaries, paired differences, Holm's adjustment, merging a re-made subset
report      study.md, rendered from study.json alone
shipping    the seed-0 pairs copied into checkpoints/, and featured.json (chosen on validation classes)

Everything the study writes where the app reads goes through ecaml.store.atomic's writes.
"""
