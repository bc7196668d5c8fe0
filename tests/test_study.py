"""The batch-size study (studies/batch_size/dvc.yaml): its helpers, and the pipeline end to end on synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest

from src.study_plot import read_result, summarize
from src.study_train import study_run
from tests.conftest import ROOT, tiny_params, write_mnist
from tests.test_pipeline import make_repo, sh
from tests.test_plots_page import IN_CI, MODELS, TAB10, encodings, specs
from tools.plots_page import missing_tools, render, show_page

STUDY = "studies/batch_size/dvc.yaml"
TITLE = "Test error against batch size (batch-size study)"
POINTS = [(v, b) for v in ("bn_l1", "gn", "ln") for b in (2, 4)]


def test_each_point_is_the_variant_at_its_batch_size_with_the_rate_scaled_linearly():
    params = tiny_params(batch_size=128, lr=0.05, epochs=20)
    params["batch_study"]["epochs"] = 4
    for batch in (2, 16, 128):
        run = study_run(params, "bn_l1", batch, seed=2)
        cfg = run.train
        assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.seed) == (batch, pytest.approx(0.05 * batch / 128), 4, 2)
        assert (run.model.norm, cfg.l1) == ("bn", 1e-4)
        assert cfg.rotation == params["train"]["rotation"] and cfg.grad_clip == params["train"]["grad_clip"]


def test_summary_is_the_mean_and_std_over_seeds_per_model_and_batch_size():
    results = [{"label": "GN", "batch_size": 2, "seed": s, "test_error": e} for s, e in ((1, 1.0), (2, 2.0))]
    results.append({"label": "GN", "batch_size": 4, "seed": 1, "test_error": 0.5})
    assert summarize(results) == {"GN": {"2": {"mean": 1.5, "std": 0.7071, "seeds": 2},
                                         "4": {"mean": 0.5, "std": 0.0, "seeds": 1}}}


def test_a_damaged_result_names_its_file_and_stage(tmp_path):
    path = tmp_path / "gn-4-1.json"
    path.write_text('{"label": "GN", "batch_size": 4')
    with pytest.raises(Exception) as error:
        read_result(path)
    assert "gn-4-1.json" in str(error.value) and "train@gn-4-1" in str(error.value)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study on synthetic data, two tiny batch sizes and one seed, reproduced once."""
    base = tmp_path_factory.mktemp("study")
    params = tiny_params()
    params["batch_study"] = {"batch_sizes": [2, 4], "seeds": [1], "epochs": 1, "train_images": 48}
    repo, env = make_repo(base, params, write_mnist(base / "mnist"))
    (repo / "studies" / "batch_size").mkdir(parents=True)
    shutil.copy(ROOT / STUDY, repo / STUDY)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "study", cwd=repo, env=env)
    return repo, env, sh("dvc", "repro", STUDY, cwd=repo, env=env)


def test_every_matrix_stage_and_the_plot_stage_run(study):
    repo, env, out = study
    for variant, batch in POINTS:
        assert f"Running stage '{STUDY}:train@{variant}-{batch}-1'" in out
        result = json.loads((repo / f"studies/batch_size/results/{variant}-{batch}-1.json").read_text())
        assert (result["batch_size"], result["seed"], result["epochs"], result["train_images"]) == (batch, 1, 1, 48)
        assert result["test_error"] == pytest.approx(100 - result["test_acc"])
    assert f"Running stage '{STUDY}:plot'" in out
    assert "Running stage 'download'" in out  # the study's data comes from the main pipeline's first stage


def test_figure_plot_data_and_metrics_hold_one_series_per_variant(study):
    repo, env, _ = study
    folder = repo / "studies" / "batch_size"
    assert (folder / "plots/test_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(folder / "plots/test_error.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["model"], int(r["batch_size"])) for r in rows) == sorted((m, b) for m in MODELS for b in (2, 4))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(metrics) == MODELS and all(list(m) == ["2", "4"] for m in metrics.values())


def test_dvc_plots_show_at_the_root_includes_the_study_coloured_by_model(study):
    repo, env, _ = study
    # At the root: DVC gathers the plots of every dvc.yaml, the study's beside the main pipeline's.
    shown = specs(sh("dvc", "plots", "show", "--json", "-o", str(repo.parent / "json"), cwd=repo, env=env))
    spec = shown[TITLE]
    assert sorted({row["model"] for row in spec["data"]["values"]}) == MODELS
    colour = encodings(spec, "color")[0]
    assert colour["field"] == "model" and colour["scale"]["range"][:3] == TAB10
    assert encodings(spec, "x")[0]["scale"]["type"] == "log"


def test_a_second_run_has_nothing_to_reproduce_and_the_root_repro_leaves_the_study_out(study):
    repo, env, _ = study
    again = sh("dvc", "repro", STUDY, cwd=repo, env=env)
    assert "Running stage" not in again
    # A dry run stops at `evaluate` (no models here to read), after listing what it would run.
    dry = subprocess.run(["dvc", "repro", "--dry"], cwd=repo, env=env, capture_output=True, text=True).stdout
    assert "Running stage 'train_bn_l1'" in dry and "studies/" not in dry


def test_the_study_chart_renders_in_a_browser(study, tmp_path):
    if missing := missing_tools():
        if IN_CI:
            pytest.fail(f"the browser check needs: {'; '.join(missing)}")
        pytest.skip(f"the browser check needs: {'; '.join(missing)} (.ci/run installs them)")
    repo, env, _ = study
    report = render(show_page(repo, tmp_path / "html", env), tmp_path / "shots")
    assert not report["console_errors"] + report["page_errors"] + report["blocked_requests"]
    chart = next(c for c in report["charts"] if c.get("title") == TITLE)  # the main charts are empty here
    assert chart["ok"], chart.get("error")
    assert chart["color_domain"] == MODELS and chart["color_range"] == TAB10 and chart["line_strokes"] == TAB10
    assert chart["legend_labels"][:3] == MODELS
