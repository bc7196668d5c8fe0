"""Every file a stage reads, damaged in any way, and every output it cannot write: one clear error, nothing changed.

One workspace is made once (download, the three train stages, evaluate and plot, in-process on synthetic data);
each case damages one input or puts one output on a full or read-only tmpfs, runs the stage that reads or writes
it, and checks the one `error:` line, its `hint:`, exit code 1, and that no file in the workspace changed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from src import cli, corruption, download, evaluate, mnist_c, plot, shift, train
from src.data import FILES
from src.evaluate import CURVES
from tests.conftest import tiny_params, write_mnist, write_mnist_c

STAGES = {"download": download, "train": train, "evaluate": evaluate, "shift": shift, "download_mnist_c": mnist_c,
          "mnist_c": corruption, "plot": plot}
VARIANTS = ("bn_l1", "gn", "ln")
IN_CI = os.environ.get("CI", "").lower() == "true"


def run(stage: str, *argv: str) -> int:
    return cli.run(STAGES[stage].app, list(argv))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error(err: str) -> tuple[str, str]:
    """The `error:` and `hint:` lines of a stage's stderr: exactly one of each, no traceback, nothing unexpected."""
    assert "Traceback" not in err and "unexpected" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    hints = [line for line in err.splitlines() if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, err
    return errors[0], hints[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Iterator[Path]:
    """A folder holding the outputs of all nine stages (two epochs on synthetic data), the four IDX files and a
    small MNIST-C folder."""
    root = tmp_path_factory.mktemp("workspace")
    write_mnist(root / "mnist")
    write_mnist_c(root / "mnist_c", n=20)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(epochs=2)))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("NORMCMP_DATA_DIR", str(root / "mnist"))
        mp.setenv("NORMCMP_MNIST_C_DIR", str(root / "mnist_c"))
        for stage, *argv in [("download",), *[("train", v, "--no-progress") for v in VARIANTS],
                             ("evaluate",), ("shift",), ("download_mnist_c",), ("mnist_c",), ("plot",)]:
            assert run(stage, *argv) == 0, stage
        yield root


@pytest.fixture
def in_workspace(workspace, monkeypatch) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(workspace / "mnist"))
    monkeypatch.setenv("NORMCMP_MNIST_C_DIR", str(workspace / "mnist_c"))
    return workspace


# --- damaged inputs -------------------------------------------------------------------------------

def _live(v: str) -> list[str]:
    return [*(f"dvclive/{v}/plots/metrics/{name}.tsv" for name in CURVES), f"dvclive/{v}/metrics.json"]


# Every file a stage reads: (path, the stage that reads it, the stage that makes it; None: outside the pipeline).
INPUTS = [
    *((f"mnist/{name}", "download", None) for name in FILES.values()),
    *(("data/dataset.npz", reader, "download") for reader in ("train", "evaluate", "plot")),
    *((f"models/{v}.pt", "evaluate", f"train_{v}") for v in VARIANTS),
    *((path, "evaluate", f"train_{v}") for v in VARIANTS for path in _live(v)),
    *((f"plots/curves/{name}.csv", "plot", "evaluate") for name in ("test_loss", "test_acc")),
    *((f"plots/misclassified/{v}.json", "plot", "evaluate") for v in VARIANTS),
    ("models/gn.pt", "shift", "train_gn"),
    ("plots/shift.csv", "plot", "shift"),
    ("data/mnist_c.npz", "mnist_c", "download_mnist_c"),
    ("plots/mnist_c.csv", "plot", "mnist_c"),
]
DAMAGES = ["empty", "first byte", "ten bytes", "half", "last byte missing", "random bytes", "another file"]


def donor(path: str) -> str:
    """A file of another kind (or another column) whose content replaces `path`'s."""
    if path.startswith("mnist/"):  # the split's images <-> its labels: valid gzip, wrong IDX magic number
        role = next(r for r, name in FILES.items() if name == Path(path).name)
        split, kind = role.split("_")
        return f"mnist/{FILES[split + ('_labels' if kind == 'images' else '_images')]}"
    if path.endswith(".tsv"):  # the next metric's log: a valid log with another column
        names = [f"{name}.tsv" for name in CURVES]
        live, name = path.split("/plots/metrics/")
        return f"{live}/plots/metrics/{names[(names.index(name) + 1) % len(names)]}"
    return {".npz": "models/gn.pt", ".pt": "data/dataset.npz", ".csv": "plots/per_class_accuracy.csv",
            ".json": "metrics/gn.json" if "misclassified" in path else "data/stats.json"}[Path(path).suffix]


def damaged(data: bytes, damage: str, path: str) -> bytes:
    """`data` damaged as named; truncations keep bytes of the content, not counting a final newline."""
    end = len(data.rstrip(b"\r\n"))
    cut = {"empty": 0, "first byte": 1, "ten bytes": min(10, end - 1), "half": end // 2,
           "last byte missing": end - 1}
    if damage in cut:
        return data[: cut[damage]]
    if damage == "random bytes":
        return np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    return Path(donor(path)).read_bytes()


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("path, reader, maker", INPUTS, ids=[f"{p}-{r}" for p, r, _ in INPUTS])
def test_a_damaged_input_is_one_clear_error_naming_the_file_and_its_stage(in_workspace, capsys, path, reader,
                                                                         maker, damage):
    target = Path(path)
    good = target.read_bytes()
    before = snapshot(in_workspace)
    target.write_bytes(damaged(good, damage, path))
    try:
        assert run(reader, *(["gn", "--no-progress"] if reader == "train" else [])) == 1
        error, hint = one_error(capsys.readouterr().err)
        assert target.name in error and (maker is None or f"{path} " in error), error
        if maker:
            assert f"the {maker} stage makes it" in error and f"`dvc repro {maker}`" in hint, (error, hint)
        else:
            assert "NORMCMP_DATA_DIR" in hint, hint
    finally:
        target.write_bytes(good)
    assert snapshot(in_workspace) == before  # the failed stage wrote nothing, and left no temporary file


# --- outputs that cannot be written ---------------------------------------------------------------

@pytest.fixture
def mount(tmp_path) -> Iterator[Path]:
    """A small tmpfs (256 KiB), unmounted afterwards."""
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip("mounting a tmpfs needs root (CI runs this as root)")
    where = tmp_path / "mnt"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def make(mount: Path, state: str) -> None:
    """Fill the tmpfs (a filler file takes every byte left) or make it read-only."""
    if state == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        return
    with open(mount / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


# (stage, its options, with {m} the mount; the previous output there, which must survive the failure)
WRITES = [
    ("download", ["--out", "{m}/dataset.npz"], "dataset.npz"),
    ("download", ["--stats-out", "{m}/stats.json"], "stats.json"),
    ("train", ["gn", "--no-progress", "--model-out", "{m}/gn.pt"], "gn.pt"),
    ("train", ["gn", "--no-progress", "--live-dir", "{m}/gn"], "gn/metrics.json"),
    ("evaluate", ["--metrics", "{m}"], "gn.json"),
    ("evaluate", ["--plots", "{m}"], "confusion/gn.csv"),
    ("plot", ["--out", "{m}/images"], "images/test_loss.png"),
]
CAUSES = {"full": "no space left on device", "read-only": "read-only file system"}


@pytest.mark.parametrize("state", CAUSES)
@pytest.mark.parametrize("stage, argv, previous", WRITES, ids=[f"{s}-{a[-2]}" for s, a, _ in WRITES])
def test_an_output_on_a_full_or_read_only_disk_is_one_clear_error_and_changes_nothing(
        in_workspace, mount, capsys, stage, argv, previous, state):
    before = snapshot(in_workspace)
    (mount / previous).parent.mkdir(parents=True, exist_ok=True)
    (mount / previous).write_bytes(b"the previous output")
    make(mount, state)
    on_mount = snapshot(mount)
    assert run(stage, *(a.format(m=mount) for a in argv)) == 1
    error, hint = one_error(capsys.readouterr().err)
    assert error.startswith(f"error: cannot write {mount}/") and error.endswith(CAUSES[state]), error
    assert "previous outputs are unchanged" in hint
    assert snapshot(mount) == on_mount  # no partial file, and the previous output as it was
    assert snapshot(in_workspace) == before  # nor did any other output of the stage change


def test_output_folders_are_replaced_whole_so_no_stale_file_stays(in_workspace, tmp_path):
    """With `persist: true` DVC no longer empties output folders: a variant dropped from params.yaml must not
    leave its files behind (evaluate and plot write their folders to the side and swap them in)."""
    plots, out = tmp_path / "plots", tmp_path / "images"
    for stale in (plots / "confusion" / "old.csv", plots / "misclassified" / "old.json", plots / "curves" / "x.csv",
                  out / "misclassified_old.png"):
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("from a variant that is gone")
    assert run("evaluate", "--plots", str(plots), "--metrics", str(tmp_path / "metrics")) == 0
    assert run("shift", "--plots", str(plots / "shift.csv"), "--metrics", str(tmp_path / "metrics" / "shift.json")) == 0
    assert run("mnist_c", "--plots", str(plots / "mnist_c.csv"),
               "--metrics", str(tmp_path / "metrics" / "mnist_c.json")) == 0
    assert run("plot", "--plots", str(plots), "--out", str(out)) == 0
    assert sorted(p.name for p in (plots / "confusion").iterdir()) == [f"{v}.csv" for v in VARIANTS]
    assert sorted(p.name for p in (plots / "misclassified").iterdir()) == [f"{v}.json" for v in VARIANTS]
    assert not (plots / "curves" / "x.csv").exists() and (plots / "curves" / "test_acc.csv").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["test_loss.png", "test_accuracy.png", "shift.png", "mnist_c.png",
         *(f"misclassified_{v}.png" for v in VARIANTS)])
