"""tools.sweep: a sweep of DVC experiments as Ray tasks, each a clone of the git remote at the current commit that
pushes its experiment back, then `dvc exp pull` of them all into the user's clone.

The end-to-end test runs a local Ray cluster of 2 workers on this machine: a bare git repository as the git
remote, a folder as the DVC remote, tiny fake data, two experiments. The unit tests need no Ray: the grid and the
refusals before anything starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from src.checkpoint import load_checkpoint
from tests.conftest import ROOT, tiny_params, write_mnist
from tests.test_pipeline import make_repo, sh
from tools import seed_table, sweep

# Ray without the network: no usage statistics, no dashboard (tools.sweep starts it with include_dashboard=False).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
VARIANTS = ("bn_l1", "gn", "ln")


def run_sweep(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python -m tools.sweep ARGS` in `repo`, as a user runs it there (this checkout's tools/ on the path)."""
    env = {**env, **RAY_ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tools.sweep", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)


def shown(repo: Path, env: dict) -> dict[str, dict]:
    """{experiment name: its params and metrics} of the baseline commit in `dvc exp show --json`."""
    rows = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=env))
    commit = next(row for row in rows if row["rev"] != "workspace")
    return {exp["name"]: exp["revs"][0]["data"] for exp in commit.get("experiments") or []}


def team_repo(base: Path, params: dict, *, dvc_remote: bool = True) -> tuple[Path, dict]:
    """The project in `base/repo`, committed and pushed to a bare git remote `origin`; with a DVC remote (a folder,
    the default) configured and committed unless `dvc_remote` is false."""
    repo, env = make_repo(base, params, write_mnist(base / "mnist"))
    sh("git", "init", "-q", "--bare", str(base / "origin.git"), cwd=base, env=env)
    sh("git", "remote", "add", "origin", str(base / "origin.git"), cwd=repo, env=env)
    if dvc_remote:
        sh("dvc", "remote", "add", "-d", "shared", str(base / "dvc-store"), cwd=repo, env=env)
        sh("git", "commit", "-qam", "the DVC remote", cwd=repo, env=env)
    sh("git", "push", "-q", "origin", "HEAD", cwd=repo, env=env)
    return repo, env


# ----------------------------------------------------------------------------------------------------------------------
# End to end


def sweep_params() -> dict:
    """tiny_params(), cheaper still for two pipelines at once on 2 cores: one thread each, and one severity of each
    kind of shift instead of four or five (the shift stage is otherwise the slowest)."""
    params = tiny_params(threads=1)
    params["shift"] = {kind: values[:1] if isinstance(values, list) else values
                       for kind, values in params["shift"].items()}
    return params


@pytest.fixture
def ray_tmpdir() -> Path:
    """A short folder for Ray's sessions (its socket paths must fit in 107 bytes, which pytest's tmp_path can
    exceed), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_sweep_on_a_local_ray_cluster_comes_back_to_the_users_clone(tmp_path, ray_tmpdir):
    assert importlib.util.find_spec("ray"), "Ray is not installed: `make test` installs requirements-sweep.txt"
    repo, env = team_repo(tmp_path, sweep_params())
    env = {**env, "RAY_TMPDIR": str(ray_tmpdir)}
    commit = sh("git", "rev-parse", "HEAD", cwd=repo, env=env).strip()
    # Nothing reproduced nor pushed to the DVC remote: each task runs every stage, reading the data folders that
    # NORMCMP_DATA_DIR and NORMCMP_MNIST_C_DIR name in this environment. Seed -1 fails (the schema refuses it).
    start = time.time()
    first = run_sweep(repo, env, "-S", "train.seed=-1,2,3", "--workers", "2", "--cpus-per-task", "1")
    seconds = time.time() - start
    print(f"sweep of 3 experiments (one failing) on 2 workers: {seconds:.0f} s")
    assert first.returncode == 1, f"{first.stdout}\n{first.stderr}"
    assert "3 experiments of commit" in first.stdout and "0 already on origin, 3 to run" in first.stdout
    assert "running 3 experiments on a local Ray cluster of 2 workers" in first.stdout
    assert "experiments: 100%" in first.stderr and "3/3" in first.stderr  # the progress bar
    names = {int(seed): name for name, seed in re.findall(r"^done: (sweep-[0-9a-f]{12}) \(train\.seed=(\d)\)",
                                                             first.stdout, re.M)}
    assert set(names) == {2, 3}
    assert names[2] == sweep.experiment_name(commit, ["train.seed=2"])
    # The failed one: its overrides, the step, the end of its log (the stage's error), and the exit status.
    bad = sweep.experiment_name(commit, ["train.seed=-1"])
    assert f"failed: {bad} (-S train.seed=-1): `dvc exp run` exited with" in first.stderr
    report = first.stderr[first.stderr.index(f"failed: {bad}"):]
    assert re.search(r"^    .*error: .*train\.seed", report, re.M), report
    assert first.stderr.rstrip().splitlines()[-1] == f"error: 1 of 3 experiments failed: {bad} (train.seed=-1)"

    # The two others are in the user's clone, under their baseline commit, with their metrics.
    found = shown(repo, env)
    assert set(found) == set(names.values())
    for seed, name in names.items():
        data = found[name]
        assert data["params"]["params.yaml"]["data"]["train"]["seed"] == seed
        for v in VARIANTS:
            assert 0 <= data["metrics"][f"metrics/{v}.json"]["data"]["test_acc"] <= 100
    # The seed table reads them as it reads a local sweep: one run per seed, the three variants' metrics each.
    table = seed_table.runs(json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=env)))
    assert sorted(r["seed"] for r in table) == [2, 3] and all(set(r["metrics"]) == set(VARIANTS) for r in table)
    remote_refs = sh("git", "ls-remote", str(tmp_path / "origin.git"), cwd=repo, env=env)
    assert all(f"refs/exps/{commit[:2]}/{commit[2:]}/{name}" in remote_refs for name in names.values())

    # The sweep of those two again: both are on the remote already, nothing starts.
    again = run_sweep(repo, env, "-S", "train.seed=2,3", "--workers", "2")
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert "2 already on origin, 0 to run" in again.stdout
    assert all(f"already on origin: {name} (train.seed={seed})" in again.stdout for seed, name in names.items())
    assert "running" not in again.stdout and "done:" not in again.stdout

    # The models of each experiment come from the DVC remote and load.
    for seed, name in names.items():
        sh("dvc", "exp", "apply", name, cwd=repo, env=env)
        for v in VARIANTS:
            model, ckpt = load_checkpoint(repo / "models" / f"{v}.pt")
            assert ckpt["train"]["seed"] == seed and sum(p.numel() for p in model.parameters()) < 10_000


def test_a_failed_step_reports_the_end_of_its_log(tmp_path):
    """The job itself, without Ray: a git remote that does not exist fails the clone, and says so."""
    job = {"name": "sweep-0", "overrides": ["train.seed=2"], "commit": "0" * 40, "git_url": str(tmp_path / "none"),
           "dvc_remote": "shared", "dvc_url": str(tmp_path / "store"), "env": {}, "identity": {}}
    result = sweep.run_experiment(job)
    assert not result["ok"] and result["step"] == "`git clone` exited with 128"
    assert result["tail"].splitlines()[0].startswith("$ git clone") and "fatal:" in result["tail"]
    assert not list(Path(tempfile.gettempdir()).glob("sweep-0-*"))  # its workspace removed


# ----------------------------------------------------------------------------------------------------------------------
# Unit tests: the grid, the names, the refusals


def test_the_grid_is_dvcs():
    """`-S a=1,2 -S b=x`: two experiments, as `dvc exp run --queue` makes them; another file keeps its prefix."""
    assert sweep.grid(["a=1,2", "b=x"]) == [["a=1", "b=x"], ["a=2", "b=x"]]
    assert sweep.grid(["train.seed=range(2,5)"]) == [["train.seed=2"], ["train.seed=3"], ["train.seed=4"]]
    assert sweep.grid(["other.yaml:c=1,2", "d=3"]) == [["other.yaml:c=1", "d=3"], ["other.yaml:c=2", "d=3"]]
    assert sweep.grid([]) == [[]]
    planned = sweep.experiments(["a=1,2", "b=x"], "0" * 40)
    assert [e.overrides for e in planned] == [("a=1", "b=x"), ("a=2", "b=x")]
    assert len({e.name for e in planned}) == 2 and all(re.fullmatch(r"sweep-[0-9a-f]{12}", e.name) for e in planned)
    with pytest.raises(sweep.Refused, match="not a valid -S override"):
        sweep.grid(["a=(1"])


def test_a_name_is_its_baseline_and_its_overrides():
    name = sweep.experiment_name("a" * 40, ["train.seed=2", "train.lr=0.1"])
    assert name == sweep.experiment_name("a" * 40, ["train.lr=0.1", "params.yaml:train.seed=2"])  # any order
    assert name != sweep.experiment_name("b" * 40, ["train.seed=2", "train.lr=0.1"])
    assert name != sweep.experiment_name("a" * 40, ["train.seed=3", "train.lr=0.1"])


@pytest.fixture
def small_repo(tmp_path, monkeypatch) -> tuple[Path, dict]:
    """A git + DVC repository of one file, pushed to a bare `origin`, with a folder DVC remote; the current
    directory."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com", "DVC_NO_ANALYTICS": "1"}
    for k in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(k, env[k])
    sh("git", "init", "-q", cwd=repo, env=env)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=repo, env=env)
    (repo / "params.yaml").write_text("train:\n  seed: 1\n")
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "start", cwd=repo, env=env)
    sh("git", "init", "-q", "--bare", str(tmp_path / "origin.git"), cwd=tmp_path, env=env)
    sh("git", "remote", "add", "origin", str(tmp_path / "origin.git"), cwd=repo, env=env)
    sh("git", "push", "-q", "origin", "HEAD", cwd=repo, env=env)
    monkeypatch.chdir(repo)
    return repo, env


def refusal(capsys, *args: str) -> str:
    """The one `error:` line of `python -m tools.sweep ARGS` (exit status 1); nothing run."""
    assert sweep.main(["-S", "train.seed=2,3", *args]) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and not out, err
    return errors[0]


def test_refuses_uncommitted_changes(small_repo, capsys):
    repo, env = small_repo
    sh(sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(repo.parent / "store"), cwd=repo, env=env)
    line = refusal(capsys)  # the remote's line in .dvc/config, not committed
    assert line == "error: uncommitted changes would be left out of the experiments: .dvc/config"
    sh("git", "commit", "-qam", "remote", cwd=repo, env=env)
    sh("git", "push", "-q", "origin", "HEAD", cwd=repo, env=env)
    (repo / "notes.txt").write_text("a file git does not track\n")
    assert refusal(capsys).endswith("left out of the experiments: notes.txt")


def test_refuses_a_commit_the_remote_lacks(small_repo, capsys):
    repo, env = small_repo
    sh(sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(repo.parent / "store"), cwd=repo, env=env)
    sh("git", "commit", "-qam", "not pushed", cwd=repo, env=env)
    commit = sh("git", "rev-parse", "--short=7", "HEAD", cwd=repo, env=env).strip()
    line = refusal(capsys)
    assert line.startswith(f"error: the current commit {commit} is not on the git remote 'origin' (")
    assert "no git remote 'upstream' (this clone has origin)" in refusal(capsys, "--git-remote", "upstream")


def test_refuses_without_a_dvc_remote(small_repo, capsys):
    assert refusal(capsys).startswith("error: no DVC remote is configured")
