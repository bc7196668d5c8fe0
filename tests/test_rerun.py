"""A failed `dvc repro` loses nothing: bad params, Ctrl-C or bad data leave the last good outputs as they were,
`dvc status` says what changed, and once the cause is fixed a plain `dvc repro` runs as usual."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import tiny_params, write_mnist
from tests.test_pipeline import make_repo, sh

OUTPUTS = ("data", "models", "dvclive")  # of the stages download and train_gn


def outputs(repo: Path) -> dict[str, bytes]:
    """Every file under the stages' output folders (relative path -> bytes)."""
    return {str(p.relative_to(repo)): p.read_bytes() for folder in OUTPUTS
            for p in sorted((repo / folder).rglob("*")) if p.is_file()}


def status(repo: Path, env: dict, stage: str) -> list:
    """What `dvc status` says has changed for `stage` ([] if nothing)."""
    return json.loads(sh("dvc", "status", "--json", stage, cwd=repo, env=env)).get(stage, [])


def failed_repro(repo: Path, env: dict, *args: str) -> str:
    """The output of a `dvc repro` that must fail."""
    result = subprocess.run(["dvc", "repro", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def test_a_failed_rerun_keeps_the_last_good_outputs_and_a_fixed_one_runs_as_usual(tmp_path):
    mnist = write_mnist(tmp_path / "mnist")
    repo, env = make_repo(tmp_path, tiny_params(), mnist)
    sh("dvc", "repro", "train_gn", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "results", cwd=repo, env=env)
    good = outputs(repo)
    assert "models/gn.pt" in good and "dvclive/gn/metrics.json" in good

    def set_train(**train) -> None:
        (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(**train)))

    # A typo in params.yaml: the stage fails before training, and DVC has not removed its outputs.
    set_train(lr="fast")
    assert "error: params.yaml: train.lr = 'fast' must be a number" in failed_repro(repo, env, "train_gn")
    assert outputs(repo) == good
    assert status(repo, env, "train_gn") == [{"changed deps": {"params.yaml": {"train": "modified"}}}]

    # Ctrl-C in the middle of training (to dvc and the stage, as a terminal does).
    set_train(epochs=30)
    proc = subprocess.Popen(["dvc", "repro", "train_gn"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list((repo / "dvclive").glob(".gn.*.tmp/metrics.json")) and time.time() < deadline:
        time.sleep(0.2)  # the first epoch is logged, beside the previous log
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "error: interrupted; no outputs were written" in out, out
    assert outputs(repo) == good
    assert not list(repo.rglob("*.tmp"))
    assert status(repo, env, "train_gn") == [{"changed deps": {"params.yaml": {"train": "modified"}}}]

    # Bad data: a damaged IDX file makes the download stage fail; the dataset it made before stays.
    labels = mnist / "train-labels-idx1-ubyte.gz"
    intact = labels.read_bytes()
    labels.write_bytes(intact[: len(intact) // 2])
    assert f"error: {labels}: truncated or corrupt gzip data" in failed_repro(repo, env, "--force", "download")
    assert outputs(repo) == good
    assert status(repo, env, "download") == []
    labels.write_bytes(intact)

    # The cause fixed (a new valid setting): a plain `dvc repro` trains again and records it.
    set_train(lr=tiny_params()["train"]["lr"] * 0.8)
    out = sh("dvc", "repro", "train_gn", cwd=repo, env=env)
    assert "Running stage 'train_gn'" in out and "Running stage 'download'" not in out
    now = outputs(repo)
    assert now["models/gn.pt"] != good["models/gn.pt"] and now["data/dataset.npz"] == good["data/dataset.npz"]
    assert status(repo, env, "train_gn") == []
