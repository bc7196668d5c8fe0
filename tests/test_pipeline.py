"""End to end: `dvc repro` of all nine stages in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_params, write_mnist, write_mnist_c

BIN = Path(sys.executable).parent
STAGES = ["download", "train_bn_l1", "train_gn", "train_ln", "evaluate", "shift", "download_mnist_c", "mnist_c", "plot"]
# A folder of the four real MNIST .gz files for the real-data tests (.ci/run sets it for CI).
REAL_DATA = Path(os.environ["NORMCMP_REAL_DATA"]).absolute() if os.environ.get("NORMCMP_REAL_DATA") else None
# ... and of MNIST-C's test split, in the release's layout.
REAL_MNIST_C = Path(os.environ["NORMCMP_REAL_MNIST_C"]).absolute() if os.environ.get("NORMCMP_REAL_MNIST_C") else None
NO_REAL_DATA = "set NORMCMP_REAL_DATA to a folder holding the four MNIST IDX .gz files"
IN_CI = os.environ.get("CI", "").lower() == "true"


def sh(*cmd: str, cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_repo(tmp_path: Path, params: dict, data_dir: Path, mnist_c_dir: Path | None = None) -> tuple[Path, dict]:
    """A fresh git + DVC repository holding this project's pipeline and `params`; MNIST-C from `mnist_c_dir`, or a
    small fake one."""
    repo = tmp_path / "repo"
    if mnist_c_dir is None:
        mnist_c_dir = tmp_path / "mnist_c"
        write_mnist_c(mnist_c_dir, n=20)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "NORMCMP_DATA_DIR": str(data_dir),
           "NORMCMP_MNIST_C_DIR": str(mnist_c_dir), "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "test@example.com"}
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # the plot templates dvc.yaml names
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "pipeline", cwd=repo, env=env)
    return repo, env


def changed_params(repo: Path, env: dict) -> dict[str, dict]:
    """Per stage, the settings `dvc status` finds changed against dvc.lock."""
    status = json.loads(sh("dvc", "status", "--json", cwd=repo, env=env))
    return {stage: change["changed deps"]["params.yaml"] for stage, changes in status.items()
            for change in changes if isinstance(change, dict) and "params.yaml" in change.get("changed deps", {})}


EVERY_VARIANT = {stage: {"variants": "modified"} for stage in ("evaluate", "shift", "mnist_c", "plot")}


@pytest.mark.parametrize("key, value, stages", [
    # evaluate, shift and plot check and label every variant, so they read the whole `variants` section
    ("variants.gn.gn_groups", 2, {"train_gn": {"variants.gn": "modified"}, **EVERY_VARIANT}),
    ("variants.bn_l1.l1", 2e-4, {"train_bn_l1": {"variants.bn_l1": "modified"}, **EVERY_VARIANT}),
    ("train.lr", 0.1, {f"train_{v}": {"train": "modified"} for v in ("bn_l1", "gn", "ln")}),
    ("plot.dpi", 60, {"plot": {"plot": "modified"}}),
])
def test_a_setting_reruns_only_the_stages_that_read_it(tmp_path, key, value, stages):
    """The committed lock matches params.yaml; one changed setting marks exactly the stages that read it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    sh("dvc", "init", "-q", "--no-scm", cwd=repo, env=env)
    assert changed_params(repo, env) == {}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert changed_params(repo, env) == stages


def test_dvc_repro_end_to_end(tmp_path):
    repo, env = make_repo(tmp_path, tiny_params(), write_mnist(tmp_path / "mnist"))
    out = sh("dvc", "repro", cwd=repo, env=env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out

    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo, env=env))
    files = next(iter(metrics.values()))["data"]  # the workspace
    for v in ("bn_l1", "gn", "ln"):
        m = files[f"metrics/{v}.json"]["data"]
        assert {"train_acc", "test_acc", "train_loss", "test_loss", "params"} <= set(m)
        assert not any("seconds" in key for key in m)  # timings stay out of what DVC and git track
        assert m["params"] < 10_000
    comparison = files["metrics/comparison.json"]["data"]
    assert set(comparison) == {"best_test_acc", "least_overfit", "most_overfit", "errors_shared_by_all",
                               "errors_in_any"}
    wrong = [{m["index"] for m in json.loads((repo / f"plots/misclassified/{v}.json").read_text())}
             for v in ("bn_l1", "gn", "ln")]
    assert comparison["errors_shared_by_all"] == len(set.intersection(*wrong))
    assert comparison["errors_in_any"] == len(set.union(*wrong)) >= max(map(len, wrong))

    sh("dvc", "plots", "show", "-o", "html", cwd=repo, env=env)
    html = (repo / "html" / "index.html").read_text()
    for title in ("Test loss per epoch", "Test accuracy per epoch", "Confusion matrix, GN"):
        assert title in html
    images = ["test_loss", "test_accuracy", "shift", "mnist_c", "misclassified_bn_l1", "misclassified_gn",
              "misclassified_ln"]
    mnist_c = files["metrics/mnist_c.json"]["data"]
    assert list(mnist_c) == ["bn_l1", "gn", "ln", "bn_l1_test_statistics"]
    assert all(len(scores) == 17 and "mean_corruption_error" in scores for scores in mnist_c.values())
    for name in images:
        png = repo / "plots" / "images" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env)


@pytest.mark.skipif(not IN_CI and not os.environ.get("RUN_REAL_DATA"),
                    reason="runs in CI (CI=true) or with RUN_REAL_DATA=1: ~2 minutes on real MNIST")
def test_real_mnist_one_epoch_reaches_97_percent(tmp_path):
    assert REAL_DATA and (REAL_DATA / "train-images-idx3-ubyte.gz").is_file(), NO_REAL_DATA
    params = tiny_params(epochs=1, batch_size=32, lr=0.03)  # one epoch: more, gentler steps than the 20-epoch recipe
    repo, env = make_repo(tmp_path, params, REAL_DATA)
    sh("dvc", "repro", cwd=repo, env=env)
    accuracy = {v: json.loads((repo / "metrics" / f"{v}.json").read_text())["test_acc"] for v in ("bn_l1", "gn", "ln")}
    print(f"test accuracy after one epoch: {accuracy}")
    for v, acc in accuracy.items():
        assert acc >= 97.0, f"{v}: {acc:.2f}% after one epoch"


def test_ctrl_c_during_dvc_repro_then_repro_recovers(tmp_path):
    import signal
    import time

    repo, env = make_repo(tmp_path, tiny_params(epochs=30), write_mnist(tmp_path / "mnist", n_train=1024))
    # Ctrl-C in a terminal interrupts the whole foreground process group: dvc and the stage it runs.
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    # The first epoch logged (in the temporary folder that replaces dvclive/bn_l1 when the stage succeeds).
    while not list((repo / "dvclive").glob(".bn_l1.*.tmp/metrics.json")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "error: interrupted; no outputs were written" in err
    assert not (repo / "models" / "bn_l1.pt").exists() and not (repo / "dvclive" / "bn_l1").exists()

    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    sh("dvc", "repro", cwd=repo, env=env)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo, env=env)
