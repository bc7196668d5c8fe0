"""The per-device study (studies/per_device/dvc.yaml): its helpers, and the pipeline end to end on synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest

from src import config
from src.errors import UserError
from src.study_plot import one_device, read_result, summarize
from src.study_train import study_run
from tests.conftest import ROOT, tiny_params, write_mnist
from tests.test_pipeline import make_repo, sh
from tests.test_plots_page import IN_CI, MODELS, TAB10_4, encodings, specs
from tools.plots_page import missing_tools, render, show_page

STUDY = "studies/per_device/dvc.yaml"
TITLE = "Test error against images per device (per-device study)"
SERIES = [*MODELS, "GN, 2 DDP processes"]


def test_a_point_is_the_variant_with_its_batchnorm_split_and_nothing_else_changed():
    params = tiny_params(batch_size=128, lr=0.05, epochs=20)
    shipped = config.run(params, "bn_l1")
    run = study_run(params, "bn_l1", seed=2, images=8)
    assert (run.model.bn_images, run.train.seed, run.train.processes) == (8, 2, 1)
    assert run.model == shipped.model.changed(bn_images=8)
    assert run.train == shipped.train.changed(seed=2)
    ddp = study_run(params, "gn", seed=1, processes=2, threads=1)
    assert (ddp.model.bn_images, ddp.train.processes, ddp.compute.threads) == (0, 2, 1)
    with pytest.raises(UserError, match="applies to a BatchNorm variant; gn is gn"):
        study_run(params, "gn", seed=1, images=8)


def test_summary_is_the_mean_and_std_over_seeds_per_series_and_images():
    results = [{"label": "GN", "images": 2, "seed": s, "test_error": e} for s, e in ((1, 1.0), (2, 2.0))]
    results.append({"label": "GN", "images": 128, "seed": 1, "test_error": 0.5})
    results.append({"label": "GN", "images": 16, "seed": 1, "test_error": 0.25})
    assert summarize(results) == {"GN": {"2": {"mean": 1.5, "std": 0.7071, "seeds": 2},
                                         "16": {"mean": 0.25, "std": 0.0, "seeds": 1},
                                         "128": {"mean": 0.5, "std": 0.0, "seeds": 1}}}


def test_one_device_points_are_the_seed_tables_rows_of_the_shipped_recipe(tmp_path):
    table = tmp_path / "seeds.csv"
    table.write_text("recipe,variant,seed,test_acc,train_acc,precision,commit\n"
                     "ours,gn,1,99.54,99.7,exact,abc\nours,gn,2,99.38,99.7,exact,abc\n"
                     "writeup,gn,1,99.10,99.0,exact,abc\n")
    variants = {"gn": config.Variant(label="GN", norm="gn")}
    rows = one_device(table, variants, [1, 2], 128)
    assert [(r["label"], r["images"], r["seed"], r["test_error"]) for r in rows] == [
        ("GN", 128, 1, pytest.approx(0.46)), ("GN", 128, 2, pytest.approx(0.62))]
    with pytest.raises(UserError, match="no row of recipe ours, variant gn, seed 3"):
        one_device(table, variants, [3], 128)


def test_a_damaged_result_names_its_file_and_stage(tmp_path):
    for name, stage in (("8-1.json", "train@8-1"), ("ddp-gn-1.json", "ddp@gn-1")):
        path = tmp_path / name
        path.write_text('{"label": "GN", "images": 4')
        with pytest.raises(Exception) as error:
            read_result(path)
        assert name in str(error.value) and stage in str(error.value)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study on synthetic data: two group sizes, one seed, GN as 2 DDP processes; reproduced once."""
    base = tmp_path_factory.mktemp("study")
    params = tiny_params(batch_size=32)
    params["per_device"] = {"variant": "bn_l1", "images": [2, 4], "seeds": [1], "processes": 2, "threads": 1,
                            "ddp": ["gn"], "ddp_seeds": [1]}
    repo, env = make_repo(base, params, write_mnist(base / "mnist"))
    (repo / "studies" / "per_device").mkdir(parents=True)
    shutil.copy(ROOT / STUDY, repo / STUDY)
    (repo / "results").mkdir()
    (repo / "results" / "seeds.csv").write_text(
        "recipe,variant,seed,test_acc,train_acc,precision,commit\n"
        + "".join(f"ours,{v},1,{acc},99.0,exact,abc\n" for v, acc in (("bn_l1", 99.5), ("gn", 99.4), ("ln", 99.3))))
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "study", cwd=repo, env=env)
    return repo, env, sh("dvc", "repro", STUDY, cwd=repo, env=env)


def test_every_matrix_stage_and_the_plot_stage_run(study):
    repo, env, out = study
    for images in (2, 4):
        assert f"Running stage '{STUDY}:train@{images}-1'" in out
        result = json.loads((repo / f"studies/per_device/results/{images}-1.json").read_text())
        assert (result["images"], result["processes"], result["seed"], result["label"]) == (images, 1, 1, "BN + L1")
        assert result["test_error"] == pytest.approx(100 - result["test_acc"])
    assert f"Running stage '{STUDY}:ddp@gn-1'" in out
    ddp = json.loads((repo / "studies/per_device/results/ddp-gn-1.json").read_text())
    assert (ddp["images"], ddp["processes"], ddp["label"]) == (16, 2, "GN")
    assert f"Running stage '{STUDY}:plot'" in out
    assert "Running stage 'download'" in out  # the study's data comes from the main pipeline's first stage


def test_figure_plot_data_and_metrics_hold_every_series(study):
    repo, env, _ = study
    folder = repo / "studies" / "per_device"
    assert (folder / "plots/test_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(folder / "plots/test_error.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], int(r["images"])) for r in rows] == [
        ("BN + L1", 2), ("BN + L1", 4), ("BN + L1", 32), ("GN", 32), ("LN", 32), ("GN, 2 DDP processes", 16)]
    assert [float(r["test_error"]) for r in rows[2:5]] == pytest.approx([0.5, 0.6, 0.7])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(metrics) == SERIES and list(metrics["BN + L1"]) == ["2", "4", "32"]


def test_dvc_plots_show_at_the_root_includes_the_study_coloured_by_series(study):
    repo, env, _ = study
    # At the root: DVC gathers the plots of every dvc.yaml, the study's beside the main pipeline's.
    shown = specs(sh("dvc", "plots", "show", "--json", "-o", str(repo.parent / "json"), cwd=repo, env=env))
    spec = shown[TITLE]
    assert sorted({row["model"] for row in spec["data"]["values"]}) == sorted(SERIES)
    colour = encodings(spec, "color")[0]
    assert colour["field"] == "model" and colour["scale"]["range"][:4] == TAB10_4
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
    assert chart["color_domain"] == SERIES and chart["color_range"] == TAB10_4
    assert chart["legend_labels"][:4] == SERIES
