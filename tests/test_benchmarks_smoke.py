"""Smoke test of the benchmark suite: ``benchmarks/run.py --tiny`` runs every benchmark and ends with its JSON line.

Timings at tiny sizes mean nothing and are not checked; what is checked is that every
benchmark runs through the library as it is, and that the last line carries every key
the README quotes, with values of the right kind.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("ec_overhead", "eval_speedup_vs_pml", "eval_metrics_match", "eval_vs_floor", "retrieval_p95_ms", "umap_warm_s",
        "train_images_per_s", "loader_images_per_s", "deep_eval_s")


def test_suite_runs_tiny_and_prints_the_headline_json_last(tmp_path):
    env = {**os.environ, "ECAML_BENCH_DIR": str(tmp_path / "bench"), "ECAML_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--tiny", "--json", str(tmp_path / "all.json")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    headline = json.loads(lines[-1])
    for key in KEYS:
        assert headline[key] is not None, key
    assert headline["scale"] == "tiny"
    assert set(headline["ec_overhead"]) == {"smallcnn", "googlenet"}
    for entry in headline["ec_overhead"].values():
        assert entry["ratio_on_off"] > 0 and entry["ms_off"] > 0
    assert headline["eval_metrics_match"] is True and headline["deep_eval_metrics_match"] is True
    for value in (headline["eval_speedup_vs_pml"], headline["retrieval_p95_ms"], headline["umap_warm_s"],
                  headline["train_images_per_s"], headline["loader_images_per_s"]["model"],
                  headline["loader_images_per_s"]["pipeline"], headline["eval_vs_floor"]["search"]):
        assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert headline["loader_images_per_s"]["limited_by"] in ("input pipeline", "model")
    # The table came before, one row per figure, and the full results went to --json.
    assert any(line.startswith("eval: speed-up vs pml") for line in lines[:-1])
    assert set(json.loads((tmp_path / "all.json").read_text())["results"]) == {
        "eval_speed", "deep_eval", "ec_overhead", "loader", "app_speed"}
