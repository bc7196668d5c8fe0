"""Bad input and interruptions: one clear line on stderr, a non-zero exit, no output left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from src import cli, download, evaluate, plot, train
from tests.conftest import ROOT, write_mnist

STAGES = {"download": download, "train": train, "evaluate": evaluate, "plot": plot}


def run(stage: str, *argv: str) -> int:
    return cli.run(STAGES[stage].app, list(argv))


def error_line(capsys) -> str:
    """The `error:` line a stage printed; exactly one, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def set_param(key: str, value) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    *parents, last = key.split(".")
    node = params
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    Path("params.yaml").write_text(yaml.safe_dump(params))


# --- parameters -------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("variants.gn.norm", "in", "params.yaml: variants.gn.norm = 'in' must be one of bn, gn, ln"),
    ("variants.gn.l1", 1e-4, "params.yaml: variants.gn.l1 applies to norm bn only (this variant's is gn)"),
    ("variants.gn.gn_groups", 3, "params.yaml: variants.gn.gn_groups = 3 does not divide the channel count 8"),
    ("variants.gn.gn_grups", 2, "params.yaml: unknown key 'variants.gn.gn_grups'"),
    ("variants.gn.gn_groups", "four", "params.yaml: variants.gn.gn_groups = 'four' must be an integer"),
    ("train.epochs", 0, "params.yaml: train.epochs must be >= 1 (got 0)"),
    ("train.batch_size", 0, "train.batch_size must be >= 1 (got 0)"),
    ("train.lr", -0.1, "train.lr must be > 0 (got -0.1)"),
    ("variants.bn_l1.l1", -1.0, "params.yaml: variants.bn_l1.l1 must be >= 0 (got -1.0)"),
    ("train.device", "tpu", "params.yaml: train.device = 'tpu' is unknown; use auto, cpu, cuda or cuda:N"),
    ("train.threads", 0, "train.threads must be auto or a positive integer (got 0)"),

    ("train.lr", KeyError, "params.yaml: missing key 'train.lr'"),
    ("train.epochs", "ten", "params.yaml: train.epochs = 'ten' must be an integer"),
    ("train.precision", "bf16", "params.yaml: train.precision = 'bf16' must be one of exact, fast"),
    ("model.arch", "resnet", "params.yaml: model.arch = 'resnet' must be one of default, writeup"),
    ("train.validation", -1, "params.yaml: train.validation must be >= 0 (got -1)"),
    ("train.grad_clip", -1.0, "params.yaml: train.grad_clip must be >= 0 (got -1.0)"),
    ("train.lr_peak", 0.1, "params.yaml: unknown key 'train.lr_peak'"),
    ("model.widht", 24, "params.yaml: unknown key 'model.widht'"),
    ("train.rotation", 200, "params.yaml: train.rotation must be in [0, 180] (got 200)"),
    ("train.pct_start", 1.0, "params.yaml: train.pct_start must be in (0, 1) (got 1.0)"),
    ("train.epochs", True, "params.yaml: train.epochs = True must be an integer"),
    ("train.momentum", 0.8, "params.yaml: train.momentum must be in [0.85, 1) with train.cycle_momentum"),
    ("train.l1", 1e-4, "params.yaml: unknown key 'train.l1'"),
    ("model.norm", "gn", "params.yaml: unknown key 'model.norm'"),
])
def test_bad_training_parameters(workdir, capsys, key, value, message):
    set_param(key, value)
    if key == "train.momentum":
        set_param("train.cycle_momentum", True)
    assert run("train", "bn_l1" if "bn_l1" in key else "gn") == 1
    assert message in error_line(capsys)
    assert not Path("models").exists() and not Path("dvclive").exists()


@pytest.mark.parametrize("variant", ["bn_l1", "ln"])
def test_the_stage_trains_what_params_yaml_defines(workdir, variant):
    """The train stage and `config.run` (the notebook's and the tools' way in) build the same configs, and the
    model file records them."""
    from src import config

    set_param("train.rotation", 3.0)
    assert run("train", variant, "--no-progress") == 0
    ckpt = torch.load(f"models/{variant}.pt", weights_only=True)
    spec = config.run(config.load(), variant)
    assert ckpt["model"] == spec.model.model_dump() and ckpt["variant"] == variant
    assert ckpt["train"] == spec.train.model_dump() and spec.train.rotation == 3.0


def test_a_key_written_twice_is_refused_with_both_lines(workdir, capsys):
    text = Path("params.yaml").read_text()
    Path("params.yaml").write_text(text.replace("train:\n", "train:\n  seed: 2\n", 1))
    assert run("train", "gn") == 1
    line = error_line(capsys)
    assert "params.yaml: key 'train.seed' is set twice (lines " in line and not Path("models").exists()
    assert capsys.readouterr().out == ""


def test_a_bad_value_is_refused_before_anything_is_printed(workdir, capsys):
    set_param("train.validation", 70_000)
    assert run("train", "gn", "--no-progress") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "train.validation = 70000 must be below the 512 training images" in captured.err


def test_unknown_variant_and_broken_params_file(workdir, capsys):
    assert run("train", "bn") == 1
    assert "unknown variant 'bn'; params.yaml variants are: bn_l1, gn, ln" in error_line(capsys)
    Path("params.yaml").write_text("train: [epochs: 1\n")
    assert run("evaluate") == 1
    assert "params.yaml is not valid YAML at line" in error_line(capsys)


def test_bad_stage_parameters(workdir, capsys):
    set_param("download.dataset", "cifar")
    assert run("download") == 1
    assert "params.yaml: download.dataset = 'cifar' must be one of mnist, fashion-mnist" in error_line(capsys)
    set_param("plot.dpi", 0)
    assert run("plot") == 1
    assert "plot.dpi must be >= 20 (got 0)" in error_line(capsys)


# --- data ---------------------------------------------------------------------------------------

def test_missing_local_folder_or_file(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(tmp_path / "nowhere"))
    assert run("download", "--out", "out.npz") == 1
    assert f"NORMCMP_DATA_DIR={tmp_path / 'nowhere'}: no such folder" in error_line(capsys)
    folder = write_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(folder))
    assert run("download", "--out", "out.npz") == 1
    assert f"{folder} lacks t10k-labels-idx1-ubyte.gz" in error_line(capsys)
    assert not Path("out.npz").exists()


def test_corrupt_file_names_the_file(workdir, tmp_path, capsys, monkeypatch):
    folder = write_mnist(tmp_path / "mnist")
    bad = folder / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-20])
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(folder))
    assert run("download", "--out", "out.npz", "--stats-out", "stats.json") == 1
    assert f"{bad}: truncated or corrupt gzip data" in error_line(capsys)
    assert not Path("out.npz").exists() and not Path("stats.json").exists()


def test_download_without_network_suggests_local_folder(workdir, capsys, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.delenv("NORMCMP_DATA_DIR", raising=False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", type("MNIST", (), {"__init__": offline}))
    assert run("download", "--out", "out.npz") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download mnist (RuntimeError: Error downloading")
    assert "hint: without internet, set NORMCMP_DATA_DIR to a folder holding the four IDX .gz files" in err


def test_valid_local_folder_is_read(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NORMCMP_DATA_DIR", str(write_mnist(tmp_path / "mnist")))
    assert run("download", "--out", "out.npz", "--stats-out", "stats.json") == 0
    assert "256 train, 128 test images" in capsys.readouterr().out


# --- training and evaluation ------------------------------------------------------------------

def test_exploding_loss_leaves_nothing(workdir, capsys):
    set_param("train.lr", 1e12)
    set_param("train.grad_clip", 0.0)  # clipping would keep the steps finite
    assert run("train", "bn_l1") == 1
    assert "at epoch 1, step" in error_line(capsys)
    assert not Path("models/bn_l1.pt").exists() and not Path("dvclive/bn_l1").exists()


def test_evaluate_and_plot_name_missing_or_corrupt_inputs(workdir, capsys):
    assert run("evaluate") == 1
    line = error_line(capsys)
    assert "dvclive/bn_l1/plots/metrics/train/loss.tsv not found; the train_bn_l1 stage makes it" in line
    for v in ("bn_l1", "gn", "ln"):
        assert run("train", v, "--no-progress") == 0
    Path("models/gn.pt").write_bytes(b"not a model")
    assert run("evaluate") == 1
    assert "models/gn.pt is corrupt (" in error_line(capsys)
    Path("models/gn.pt").unlink()
    assert run("evaluate") == 1
    assert "models/gn.pt not found; the train_gn stage makes it" in error_line(capsys)
    assert not Path("metrics").exists()
    assert run("plot") == 1
    assert "plots/curves/test_loss.csv not found; the evaluate stage makes it" in error_line(capsys)


def test_model_of_another_norm_is_a_clear_mismatch(workdir, capsys):
    for v in ("bn_l1", "gn", "ln"):
        assert run("train", v, "--no-progress") == 0
    Path("models/gn.pt").write_bytes(Path("models/bn_l1.pt").read_bytes())
    assert run("evaluate") == 1
    assert "models/gn.pt holds a bn model but params.yaml says variants.gn.norm is gn" in error_line(capsys)
    ckpt = torch.load("models/ln.pt", weights_only=True)
    ckpt["state_dict"]["head.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, "models/ln.pt")
    from src.checkpoint import load_checkpoint
    from src.errors import UserError

    with pytest.raises(UserError, match="weights do not match the architecture"):
        load_checkpoint("models/ln.pt")


def test_same_inputs_same_results(workdir):
    for _ in range(2):
        for v in ("bn_l1", "gn", "ln"):
            assert run("train", v, "--no-progress") == 0
        first = {v: torch.load(f"models/{v}.pt", weights_only=True)["state_dict"] for v in ("bn_l1", "gn")}
        if _ == 0:
            kept = first
    for v in kept:
        assert all(torch.equal(a, b) for a, b in zip(kept[v].values(), first[v].values()))
    outputs = []
    for _ in range(2):
        assert run("evaluate") == 0
        outputs.append({p: p.read_bytes() for p in sorted(Path("metrics").glob("*.json"))})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 4


def snapshot(*folders: str) -> dict[Path, bytes]:
    """Every file under `folders`, by path, with its bytes."""
    return {p: p.read_bytes() for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_exits_promptly_and_keeps_the_previous_outputs(workdir, sig):
    assert run("train", "gn", "--no-progress") == 0
    before = snapshot("models", "dvclive")
    set_param("train.epochs", 200)
    log = workdir / "stderr.log"
    with open(log, "w") as stderr:
        # A job started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored,
        # and Python then never raises KeyboardInterrupt: restore the default, as for a foreground command.
        proc = subprocess.Popen([sys.executable, "-m", "src.train", "gn", "--no-progress"], cwd=workdir,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 60
        while not list(Path("dvclive").glob(".gn.*.tmp/metrics.json")) and time.time() < deadline:
            time.sleep(0.1)  # wait until training has logged its first epoch (beside the previous log)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"still running 20 s after the signal; stderr:\n{log.read_text()}")
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "error: interrupted; no outputs were written" in err and "Traceback" not in err
    assert snapshot("models", "dvclive") == before
    assert not list(Path(".").rglob("*.tmp"))


def test_a_stage_killed_outright_leaves_litter_that_its_next_run_removes(workdir):
    """SIGKILL runs no clean-up: the killed run's temporary folder stays beside the previous outputs, which are
    intact; the stage's next run deletes it (and only its own stage's temporaries)."""
    assert run("train", "gn", "--no-progress") == 0
    before = snapshot("models", "dvclive")
    set_param("train.epochs", 200)
    proc = subprocess.Popen([sys.executable, "-m", "src.train", "gn", "--no-progress"], cwd=workdir,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(Path("dvclive").glob(".gn.*.tmp/metrics.json")) and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=20)
    litter = list(Path("dvclive").glob(".gn.*.tmp"))
    assert len(litter) == 1 and snapshot("models", "dvclive") == {**before, **snapshot(*litter)}
    other = Path("dvclive/.ln.0a1b2c3d.tmp")  # another stage's: not this run's to judge
    other.mkdir()
    set_param("train.epochs", 1)
    assert run("train", "gn", "--no-progress") == 0
    assert not litter[0].exists() and other.is_dir()
    assert [p for p in Path(".").rglob("*.tmp") if p != other] == []


# --- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["gn", "--progress", "abc"], "Got unexpected extra argument"),
    (["gn", "--epoch", "3"], "No such option: --epoch"),
    ([], "Missing argument 'variant'"),
])
def test_usage_errors_are_one_line_with_a_hint(workdir, capsys, argv, message):
    assert run("train", *argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(f"error: {message}"), err
    assert len(err.splitlines()) == 2 and err.splitlines()[1].startswith("hint: ") and "--help" in err, err


# --- what a stage leaves: modes, a swap cut short, the data a model was trained on -------------------

@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_get_the_modes_of_the_users_umask(workdir, umask, folder, file):
    before = os.umask(umask)
    try:
        assert run("train", "gn", "--no-progress") == 0
    finally:
        os.umask(before)
    assert Path("dvclive/gn").stat().st_mode & 0o777 == folder
    assert Path("models/gn.pt").stat().st_mode & 0o777 == file
    assert Path("dvclive/gn/metrics.json").stat().st_mode & 0o777 == file


def test_a_folder_swap_cut_short_by_a_kill_is_undone_by_the_next_run(workdir, capsys):
    """A kill between the swap's two renames leaves the previous folder aside and none in place: the next stage
    that reads or writes it puts it back first; one killed after the new folder was in place leaves a stale copy,
    which the next run deletes."""
    for v in ("bn_l1", "gn", "ln"):
        assert run("train", v, "--no-progress") == 0
    before = snapshot("dvclive")
    os.rename("dvclive/gn", "dvclive/.gn.1a2b3c4d.old.tmp")  # what the kill left
    assert run("evaluate") == 0
    assert snapshot("dvclive") == before and not list(Path("dvclive").glob(".*"))
    os.rename("dvclive/gn", "dvclive/.gn.1a2b3c4d.old.tmp")
    set_param("train.lr", -1.0)
    assert run("train", "gn", "--no-progress") == 1  # refused before writing: the folder stays aside, nothing lost
    assert Path("dvclive/.gn.1a2b3c4d.old.tmp").is_dir()
    set_param("train.lr", 0.05)
    (Path("dvclive") / ".ln.5e6f7a8b.old.tmp").mkdir()  # a kill after the new folder was in place
    assert run("train", "ln", "--no-progress") == 0
    assert run("train", "gn", "--no-progress") == 0
    assert not list(Path("dvclive").glob(".*")) and snapshot("dvclive") == before
    capsys.readouterr()


def test_evaluate_refuses_models_trained_on_other_data(workdir, tmp_path, capsys):
    from src.data import save_data
    from tests.conftest import synthetic_split

    for v in ("bn_l1", "gn", "ln"):
        assert run("train", v, "--no-progress") == 0
    train_set, test_set = synthetic_split(512, 7), synthetic_split(128, 8)
    save_data(Path("data/dataset.npz"), {"train_images": train_set[0], "train_labels": train_set[1],
                                         "test_images": test_set[0], "test_labels": test_set[1]},
              [str(d) for d in range(10)])
    assert run("evaluate") == 1
    line = error_line(capsys)
    assert "models/bn_l1.pt was trained on other data than data/dataset.npz (md5 " in line
    assert not Path("metrics").exists() and not Path("plots").exists()
