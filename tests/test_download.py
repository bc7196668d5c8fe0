"""The second dataset: each dataset reads its own folder variable, refuses the other's files, names its classes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from src import cli, corruption, download, evaluate, mnist_c, plot, shift, train
from src.data import FILES, IMAGE_MAGIC
from tests.conftest import synthetic_split, tiny_params, write_idx, write_mnist, write_mnist_c
from tests.test_pipeline import IN_CI, REAL_DATA, make_repo, sh

FASHION = download.DATASETS["fashion-mnist"].classes
REAL_FASHION = Path(os.environ.get("NORMCMP_REAL_FASHION_DATA", "/usr/share/datasets/fashion-mnist"))
VARIANTS = ("bn_l1", "gn", "ln")
FASHION_FLOOR = 78.0  # one epoch, batch 32, lr 0.03 gave BN + L1 86.9, GN 84.2, LN 81.4 (2-core CPU)


def write_fashion_like(folder: Path) -> Path:
    """Synthetic files with Fashion-MNIST's pixel mean (~0.29): write_mnist's bands on a brighter background."""
    write_mnist(folder)
    for split, n, seed in (("train", 256, 0), ("test", 128, 1)):
        images, _ = synthetic_split(n, seed)
        write_idx(folder / FILES[f"{split}_images"], np.minimum(images.astype(int) + 45, 255), IMAGE_MAGIC)
    return folder


def use_dataset(name: str) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["download"]["dataset"] = name
    Path("params.yaml").write_text(yaml.safe_dump(params))


def run_download(capsys) -> tuple[int, str]:
    code = cli.run(download.app, ["--out", "out.npz", "--stats-out", "stats.json"])
    return code, capsys.readouterr().err


@pytest.fixture
def no_folders(monkeypatch):
    for spec in download.DATASETS.values():
        monkeypatch.delenv(spec.local_dir_env, raising=False)


def test_fashion_reads_its_own_variable_not_mnists(workdir, tmp_path, capsys, monkeypatch, no_folders):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", type("FashionMNIST", (), {"__init__": offline}))
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(write_mnist(tmp_path / "mnist")))
    use_dataset("fashion-mnist")
    code, err = run_download(capsys)
    assert code == 1 and err.startswith("error: could not download fashion-mnist (RuntimeError: Error downloading")
    assert ("hint: without internet, set NORMCMP_FASHION_MNIST_DIR to a folder holding the four IDX .gz files "
            "(NORMCMP_DATA_DIR is for mnist only)") in err

    monkeypatch.setenv("NORMCMP_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    code, err = run_download(capsys)
    assert code == 1 and f"error: NORMCMP_FASHION_MNIST_DIR={tmp_path / 'nowhere'}: no such folder" in err

    monkeypatch.setenv("NORMCMP_FASHION_MNIST_DIR", str(write_fashion_like(tmp_path / "fashion")))
    assert run_download(capsys)[0] == 0
    assert json.loads(Path("stats.json").read_text())["dataset"] == "fashion-mnist"
    with np.load("out.npz") as z:
        assert list(z["classes"]) == FASHION


@pytest.mark.parametrize("wanted, variable, found", [
    ("fashion-mnist", "NORMCMP_FASHION_MNIST_DIR", "mnist"),
    ("mnist", "NORMCMP_DATA_DIR", "fashion-mnist"),
])
def test_the_other_datasets_files_are_refused(workdir, tmp_path, capsys, monkeypatch, no_folders,
                                              wanted, variable, found):
    folder = write_mnist(tmp_path / "m") if found == "mnist" else write_fashion_like(tmp_path / "f")
    monkeypatch.setenv(variable, str(folder))
    use_dataset(wanted)
    code, err = run_download(capsys)
    names = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
    lines = err.splitlines()
    assert code == 1 and len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"error: {variable}={folder} looks like {names[found]}, not {names[wanted]} "
                               "(training pixel mean 0.")
    other = download.DATASETS[found].local_dir_env
    assert lines[1] == (f"hint: point {variable} at the {names[wanted]} files; "
                        f"for {names[found]}, set download.dataset: {found} and {other}")
    assert not Path("out.npz").exists() and not Path("stats.json").exists()


def test_fashion_class_names_reach_every_output(workdir, tmp_path, capsys, monkeypatch, no_folders):
    monkeypatch.setenv("NORMCMP_FASHION_MNIST_DIR", str(write_fashion_like(tmp_path / "fashion")))
    use_dataset("fashion-mnist")
    assert cli.run(download.app, []) == 0
    for v in VARIANTS:
        assert cli.run(train.app, [v, "--no-progress"]) == 0
    assert cli.run(evaluate.app, []) == 0
    assert cli.run(shift.app, []) == 0
    write_mnist_c(tmp_path / "mnist_c", n=20)
    monkeypatch.setenv("NORMCMP_MNIST_C_DIR", str(tmp_path / "mnist_c"))
    assert cli.run(mnist_c.app, []) == 0 and cli.run(corruption.app, []) == 0
    figures = {}
    monkeypatch.setattr(plot, "save_figure", lambda fig, path, dpi: figures.setdefault(path.name, fig))
    assert cli.run(plot.app, []) == 0

    with open("plots/per_class_accuracy.csv", newline="") as f:
        assert [row["class"] for row in csv.DictReader(f)] == FASHION
    for v in VARIANTS:
        with open(f"plots/confusion/{v}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {r["actual"] for r in rows} <= set(FASHION) and {r["predicted"] for r in rows} <= set(FASHION)
        items = json.loads(Path(f"plots/misclassified/{v}.json").read_text())
        assert items and all(i["true"] in FASHION and i["predicted"] in FASHION for i in items)
        captions = [ax.get_title() for ax in figures[f"misclassified_{v}.png"].axes if ax.get_title()]
        true, pred = f"true {items[0]['true']}", f"pred {items[0]['predicted']}"
        assert captions[0].startswith((f"{true}, {pred}\n", f"{true}\n{pred}\n"))
        assert all(len(line) <= 30 for c in captions for line in c.splitlines())  # long names wrap, not overlap


@pytest.mark.skipif(not IN_CI and not os.environ.get("RUN_REAL_DATA"),
                    reason="runs in CI (CI=true) or with RUN_REAL_DATA=1: ~2 minutes on real Fashion-MNIST")
def test_real_fashion_mnist_one_epoch(tmp_path):
    assert (REAL_FASHION / FILES["train_images"]).is_file(), (
        f"real Fashion-MNIST not found in {REAL_FASHION} (Debian: apt-get install dataset-fashion-mnist)")
    params = tiny_params(epochs=1, batch_size=32, lr=0.03)  # as the real-MNIST test
    params["download"]["dataset"] = "fashion-mnist"
    repo, env = make_repo(tmp_path, params, REAL_FASHION)
    env.pop("NORMCMP_DATA_DIR")
    env["NORMCMP_FASHION_MNIST_DIR"] = str(REAL_FASHION)
    if REAL_DATA and REAL_DATA.is_dir():  # the trap the folder variables avoid: real MNIST offered as Fashion-MNIST
        wrong = subprocess.run([sys.executable, "-m", "src.download", "--out", str(tmp_path / "x.npz")], cwd=repo,
                               env={**env, "NORMCMP_FASHION_MNIST_DIR": str(REAL_DATA)}, capture_output=True, text=True)
        assert wrong.returncode == 1 and "looks like MNIST, not Fashion-MNIST" in wrong.stderr, wrong.stderr
    sh("dvc", "repro", cwd=repo, env=env)
    accuracy = {v: json.loads((repo / "metrics" / f"{v}.json").read_text())["test_acc"] for v in VARIANTS}
    print(f"Fashion-MNIST test accuracy after one epoch: {accuracy}")
    for v, acc in accuracy.items():
        assert acc >= FASHION_FLOOR, f"{v}: {acc:.2f}% after one epoch"
    with open(repo / "plots" / "per_class_accuracy.csv", newline="") as f:
        assert [row["class"] for row in csv.DictReader(f)] == FASHION
    items = json.loads((repo / "plots" / "misclassified" / "gn.json").read_text())
    assert all(i["true"] in FASHION and i["predicted"] in FASHION for i in items)


# --- the data of record -------------------------------------------------------------------------

def test_data_md5_is_the_md5_of_the_four_arrays_in_order():
    arrays = {"train_images": np.zeros((1, 2, 2), np.uint8), "train_labels": np.array([3], np.uint8),
              "test_images": np.full((1, 2, 2), 255, np.uint8), "test_labels": np.array([7], np.uint8)}
    import hashlib

    assert download.data_md5(arrays) == hashlib.md5(bytes([0] * 4 + [3] + [255] * 4 + [7])).hexdigest()


def test_other_files_than_the_data_of_record_are_named_in_one_note_not_refused(workdir, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(write_mnist(tmp_path / "mnist")))
    assert cli.run(download.app, ["--out", "out.npz", "--stats-out", "stats.json"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "MNIST files are not the data of record" in notes[0] and Path("out.npz").is_file()
    from src.data import load_data

    data = load_data("out.npz")  # the same files recorded as the data of record: no note
    arrays = {k: getattr(data, k).squeeze(1).numpy() if k.endswith("images") else getattr(data, k).numpy()
              .astype(np.uint8) for k in ("train_images", "train_labels", "test_images", "test_labels")}
    monkeypatch.setitem(download.RECORD, "mnist", download.data_md5(arrays))
    assert cli.run(download.app, ["--out", "out.npz", "--stats-out", "stats.json"]) == 0
    assert "note:" not in capsys.readouterr().err


@pytest.mark.skipif(not IN_CI and not os.environ.get("RUN_REAL_DATA"), reason="runs in CI (CI=true) or with "
                    "RUN_REAL_DATA=1: reads the real MNIST files")
def test_the_real_files_of_ci_are_the_data_of_record(workdir, capsys, monkeypatch):
    assert REAL_DATA and (REAL_DATA / FILES["train_images"]).is_file()
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(REAL_DATA))
    assert cli.run(download.app, ["--out", "out.npz", "--stats-out", "stats.json"]) == 0
    assert "note:" not in capsys.readouterr().err
