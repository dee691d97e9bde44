#!/usr/bin/env python
"""Run every benchmark: print a table, then, as the last line, one JSON object of the headline figures.

    python benchmarks/run.py            # full sizes (SOP's test shape, the 70,000-image folder, ...)
    python benchmarks/run.py --quick    # smaller sizes, a few minutes
    python benchmarks/run.py --tiny     # a smoke test of every benchmark (CI); figures meaningless

Each benchmark is a module here with ``measure(scale) -> dict`` and ``summary(result)``
(rows of the table), also runnable alone (``python benchmarks/eval_speed.py --quick``).
``--json PATH`` writes every benchmark's full result as well; ``--only`` runs a subset.

The last line's keys: ``ec_overhead`` (step time EC on / off: smallcnn, GoogLeNet at 227 px
with 65 x 2 batches), ``eval_speedup_vs_pml``, ``eval_metrics_match``, ``eval_vs_floor``,
``deep_eval_s``, ``retrieval_p95_ms``, ``umap_warm_s``, ``train_images_per_s``,
``loader_images_per_s``, with ``scale`` and ``machine``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

import torch  # noqa: E402

import app_speed  # noqa: E402
import deep_eval  # noqa: E402
import ec_overhead  # noqa: E402
import eval_speed  # noqa: E402
import loader  # noqa: E402

BENCHMARKS = {
    "eval_speed": eval_speed,
    "deep_eval": deep_eval,
    "ec_overhead": ec_overhead,
    "loader": loader,
    "app_speed": app_speed,
}


def headline(results: dict, scale: str) -> dict:
    """The figures the README quotes, from the benchmarks that ran (None for the others)."""
    def get(name, *keys):
        value = results.get(name)
        for key in keys:
            if value is None:
                return None
            value = value[key]
        return value

    ec = results.get("ec_overhead")
    loader_result = results.get("loader")
    return {
        "scale": scale,
        "ec_overhead": None if ec is None else {
            backbone: {"ratio_on_off": entry["sampled"]["ratio_to_off_median"],
                       "ms_off": entry["off"]["ms_per_step_median"], "ms_on": entry["sampled"]["ms_per_step_median"],
                       "batch_shape": entry["batch_shape"]}
            for backbone, entry in ec.items()},
        "eval_speedup_vs_pml": get("eval_speed", "speedup_vs_pml"),
        "eval_metrics_match": get("eval_speed", "metrics_match"),
        "eval_vs_floor": None if "eval_speed" not in results else {
            "search": results["eval_speed"]["search_vs_floor"], "total": results["eval_speed"]["total_vs_floor"]},
        "eval_shape": get("eval_speed", "shape"),
        "deep_eval_s": get("deep_eval", "final_eval_s"),
        "deep_eval_metrics_match": get("deep_eval", "metrics_match_pml"),
        "retrieval_p95_ms": get("app_speed", "retrieval", "by_index_p95_ms"),
        "umap_warm_s": get("app_speed", "umap_warm_s"),
        "train_images_per_s": get("app_speed", "train", "images_per_s"),
        "loader_images_per_s": None if loader_result is None else {
            "pipeline": loader_result["pipeline_images_per_s_workers"],
            "pipeline_no_workers": loader_result["pipeline_images_per_s_0_workers"],
            "model": loader_result["model_images_per_s"], "limited_by": loader_result["limited_by"]},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="scale", help="smaller sizes")
    size.add_argument("--tiny", action="store_const", const="tiny", dest="scale", help="smoke-test sizes (CI)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument("--json", help="also write every benchmark's full result to this file")
    parser.set_defaults(scale="full")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads()
    results, rows, timings = {}, [("benchmark", "figure", "note")], {}
    for name in args.only or BENCHMARKS:
        started = time.perf_counter()
        results[name] = BENCHMARKS[name].measure(args.scale)
        timings[name] = time.perf_counter() - started
        torch.set_num_threads(threads)  # a Trainer may have changed it; every benchmark starts alike
        rows += BENCHMARKS[name].summary(results[name])
        print(f"[{name} done in {timings[name]:.0f} s]", file=sys.stderr, flush=True)
    print(table(rows))
    summary = {**headline(results, args.scale), "benchmark_seconds": timings, "machine": machine()}
    if args.json:
        Path(args.json).write_text(json.dumps({"headline": summary, "results": results}, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
