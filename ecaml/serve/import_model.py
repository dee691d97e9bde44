"""Importing a model trained elsewhere: a torchvision architecture's state dict (safetensors) plus an optional head.

``import_model(arch, weights, dataset, out, head_dim=...)`` maps the file's
tensors onto our ``EmbeddingNet`` (backbone = the torchvision network without
its classifier, head = the file's linear embedding layer, or the identity when
there is none), checks every name and shape before loading, scores the data
set's unseen classes with our evaluator and writes an ordinary run directory.
Since it holds a model, every page works on it, uploads included.

Only safetensors are read: a ``.pt`` / ``.pth`` file is refused with the one
command that converts it where its owner trusts it (we never unpickle).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ecaml.config import TrainConfig
from ecaml.registry import BACKBONES
from ecaml.runs import expected_shapes, input_channels, write_config
from ecaml.serve.imports import ImportInputError, _check_target, write_run_atomically
from ecaml.store.atomic import atomic_write_bytes, atomic_write_json
from ecaml.store.run_files import (
    HISTORY_FILE,
    METRICS_FILE,
    STATUS_FILE,
    WEIGHTS_FILE,
    RunError,
    open_safetensors,
    save_weights,
)

# Where the linear embedding layer sits in the files people bring, beside the architecture's own classifier slot
# (torchvision fine-tunes replace it: ``fc``, ``classifier.1``, ``heads.head``...; pytorch-metric-learning's
# trunk + embedder save the embedder apart, often under ``embedder.``).
HEAD_PREFIXES = ("head.", "embedder.")
AUXILIARY_PREFIXES = ("aux1.", "aux2.")  # GoogLeNet's auxiliary classifiers: not part of the embedding
# Wrappers' prefixes on every key (DataParallel, pml's trunk, Lightning modules).
WRAPPER_PREFIXES = ("module.", "trunk.", "model.", "backbone.")
IMPORTED_LOSS = "imported"  # what the run's config says of the loss: none of ours trained it


def conversion_line(path: Path) -> str:
    target = path.with_suffix(".safetensors").name
    return (f"python -c \"import torch; from safetensors.torch import save_file; state = torch.load('{path.name}', "
            f"weights_only=True, map_location='cpu'); save_file({{k: v.contiguous() for k, v in state.items()}}, "
            f"'{target}')\"")


def read_state(weights: str | Path) -> dict[str, torch.Tensor]:
    """The file's tensors; ``.pt``/``.pth`` refused with the conversion line, anything else not safetensors refused."""
    weights = Path(weights)
    if weights.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt"):
        raise ImportInputError(f"{weights.name} is a pickle-based torch file; refused (ecaml never unpickles). "
                               f"Convert it once, where you trust it: {conversion_line(weights)}")
    if not weights.is_file():
        raise ImportInputError(f"{weights.name}: no such file")
    try:
        with open_safetensors(weights) as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except RunError as error:
        raise ImportInputError(str(error)) from None


def mapped_state(state: dict[str, torch.Tensor], arch: str, head_dim: int | None) -> tuple[dict, int]:
    """The file's tensors under our model's names, and the embedding size (the head's, else the features')."""
    state = {_without_wrapper(key): value for key, value in state.items()}
    spec = BACKBONES[arch]
    dropped = (spec.classifier_linear, *AUXILIARY_PREFIXES)
    head, head_prefix = {}, None
    for prefix in (*HEAD_PREFIXES, spec.classifier_linear):
        found = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if found.get("weight") is not None and (head_dim is None or found["weight"].shape[0] == head_dim):
            head, head_prefix = found, prefix
            break
    if head_dim is None or not head:
        if head_dim is not None:
            slots = ", ".join(p.rstrip(".") for p in (*HEAD_PREFIXES, spec.classifier_linear))
            raise ImportInputError(f"--head-dim {head_dim}: no linear layer of {head_dim} outputs under {slots} in the file")
        # No head: the embedding is the pooled feature itself (an identity head), and a classifier is dropped.
        backbone = {key: value for key, value in state.items() if not key.startswith(dropped)}
        identity = {"head.weight": torch.eye(spec.feature_dim), "head.bias": torch.zeros(spec.feature_dim)}
        return {**{f"backbone.{k}": v for k, v in backbone.items()}, **identity}, spec.feature_dim
    backbone = {key: value for key, value in state.items() if not key.startswith((head_prefix, *dropped))}
    mapped = {f"backbone.{k}": v for k, v in backbone.items()}
    mapped["head.weight"] = head["weight"]
    mapped["head.bias"] = head.get("bias", torch.zeros(head["weight"].shape[0]))
    return mapped, int(head["weight"].shape[0])


def _without_wrapper(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def check_layout(mapped: dict[str, torch.Tensor], config: TrainConfig, source: str) -> None:
    """Names and shapes against the architecture, before anything is loaded: one line naming the first few."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ImportInputError(
            f"{source} does not fit {config.backbone}: {len(missing)} missing keys (e.g. {', '.join(missing[:3]) or '-'})"
            f", {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'})")
    wrong = [name for name, shape in expected.items() if tuple(mapped[name].shape) != shape]
    if wrong:
        shown = "; ".join(f"{n} {tuple(mapped[n].shape)} instead of {expected[n]}" for n in wrong[:3])
        raise ImportInputError(f"{source} does not fit {config.backbone}: {len(wrong)} tensors of another shape: {shown}")


def model_from_file(arch: str, weights: str | Path, dataset: str, head_dim: int | None = None,
                    data_root: str | None = None, image_size: int | None = None):
    """(``arch`` with the file's weights, the run's config): every name, shape and value checked before loading."""
    from ecaml.models import build_model

    if arch not in BACKBONES or arch == "smallcnn":
        torchvision_archs = ", ".join(name for name in BACKBONES if name != "smallcnn")
        raise ImportInputError(f"--arch {arch!r} is not one ecaml can rebuild; choose one of {torchvision_archs}")
    mapped, embedding_dim = mapped_state(read_state(weights), arch, head_dim)
    try:
        config = TrainConfig(dataset=dataset, data_root=data_root, backbone=arch, embedding_dim=embedding_dim,
                             image_size=image_size, loss=IMPORTED_LOSS, ec_weight=0.0, epochs=1, eval_every=0).resolved()
    except ValueError as error:
        raise ImportInputError(f"{Path(weights).name}: {error}") from None
    check_layout(mapped, config, Path(weights).name)
    for name, tensor in mapped.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ImportInputError(f"{Path(weights).name}: {name} holds NaN or infinite values")
    model = build_model(arch, embedding_dim, in_channels=input_channels(config))
    model.load_state_dict(mapped)
    return model, config


def import_model(arch: str, weights: str | Path, dataset: str, out: str | Path, head_dim: int | None = None,
                 data_root: str | None = None, image_size: int | None = None, device: str = "auto") -> Path:
    """Write ``out``: a run of ``arch`` with the file's weights, scored on ``dataset``'s unseen classes."""
    from ecaml.eval.evaluate import pick_device, score_part, split_for

    out = Path(out)
    _check_target(out)
    model, config = model_from_file(arch, weights, dataset, head_dim, data_root, image_size)
    target = pick_device(device)
    model.to(target).eval()
    metrics = score_part(model, split_for(config), "unseen", config, input_channels(config), target)

    def write(folder: Path) -> None:
        write_config(folder, config)
        atomic_write_bytes(folder / HISTORY_FILE, b"")
        atomic_write_json(folder / METRICS_FILE, metrics)
        atomic_write_json(folder / STATUS_FILE, {"state": "completed", "kind": "imported-model",
                                                 "source": Path(weights).name})
        save_weights(folder / WEIGHTS_FILE, model.state_dict(),
                     {"step": "0", "format": "ecaml", "imported_from": Path(weights).name})

    write_run_atomically(out, write)
    return out
