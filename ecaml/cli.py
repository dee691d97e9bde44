"""`python -m ecaml train | evaluate | compare | embed | import | data fetch`.

Every failure the user can cause (a bad flag value, a missing path, a broken
run) ends in one line on stderr and exit status 2, never a traceback. The parser
reads its choices from ``ecaml.registry``: ``--help`` and a refused flag import
no torch; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ecaml import __version__
from ecaml.config import EVAL_SPLITS, PRESETS, TrainConfig, load_toml, settings
from ecaml.flags import TRAIN_FLAGS
from ecaml.registry import BACKBONES, DATASETS, EC_PAIR_MODES, EC_ROUTES, SPLIT_PARTS
from ecaml.serve.import_cli import add_import, command_import

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Anything to report as one line and exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ecaml", description="Energy Confused Adversarial Metric Learning: train, evaluate, compare.")
    parser.add_argument("--version", action="version", version=f"ecaml {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(commands)
    _add_evaluate(commands)
    _add_compare(commands)
    _add_embed(commands)
    add_import(commands)
    _add_data(commands)
    return parser


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a run directory",
        description="Train on the seen classes, evaluate on the unseen ones, write a run directory. "
        "Settings: built-in defaults < per-dataset defaults < --preset < --config file < flags. Started by "
        "`torchrun --nproc_per_node N -m ecaml train ...`, trains on N processes under DistributedDataParallel "
        "(each takes its own class-balanced batches; process 0 writes the run).",
    )
    train.add_argument("--out", help="new run directory to write (required unless --resume)")
    train.add_argument("--config", help="TOML file of settings (keys as the flags, with underscores)")
    train.add_argument("--resume", metavar="RUN", help="continue RUN from its last complete checkpoint")
    train.add_argument("--preset", choices=list(PRESETS),
                       help="the paper's reference setup for a benchmark (GoogLeNet from ImageNet weights, 512-d, "
                            "256/227 crops, 65 x 2 batches, Adam 1e-5 with 10x head, 10,000 steps, lambda 0.13); "
                            "a --config file and flags override its values")
    named_choices = {"ec_pairs": EC_PAIR_MODES, "ec_route": EC_ROUTES, "dataset": DATASETS, "backbone": list(BACKBONES)}
    for name, (kind, text) in TRAIN_FLAGS.items():
        choices = named_choices.get(name)
        train.add_argument("--" + name.replace("_", "-"), type=kind, help=text, choices=choices, default=None)
    train.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                       help="start from ImageNet weights (local only); --no-pretrained overrides a preset")
    train.add_argument("--ec-gather", action=argparse.BooleanOptionalAction, default=None,
                       help="under torchrun: compute EC over every process's batch (all-gathered) instead of each "
                            "process's own (default off; the EC gradient still reaches only the head)")
    train.add_argument("--keep-checkpoints", action=argparse.BooleanOptionalAction, default=None,
                       help="keep the weights of every checkpoint, not only the last, so each opens as run@step")
    train.add_argument("--loss-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter of the loss, repeatable (e.g. --loss-param margin=0.2)")
    train.add_argument("--recall-ks", help="comma-separated K for Recall@K (default per dataset: 1,2,4,8; "
                       "sop 1,10,100,1000; inshop 1,10,20,30,40,50)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics of a run on a split",
                                   description="Recall@K, NMI, MAP@R and R-Precision of RUN on a class split.")
    _add_run_split_device(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _add_run_split_device(parser: argparse.ArgumentParser) -> None:
    """The arguments of every command that embeds one run's split."""
    parser.add_argument("run", help="run directory")
    parser.add_argument("--split", default="unseen", choices=SPLIT_PARTS,
                        help="which part (default unseen): train, val, seen (train + val classes), seen_test (held-out "
                        "images of the training classes, searched among the training images), unseen (In-Shop: its "
                        "queries searched among its gallery)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


def _add_compare(commands) -> None:
    compare = commands.add_parser("compare", help="metrics of several runs side by side",
                                  description="Unseen-class metrics of each run, and each run's difference from the first.")
    compare.add_argument("runs", nargs="+", help="two or more run directories; the first is the reference")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_embed(commands) -> None:
    embed = commands.add_parser("embed", help="export embeddings to .npz",
                                description="Write arrays embeddings (L2-normalised), labels and indices of a split.")
    _add_run_split_device(embed)
    embed.add_argument("--out", required=True, help="output .npz file")


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="fetch a data set (the one command that uses the network)",
                               description="Data sets that are downloaded only when asked.")
    actions = data.add_subparsers(dest="action", required=True, parser_class=Parser, help="fetch")
    fetch = actions.add_parser("fetch", help="download a data set's files (checksums checked)",
                               description="Download Fashion-MNIST's four idx files with torchvision's downloader "
                               "into ROOT/FashionMNIST/raw/, where --dataset fashion-mnist finds them. Without "
                               "network: apt-get install dataset-fashion-mnist.")
    fetch.add_argument("dataset", choices=["fashion-mnist"])
    fetch.add_argument("--root", help="folder to download into (default: $ECAML_DATA_DIR, else ~/.cache/ecaml/data)")


# ----------------------------------------------------------------------------- commands


def command_train(args: argparse.Namespace) -> int:
    from ecaml.train.launch import resume, train

    overrides = _flag_values(args)
    if args.resume:
        result = resume(args.resume, progress=not args.quiet, epochs=overrides.get("epochs"), max_steps=overrides.get("max_steps"))
    else:
        if not args.out:
            raise UserError("train: --out RUN_DIR is required (or --resume RUN)")
        config = TrainConfig.from_dict(settings(load_toml(args.config) if args.config else {}, overrides)).resolved()
        result = train(config, args.out, progress=not args.quiet)
    if result.state == "completed" and result.metrics is None:
        return 0  # another process of a torchrun run: process 0 evaluates and reports
    if result.state == "stopped":
        print(f"stopped at step {result.steps}; resume with: python -m ecaml train --resume {result.run_dir}")
        return 130
    shown = {"recall@1": "Recall@1", "nmi": "NMI", "map@r": "MAP@R"}  # In-Shop's query/gallery scoring has no NMI
    summary = ", ".join(f"{label} = {result.metrics[key]:.4f}" for key, label in shown.items() if key in result.metrics)
    print(f"{result.run_dir}: {result.steps} steps, unseen {summary}")
    return 0


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    if "eval_splits" in values:
        values["eval_splits"] = _parse_eval_splits(values["eval_splits"])
    for name in ("pretrained", "ec_gather", "keep_checkpoints"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.preset:
        values["preset"] = args.preset
    if args.loss_param:
        values["loss_params"] = dict(_parse_param(item) for item in args.loss_param)
    if args.recall_ks:
        try:
            values["recall_ks"] = [int(k) for k in args.recall_ks.split(",")]
        except ValueError:
            raise UserError("train: --recall-ks takes comma-separated integers, e.g. 1,2,4,8") from None
    return values


def _parse_eval_splits(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if parts == ["none"]:
        return []
    unknown = [part for part in parts if part not in EVAL_SPLITS]
    if unknown or not parts:
        raise UserError(f"train: --eval-splits takes a comma-separated list among {', '.join(EVAL_SPLITS)}, or none; "
                        f"got {text!r}")
    return parts


def _parse_param(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"train: --loss-param takes KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def evaluate_run(run_dir: str, split: str = "unseen", device: str = "auto") -> dict[str, float]:
    """The metrics of one part of a run's split, scored as training scores it (ecaml.eval.evaluate.score_part)."""
    from ecaml.eval.evaluate import pick_device, score_part, split_for
    from ecaml.runs import input_channels, load_run

    run = load_run(run_dir)
    if run.model is None:  # imported vectors: scored as they were stored
        from ecaml.eval.evaluate import score
        from ecaml.serve.embeddings_cache import imported_embeddings

        return score(imported_embeddings(run, split), run.config.recall_ks)
    torch_device = pick_device(device)
    run.model.to(torch_device)
    return score_part(run.model, split_for(run.config), split, run.config, input_channels(run.config), torch_device)


def command_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_run(args.run, args.split, args.device)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.run} ({args.split} classes)")
        for name, value in metrics.items():
            print(f"  {name:<12} {value:.4f}")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from ecaml.runs import load_run

    if len(args.runs) < 2:
        raise UserError("compare: give at least two run directories (the first is the reference)")

    table = {}
    for run_dir in args.runs:
        run = load_run(run_dir)
        table[run_dir] = run.metrics if run.metrics is not None else evaluate_run(run_dir)
    if args.json:
        print(json.dumps(table))
        return 0
    print(format_comparison(table))
    return 0


def format_comparison(table: dict[str, dict[str, float]]) -> str:
    """Metric rows, one column per run, each later run with its difference from the first."""
    names = list(table)
    metrics = list(dict.fromkeys(k for values in table.values() for k in values))
    widths = [max(14, len(Path(n).name) + 2) for n in names]
    lines = ["metric".ljust(12) + "".join(Path(n).name.rjust(w) for n, w in zip(names, widths))]
    reference = table[names[0]]
    for metric in metrics:
        cells = []
        for name, width in zip(names, widths):
            value = table[name].get(metric)
            text = "-" if value is None else f"{value:.4f}"
            if name != names[0] and value is not None and metric in reference:
                text += f" ({value - reference[metric]:+.4f})"
            cells.append(text.rjust(width + (10 if name != names[0] else 0)))
        lines.append(metric.ljust(12) + "".join(cells))
    return "\n".join(lines)


def command_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from ecaml.eval.evaluate import embed_part, pick_device, split_for
    from ecaml.runs import input_channels, load_run
    from ecaml.store.atomic import atomic_write_bytes

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"embed: --out must end in .npz, got {out.name}")
    if not out.parent.is_dir():
        raise UserError(f"embed: folder {out.parent} does not exist")
    run = load_run(args.run)
    if run.model is None:
        raise UserError(f"embed: {run.name} holds imported vectors, not a model; they are its {run.weights_file}")
    device = pick_device(args.device)
    run.model.to(device)
    split = split_for(run.config)
    embeddings = embed_part(run.model, split, args.split, run.config, input_channels(run.config), device)
    arrays = {"embeddings": embeddings.vectors, "labels": embeddings.labels, "indices": embeddings.indices}
    queries, gallery = split.queries_and_gallery(args.split)
    if gallery is not None and args.split != "seen_test":
        # A query/gallery part (In-Shop's unseen): say which rows are the queries, as scoring uses them.
        arrays["is_query"] = np.isin(embeddings.indices, queries)
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    print(f"wrote {len(embeddings.labels)} {args.split} embeddings of size {embeddings.vectors.shape[1]} to {out}")
    return 0


def command_data(args: argparse.Namespace) -> int:
    from ecaml.data.fashion import fetch

    folder = fetch(args.root)
    print(f"Fashion-MNIST is in {folder}: train with --dataset fashion-mnist")
    return 0


COMMANDS = {"train": command_train, "evaluate": command_evaluate, "compare": command_compare, "embed": command_embed,
            "import": command_import, "data": command_data}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UserError as error:
        return report(error, EXIT_USER_ERROR)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """The parsed command, its failures reported as one line (their types come with torch: imported here, not above)."""
    from ecaml.data import DatasetError, ImageError
    from ecaml.models import WeightsError
    from ecaml.store.run_files import RunError
    from ecaml.train.stopping import TrainingError

    try:
        return COMMANDS[args.command](args)
    except (UserError, RunError, DatasetError, ImageError, WeightsError, ValueError, FileNotFoundError) as error:
        return report(error, EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (TrainingError, OSError) as error:  # OSError: a full disk (DiskFullError), a permission, a vanished file
        return report(error, 1)
    except Exception as error:  # noqa: BLE001 - last resort: still one line, with the kind of failure
        return report(error, 1, prefix=f"unexpected {error.__class__.__name__}: ")


def report(error: BaseException, status: int, prefix: str = "") -> int:
    """Print ``error`` as exactly one line on stderr (file names may hold newlines) and return ``status``."""
    text = " ".join(str(error).split()) or error.__class__.__name__
    print(f"error: {prefix}{text}", file=sys.stderr)
    return status
