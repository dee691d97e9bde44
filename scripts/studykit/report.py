"""study.md, rendered from study.json alone (so its numbers are the JSON's)."""

from __future__ import annotations

from typing import Any


def _pm(stat: dict[str, Any], scale: float = 100.0) -> str:
    return f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def _ci(stat: dict[str, Any], scale: float = 100.0) -> str:
    lo, hi = stat["ci95"]
    return f"{stat['mean'] * scale:+.1f} [{lo * scale:+.1f}, {hi * scale:+.1f}]"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(dataset, loss) of every row the study holds, datasets then losses in the settings' order."""
    settings = results["settings"]
    return [(d, loss) for d in settings["datasets"] for loss in settings["losses"] if f"{d}/{loss}" in results["summary"]]


def _made_by(results: dict[str, Any]) -> str:
    timing = results["timing"]
    text = (f"Made by `{results['command']}` (wall time {timing['wall_seconds_total'] / 60:.0f} min"
            + (f" over {timing['invocations']} invocations, the study having been interrupted and resumed"
               if timing.get("invocations", 1) > 1 else "")
            + f", with {timing['jobs']} parallel single-threaded runs on a 2-core CPU shared with other work; "
            f"{timing['run_seconds_total'] / 60:.0f} min of training in all).")
    for remade in results.get("remade", []):
        if remade.get("rescored"):
            text += (f" Rows {', '.join(remade['rows'])} re-scored by `{remade['command']}`: {remade['rescored']}.")
            continue
        text += (f" Rows {', '.join(remade['rows'])} re-made by `{remade['command']}` "
                 f"({remade['timing']['wall_seconds_total'] / 60:.0f} min wall, "
                 f"{remade['timing']['run_seconds_total'] / 60:.0f} min of training, torch "
                 f"{remade['environment']['torch']}); the other rows are the earlier study's.")
    return text + " Every number below is read from `study.json`."


def _run_tables(results: dict[str, Any]) -> list[str]:
    lines = []
    for dataset in dict.fromkeys(d for d, _ in rows(results)):
        lines += [f"### {dataset}", "",
                  "| loss | EC λ | epochs | R@1 | R@2 | R@4 | R@8 | NMI | MAP@R | seen R@1 | gap |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for loss in (loss for d, loss in rows(results) if d == dataset):
            entry = results["summary"][f"{dataset}/{loss}"]
            for side in ("off", "on"):
                stats_ = entry[side]
                weight = "0 (off)" if side == "off" else f"{entry['ec_weight']:g}"
                cells = [_pm(stats_[m]) for m in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")]
                lines.append(f"| {loss} | {weight} | {entry['epochs']} | " + " | ".join(cells)
                             + f" | {_pm(stats_['seen_recall@1'])} | {_pm(stats_['gap_recall@1'])} |")
        lines.append("")
    return lines


def _difference_table(results: dict[str, Any], n: int) -> list[str]:
    comparisons = results.get("comparisons", {})
    lines = [
        "### Paired differences, EC on − off (same seed)",
        "",
        f"Mean difference in percentage points with its 95% t confidence interval (n = {n}, {n - 1} degrees of "
        "freedom) and the paired t-test p-value of R@1 / MAP@R: raw, and adjusted by Holm's method over the "
        f"{comparisons.get('comparisons', '–')} comparisons the table tests ({comparisons.get('family', '')}).",
        "",
        "| dataset | loss | λ | ΔR@1 | ΔR@8 | ΔNMI | ΔMAP@R | Δseen R@1 | p (R@1) | p (MAP@R) | Holm p (R@1) | Holm p (MAP@R) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, loss in rows(results):
        entry = results["summary"][f"{dataset}/{loss}"]
        diff = entry["diff"]
        cells = [_ci(diff[m]) for m in ("recall@1", "recall@8", "nmi", "map@r", "seen_recall@1")]
        ps = [_p(diff[m]["p_value"]) for m in ("recall@1", "map@r")] + [_p(diff[m].get("p_holm")) for m in ("recall@1", "map@r")]
        lines.append(f"| {dataset} | {loss} | {entry['ec_weight']:g} | " + " | ".join(cells + ps) + " |")
    return lines


def _tuning_table(results: dict[str, Any]) -> list[str]:
    settings = results["settings"]
    lines = [
        "",
        "### Tuning on validation classes (never on unseen classes)",
        "",
        "Validation: " + ", ".join(f"{v} seen classes of {d}" for d, v in settings["val_classes"].items())
        + " held out of training, drawn anew for each "
        f"tuning seed ({', '.join(map(str, settings['tune_seeds']))}; the final seeds are different). "
        f"Score: validation MAP@R (%), mean over the tuning seeds. {settings['selection']} Epoch grids: "
        + "; ".join(f"{d} {{{', '.join(map(str, g))}}}" for d, g in settings["epoch_grid"].items())
        + ". EC weight grids: "
        + "; ".join(f"{d} {{{', '.join(f'{w:g}' for w in g)}}}" for d, g in settings["ec_grid"].items())
        + ("" if len({tuple(g) for g in settings["ec_grid"].values()}) == 1 else
           " (glyphs: 3 weights instead of 5, to keep the study near an hour on two shared cores).")
        + " Each tuning seed holds out its own validation classes.",
        "",
        "| dataset | loss | baseline val MAP@R by epochs | chosen epochs | EC val MAP@R by λ (baseline at chosen epochs) | chosen λ |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, loss in rows(results):
        s = results["search"][f"{dataset}/{loss}"]
        ep, wt = s["epochs"], s["ec_weight"]
        ep_cells = ", ".join(f"{e}: {v * 100:.1f}" for e, v in ep["val_map@r_mean"].items())
        wt_cells = ", ".join(f"{w}: {v * 100:.1f}" for w, v in wt["val_map@r_mean"].items())
        lines.append(f"| {dataset} | {loss} | {ep_cells} | **{ep['chosen']}** | {wt_cells} "
                     f"(0: {wt['baseline_val_map@r_mean'] * 100:.1f}) | **{wt['chosen']:g}** |")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """study.md, from study.json alone."""
    settings = results["settings"]
    n = len(settings["final_seeds"])
    lines = [
        "## Study: Energy Confusion on/off, unseen classes",
        "",
        _made_by(results),
        "",
        f"Unseen-class metrics in %, mean ± std over {n} seeds ({', '.join(map(str, settings['final_seeds']))}), "
        "each trained on all seen classes with the epochs and EC weight chosen on validation classes (below). "
        "Seen R@1 is Recall@1 on images of the seen classes held out of training "
        f"({', '.join(f'{d} {k}' for d, k in results.get('seen_test_per_class', {}).items())} a class); "
        "gap = seen R@1 − unseen R@1, new images of known classes against images of new classes.",
        "",
    ]
    lines += _run_tables(results) + _difference_table(results, n) + _tuning_table(results)
    lines += ["", "Per-seed validation scores, the validation classes of each tuning seed and every run's metrics "
              "are in `study.json` (`search`, `runs`).", ""]
    return "\n".join(lines)
