"""The name registry: the lists the settings and the CLI offer, kept without torch and equal to what is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ecaml import registry

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "torchvision", "sklearn", "streamlit")

# Runs `python -m ecaml ARGS` inside a fresh interpreter, then prints the heavy modules it imported.
_RUN_CLI_THEN_LIST_MODULES = """
import json, runpy, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["ecaml", *json.loads(sys.argv[1])]
try:
    runpy.run_module("ecaml", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("HEAVY=" + json.dumps([name for name in heavy if name in sys.modules]), file=sys.stderr)
"""


def modules_imported_by_cli(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    command = [sys.executable, "-c", _RUN_CLI_THEN_LIST_MODULES, json.dumps(list(args)), json.dumps(HEAVY_MODULES)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    heavy = next(line for line in result.stderr.splitlines() if line.startswith("HEAVY="))
    return result, json.loads(heavy.removeprefix("HEAVY="))


@pytest.mark.parametrize("args", [("--help",), ("train", "--help"), ("evaluate", "--help"), ("--version",)],
                         ids=" ".join)
def test_cli_help_imports_no_torch(args):
    result, heavy = modules_imported_by_cli(*args)
    assert "ecaml" in result.stdout, result.stderr
    assert heavy == [], f"`python -m ecaml {' '.join(args)}` imported {heavy}"


def test_a_bad_flag_is_refused_without_importing_torch():
    result, heavy = modules_imported_by_cli("train", "--dataset", "imagenet")
    assert "error: ecaml train: argument --dataset: invalid choice" in result.stderr
    assert heavy == [], heavy


def test_reading_and_resolving_settings_imports_no_torch():
    script = ("import sys; from ecaml.config import TrainConfig, settings; "
              "TrainConfig.from_dict(settings(flag_values={'preset': 'paper-cub'})).resolved(); "
              f"print([name for name in {HEAVY_MODULES!r} if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_dataset_names_match_what_the_data_package_loads():
    from ecaml.config import DATASET_DEFAULTS
    from ecaml.data import benchmarks

    assert set(registry.DATASETS) == {*registry.BUILTIN_DATASETS, registry.FASHION_MNIST, "folder", *registry.BENCHMARKS}
    assert set(benchmarks.LAYOUTS) == set(benchmarks.READERS) == set(registry.BENCHMARKS)
    assert set(DATASET_DEFAULTS) == set(registry.DATASETS), "every dataset needs its default sizes"
    # Fashion-MNIST is held in memory as greyscale arrays, like the built-ins.
    assert set(registry.COLOUR_DATASETS) == set(registry.DATASETS) - {*registry.BUILTIN_DATASETS, registry.FASHION_MNIST}


def test_loss_names_match_the_built_in_losses():
    from ecaml import losses

    assert set(losses.BUILTIN_LOSSES) == set(registry.LOSSES)
    assert losses.available_losses() == sorted(registry.LOSSES) + [registry.PML_PREFIX + "<AnyLossClass>"]


def test_backbone_names_match_what_the_models_module_builds():
    import torchvision

    from ecaml import models

    imagenet = {name for name, spec in registry.BACKBONES.items() if spec.imagenet_input}
    assert set(registry.BACKBONES) - imagenet == {"smallcnn"}  # built by ecaml.models.SmallCNN
    assert all(callable(getattr(torchvision.models, name, None)) for name in imagenet)
    pretrained = {name for name, spec in registry.BACKBONES.items() if spec.pretrained_capable}
    assert all(models._weights_enum(name) for name in pretrained)
    assert models.BACKBONES is registry.BACKBONES


def test_ec_pair_modes_and_routes_are_those_energy_confusion_accepts():
    from ecaml.confusion import EnergyConfusion

    for pairs in registry.EC_PAIR_MODES:
        for route in registry.EC_ROUTES:
            ec = EnergyConfusion(pairs=pairs, route=route)
            assert (ec.pairs, ec.route) == (pairs, route)
    with pytest.raises(ValueError, match="pair mode"):
        EnergyConfusion(pairs="nearest")
    with pytest.raises(ValueError, match="route"):
        EnergyConfusion(route="backbone")
