"""MNIST-format data: reading and checking IDX files, and the in-memory tensors training uses."""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from src.errors import UserError
from src.files import Corrupt, atomic_path, read_input

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
# The arrays of the dataset file.
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "mean", "std", "classes")


def _idx_error(path: str | Path, problem: str, folder_env: str) -> UserError:
    """The error for a damaged IDX file: what is wrong and where a good copy comes from."""
    return UserError(f"{path}: {problem}", hint=f"download the file again (or point {folder_env} at a good copy)")


def read_idx(path: str | Path, magic: int, folder_env: str = "NORMCMP_DATA_DIR") -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes, checking its header against the payload.

    `folder_env` is the variable that names the dataset's local folder, for the hint on a damaged file.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise _idx_error(path, "file not found", folder_env) from None
    except gzip.BadGzipFile:
        raise _idx_error(path, "not a gzip file", folder_env) from None
    except (EOFError, zlib.error):
        raise _idx_error(path, "truncated or corrupt gzip data", folder_env) from None
    except OSError as e:
        raise _idx_error(path, f"cannot read it ({e.strerror})", folder_env) from None
    if not raw:
        raise _idx_error(path, "the file is empty", folder_env)
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise _idx_error(path, f"wrong IDX magic number {found} (expected {magic})", folder_env)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _idx_error(path, "IDX header is cut short", folder_env)
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload, size = len(raw) - header, math.prod(dims)
    if payload != size:
        raise _idx_error(path, f"header says {dims[0]} items of shape {dims[1:]} ({size} bytes) "
                         f"but the file holds {payload} bytes", folder_env)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(
    images_path: str | Path, labels_path: str | Path, folder_env: str = "NORMCMP_DATA_DIR"
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one split: images (N, 28, 28) uint8 and labels (N,) in 0..9 (see `read_idx`)."""
    images = read_idx(images_path, IMAGE_MAGIC, folder_env)
    labels = read_idx(labels_path, LABEL_MAGIC, folder_env)
    if images.shape[1:] != (SIDE, SIDE):
        raise _idx_error(images_path, f"images are {images.shape[1:]} pixels, expected ({SIDE}, {SIDE})", folder_env)
    if len(images) == 0:
        raise _idx_error(images_path, "holds no images", folder_env)
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise _idx_error(labels_path, f"label {labels.max()} outside 0..{NUM_CLASSES - 1}", folder_env)
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels",
                        hint=f"both files must come from the same split (point {folder_env} at a good copy)")
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
    pixels = arrays["train_images"].astype(np.float64) / 255.0
    stats = {"mean": float(pixels.mean()), "std": float(pixels.std())}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays, mean=stats["mean"], std=stats["std"], classes=np.array(classes))
    return stats


def _check_arrays(a: dict[str, np.ndarray]) -> None:
    """A `Corrupt` error unless the arrays are what `save_data` writes: non-empty splits of 28x28 uint8 images with
    one label each in range of the class names, and a finite pixel mean and positive std."""
    missing = sorted({*ARRAYS} - set(a))
    if missing:
        raise Corrupt(f"it lacks {', '.join(missing)}")
    classes = a["classes"]
    if classes.ndim != 1 or classes.dtype.kind != "U" or not len(classes):
        raise Corrupt("its class names are not a list of strings")
    for split in ("train", "test"):
        images, labels = a[f"{split}_images"], a[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or not len(images):
            raise Corrupt(f"{split}_images is {images.dtype} {images.shape}, not N x {SIDE} x {SIDE} uint8")
        if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
            raise Corrupt(f"{split}_labels is {labels.dtype} {labels.shape}, not one integer per image")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise Corrupt(f"{split}_labels holds a label outside 0..{len(classes) - 1}")
    mean, std = a["mean"], a["std"]
    if mean.shape or std.shape or not np.isfinite(mean) or not np.isfinite(std) or std <= 0:
        raise Corrupt("its pixel mean and std are not two finite numbers")


def _parse_dataset(path: Path) -> Data:
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    _check_arrays(a)
    images = {k: torch.from_numpy(a[k]).unsqueeze(1) for k in ("train_images", "test_images")}
    labels = {k: torch.from_numpy(a[k].astype(np.int64)) for k in ("train_labels", "test_labels")}
    return Data(**images, **labels, mean=float(a["mean"]), std=float(a["std"]),
                classes=tuple(str(c) for c in a["classes"]))


def load_data(path: str | Path = DATASET_FILE) -> Data:
    """Load the file written by the `download` stage into tensors; an error naming it if it is missing or damaged."""
    return read_input(path, "download", _parse_dataset)
