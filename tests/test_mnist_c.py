"""src/mnist_c.py: reading an MNIST-C folder (uint8 or float), every bad input, the stage's file, the download."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from src import cli, mnist_c
from src.errors import UserError
from src.mnist_c import CORRUPTIONS, NAMES, load_mnist_c
from tests.conftest import write_mnist_c as write_folder
from tests.test_errors import error_line


def run_stage(monkeypatch, folder: Path, out: Path) -> int:
    monkeypatch.setenv("NORMCMP_MNIST_C_DIR", str(folder))
    return cli.run(mnist_c.app, ["--out", str(out)])


# --- reading a folder ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
def test_a_folder_round_trips_through_the_stage_file(tmp_path, monkeypatch, capsys, dtype):
    expected = write_folder(tmp_path / "mnist_c", dtype=dtype)
    out = tmp_path / "data" / "mnist_c.npz"
    assert run_stage(monkeypatch, tmp_path / "mnist_c", out) == 0
    assert "MNIST-C from NORMCMP_MNIST_C_DIR=" in capsys.readouterr().out
    sets = load_mnist_c(out)
    assert tuple(sets) == NAMES and NAMES[0] == "identity" and NAMES[1:] == CORRUPTIONS
    for name, (images, labels) in sets.items():
        assert images.dtype == torch.uint8 and images.shape == (6, 1, 28, 28) and labels.dtype == torch.int64
        assert np.array_equal(images.numpy(), expected[name][0]) and np.array_equal(labels.numpy(), expected[name][1])


def test_float_pixels_are_rounded(tmp_path):
    write_folder(tmp_path)
    np.save(tmp_path / "fog" / "test_images.npy", np.full((6, 28, 28, 1), 254.6, dtype=np.float32))
    images, _ = mnist_c.read_set(tmp_path / "fog")
    assert images.dtype == np.uint8 and (images == 255).all()


def _missing_folder(folder: Path) -> str:
    shutil.rmtree(folder)
    return f"{folder}: no such folder"


def _missing_sets(folder: Path) -> str:
    shutil.rmtree(folder / "zigzag")
    shutil.rmtree(folder / "fog")
    return f"{folder} lacks fog/, zigzag/"


def _missing_file(folder: Path) -> str:
    (folder / "fog" / "test_labels.npy").unlink()
    return f"{folder} lacks fog/test_labels.npy"


def _save(folder: Path, file: str, array: np.ndarray) -> Path:
    path = folder / "fog" / file
    np.save(path, array)
    return path


def _bad_images(array: np.ndarray, problem: str):
    return lambda folder: f"{_save(folder, 'test_images.npy', array)}: {problem}"


def _bad_labels(array: np.ndarray, problem: str):
    return lambda folder: f"{_save(folder, 'test_labels.npy', array)}: {problem}"


def _not_npy(folder: Path) -> str:
    path = folder / "fog" / "test_images.npy"
    path.write_bytes(path.read_bytes()[:100])  # cut short
    return f"{path}: not a readable NumPy .npy array"


def _npz(folder: Path) -> str:
    path = folder / "fog" / "test_images.npy"
    with open(path, "wb") as f:
        np.savez(f, images=np.zeros((6, 28, 28, 1), np.uint8))
    return f"{path}: is an .npz archive"


def _pickled(folder: Path) -> str:
    return f"{_save(folder, 'test_labels.npy', np.array([1, 'a'], dtype=object))}: not a readable NumPy .npy array"


def _counts(folder: Path) -> str:
    labels = _save(folder, "test_labels.npy", np.zeros(5, np.uint8))
    return f"{folder / 'fog' / 'test_images.npy'} holds 6 images but {labels} holds 5 labels"


NAN = np.zeros((6, 28, 28, 1), np.float32)
NAN[2, 3, 4, 0] = np.nan
INF = np.zeros((6, 28, 28, 1), np.float64)
INF[0, 0, 0, 0] = -np.inf
BAD_INPUTS = {
    "missing folder": _missing_folder,
    "missing corruptions": _missing_sets,
    "missing file": _missing_file,
    "not npy": _not_npy,
    "npz": _npz,
    "pickled": _pickled,
    "images without channel": _bad_images(np.zeros((6, 28, 28), np.uint8), "images of shape (6, 28, 28), expected"),
    "images of other size": _bad_images(np.zeros((6, 32, 32, 1), np.uint8), "images of shape (6, 32, 32, 1)"),
    "no images": _bad_images(np.zeros((0, 28, 28, 1), np.uint8), "images of shape (0, 28, 28, 1)"),
    "int images": _bad_images(np.zeros((6, 28, 28, 1), np.int32), "images are int32, expected uint8 or float"),
    "bool images": _bad_images(np.zeros((6, 28, 28, 1), bool), "images are bool"),
    "nan": _bad_images(NAN, "holds NaN or infinite pixel values"),
    "inf": _bad_images(INF, "holds NaN or infinite pixel values"),
    "above 255": _bad_images(np.full((6, 28, 28, 1), 255.6), "holds pixel values outside 0-255 (255.6 to 255.6)"),
    "below 0": _bad_images(np.full((6, 28, 28, 1), -1.0, np.float32), "holds pixel values outside 0-255 (-1 to -1)"),
    "float labels": _bad_labels(np.zeros(6), "labels are float64, expected integers"),
    "2-d labels": _bad_labels(np.zeros((6, 1), np.uint8), "labels of shape (6, 1), expected (N,)"),
    "label 10": _bad_labels(np.array([0, 1, 2, 10, 4, 5]), "holds labels outside 0-9 (0 to 10)"),
    "label -1": _bad_labels(np.array([0, 1, 2, -1, 4, 5]), "holds labels outside 0-9 (-1 to 5)"),
    "counts": _counts,
}


@pytest.mark.parametrize("damage", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_every_bad_input_is_one_error_naming_the_file_and_writes_nothing(tmp_path, monkeypatch, capsys, damage):
    folder = tmp_path / "mnist_c"
    write_folder(folder)
    message = damage(folder)
    out = tmp_path / "data" / "mnist_c.npz"
    assert run_stage(monkeypatch, folder, out) == 1
    assert error_line(capsys).startswith(f"error: {message}")
    assert not out.exists() and not any(out.parent.glob("*"))


def test_a_bad_folder_leaves_the_previous_file_as_it_was(tmp_path, monkeypatch, capsys):
    folder, out = tmp_path / "mnist_c", tmp_path / "mnist_c.npz"
    write_folder(folder)
    assert run_stage(monkeypatch, folder, out) == 0
    before = out.read_bytes()
    (folder / "identity" / "test_images.npy").unlink()
    assert run_stage(monkeypatch, folder, out) == 1
    assert "lacks identity/test_images.npy" in error_line(capsys)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mnist_c", "mnist_c.npz"]


def test_without_the_variable_the_stage_downloads_the_zip_and_reads_its_test_split(tmp_path, monkeypatch, capsys):
    """The download path, offline: the URL points at a local zip laid out as the release (test and train files)."""
    expected = write_folder(tmp_path / "release" / "mnist_c")
    for name in NAMES:
        np.save(tmp_path / "release" / "mnist_c" / name / "train_images.npy", np.zeros((2, 28, 28, 1), np.uint8))
    archive = shutil.make_archive(str(tmp_path / "mnist_c"), "zip", tmp_path / "release")
    monkeypatch.setattr(mnist_c, "URL", Path(archive).as_uri())
    root = tmp_path / "download"
    root.mkdir()
    folder = mnist_c.download(root)
    assert folder == root / "mnist_c" and not (root / "mnist_c.zip").exists()
    assert not list(root.rglob("train_*")) and len(list(root.rglob("test_*.npy"))) == 2 * len(NAMES)
    monkeypatch.delenv("NORMCMP_MNIST_C_DIR", raising=False)
    out = tmp_path / "mnist_c.npz"
    assert cli.run(mnist_c.app, ["--out", str(out)]) == 0
    assert "MNIST-C from the official zip: 16 sets" in capsys.readouterr().out
    assert np.array_equal(load_mnist_c(out)["zigzag"][0].numpy(), expected["zigzag"][0])


def test_a_failed_download_names_the_variable_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist_c, "URL", (tmp_path / "nowhere.zip").as_uri())
    monkeypatch.delenv("NORMCMP_MNIST_C_DIR", raising=False)
    out = tmp_path / "data" / "mnist_c.npz"
    assert cli.run(mnist_c.app, ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: could not download MNIST-C from file://" in err
    assert "hint: without internet, set NORMCMP_MNIST_C_DIR" in err
    assert not out.parent.exists()


def test_the_stage_file_is_refused_when_missing_damaged_or_incomplete(tmp_path):
    sets = write_folder(tmp_path / "mnist_c")
    with pytest.raises(UserError, match="missing.npz not found; the download_mnist_c stage makes it"):
        load_mnist_c(tmp_path / "missing.npz")
    good = tmp_path / "good.npz"
    mnist_c.save_mnist_c(good, sets)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"cut.npz is corrupt \("):
        load_mnist_c(cut)
    mnist_c.save_mnist_c(tmp_path / "partial.npz", {k: v for k, v in sets.items() if k != "fog"})
    with pytest.raises(UserError, match=r"partial.npz is corrupt \(it lacks fog_images, fog_labels\)"):
        load_mnist_c(tmp_path / "partial.npz")
    bad = dict(sets, fog=(sets["fog"][0], sets["fog"][1] + 10))
    mnist_c.save_mnist_c(tmp_path / "bad.npz", bad)
    with pytest.raises(UserError, match=r"fog_labels holds a label outside 0..9"):
        load_mnist_c(tmp_path / "bad.npz")


