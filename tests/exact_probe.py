"""Train each norm for a few steps as the train stage does and print each model file's md5 (for test_exact.py).

    python -m tests.exact_probe DATASET PRECISION

Run in a process of its own: `pick_device` caps the CPU kernels only before the process's first tensor operation.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from src.checkpoint import save_checkpoint
from src.data import load_data
from src.engine import fit, make_model, pick_device
from tests.conftest import model_cfg, train_cfg


def main(dataset: str, precision: str) -> None:
    device = pick_device("cpu", 2, precision)  # first: before any tensor work
    data = load_data(Path(dataset)).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        for norm in ("bn", "gn", "ln"):
            cfg = train_cfg(epochs=2, batch_size=64, l1=1e-4 if norm == "bn" else 0.0, precision=precision)
            model = make_model(model_cfg(norm=norm), cfg.seed)
            fit(model, data, cfg, device, progress=False)
            path = Path(tmp) / f"{norm}.pt"
            save_checkpoint(path, model, cfg)
            print(norm, hashlib.md5(path.read_bytes()).hexdigest(), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
