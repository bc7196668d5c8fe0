"""The write-up's recipe (`make yardstick`) as a DVC experiment of this pipeline, and its table against ours."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

from tests.conftest import ROOT, tiny_params, write_mnist
from tests.test_pipeline import make_repo, sh
from tools.seed_table import writeup_arguments


def test_the_yardstick_runs_as_an_experiment_and_gets_its_own_table(tmp_path):
    repo, env = make_repo(tmp_path, tiny_params(), write_mnist(tmp_path / "mnist"))
    sh("dvc", "repro", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "our recipe", cwd=repo, env=env)
    sh("dvc", "exp", "run", "-n", "yardstick", *writeup_arguments(ROOT / "Makefile"), cwd=repo, env=env)

    for variant in ("bn_l1", "gn", "ln"):
        ckpt = torch.load(repo / "models" / f"{variant}.pt", weights_only=True)
        assert ckpt["model"]["arch"] == "writeup" and ckpt["params"] == 8_880
        train = ckpt["train"]
        assert (train["batch_size"], train["lr"], train["pct_start"], train["momentum"]) == (64, 0.015, 0.3, 0.95)
        assert train["cycle_momentum"] and not train["nesterov"]
        assert train["l1_tensor_mean"] == (variant == "bn_l1")  # the L1 term: BN + L1's alone
        assert train["loader"] == "torchvision" and train["precision"] == "exact"  # the write-up's data path, in fp32
        assert (train["brightness"], train["contrast"], train["label_smoothing"], train["grad_clip"]) == (
            0.4, 0.4, 0.0, 0.0)

    out = subprocess.run([sys.executable, "-m", "tools.seed_table", "--by", "model.arch"], cwd=repo,
                         env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^mnist, test, model.arch=default; runs: \S+ \(seed 1\)$", out.stdout, re.M)
    assert "mnist, test, model.arch=writeup; runs: yardstick (seed 1)" in out.stdout
