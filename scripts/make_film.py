#!/usr/bin/env python
"""Give the shipped featured pair its training film, proven to be of the very runs that were shipped.

    python scripts/make_film.py                    # the pair named in checkpoints/featured.json
    python scripts/make_film.py --film-every 3 --check-only

For each run it re-trains the run's own config.json (same seed, same data, same
length) with ``film_every`` set, into a temporary folder, on the CPU. Taking a
film snapshot draws from no random generator and leaves the model's mode as it
was (ecaml.serve.film), so the re-trained weights must be bit-identical to the shipped
``model.safetensors``. Only when every tensor is identical is the ``film/``
folder copied into the shipped run directory (atomically, file by file, the
index last); otherwise the script says which tensors differ and ships nothing.
Exit status: 0 when every run got (or, with --check-only, could get) its film, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from ecaml.config import TrainConfig  # noqa: E402
from ecaml.store.atomic import atomic_write_bytes  # noqa: E402
from ecaml.store.run_files import CONFIG_FILE, WEIGHTS_FILE, open_safetensors  # noqa: E402
from ecaml.train.film_recorder import FILM_FOLDER, FILM_INDEX  # noqa: E402
from ecaml.train.launch import train  # noqa: E402

RUN_RECORD_KEYS = ("format_version", "ecaml_version")  # written beside the config, not config fields


def shipped_config(run_dir: Path, film_every: int) -> TrainConfig:
    values = json.loads((run_dir / CONFIG_FILE).read_text())
    for key in RUN_RECORD_KEYS:
        values.pop(key, None)
    values.update(film_every=film_every, device="cpu")  # the shipped runs were trained on the CPU
    return TrainConfig.from_dict(values)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with open_safetensors(path) as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def differing_tensors(made: Path, shipped: Path) -> list[str]:
    left, right = tensors(made), tensors(shipped)
    if left.keys() != right.keys():
        return sorted(set(left) ^ set(right))
    return [name for name in left if left[name].dtype != right[name].dtype or not torch.equal(left[name], right[name])]


def install_film(source: Path, run_dir: Path) -> None:
    """Snapshots first, the index last (a reader only trusts what the index names)."""
    target = run_dir / FILM_FOLDER
    target.mkdir(exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.name != FILM_INDEX:
            atomic_write_bytes(target / path.name, path.read_bytes())
    atomic_write_bytes(target / FILM_INDEX, (source / FILM_INDEX).read_bytes())


def film_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories (default: the featured pair)")
    parser.add_argument("--film-every", type=int, default=3, help="steps between snapshots (default 3)")
    parser.add_argument("--check-only", action="store_true", help="re-train and compare, but copy nothing")
    args = parser.parse_args()
    checkpoints = REPO_ROOT / "checkpoints"
    names = args.runs or json.loads((checkpoints / "featured.json").read_text())["runs"]
    run_dirs = [Path(name) if Path(name).is_dir() else checkpoints / name for name in names]
    ok = True
    for run_dir in run_dirs:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="ecaml-film-") as scratch:
            made = Path(scratch) / run_dir.name
            train(shipped_config(run_dir, args.film_every), made, progress=False)
            differing = differing_tensors(made / WEIGHTS_FILE, run_dir / WEIGHTS_FILE)
            size = film_size(made / FILM_FOLDER)
            if differing:
                ok = False
                print(f"{run_dir.name}: NOT identical to the shipped weights ({len(differing)} tensors differ, e.g. "
                      f"{', '.join(differing[:3])}); no film shipped")
                continue
            steps = json.loads((made / FILM_FOLDER / FILM_INDEX).read_text())["steps"]
            action = "checked" if args.check_only else "film installed"
            if not args.check_only:
                install_film(made / FILM_FOLDER, run_dir)
            print(f"{run_dir.name}: weights bit-identical; {len(steps)} snapshots, {size / 1e6:.2f} MB; {action} "
                  f"({time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
