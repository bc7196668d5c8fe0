"""src/config.py: the schema of params.yaml sits below everything (no torch, no training code) and describes every
setting that params.yaml holds, once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from src import config
from tests.conftest import ROOT


def test_reading_the_settings_imports_neither_torch_nor_the_training_code():
    code = "import sys, src.config; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'src')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['src', 'src.config', 'src.errors']"


def _keys(node: dict, prefix: str = "") -> list[str]:
    """The dotted keys of params.yaml's settings, each variant's as `variants.<name>.<key>`."""
    keys = []
    for key, value in node.items():
        if prefix == "variants.":
            keys += [f"variants.<name>.{k}" for k in value]
        elif isinstance(value, dict):
            keys += _keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_every_setting_of_params_yaml_is_described_once_and_nothing_else_is():
    described = [key for key, _, text in config.describe()]
    assert len(described) == len(set(described)) and all(text for _, _, text in config.describe())
    shipped = set(_keys(yaml.safe_load((ROOT / "params.yaml").read_text())))
    # gn_groups, l1, l1_tensor_mean, bn_images and sync_bn: each variant sets only those of its own norm
    assert shipped <= set(described) and set(described) - shipped == set()


def test_the_listing_names_each_setting_with_its_range_or_choices(capsys):
    config.main()
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "integer >= 1: epochs of training" in lines["train.epochs"]
    assert "number in [0, 180]: random rotation" in lines["train.rotation"]
    assert "exact or fast:" in lines["train.precision"] and "bn or gn or ln:" in lines["variants.<name>.norm"]
    assert "list of numbers, each in [0, 4]:" in lines["shift.blur"]


@pytest.mark.parametrize("stage, key", [("train", "train.lr"), ("download", "download.dataset"),
                                        ("plot", "plot.dpi")])
def test_a_stages_help_lists_its_settings(stage, key):
    out = subprocess.run([sys.executable, "-m", f"src.{stage}", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": ""}, check=True).stdout
    assert key in out and "python -m src.config" in out
