"""Which runs the app opens on."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from app import run_catalog


def entry(root: Path, name: str, dataset: str, loss: str, ec_weight: float) -> run_catalog.RunEntry:
    config = SimpleNamespace(dataset=dataset, loss=loss, ec_weight=ec_weight)
    return run_catalog.RunEntry(root / name, shipped=True, run=SimpleNamespace(config=config))


def shipped(root: Path) -> list[run_catalog.RunEntry]:
    return [
        entry(root, "digits-binomial-ec0.13-seed0", "digits", "binomial", 0.13),
        entry(root, "digits-npair-ec0-seed0", "digits", "npair", 0.0),
        entry(root, "digits-triplet-ec0-seed0", "digits", "triplet", 0.0),
        entry(root, "digits-triplet-ec0.6-seed0", "digits", "triplet", 0.6),
    ]


def names(keys: list[str]) -> list[str]:
    return [Path(key).name for key in keys]


def test_the_featured_pair_is_opened_when_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(tmp_path))
    (tmp_path / "featured.json").write_text(json.dumps({"runs": ["digits-triplet-ec0-seed0", "digits-triplet-ec0.6-seed0"]}))
    assert names(run_catalog.default_selection(shipped(tmp_path))) == ["digits-triplet-ec0-seed0", "digits-triplet-ec0.6-seed0"]


def test_without_a_featured_file_off_and_on_share_dataset_and_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(tmp_path))
    # The first EC-off run (npair) has no EC-on partner; the triplet pair is the first that matches.
    assert names(run_catalog.default_selection(shipped(tmp_path))) == ["digits-triplet-ec0-seed0", "digits-triplet-ec0.6-seed0"]


def test_a_broken_featured_file_or_missing_runs_fall_back(tmp_path, monkeypatch):
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(tmp_path))
    (tmp_path / "featured.json").write_text("{ not json")
    assert len(run_catalog.default_selection(shipped(tmp_path))) == 2
    (tmp_path / "featured.json").write_text(json.dumps({"runs": ["gone-a", "gone-b"]}))
    assert names(run_catalog.default_selection(shipped(tmp_path))) == ["digits-triplet-ec0-seed0", "digits-triplet-ec0.6-seed0"]
