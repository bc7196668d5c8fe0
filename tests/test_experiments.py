"""DVC's own machinery on this pipeline: `exp run -S`, a queued sweep, `exp show`, `plots diff`, remotes.

One project (clone A) is reproduced once per module: it has a bare git remote `origin` and a
shared-folder DVC remote, as a team would. Clone B is a `git clone` of that origin.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_params, write_mnist
from tests.test_pipeline import make_repo, sh

VARIANTS = ("bn_l1", "gn", "ln")
METRICS = [f"metrics/{v}.json" for v in VARIANTS]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """Clone A: the pipeline reproduced, committed, pushed to `origin` (git) and `shared` (DVC)."""
    base = tmp_path_factory.mktemp("team")
    repo, env = make_repo(base, tiny_params(), write_mnist(base / "mnist"))
    sh("git", "init", "-q", "--bare", str(base / "origin.git"), cwd=base, env=env)
    sh("git", "remote", "add", "origin", str(base / "origin.git"), cwd=repo, env=env)
    # The remote is configured (and committed) before any experiment, so experiments carry it too.
    sh("dvc", "remote", "add", "-d", "shared", str(base / "dvc-store"), cwd=repo, env=env)
    sh("dvc", "repro", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "results", cwd=repo, env=env)
    sh("git", "push", "-q", "origin", "HEAD", cwd=repo, env=env)
    sh("dvc", "push", cwd=repo, env=env)
    return repo, env


def experiments(repo: Path, env: dict) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: its data (params, metrics)}, baseline commit included."""
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=env))
    commit = next(row for row in shown if row["rev"] != "workspace")
    found = {"baseline": commit["data"]}
    for exp in commit.get("experiments") or []:
        found[exp["name"]] = exp["revs"][0]["data"]
    return found


def params_of(data: dict) -> dict:
    return data["params"]["params.yaml"]["data"]


def accuracies(data: dict) -> dict[str, float]:
    return {f: data["metrics"][f]["data"]["test_acc"] for f in METRICS}


def wait_for_queue(repo: Path, env: dict, timeout: float = 300) -> dict[str, str]:
    """Poll `dvc queue status` until nothing is queued or running; {experiment name: final status}."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = sh("dvc", "queue", "status", cwd=repo, env=env)
        # Rows: task id, name, created, status (last); then a line with the worker count.
        rows = {cells[1]: cells[-1] for cells in map(str.split, status.splitlines()[1:]) if len(cells) >= 4}
        if not {"Queued", "Running"} & set(rows.values()):
            return rows
        time.sleep(2)
    subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env)
    pytest.fail(f"queued experiments still running after {timeout} s:\n{status}")


@pytest.fixture(scope="module")
def sweep(project) -> dict[str, dict]:
    """One experiment run at once (`-S variants.gn.gn_groups=2`), then two seeds queued and run by one worker."""
    repo, env = project
    log = sh("dvc", "exp", "run", "-S", "variants.gn.gn_groups=2", "-n", "gn2", cwd=repo, env=env)
    # `dvc exp run` leaves the experiment in the workspace; queue the seeds from the commit, not from gn2.
    sh("git", "checkout", "--", ".", cwd=repo, env=env)
    sh("dvc", "checkout", cwd=repo, env=env)
    # Queued experiments run in a copy holding what git tracks (staged files too), not untracked files.
    (repo / "staged.txt").write_text("staged\n")
    sh("git", "add", "staged.txt", cwd=repo, env=env)
    (repo / "untracked.txt").write_text("untracked\n")
    for seed in (2, 3):
        sh("dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}", "-n", f"seed{seed}", cwd=repo, env=env)
    sh("dvc", "queue", "start", "-j", "1", cwd=repo, env=env)
    status = wait_for_queue(repo, env)
    for name in ("seed2", "seed3"):
        assert status.get(name) == "Success", f"{status}\n{sh('dvc', 'queue', 'logs', name, cwd=repo, env=env)}"
    sh("git", "rm", "-q", "--cached", "staged.txt", cwd=repo, env=env)
    for name in ("staged.txt", "untracked.txt"):
        (repo / name).unlink()
    runs = experiments(repo, env)
    runs["gn2"]["log"] = log
    return runs


def test_exp_run_with_a_changed_parameter(sweep):
    assert params_of(sweep["baseline"])["variants"]["gn"]["gn_groups"] == 4
    assert params_of(sweep["gn2"])["variants"]["gn"]["gn_groups"] == 2
    assert all(0 <= acc <= 100 for acc in accuracies(sweep["gn2"]).values())
    # Only GN reads gn_groups: the experiment retrained GN alone.
    log = sweep["gn2"]["log"]
    assert "Running stage 'train_gn'" in log
    for stage in ("download", "train_bn_l1", "train_ln"):
        assert f"Stage '{stage}' didn't change, skipping" in log


def test_queued_seeds_run_from_the_commit_with_their_own_seed(project, sweep):
    repo, env = project
    for seed in (2, 3):
        params = params_of(sweep[f"seed{seed}"])
        assert params["train"]["seed"] == seed and params["variants"]["gn"]["gn_groups"] == 4
        assert set(accuracies(sweep[f"seed{seed}"])) == set(METRICS)  # the three models' metrics, one column each
    assert accuracies(sweep["seed2"]) != accuracies(sweep["seed3"])
    # The README's table: one test-accuracy column per model, one row per experiment.
    keep = "Experiment|.*:test_acc|train.seed|variants.gn.gn_groups"
    table = sh("dvc", "exp", "show", "--drop", ".*", "--keep", keep, cwd=repo, env={**env, "COLUMNS": "200"})
    header = next(line for line in table.splitlines() if "Experiment" in line).split()
    assert header == ["Experiment", *(f"{f}:test_acc" for f in METRICS), "train.seed", "variants.gn.gn_groups"]
    assert all(f"[{name}]" in table for name in ("gn2", "seed2", "seed3"))
    # The experiment's commit: what its copy of the project held.
    tracked = sh("git", "ls-tree", "-r", "--name-only", sweep["seed2"]["rev"], cwd=repo, env=env).split()
    assert "staged.txt" in tracked and "untracked.txt" not in tracked


def test_plots_diff_overlays_two_experiments(project, sweep, tmp_path):
    repo, env = project
    sh("dvc", "plots", "diff", "seed2", "seed3", "-o", str(tmp_path / "diff"), cwd=repo, env=env)
    html = (tmp_path / "diff" / "index.html").read_text()
    assert '"rev": "seed2"' in html and '"rev": "seed3"' in html
    assert "Test accuracy per epoch" in html and "Test loss per epoch" in html


def clone(project, tmp_path: Path) -> tuple[Path, dict]:
    """Clone B: `git clone` of A's origin; it has no data folder, so it cannot train."""
    repo, env = project
    env = {k: v for k, v in env.items() if k != "NORMCMP_DATA_DIR"}
    sh("git", "clone", "-q", str(repo.parent / "origin.git"), str(tmp_path / "b"), cwd=tmp_path, env=env)
    return tmp_path / "b", env


def test_second_clone_pulls_results_without_training(project, tmp_path):
    a, _ = project
    b, env = clone(project, tmp_path)
    assert not (b / "models" / "gn.pt").exists()
    sh("dvc", "pull", cwd=b, env=env)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=b, env=env)
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=b, env=env)
    for path in [*METRICS, "metrics/comparison.json", "models/gn.pt", "data/dataset.npz"]:
        assert (b / path).read_bytes() == (a / path).read_bytes(), path


def test_exp_push_then_exp_pull_in_second_clone(project, sweep, tmp_path):
    a, env_a = project
    sh("dvc", "exp", "push", "origin", "gn2", cwd=a, env=env_a)
    b, env = clone(project, tmp_path)
    sh("dvc", "exp", "pull", "origin", "gn2", cwd=b, env=env)
    assert accuracies(experiments(b, env)["gn2"]) == accuracies(sweep["gn2"])
    sh("dvc", "exp", "apply", "gn2", cwd=b, env=env)
    assert "gn_groups: 2" in (b / "params.yaml").read_text()
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=b, env=env)
    assert {f: json.loads((b / f).read_text())["test_acc"] for f in METRICS} == accuracies(sweep["gn2"])


def test_exp_run_as_two_data_parallel_processes_makes_models_that_load_and_score(project, sweep):
    repo, env = project
    log = sh("dvc", "exp", "run", "-S", "train.processes=2", "-S", "train.threads=1", "-n", "ddp2", cwd=repo, env=env)
    try:
        assert "2 processes x 32 images" in log and "Running stage 'evaluate'" in log
        ddp = experiments(repo, env)["ddp2"]
        assert params_of(ddp)["train"]["processes"] == 2
        assert all(0 <= acc <= 100 for acc in accuracies(ddp).values())
        from src.checkpoint import load_checkpoint

        for variant in VARIANTS:
            _, ckpt = load_checkpoint(repo / "models" / f"{variant}.pt")
            assert ckpt["train"]["processes"] == 2
        # GN computes the same however the batch is split: within one of the 128 test images of the baseline's.
        base = accuracies(sweep["baseline"])
        assert accuracies(ddp)["metrics/gn.json"] == pytest.approx(base["metrics/gn.json"], abs=0.8)
    finally:
        sh("git", "checkout", "--", ".", cwd=repo, env=env)
        sh("dvc", "checkout", cwd=repo, env=env)
