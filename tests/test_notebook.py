"""The notebook runs top to bottom on small synthetic IDX files and shows its graphs, grids and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, write_mnist, write_mnist_c

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = ROOT / "notebooks" / "normalization.ipynb"


def _texts(nb) -> list[str]:
    """Every text output of the executed notebook: streams, and text/plain or text/markdown data."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                out.append(o["text"])
            elif "data" in o:
                out.extend(o["data"].get(k, "") for k in ("text/markdown", "text/plain"))
    return out


def test_notebook_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx_dir = write_mnist(tmp_path / "mnist", n_train=384, n_test=128)
    # No dataset file here, so the notebook builds one from the IDX folder, as the download stage would.
    monkeypatch.setenv("NB_DATASET", str(tmp_path / "no-dataset.npz"))
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(idx_dir))
    monkeypatch.setenv("NB_MNIST_C", str(tmp_path / "no-mnist_c.npz"))  # so the folder is read, as the stage would
    monkeypatch.setenv("NORMCMP_MNIST_C_DIR", str(tmp_path / "mnist_c"))
    write_mnist_c(tmp_path / "mnist_c", n=40)
    monkeypatch.setenv("NB_EPOCHS", "1")
    monkeypatch.setenv("NB_DEVICE", "cpu")
    monkeypatch.setenv("NB_TRAIN_SUBSET", "256")  # two batches of params.yaml's 128
    monkeypatch.setenv("NB_TEST_SUBSET", "100")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Started from notebooks/, as Jupyter would; the notebook itself moves to the repository root.
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # Graph 1, Graph 2, one misclassified grid per model, the shift panels, MNIST-C

    text = "\n".join(_texts(nb))
    assert "BatchNorm" in text and "4 means" in text and "8 means" in text  # the tiny-tensor demonstration
    assert "epoch  1/1" in text  # one line per epoch, printed from fit's on_epoch
    assert "training and 100 of 128 test images" in text
    assert "| model | norm | final train accuracy (%) | final test accuracy (%) |" in text  # the final table
    for finding in ("best test accuracy", "least overfitting", "most overfitting"):
        assert finding in text
    assert "contrast_unclipped" in text and "rotation" in text  # the shift table of src.shift.score_shifts
    assert "BN + L1 (test statistics)" in text and "mean error" in text  # src.corruption's MNIST-C table


def test_saved_notebook_shows_the_run_of_record() -> None:
    """The committed outputs are those of the whole real run: the same code, settings and seed as the pipeline, so
    its final table must match the committed metrics (re-execute the notebook when the run of record changes)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    text = "\n".join(_texts(nb))
    assert "After 20 epochs on 60000 training and 10000 test images" in text
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for v, spec in params["variants"].items():
        m = json.loads((ROOT / "metrics" / f"{v}.json").read_text())
        # The gap from the two accuracies, as the notebook computes it (the metrics' gap is rounded once already).
        gap = m["train_acc"] - m["test_acc"]
        row = f"| {spec['label']} | {spec['norm']} | {m['train_acc']:.2f} | {m['test_acc']:.2f} | {gap:+.2f} |"
        assert row in text, f"the saved notebook does not show {row}"
