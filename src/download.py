"""Stage `download`: get an MNIST-format dataset, validate it and compute its pixel statistics.

The four IDX `.gz` files come from torchvision's downloader (which checks their
MD5 sums) or, when the environment variable NORMCMP_DATA_DIR names a folder,
from that folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from src import cli
from src.data import DATASET_FILE, FILES, read_split, save_data
from src.errors import UserError
from src.files import write_json

LOCAL_DIR_ENV = "NORMCMP_DATA_DIR"

# torchvision dataset class and class names for each dataset this project knows.
DATASETS = {
    "mnist": ("MNIST", [str(d) for d in range(10)]),
    "fashion-mnist": (
        "FashionMNIST",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    ),
}

app = cli.app(__doc__.split("\n")[0])
KEYS = {"dataset": "download.dataset"}  # option -> params.yaml key


def local_files(folder: str | Path) -> dict[str, Path]:
    """The four files in `folder`; an error naming the folder and any missing file."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{LOCAL_DIR_ENV}={folder}: no such folder",
                        hint=f"point it at a folder holding {', '.join(FILES.values())}")
    paths = {role: folder / name for role, name in FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}", hint="copy the four original IDX .gz files there")
    return paths


def download_files(dataset: str, root: Path) -> dict[str, Path]:
    """Download with torchvision (MD5-checked) into `root`; a hint about the local folder on failure."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, DATASETS[dataset][0])
    try:
        cls(root=root, train=True, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError on network failures
        raise UserError(
            f"could not download {dataset} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            hint=f"without internet, set {LOCAL_DIR_ENV} to a folder holding the four IDX .gz files",
        ) from None
    raw = root / cls.__name__ / "raw"
    return {role: raw / name for role, name in FILES.items()}


@app.command()
def main(
    dataset: Annotated[str, typer.Option(help="Dataset: mnist or fashion-mnist.")],
    out: Annotated[Path, typer.Option(help="Output .npz file with the validated splits.")] = DATASET_FILE,
    stats_out: Annotated[Path, typer.Option(help="Output JSON: counts, pixel mean/std.")] = Path("data/stats.json"),
) -> None:
    """Get the dataset (torchvision download, or the folder named by NORMCMP_DATA_DIR), validate it, save it."""
    if dataset not in DATASETS:
        raise UserError(f"params.yaml: download.dataset = {dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
    local = os.environ.get(LOCAL_DIR_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        paths = local_files(local) if local else download_files(dataset, Path(tmp))
        print(f"reading {dataset} from {Path(local).resolve() if local else 'the torchvision download'}")
        train_x, train_y = read_split(paths["train_images"], paths["train_labels"])
        test_x, test_y = read_split(paths["test_images"], paths["test_labels"])
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    stats = save_data(out, arrays, DATASETS[dataset][1])
    summary = {"dataset": dataset, "train": len(train_x), "test": len(test_x), **stats}
    write_json(stats_out, summary)
    print(f"{dataset}: {len(train_x)} train, {len(test_x)} test images; "
          f"pixel mean {stats['mean']:.4f}, std {stats['std']:.4f} -> {out}")


if __name__ == "__main__":
    cli.main(app, KEYS)
