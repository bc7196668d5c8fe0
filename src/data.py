"""MNIST-format data: reading and checking IDX files, and the in-memory tensors training uses."""

from __future__ import annotations

import gzip
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from src.errors import UserError

# The four files of an MNIST-format dataset, by role, with their original names.
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # 0x00000803 (ubyte, 3 dims), 0x00000801 (ubyte, 1 dim)
SIDE = 28
NUM_CLASSES = 10
DATASET_FILE = Path("data/dataset.npz")


def read_idx(path: str | Path, magic: int, folder_env: str = "NORMCMP_DATA_DIR") -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes, checking its header against the payload.

    `folder_env` is the variable that names the dataset's local folder, for the hint on a damaged file.
    """
    path = Path(path)
    hint = f"download the file again (or point {folder_env} at a good copy)"
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found", hint=hint) from None
    except gzip.BadGzipFile:
        raise UserError(f"{path}: not a gzip file", hint=hint) from None
    except (EOFError, zlib.error):
        raise UserError(f"{path}: truncated or corrupt gzip data", hint=hint) from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise UserError(f"{path}: wrong IDX magic number {found} (expected {magic})", hint=hint)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: IDX header is cut short", hint=hint)
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = len(raw) - header
    if payload != int(np.prod(dims)):
        raise UserError(
            f"{path}: header says {dims[0]} items of shape {dims[1:]} ({int(np.prod(dims))} bytes) "
            f"but the file holds {payload} bytes",
            hint=hint,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(
    images_path: str | Path, labels_path: str | Path, folder_env: str = "NORMCMP_DATA_DIR"
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one split: images (N, 28, 28) uint8 and labels (N,) in 0..9 (see `read_idx`)."""
    images = read_idx(images_path, IMAGE_MAGIC, folder_env)
    labels = read_idx(labels_path, LABEL_MAGIC, folder_env)
    if images.shape[1:] != (SIDE, SIDE):
        raise UserError(f"{images_path}: images are {images.shape[1:]} pixels, expected ({SIDE}, {SIDE})")
    if len(images) == 0:
        raise UserError(f"{images_path}: holds no images")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise UserError(f"{labels_path}: label {labels.max()} outside 0..{NUM_CLASSES - 1}")
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images, labels


@dataclass(frozen=True)
class Data:
    """A whole dataset held as tensors: images (N, 1, 28, 28) uint8, labels (N,) int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float  # pixel mean and std of the training set, on the 0..1 scale
    std: float
    classes: tuple[str, ...]

    def to(self, device: torch.device | str) -> Data:
        """The same data on `device` (one copy, made once before training)."""
        move = {k: getattr(self, k).to(device) for k in ("train_images", "train_labels", "test_images", "test_labels")}
        return replace(self, **move)

    def holdout(self, n: int) -> Data:
        """The validation split: train on all but the last `n` training images, which replace the test set (so
        that tuning never sees the test images); the pixel statistics are recomputed on the images kept."""
        if n == 0:
            return self
        if not 0 < n < len(self.train_images):
            raise UserError(f"train.validation = {n} must be below the {len(self.train_images)} training images",
                            hint="hold out fewer images, or 0 to score the test set")
        kept = self.train_images[:-n].double() / 255.0
        return replace(
            self,
            train_images=self.train_images[:-n], train_labels=self.train_labels[:-n],
            test_images=self.train_images[-n:], test_labels=self.train_labels[-n:],
            mean=float(kept.mean()), std=float(kept.std(correction=0)),
        )

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Data:
        """The first `n_train` / `n_test` examples: for quick runs and tests."""
        return replace(
            self,
            train_images=self.train_images[:n_train],
            train_labels=self.train_labels[:n_train],
            test_images=self.test_images[:n_test],
            test_labels=self.test_labels[:n_test],
        )


def save_data(path: str | Path, arrays: dict[str, np.ndarray], classes: list[str]) -> dict[str, float]:
    """Write validated splits and the training set's pixel statistics to one `.npz` file."""
    from src.files import atomic_path

    pixels = arrays["train_images"].astype(np.float64) / 255.0
    stats = {"mean": float(pixels.mean()), "std": float(pixels.std())}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays, mean=stats["mean"], std=stats["std"], classes=np.array(classes))
    return stats


def load_data(path: str | Path = DATASET_FILE) -> Data:
    """Load the file written by the `download` stage into tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; the download stage makes it", hint="run `dvc repro download`")
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        images = {k: torch.from_numpy(a[k]).unsqueeze(1) for k in ("train_images", "test_images")}
        labels = {k: torch.from_numpy(a[k].astype(np.int64)) for k in ("train_labels", "test_labels")}
        return Data(**images, **labels, mean=float(a["mean"]), std=float(a["std"]),
                    classes=tuple(str(c) for c in a["classes"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is corrupt ({e})", hint="run `dvc repro download` to rebuild it") from None
