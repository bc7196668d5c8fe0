"""A sweep of DVC experiments run as Ray tasks: on a local cluster, or on one that spans machines.

    python -m tools.sweep -S 'train.seed=2,3,4,5'                    # a local cluster (--workers N)
    python -m tools.sweep -S 'train.lr=0.02,0.05' -S 'train.seed=2,3' --address auto   # a running cluster

`-S` takes what `dvc exp run --queue -S` takes (DVC's own parser: Hydra's override grammar, a comma list a grid).
Each experiment is one job, as any scheduler would run it: a clone of the git remote at the current commit, in a
temporary folder of the worker, `dvc exp run --pull` there (what the changed stages do not re-make comes from the
DVC remote), then `dvc exp push` of the experiment to the git remote and of its outputs to the DVC remote. At the
end `dvc exp pull` brings every experiment of the sweep into this clone, where `dvc exp show`, `dvc plots diff`
and `python -m tools.seed_table` read them as if they had run here.

An experiment is named `sweep-<hash>` after its baseline commit and its overrides, so that running the same sweep
again skips what the git remote holds already. Settings the stages read from the environment (NORMCMP_DATA_DIR,
NORMCMP_MNIST_C_DIR, NORMCMP_FASHION_MNIST_DIR, DVC_NO_ANALYTICS, DO_NOT_TRACK) go with each task. docs/sweeps.md:
clusters of several machines, and the same job under Slurm or Kubernetes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# The environment variables the stages (and DVC) read, given to every task as the driver has them.
PASSED_ENV = ("NORMCMP_DATA_DIR", "NORMCMP_MNIST_C_DIR", "NORMCMP_FASHION_MNIST_DIR", "DVC_NO_ANALYTICS",
              "DO_NOT_TRACK", "OMP_NUM_THREADS")
PARAMS_FILE = "params.yaml"
LOG_LINES = 20  # the lines of a failed experiment's log shown


class Refused(Exception):
    """Why the sweep cannot start: printed as one `error:` line (and a `hint:`), exit status 1."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Experiment:
    name: str
    overrides: tuple[str, ...]  # as `dvc exp run -S` takes them; `file:` only for a file other than params.yaml

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "(no override)"


# ----------------------------------------------------------------------------------------------------------------------
# The grid, with DVC's own parser


def grid(overrides: list[str]) -> list[list[str]]:
    """One list of overrides per experiment, as `dvc exp run --queue -S ...` makes them (a comma list or `range()`
    a sweep over its values, several sweeps their product)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import OverrideParseException

    if not overrides:
        return [[]]
    try:
        combinations = get_hydra_sweeps(to_path_overrides(overrides))
    except (OverrideParseException, InvalidArgumentError) as e:
        raise Refused(f"not a valid -S override: {' '.join(str(e).split())}",
                      "write them as for `dvc exp run --queue -S key=value`, e.g. -S 'train.seed=2,3'") from None
    return [[o if path == PARAMS_FILE else f"{path}:{o}" for path, found in c.items() for o in found]
            for c in combinations]


def _canonical(override: str) -> str:
    """An override written one way whatever its spelling (spaces, quotes): `file:key=value`."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import to_hydra_overrides

    ((path, (text,)),) = to_path_overrides([override]).items()
    (parsed,) = to_hydra_overrides([text])
    return f"{path}:{parsed.get_key_element()}={parsed.get_value_element_as_str()}"


def experiment_name(commit: str, overrides: list[str]) -> str:
    """`sweep-<hash>` of the baseline commit and the overrides (in any order): the same experiment, the same name."""
    text = "\n".join([commit, *sorted(_canonical(o) for o in overrides)])
    return "sweep-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def experiments(overrides: list[str], commit: str) -> list[Experiment]:
    found = [Experiment(experiment_name(commit, c), tuple(c)) for c in grid(overrides)]
    return list({e.name: e for e in found}.values())  # a value given twice in a list is one experiment


# ----------------------------------------------------------------------------------------------------------------------
# The user's clone: what the workers need, checked before anything starts


def _git(root: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and result.returncode:
        raise Refused(f"git {' '.join(args)} failed: {' '.join(result.stderr.split()) or result.returncode}")
    return result.stdout.rstrip("\n") if result.returncode == 0 else ""


def repository_root() -> Path:
    found = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if found.returncode:
        raise Refused(f"{Path.cwd()} is not in a git repository", "run the sweep in a clone of the project")
    return Path(found.stdout.strip())


def git_remote_url(root: Path, remote: str) -> str:
    url = _git(root, "remote", "get-url", remote, check=False)
    if not url:
        names = _git(root, "remote").split()
        raise Refused(f"no git remote {remote!r} (this clone has {', '.join(names) or 'none'})",
                      "each experiment is a clone of the git remote: name one with --git-remote, or add it "
                      "with `git remote add origin URL`")
    # A folder of this machine: absolute, as the workers clone it from their own folders.
    if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url) and not Path(url).is_absolute():
        url = str((root / url).resolve())
    return url


def remote_heads(url: str, root: Path) -> dict[str, str]:
    """{ref: commit} of the git remote's branches, tags and experiments."""
    listing = subprocess.run(["git", "ls-remote", url], cwd=root, capture_output=True, text=True)
    if listing.returncode:
        raise Refused(f"cannot read the git remote {url}: {' '.join(listing.stderr.split())}",
                      "check its address and your credentials for it (`git ls-remote URL`)")
    return {ref: sha for sha, ref in (line.split("\t") for line in listing.stdout.splitlines() if "\t" in line)}


def _reachable(root: Path, commit: str, tips: list[str]) -> bool:
    for tip in tips:
        if tip == commit:
            return True
        # `merge-base` fails alike for a tip this clone lacks and for one that does not descend from the commit.
        if subprocess.run(["git", "merge-base", "--is-ancestor", commit, tip], cwd=root,
                          capture_output=True).returncode == 0:
            return True
    return False


def check_on_remote(root: Path, remote: str, url: str, commit: str, heads: dict[str, str]) -> None:
    """The commit is on a branch or tag of the git remote (so every worker can check it out), or refuse."""
    tips = [sha for ref, sha in heads.items() if ref.startswith(("refs/heads/", "refs/tags/"))]
    if _reachable(root, commit, tips):
        return
    # The remote may hold commits this clone has not fetched yet, one of them a descendant of ours.
    subprocess.run(["git", "fetch", "--quiet", remote], cwd=root, capture_output=True)
    if not _reachable(root, commit, tips):
        raise Refused(f"the current commit {commit[:7]} is not on the git remote {remote!r} ({url}), "
                      "so the workers cannot check it out",
                      f"push it first: git push {remote} HEAD")


def check_committed(root: Path) -> None:
    """Nothing that the experiments would leave out: no change to a tracked file, staged or not, and no file git
    neither tracks nor ignores (DVC's outputs are ignored)."""
    status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    changed = [line[3:] for line in status.splitlines() if line]
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise Refused(f"uncommitted changes would be left out of the experiments: {', '.join(changed[:3])}{more}",
                      "each experiment runs a clone of the current commit: commit and push them "
                      "(or `git stash -u` them) first")


def dvc_remote(root: Path, name: str | None) -> tuple[str, str]:
    """(name, url) of the DVC remote the experiments' outputs go to: `name`, or the default remote."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            config = repo.config
            remotes = {n: c.get("url", "") for n, c in config.get("remote", {}).items()}
            default = config.get("core", {}).get("remote")
    except Exception as e:  # not a DVC repository, a damaged config: DVC's message
        raise Refused(f"cannot read the DVC configuration of {root}: {e}") from None
    name = name or default
    if not remotes or not name:
        raise Refused("no DVC remote is configured: the workers would have nowhere to push the experiments' "
                      "outputs, nor this clone anywhere to pull them from",
                      "add one that every worker reaches, e.g. `dvc remote add -d storage s3://bucket/path` "
                      "(or a shared folder), commit .dvc/config and push; or name one with --dvc-remote")
    if name not in remotes:
        raise Refused(f"no DVC remote {name!r} (configured: {', '.join(remotes)})", "name one with --dvc-remote")
    return name, remotes[name]


def done_on_remote(heads: dict[str, str], commit: str) -> set[str]:
    """Names of the experiments of baseline `commit` that the git remote holds (refs/exps/ab/cdef.../<name>)."""
    prefix = f"refs/exps/{commit[:2]}/{commit[2:]}/"
    return {ref.removeprefix(prefix) for ref in heads if ref.startswith(prefix)}


# ----------------------------------------------------------------------------------------------------------------------
# One experiment: the job that a Ray task runs (stdlib only, so that it runs wherever the project's packages are)


def run_experiment(job: dict) -> dict:
    """Clone the git remote at the commit, `dvc exp run --pull -n NAME -S ...`, `dvc exp push` (commit and
    outputs); {name, ok, seconds, step, tail}: `tail` the last lines of the log when a step failed."""
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix=f"{job['name']}-"))
    log_path = work / "log.txt"
    repo = work / "repo"
    env = {**os.environ, **job["env"]}
    if "OMP_NUM_THREADS" not in job["env"]:
        env.pop("OMP_NUM_THREADS", None)  # set by Ray to the task's CPUs; the stages choose their threads
    # The stages' `python` and DVC: this worker's interpreter, the one that has the project's packages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    dvc = [sys.executable, "-m", "dvc"]
    sets = [arg for o in job["overrides"] for arg in ("-S", o)]
    steps = [
        ("git clone", ["git", "clone", "--quiet", "--no-checkout", job["git_url"], str(repo)], work),
        ("git checkout", ["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", job["commit"]], repo),
        *[("git config", ["git", "config", key, value], repo) for key, value in job["identity"].items()],
        # The DVC remote as the driver resolved it (a relative folder, or one set in its config.local).
        ("dvc remote add", [*dvc, "remote", "add", "--local", "--force", "--default", job["dvc_remote"],
                            job["dvc_url"]], repo),
        ("dvc exp run", [*dvc, "exp", "run", "--pull", "-n", job["name"], *sets], repo),
        ("dvc exp push", [*dvc, "exp", "push", "--remote", job["dvc_remote"], "origin", job["name"]], repo),
    ]
    result = {"name": job["name"], "ok": False, "step": "", "tail": "", "host": os.uname().nodename}
    try:
        with open(log_path, "w") as log:
            for label, cmd, cwd in steps:
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                code = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT).returncode
                if code:
                    result["step"] = f"`{label}` exited with {code}"
                    break
            else:
                result["ok"] = True
    except Exception:  # a missing git, a full disk: the traceback in place of a log
        with open(log_path, "a") as log:
            log.write(traceback.format_exc())
        result["step"] = "the task raised"
    finally:
        if not result["ok"]:
            lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
            result["tail"] = "\n".join(lines[-job.get("log_lines", LOG_LINES):])
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.time() - start, 1)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# The sweep


def _start_ray(args: argparse.Namespace):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage statistics sent, no prompt
    if not args.address and not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        # A token for this cluster alone (Ray would otherwise write one to ~/.ray/auth_token and warn); read when
        # Ray is imported.
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    import ray

    if __name__ != "__main__":
        # The task's function travels with it: a worker of another machine need not import this module.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if args.address:
        ray.init(address=args.address, **common)
        where = f"the Ray cluster at {args.address}"
    else:
        # Exactly `workers` tasks at once: each reserves --cpus-per-task of the CPUs this cluster announces.
        ray.init(address="local", num_cpus=math.ceil(args.workers * args.cpus_per_task),
                 object_store_memory=100 * 2**20, **common)
        where = f"a local Ray cluster of {args.workers} worker{'s' * (args.workers != 1)}"
    return ray, where


def _report_failure(write, experiment: Experiment, result: dict) -> None:
    err = lambda text: write(text, file=sys.stderr)  # noqa: E731
    err(f"failed: {experiment.name} (-S {' -S '.join(experiment.overrides)}): {result['step']}"
          + (f" on {result['host']}" if result.get("host") else "") + "; its log ends:")
    err("\n".join(f"    {line}" for line in (result.get("tail") or "(empty)").splitlines()))


def run_sweep(todo: list[Experiment], jobs: dict[str, dict], args: argparse.Namespace) -> list[Experiment]:
    """Run `todo` as Ray tasks, a progress bar over them; the experiments that failed."""
    from tqdm import tqdm

    ray, where = _start_ray(args)
    failed = []
    try:
        task = ray.remote(run_experiment)
        pending = {task.options(num_cpus=args.cpus_per_task, num_gpus=args.gpus_per_task,
                                name=e.name).remote(jobs[e.name]): e for e in todo}
        print(f"running {len(todo)} experiment{'s' * (len(todo) != 1)} on {where}", flush=True)
        with tqdm(total=len(todo), desc="experiments", unit="exp", file=sys.stderr, dynamic_ncols=True) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    experiment = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # the worker died, the cluster went away
                        result = {"ok": False, "step": f"the Ray task failed ({type(e).__name__})", "tail": str(e)}
                    if result["ok"]:
                        bar.write(f"done: {experiment.name} ({experiment.label}) in {result['seconds']:.0f} s "
                                  f"on {result['host']}")
                    else:
                        failed.append(experiment)
                        _report_failure(bar.write, experiment, result)
                    bar.update()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()
    return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="docs/sweeps.md: clusters of several machines, Slurm and Kubernetes.")
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="OVERRIDE",
                        help="as for `dvc exp run --queue -S`: key=value, key=a,b,c (a sweep); repeatable")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--address", help="join a running Ray cluster (e.g. auto, or HEAD_IP:6379)")
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a local Ray cluster running N experiments at once "
                            "(default: this machine's cores / --cpus-per-task)")
    parser.add_argument("--cpus-per-task", type=float, default=2, metavar="C",
                        help="CPUs each experiment reserves on its node (default 2, train.threads' default)")
    parser.add_argument("--gpus-per-task", type=float, default=0, metavar="G",
                        help="GPUs each experiment reserves (default 0)")
    parser.add_argument("--git-remote", default="origin", metavar="NAME",
                        help="the git remote the workers clone and push to (default origin)")
    parser.add_argument("--dvc-remote", metavar="NAME", help="the DVC remote (default: the default remote)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.cpus_per_task <= 0:
        parser.error("--cpus-per-task must be more than 0")
    if not args.address and args.workers is None:
        args.workers = max(1, int((os.cpu_count() or 1) // args.cpus_per_task))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        root = repository_root()
        commit = _git(root, "rev-parse", "HEAD")
        url = git_remote_url(root, args.git_remote)
        heads = remote_heads(url, root)
        check_on_remote(root, args.git_remote, url, commit, heads)
        check_committed(root)
        remote, remote_url = dvc_remote(root, args.dvc_remote)
        if not args.overrides:
            raise Refused("no -S override: nothing to sweep", "e.g. python -m tools.sweep -S 'train.seed=2,3'")
        planned = experiments(args.overrides, commit)
        there = done_on_remote(heads, commit)
        if any(e.name not in there for e in planned) and importlib.util.find_spec("ray") is None:
            raise Refused("Ray is not installed in this environment",
                          "pip install -r requirements-sweep.txt (`make seeds RUNNER=ray` installs it)")
    except Refused as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 1

    todo = [e for e in planned if e.name not in there]
    print(f"{len(planned)} experiment{'s' * (len(planned) != 1)} of commit {commit[:7]}: {len(planned) - len(todo)} "
          f"already on {args.git_remote}, {len(todo)} to run", flush=True)
    for e in planned:
        if e.name in there:
            print(f"already on {args.git_remote}: {e.name} ({e.label})")
    identity = {key: value for key in ("user.name", "user.email") if (value := _git(root, "config", key, check=False))}
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    jobs = {e.name: {"name": e.name, "overrides": list(e.overrides), "commit": commit, "git_url": url,
                     "dvc_remote": remote, "dvc_url": remote_url, "env": env, "identity": identity} for e in todo}
    try:
        failed = run_sweep(todo, jobs, args) if todo else []
    except KeyboardInterrupt:
        print("error: interrupted; the experiments that came back are on the git remote: run the same sweep "
              "again to run the others", file=sys.stderr)
        return 130

    back = [e.name for e in planned if e not in failed]
    if back:
        print(f"dvc exp pull {args.git_remote} ({len(back)} experiment{'s' * (len(back) != 1)})", flush=True)
        pulled = subprocess.run([sys.executable, "-m", "dvc", "exp", "pull", "--remote", remote, args.git_remote,
                                 *back], cwd=root, capture_output=True, text=True)
        if pulled.returncode:
            print(f"error: dvc exp pull failed: {' '.join((pulled.stderr or pulled.stdout).split())}",
                  file=sys.stderr)
            return 1
    if failed:
        print(f"error: {len(failed)} of {len(planned)} experiments failed: "
              f"{', '.join(f'{e.name} ({e.label})' for e in failed)}", file=sys.stderr)
        return 1
    print(f"the sweep's {len(planned)} experiment{'s' * (len(planned) != 1)} in this clone: "
          f"dvc exp show --rev {commit[:7]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
