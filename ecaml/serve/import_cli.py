"""`python -m ecaml import embeddings FILE --out RUN` and `python -m ecaml import model ...` (flags and commands).

Kept apart from ``ecaml.cli`` so that its parser only gains one line; failures
are ``ImportInputError`` (a ValueError), which the CLI prints as one line.
"""

from __future__ import annotations

import argparse


def add_import(commands) -> None:
    parser = commands.add_parser("import", help="import embeddings or a model made elsewhere as a run directory",
                                 description="Bring your own: vectors (.npz / .parquet) or torchvision weights.")
    kinds = parser.add_subparsers(dest="import_kind", required=True, parser_class=type(parser),
                                  help="embeddings (vectors made elsewhere) or model (torchvision weights)")
    embeddings = kinds.add_parser(
        "embeddings", help="a .npz or .parquet of embeddings [N, D] + labels [N] (+ split, paths)",
        description="Write an imported run: arrays embeddings (float [N, D]), labels (int or str [N]), optional "
                    "split (seen / unseen / val) and paths (image files under --image-root). Its metrics.json is "
                    "our evaluator's on the unseen part (all rows without a split).")
    embeddings.add_argument("file", help=".npz or .parquet file")
    embeddings.add_argument("--out", required=True, help="the new run directory (must not exist)")
    embeddings.add_argument("--image-root", help="folder the 'paths' are relative to (thumbnails)")
    embeddings.add_argument("--same-items-as", metavar="RUN",
                            help="a trained run whose unseen images the rows are (matched by path, else by order and "
                                 "labels, as `ecaml embed RUN --split unseen` writes them): pages align the two")
    embeddings.add_argument("--recall-ks", default="1,2,4,8", help="Recall@K list (default 1,2,4,8; SOP: 1,10,100,1000)")
    model = kinds.add_parser(
        "model", help="a torchvision architecture's state dict (.safetensors) with an optional linear head",
        description="Write a run of --arch with the file's weights (a linear embedding layer under head., embedder. "
                    "or fc. of --head-dim outputs; without --head-dim the pooled features are the embedding), "
                    "scored on the data set's unseen classes. .pt/.pth files are refused: we never unpickle.")
    model.add_argument("--arch", required=True, help="torchvision architecture (resnet18, resnet50, googlenet, efficientnet_b0, convnext_tiny, vit_b_16)")
    model.add_argument("--weights", required=True, help=".safetensors state dict")
    model.add_argument("--head-dim", type=int, help="outputs of the file's linear embedding layer")
    model.add_argument("--dataset", required=True, help="the data set to embed (as for train)")
    model.add_argument("--data-root", help="its folder (folder datasets and benchmarks)")
    model.add_argument("--image-size", type=int, help="input size in pixels (default 224)")
    model.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    model.add_argument("--out", required=True, help="the new run directory (must not exist)")


def command_import(args: argparse.Namespace) -> int:
    from ecaml.serve.imports import import_embeddings, summary

    if args.import_kind == "model":
        from ecaml.serve.import_model import import_model

        out = import_model(args.arch, args.weights, args.dataset, args.out, head_dim=args.head_dim,
                           data_root=args.data_root, image_size=args.image_size, device=args.device)
        print(f"imported {args.arch} weights from {args.weights} into {out}")
        return 0
    ks = _recall_ks(args.recall_ks)
    out = import_embeddings(args.file, args.out, image_root=args.image_root, recall_ks=ks, same_items_as=args.same_items_as)
    print(summary(out))
    return 0


def _recall_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ValueError(f"--recall-ks must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError("--recall-ks must be positive integers")
    return ks
