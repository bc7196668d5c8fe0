"""Stage `download`: get an MNIST-format dataset, validate it and compute its pixel statistics.

The four IDX `.gz` files come from torchvision's downloader (which checks their
MD5 sums) or, when the dataset's environment variable names a folder, from that
folder: NORMCMP_DATA_DIR for MNIST, NORMCMP_FASHION_MNIST_DIR for Fashion-MNIST.
Each dataset has its own variable so that switching `download.dataset` never
reads the other dataset's folder; files whose pixels are clearly the other
dataset's are refused all the same.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np
import typer

from src import cli, config
from src.data import DATASET_FILE, FILES, read_split, save_data
from src.errors import UserError
from src.files import write_json

LOCAL_DIR_ENV = "NORMCMP_DATA_DIR"  # MNIST's local folder


class Dataset(NamedTuple):
    """What the project knows about one MNIST-format dataset."""

    torchvision_class: str
    classes: list[str]
    local_dir_env: str  # environment variable naming a local folder of the four files
    name: str  # for messages
    pixel_mean: float  # training-set pixel mean of the original files, on the 0..1 scale


DATASETS = {
    "mnist": Dataset("MNIST", [str(d) for d in range(10)], LOCAL_DIR_ENV, "MNIST", 0.1307),
    "fashion-mnist": Dataset(
        "FashionMNIST",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        "NORMCMP_FASHION_MNIST_DIR", "Fashion-MNIST", 0.2860,
    ),
}
# A training set whose pixel mean is this close to another dataset's (and nearer it than to its own) is
# that dataset. Copies differ a little (a rebuilt MNIST has 0.1237); the two datasets are 0.15 apart.
SAME_MEAN = 0.04

# The data the committed results were made on (README: "The data of record"): a rebuilt copy of MNIST whose pixels
# differ a little from the original release (training pixel mean 0.1237, not 0.1307). The md5 of its four arrays
# (`data_md5`); other files, the originals included, give numbers close to the committed ones, not equal.
RECORD = {"mnist": "d6bb20ebb62816380a7643117605eaf7"}

app = cli.app(__doc__.split("\n")[0])


def data_md5(arrays: dict[str, np.ndarray]) -> str:
    """One md5 over the images and labels of both splits (train images, train labels, test images, test labels)."""
    digest = hashlib.md5()
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def record_note(dataset: str, arrays: dict[str, np.ndarray]) -> str | None:
    """One line for data that are not the data of record: what follows for the committed results; else None."""
    if dataset not in RECORD or data_md5(arrays) == RECORD[dataset]:
        return None
    return (f"note: these {DATASETS[dataset].name} files are not the data of record (md5 {data_md5(arrays)[:8]}…, "
            f"record {RECORD[dataset][:8]}…): every stage reruns and the numbers come out close to the committed "
            "ones, not equal (README: The data of record)")


def local_files(folder: str | Path, env: str = LOCAL_DIR_ENV) -> dict[str, Path]:
    """The four files in `folder` (named by the variable `env`); an error naming the folder and any missing file."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{env}={folder}: no such folder",
                        hint=f"point it at a folder holding {', '.join(FILES.values())}")
    paths = {role: folder / name for role, name in FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}", hint="copy the four original IDX .gz files there")
    return paths


def download_files(dataset: str, root: Path) -> dict[str, Path]:
    """Download with torchvision (MD5-checked) into `root`; a hint about the local folder on failure."""
    import torchvision.datasets

    spec = DATASETS[dataset]
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        cls(root=root, train=True, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError on network failures
        # A folder set for another dataset is the likely mix-up: say that it does not apply here.
        others = [f"{d.local_dir_env} is for {name} only" for name, d in DATASETS.items()
                  if d is not spec and os.environ.get(d.local_dir_env)]
        raise UserError(
            f"could not download {dataset} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            hint=f"without internet, set {spec.local_dir_env} to a folder holding the four IDX .gz files"
            + (f" ({'; '.join(others)})" if others else ""),
        ) from None
    raw = root / cls.__name__ / "raw"
    return {role: raw / name for role, name in FILES.items()}


def check_identity(dataset: str, train_images: np.ndarray, source: str) -> None:
    """Refuse training images that are clearly another known dataset's (by their pixel mean)."""
    mean = float(train_images.mean()) / 255
    nearest = min(DATASETS, key=lambda d: abs(DATASETS[d].pixel_mean - mean))
    if nearest == dataset or abs(DATASETS[nearest].pixel_mean - mean) > SAME_MEAN:
        return
    want, found = DATASETS[dataset], DATASETS[nearest]
    raise UserError(
        f"{source} looks like {found.name}, not {want.name} (training pixel mean {mean:.3f}; "
        f"{found.name} has {found.pixel_mean:.3f}, {want.name} {want.pixel_mean:.3f})",
        hint=f"point {want.local_dir_env} at the {want.name} files; "
        f"for {found.name}, set download.dataset: {nearest} and {found.local_dir_env}",
    )


@app.command(epilog=cli.settings("download"))
def main(
    out: Annotated[Path, typer.Option(help="Output .npz file with the validated splits.")] = DATASET_FILE,
    stats_out: Annotated[Path, typer.Option(help="Output JSON: counts, pixel mean/std.")] = Path("data/stats.json"),
) -> None:
    """Get the dataset (torchvision download, or the folder its variable names), validate it, save it.

    The dataset is params.yaml's `download.dataset` (mnist or fashion-mnist); the folder variables:
    NORMCMP_DATA_DIR for mnist, NORMCMP_FASHION_MNIST_DIR for fashion-mnist.
    """
    dataset = config.section(config.load(), "download", config.Download).dataset
    spec = DATASETS[dataset]
    local = os.environ.get(spec.local_dir_env)
    with tempfile.TemporaryDirectory() as tmp:
        paths = local_files(local, spec.local_dir_env) if local else download_files(dataset, Path(tmp))
        source = f"{spec.local_dir_env}={Path(local).resolve()}" if local else "the torchvision download"
        print(f"reading {dataset} from {source}")
        train_x, train_y = read_split(paths["train_images"], paths["train_labels"], spec.local_dir_env)
        check_identity(dataset, train_x, source)
        test_x, test_y = read_split(paths["test_images"], paths["test_labels"], spec.local_dir_env)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    stats = save_data(out, arrays, spec.classes)
    if note := record_note(dataset, arrays):
        print(note, file=sys.stderr)
    summary = {"dataset": dataset, "train": len(train_x), "test": len(test_x), **stats}
    write_json(stats_out, summary)
    print(f"{dataset}: {len(train_x)} train, {len(test_x)} test images; "
          f"pixel mean {stats['mean']:.4f}, std {stats['std']:.4f} -> {out}")


if __name__ == "__main__":
    cli.main(app)
