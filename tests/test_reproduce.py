"""A fresh clone's `dvc repro --force` on the real MNIST re-makes every committed result bit for bit.

That run takes about 13 minutes on 2 CPU cores: it runs in CI (CI=true) or with RUN_REPRODUCE=1. The check that
every lock file's dependency hashes and sizes are the checkout's runs always.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_pipeline import BIN, IN_CI, NO_REAL_DATA, REAL_DATA, REAL_MNIST_C, sh

NO_REAL_MNIST_C = "set NORMCMP_REAL_MNIST_C to a folder of MNIST-C's test split (<corruption>/test_images.npy, ...)"

VARIANTS = ("bn_l1", "gn", "ln")
LOCKS = ("dvc.lock", "studies/per_device/dvc.lock")  # the study's stages run with wdir at the repository root


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("lock_file", LOCKS)
def test_every_committed_dependency_hash_and_size_is_the_checkouts(lock_file):
    """A stale md5 or size in a lock file is rewritten by the fresh clone's `dvc repro`; this finds it in a second."""
    stages = yaml.safe_load((ROOT / lock_file).read_text())["stages"]
    stale = [f"{name}: {dep['path']} (lock {dep['md5']} {dep['size']} B, file {md5(path)} {path.stat().st_size} B)"
             for name, stage in stages.items() for dep in stage["deps"]
             if (path := ROOT / dep["path"]).is_file()
             and (dep["md5"], dep["size"]) != (md5(path), path.stat().st_size)]
    assert not stale, f"{lock_file} is stale:\n" + "\n".join(stale)


@pytest.mark.skipif(not IN_CI and not os.environ.get("RUN_REPRODUCE"),
                    reason="runs in CI (CI=true) or with RUN_REPRODUCE=1: ~13 minutes on real MNIST")
def test_a_fresh_clone_re_makes_the_committed_models_metrics_and_plots(tmp_path):
    assert REAL_DATA and (REAL_DATA / "train-images-idx3-ubyte.gz").is_file(), NO_REAL_DATA
    assert REAL_MNIST_C and (REAL_MNIST_C / "identity" / "test_images.npy").is_file(), NO_REAL_MNIST_C
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "NORMCMP_DATA_DIR": str(REAL_DATA),
           "NORMCMP_MNIST_C_DIR": str(REAL_MNIST_C), "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(ROOT), str(clone), cwd=tmp_path, env=env)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]

    sh("dvc", "repro", "--force", cwd=clone, env=env)  # no DVC cache in a clone: every stage computes anew

    for v in VARIANTS:
        committed = next(out["md5"] for out in lock[f"train_{v}"]["outs"] if out["path"] == f"models/{v}.pt")
        assert md5(clone / "models" / f"{v}.pt") == committed, f"models/{v}.pt differs from the one in dvc.lock"
    changed = sh("git", "status", "--porcelain", cwd=clone, env=env)
    assert changed == "", f"files that differ from the committed ones:\n{changed}"
    assert "up to date" in sh("dvc", "status", cwd=clone, env=env)
    assert sh("dvc", "metrics", "diff", cwd=clone, env=env).strip() == ""
