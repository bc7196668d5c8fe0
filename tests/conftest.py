"""Fixtures: small synthetic datasets written in the real IDX `.gz` format (no network)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from src import config, mnist_c
from src.config import ModelConfig, Run, TrainConfig
from src.data import FILES, IMAGE_MAGIC, LABEL_MAGIC, save_data

ROOT = Path(__file__).resolve().parents[1]


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file's bytes: big-endian magic, one int32 per dimension, then the uint8 payload."""
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    path.write_bytes(gzip.compress(idx_bytes(array, magic)))
    return path


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: each class lights up its own horizontal band over faint noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 + 2 * y : 4 + 2 * y, 4:24] = 255
    return images, labels


def write_mnist(folder: Path, n_train: int = 256, n_test: int = 128) -> Path:
    """The four MNIST files in `folder`, with synthetic content."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_split(n, seed)
        write_idx(folder / FILES[f"{split}_images"], images, IMAGE_MAGIC)
        write_idx(folder / FILES[f"{split}_labels"], labels, LABEL_MAGIC)
    return folder


def write_mnist_c(folder: Path, n: int = 6, dtype: str = "uint8") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A fake MNIST-C folder as the release lays it out (a different split per set); the uint8 images
    (N, 1, 28, 28) and labels each set must read as. Float images are the pixels plus up to ±0.4."""
    expected = {}
    for i, name in enumerate(mnist_c.NAMES):
        images, labels = synthetic_split(n, seed=i)
        pixels = images[..., None]  # (N, 28, 28, 1)
        if dtype != "uint8":
            jitter = np.random.default_rng(i).uniform(-0.4, 0.4, pixels.shape)
            pixels = np.clip(pixels + jitter, 0, 255).astype(dtype)
        (folder / name).mkdir(parents=True)
        np.save(folder / name / "test_images.npy", pixels)
        np.save(folder / name / "test_labels.npy", labels)
        expected[name] = images[:, None], labels.astype(np.int64)
    return expected


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """A folder holding four small synthetic MNIST IDX files."""
    return write_mnist(tmp_path / "mnist")


@pytest.fixture
def dataset_file(tmp_path: Path) -> Path:
    """A small `data/dataset.npz` as the download stage writes it."""
    train, test = synthetic_split(512, 0), synthetic_split(128, 1)
    arrays = {"train_images": train[0], "train_labels": train[1], "test_images": test[0], "test_labels": test[1]}
    path = tmp_path / "dataset.npz"
    save_data(path, arrays, [str(d) for d in range(10)])
    return path


def shipped(variant: str = "gn") -> Run:
    """The run of `variant` exactly as the shipped params.yaml defines it."""
    return config.run(config.load(ROOT / "params.yaml"), variant)


def train_cfg(**changes) -> TrainConfig:
    """The shipped recipe (the GN variant's: no L1) with `changes`, validated as params.yaml is."""
    return shipped().train.changed(**changes)


def model_cfg(**changes) -> ModelConfig:
    """The shipped network (the GN variant's) with `changes`, e.g. `model_cfg(norm="bn")`."""
    return shipped().model.changed(**changes)


def tiny_params(**train) -> dict:
    """params.yaml with settings small enough for a test: one quick epoch."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update({"epochs": 1, "batch_size": 64, "device": "cpu", **train})
    params["evaluate"]["batch_size"] = 256
    params["plot"]["dpi"] = 40
    return params


@pytest.fixture
def workdir(tmp_path: Path, dataset_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a tiny params.yaml and data/dataset.npz; the current directory."""
    import shutil

    import yaml

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copy(dataset_file, work / "data" / "dataset.npz")
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    monkeypatch.chdir(work)
    return work
