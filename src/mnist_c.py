"""Stage `download_mnist_c`: get MNIST-C (the MNIST test set under 15 corruptions), validate it and save it in one file.

MNIST-C (Mu & Gilmer 2019) holds, for each corruption and for `identity` (the clean test set), a folder with
`test_images.npy` ((N, 28, 28, 1), pixel values 0-255, uint8 or float) and `test_labels.npy` ((N,), 0-9). The
folder comes from the environment variable NORMCMP_MNIST_C_DIR or, without it, from the official zip (downloaded
once into a temporary folder). The stage writes `data/mnist_c.npz`: per set its uint8 images (N, 1, 28, 28) and int64
labels; the `mnist_c` stage (src/corruption.py) scores the models on it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from src import cli
from src.data import NUM_CLASSES, SIDE
from src.errors import UserError
from src.files import Corrupt, atomic_path, read_input

LOCAL_DIR_ENV = "NORMCMP_MNIST_C_DIR"
URL = "https://zenodo.org/record/3239543/files/mnist_c.zip"
MNIST_C_FILE = Path("data/mnist_c.npz")
CORRUPTIONS = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
               "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")
IDENTITY = "identity"
NAMES = (IDENTITY, *CORRUPTIONS)  # the canonical order: the clean set first
FILES = ("test_images.npy", "test_labels.npy")

Set = tuple[torch.Tensor, torch.Tensor]  # images uint8 (N, 1, 28, 28), labels int64 (N,)

app = cli.app(__doc__.split("\n")[0])


# --- reading the release's folder ----------------------------------------------------------------

def _folder_error(path: Path, problem: str) -> UserError:
    """The error for a bad file of the MNIST-C folder: the file, what is wrong, where a good copy comes from."""
    return UserError(f"{path}: {problem}", hint=f"point {LOCAL_DIR_ENV} at a good copy of MNIST-C (the official "
                                                "release's folder: <corruption>/test_images.npy, test_labels.npy)")


def _load_npy(path: Path) -> np.ndarray:
    """One `.npy` array, never unpickling; an error naming the file if it is not one."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # not an .npy file, cut short, or an array of Python objects
        reason = next(iter(str(e).splitlines()), "")
        raise _folder_error(path, f"not a readable NumPy .npy array ({type(e).__name__}: {reason})") from None
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive too, whatever the file's name
        array.close()
        raise _folder_error(path, "is an .npz archive, not one .npy array")
    return array


def _pixels(images: np.ndarray, path: Path) -> np.ndarray:
    """Images (N, 28, 28, 1) uint8 or float as uint8 (N, 1, 28, 28); float values must be finite, in 0-255."""
    if images.ndim != 4 or images.shape[1:] != (SIDE, SIDE, 1) or not len(images):
        raise _folder_error(path, f"images of shape {images.shape}, expected (N, {SIDE}, {SIDE}, 1) with N > 0")
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise _folder_error(path, "holds NaN or infinite pixel values")
        if images.min() < 0 or images.max() > 255:
            raise _folder_error(path, f"holds pixel values outside 0-255 ({images.min():g} to {images.max():g})")
        images = np.rint(images).astype(np.uint8)
    elif images.dtype != np.uint8:
        raise _folder_error(path, f"images are {images.dtype}, expected uint8 or float pixel values 0-255")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """Labels (N,) of any integer type as int64; each in 0-9."""
    if labels.dtype.kind not in "iu":
        raise _folder_error(path, f"labels are {labels.dtype}, expected integers")
    if labels.ndim != 1:
        raise _folder_error(path, f"labels of shape {labels.shape}, expected (N,)")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise _folder_error(path, f"holds labels outside 0-{NUM_CLASSES - 1} ({labels.min()} to {labels.max()})")
    return labels.astype(np.int64)


def read_set(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """One set's test split: images uint8 (N, 1, 28, 28) and labels int64 (N,), checked."""
    images_path, labels_path = (folder / name for name in FILES)
    images = _pixels(_load_npy(images_path), images_path)
    labels = _labels(_load_npy(labels_path), labels_path)
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels",
                        hint=f"both files must come from the same split (point {LOCAL_DIR_ENV} at a good copy)")
    return images, labels


def missing_files(folder: Path) -> list[str]:
    """What `folder` lacks of the release, in the canonical order: a set's folder (`fog/`) or one of its files."""
    missing = []
    for name in NAMES:
        if not (folder / name).is_dir():
            missing.append(f"{name}/")
        else:
            missing += [f"{name}/{file}" for file in FILES if not (folder / name / file).is_file()]
    return missing


def read_folder(folder: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every set of an MNIST-C folder (`read_set`), in the canonical order; an error naming the folder if it or any
    set is missing (all of them listed), or naming the first bad file."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder", hint=f"point {LOCAL_DIR_ENV} at the MNIST-C folder "
                                                          "(one subfolder per corruption, and identity)")
    missing = missing_files(folder)
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}", hint=f"MNIST-C has {len(NAMES)} sets, each a folder "
                        f"with {' and '.join(FILES)}: {', '.join(NAMES)}")
    return {name: read_set(folder / name) for name in NAMES}


def download(root: Path) -> Path:
    """Download the official zip into `root` and unpack its test split; the folder of the sets."""
    import urllib.request
    import zipfile

    from tqdm import tqdm

    archive = root / "mnist_c.zip"
    try:
        with urllib.request.urlopen(URL, timeout=60) as response, open(archive, "wb") as f, tqdm(
            total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
            desc="mnist_c.zip",
        ) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))
        with zipfile.ZipFile(archive) as z:  # the training splits are not needed: only the test files come out
            z.extractall(root, [m for m in z.namelist() if m.endswith(FILES)])
    except (OSError, zipfile.BadZipFile) as e:  # urllib's errors are OSErrors
        raise UserError(f"could not download MNIST-C from {URL} ({type(e).__name__}: {e})",
                        hint=f"without internet, set {LOCAL_DIR_ENV} to a folder of the release "
                             "(<corruption>/test_images.npy, test_labels.npy)") from None
    archive.unlink()
    return root / "mnist_c"


# --- the stage's file --------------------------------------------------------------------------

def save_mnist_c(path: str | Path, sets: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write every set's images and labels to one `.npz` file (`<name>_images`, `<name>_labels`), atomically."""
    arrays = {f"{name}_{kind}": a for name, pair in sets.items() for kind, a in zip(("images", "labels"), pair)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _parse(path: Path) -> dict[str, Set]:
    """The sets of a file that `save_mnist_c` wrote; a `Corrupt` error unless every set is there and well formed."""
    with np.load(path, allow_pickle=False) as z:
        keys = [f"{name}_{kind}" for name in NAMES for kind in ("images", "labels")]
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise Corrupt(f"it lacks {', '.join(missing)}")
        a = {k: z[k] for k in keys}
    sets = {}
    for name in NAMES:
        images, labels = a[f"{name}_images"], a[f"{name}_labels"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (1, SIDE, SIDE) or not len(images):
            raise Corrupt(f"{name}_images is {images.dtype} {images.shape}, not N x 1 x {SIDE} x {SIDE} uint8")
        if labels.dtype != np.int64 or labels.shape != (len(images),):
            raise Corrupt(f"{name}_labels is {labels.dtype} {labels.shape}, not one int64 label per image")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise Corrupt(f"{name}_labels holds a label outside 0..{NUM_CLASSES - 1}")
        sets[name] = torch.from_numpy(images), torch.from_numpy(labels)
    return sets


def load_mnist_c(path: str | Path = MNIST_C_FILE) -> dict[str, Set]:
    """{name: (images uint8 (N, 1, 28, 28), labels int64 (N,))} in the canonical order (`NAMES`: identity first) from
    the stage's file; an error naming it if it is missing, damaged or incomplete."""
    return read_input(path, "download_mnist_c", _parse)


# --- the stage ----------------------------------------------------------------------------------------

@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Output .npz file: each set's test images and labels.")] = MNIST_C_FILE,
) -> None:
    """Read MNIST-C from the folder NORMCMP_MNIST_C_DIR names (or download the official zip), validate it, save it."""
    local = os.environ.get(LOCAL_DIR_ENV)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(local) if local else download(Path(tmp))
        sets = read_folder(folder)
    save_mnist_c(out, sets)
    counts = sorted({len(labels) for _, labels in sets.values()})
    source = f"{LOCAL_DIR_ENV}={Path(local).resolve()}" if local else "the official zip"
    print(f"MNIST-C from {source}: {len(NAMES)} sets (identity and {len(CORRUPTIONS)} corruptions) of "
          f"{'/'.join(map(str, counts))} test images in {time.perf_counter() - start:.1f}s -> {out}")


if __name__ == "__main__":
    cli.main(app)
