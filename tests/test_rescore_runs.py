"""scripts/rescore_runs.py: a run's metrics re-computed from its weights, nothing else in its files touched."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from rescore_runs import rescore  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "digits-triplet-ec1-seed0"


def _unseen_evals(history: str) -> list[int]:
    records = [json.loads(line) for line in history.splitlines()]
    return [i for i, r in enumerate(records) if r.get("kind") == "eval" and r.get("split") == "unseen"]


def test_rescore_brings_stale_metrics_back_to_what_the_weights_give(tmp_path):
    run = tmp_path / SHIPPED.name
    shutil.copytree(SHIPPED, run)
    truth = json.loads((SHIPPED / "metrics.json").read_text())  # shipped runs match today's evaluator
    stale = {**truth, "nmi": truth["nmi"] + 0.05, "map@r": truth["map@r"] - 0.01}
    (run / "metrics.json").write_text(json.dumps(stale))
    lines = (SHIPPED / "history.jsonl").read_text().splitlines()
    last = _unseen_evals("\n".join(lines))[-1]
    lines[last] = json.dumps({**json.loads(lines[last]), **stale})
    (run / "history.jsonl").write_text("\n".join(lines) + "\n")

    changed = rescore(run)

    assert set(changed) == {"nmi", "map@r"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == truth
    rescored_lines = (run / "history.jsonl").read_text().splitlines()
    assert len(rescored_lines) == len(lines)
    assert {k: json.loads(rescored_lines[last])[k] for k in truth} == truth
    untouched = [i for i in range(len(lines)) if i != last]
    assert [rescored_lines[i] for i in untouched] == [lines[i] for i in untouched]
