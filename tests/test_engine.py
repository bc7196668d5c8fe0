from pathlib import Path

import pytest
import torch

from src import config, engine, speed
from src.data import load_data
from src.engine import NonFiniteLoss, fit, make_model, pick_device
from src.errors import ConfigError, UserError
from src.speed import Layout, Plan, plan
from tests.conftest import model_cfg, train_cfg

CPU = torch.device("cpu")


def _fit(dataset_file, norm="bn", **cfg):
    model = make_model(model_cfg(norm=norm), seed=1)
    history = fit(model, load_data(dataset_file), train_cfg(**{"epochs": 2, "batch_size": 64, **cfg}), CPU,
                  progress=False)
    return model, history


def test_fit_logs_every_epoch_and_learns(dataset_file):
    _, history = _fit(dataset_file, lr=0.1)
    assert [r["epoch"] for r in history] == [1, 2]
    assert set(history[0]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds"}
    assert history[-1]["test_acc"] > 30  # synthetic classes are easy; chance is 10%


def test_same_seed_same_weights(dataset_file):
    a, ha = _fit(dataset_file, norm="gn")
    b, hb = _fit(dataset_file, norm="gn")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert [r["test_loss"] for r in ha] == [r["test_loss"] for r in hb]


def test_l1_changes_training(dataset_file):
    plain, _ = _fit(dataset_file, epochs=1)
    penalized, _ = _fit(dataset_file, epochs=1, l1=0.05)
    l1 = lambda m: sum(p.abs().sum().item() for p in m.parameters())  # noqa: E731
    assert l1(penalized) < l1(plain)


def test_validation_split_is_scored_instead_of_the_test_set(dataset_file):
    data = load_data(dataset_file)
    model, history = _fit(dataset_file, norm="gn", validation=100)
    held = data.holdout(100)
    logits = engine.predict(model, held.test_images, held.mean, held.std)
    assert engine.score(logits, held.test_labels) == (history[-1]["test_loss"], history[-1]["test_acc"])
    assert train_cfg(validation=100).split == "validation" and train_cfg().split == "test"


def test_train_step_adds_the_l1_term_to_the_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    grads = {}
    for l1 in (0.0, 0.5):
        with torch.no_grad():
            model.weight.fill_(0.1)
            model.bias.fill_(-0.1)
        params = list(model.parameters())
        cfg = train_cfg(lr=1e-9, l1=l1, label_smoothing=0.0, grad_clip=0.0)  # the plain gradient of the loss
        opt, sched = engine.make_optimizer(params, cfg, total_steps=10)
        loss = engine.train_step(model(x), y, params, opt, sched, cfg)
        assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)
        grads[l1] = model.weight.grad.clone()
    # d/dw of 0.5 * |w| is 0.5 * sign(w) = 0.5 for every (positive) weight
    torch.testing.assert_close(grads[0.5] - grads[0.0], torch.full_like(grads[0.0], 0.5))


def test_exploding_loss_stops_with_epoch_and_step(dataset_file):
    with pytest.raises(NonFiniteLoss, match=r"at epoch 1, step \d+; no model was saved"):
        _fit(dataset_file, lr=1e12, pct_start=0.01, grad_clip=0.0)  # clipping would keep even lr 1e12 finite


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "greater than or equal to 1"),
    ("batch_size", 0, "greater than or equal to 1"),
    ("lr", -0.1, "greater than 0"),
    ("l1", -1.0, "greater than or equal to 0"),
])
def test_impossible_settings_are_refused(field, value, message):
    """The schema refuses them wherever a config is made, not only from params.yaml (tests/test_errors.py)."""
    with pytest.raises(ValueError, match=f"{field}\n  Input should be {message}"):
        train_cfg(**{field: value})


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown; use auto, cpu, cuda or cuda:N"):
        pick_device("tpu")


def _force_layout(monkeypatch, layout: Layout, bf16: bool = False) -> None:
    """Make `fit` train in `layout` (and bf16) whatever the precision and CPU."""
    monkeypatch.setattr(engine, "plan", lambda *args: Plan(layout, bf16))


def test_tiny_runs_and_channels_last_with_l1(dataset_file, monkeypatch):
    # 5 steps with pct_start 0.2 once divided by zero inside OneCycleLR; channels-last weights broke the L1 term.
    _force_layout(monkeypatch, Layout.true)
    data = load_data(dataset_file).subset(n_train=320)
    cfg = train_cfg(epochs=1, batch_size=64, pct_start=0.2, l1=1e-4)
    history = fit(make_model(model_cfg(norm="bn"), seed=1), data, cfg, CPU, progress=False)
    assert len(history) == 1


@pytest.mark.parametrize("native, amx", [(True, True), (True, False), (False, False)])
def test_exact_depends_on_the_norm_alone_and_fast_on_the_cpu(native, amx, monkeypatch):
    """exact: float32, channels-last for GN and LN and NCHW for BN on every CPU, NCHW on CUDA. fast: bf16 on CPUs
    with native bf16 (NCHW with AMX, `stem` without), except LN; elsewhere as exact."""
    monkeypatch.setattr(speed, "native_bf16_cpu", lambda: native)
    monkeypatch.setattr(speed, "amx_cpu", lambda: amx)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fp32 = {"bn": Plan(Layout.false, False), "gn": Plan(Layout.true, False), "ln": Plan(Layout.true, False)}
    bf16 = Plan(Layout.false if amx else Layout.stem, True)
    for norm in ("bn", "gn", "ln"):
        assert plan("exact", norm, cpu) == fp32[norm]
        assert plan(speed.Precision.exact, norm, cuda) == Plan(Layout.false, False)
        assert plan("fast", norm, cpu) == (bf16 if native and norm != "ln" else fp32[norm])
        assert plan("fast", norm, cuda) == Plan(Layout.false, False)
    assert train_cfg().precision == speed.Precision.exact
    assert train_cfg(precision="fast").precision == speed.Precision.fast
    with pytest.raises(ValueError, match="Input should be 'exact' or 'fast'"):
        train_cfg(precision="bf16")


def test_exact_caps_the_cpu_kernels_in_a_fresh_process():
    """The cap works only before the first tensor operation, so it is checked in a process of its own."""
    import subprocess
    import sys

    code = ("import os, torch; from src.engine import pick_device; pick_device('cpu', 2, 'exact'); "
            "print(torch.backends.cpu.get_cpu_capability(), os.environ['ONEDNN_MAX_CPU_ISA'], os.environ['MKL_CBWR'], "
            "torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["AVX2", "AVX2", "AVX2", "2"] and not out.stderr


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_stem_layout_computes_what_nchw_computes(dataset_file, norm, monkeypatch):
    """`stem` changes where the first convolutions compute, not what: same outputs within float rounding, NCHW
    after the pool, and no hooks left on the model once fit returns."""
    model = make_model(model_cfg(norm=norm), seed=1).eval()
    x = torch.randn(4, 1, 28, 28)
    plain = model(x)
    seen = []
    model.features[2].register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    with speed.stem_channels_last(model) as handles:
        torch.testing.assert_close(model(x), plain, rtol=1e-4, atol=1e-5)
    assert len(handles) == 2 and seen == [True]  # the 8 -> 12 convolution (the first has one input channel)
    assert not model.features[1][0]._forward_hooks
    _force_layout(monkeypatch, Layout.stem)
    trained, _ = _fit(dataset_file, norm=norm, epochs=1)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in trained.modules())


def test_stem_hooks_are_removed_when_training_fails(dataset_file, monkeypatch):
    """A step that raises (here: the loss turning NaN) leaves the model without the stem's hooks."""
    model = make_model(model_cfg(norm="gn"), seed=1)
    data = load_data(dataset_file).subset(n_train=640)
    monkeypatch.setattr(engine, "train_step", lambda *args: torch.tensor(float("nan")))
    with pytest.raises(engine.NonFiniteLoss):
        _force_layout(monkeypatch, Layout.stem)
        fit(model, data, train_cfg(epochs=1, batch_size=64), CPU, progress=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_predict_in_channels_last_leaves_the_model_as_it_is(dataset_file):
    """On the CPU `predict` scores a channels-last copy: the same predictions as NCHW, the model's weights and
    mode untouched either way (training goes on in its own memory format)."""
    data = load_data(dataset_file)
    model, _ = _fit(dataset_file, epochs=1)
    model.train()
    nchw = engine.predict(model, data.test_images, data.mean, data.std, channels_last=False)
    assert model.training
    auto = engine.predict(model, data.test_images, data.mean, data.std)
    assert model.training and all(p.is_contiguous() for p in model.parameters())
    model.eval()
    engine.predict(model, data.test_images[:8], data.mean, data.std)
    assert not model.training
    torch.testing.assert_close(auto, nchw, rtol=1e-4, atol=1e-5)
    assert torch.equal(auto.argmax(1), nchw.argmax(1))


def test_omp_num_threads_wins_over_the_core_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        pick_device("cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        pick_device("cpu")
        assert torch.get_num_threads() == engine.physical_cores()
    finally:
        torch.set_num_threads(before)


def test_train_threads_wins_over_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        pick_device("cpu", threads="3")  # as typer passes it
        assert torch.get_num_threads() == 3
        pick_device("cpu", threads=1)  # as YAML gives it
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, "many", "1.5", True):
        with pytest.raises(ConfigError, match="train.threads must be auto or a positive integer"):
            pick_device("cpu", threads=bad)
    # params.yaml writes the count as a YAML integer, or auto; true is neither
    assert config.compute({"train": {"device": "cpu", "threads": 2, "precision": "exact"}}).threads == 2
    with pytest.raises(UserError, match=r"train.threads must be auto or a positive integer \(got True\)"):
        config.compute({"train": {"device": "cpu", "threads": True, "precision": "exact"}})


def test_the_l1_term_per_tensor_mean_weighs_each_tensor_alike():
    params = [torch.nn.Parameter(torch.full((4,), -2.0)), torch.nn.Parameter(torch.full((100,), 0.5))]
    assert engine.l1_term(params).item() == pytest.approx(8 + 50)
    assert engine.l1_term(params, tensor_mean=True).item() == pytest.approx(2 + 0.5)


def test_the_writeup_schedule_cycles_the_momentum_and_drops_nesterov():
    """OneCycleLR with its defaults apart from max_lr, as the write-up ran it: momentum 0.95 at the start and the
    end, 0.85 at the peak of the learning rate; without cycling the momentum stays put."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = train_cfg(lr=0.015, momentum=0.95, cycle_momentum=True, nesterov=False, pct_start=0.3)
    opt, sched = engine.make_optimizer(params, cfg, total_steps=100)
    assert not opt.param_groups[0]["nesterov"]
    seen = []
    for _ in range(100):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.step()
        sched.step()
    peak = max(range(100), key=lambda i: seen[i][0])
    assert seen[peak][0] == pytest.approx(0.015) and seen[peak][1] == pytest.approx(0.85)
    assert seen[0] == (pytest.approx(0.015 / 25), pytest.approx(0.95))
    opt, sched = engine.make_optimizer(params, train_cfg(), total_steps=100)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match=r"momentum must be in \[0.85, 1\) with train.cycle_momentum"):
        train_cfg(momentum=0.8, cycle_momentum=True)


def test_stem_layout_finds_the_convolutions_of_the_writeup_network():
    model = make_model(model_cfg(norm="gn", arch="writeup"), seed=1).eval()
    x = torch.randn(2, 1, 28, 28)
    plain = model(x)
    with speed.stem_channels_last(model) as handles:
        torch.testing.assert_close(model(x), plain, rtol=1e-4, atol=1e-5)
    assert len(handles) == 4  # the 8 -> 16 convolution and the 1x1 transition


def test_a_batchnorm_prediction_is_the_same_alone_and_in_any_batch(dataset_file):
    """Scoring uses BatchNorm's running statistics, so an image's logits do not depend on the images beside it."""
    data = load_data(dataset_file)
    model, _ = _fit(dataset_file, norm="bn", epochs=1)
    images = data.test_images[:64]
    alone = engine.predict(model, images[:1], data.mean, data.std)
    other = torch.cat([images[:1], 255 - images[1:]])  # the same first image among very different ones
    for batch in (images, other):
        torch.testing.assert_close(engine.predict(model, batch, data.mean, data.std)[:1], alone, rtol=0, atol=1e-5)


def test_the_training_loss_is_label_smoothed_cross_entropy_computed_by_hand():
    """With label smoothing e over K classes the loss is (1 - e) * -log p_y + e * mean_k(-log p_k)."""
    import math

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    w = torch.zeros_like(logits, requires_grad=True)
    cfg = train_cfg(label_smoothing=0.2, grad_clip=0.0)
    opt, sched = engine.make_optimizer([w], cfg, total_steps=10)
    loss = engine.train_step(logits + w, labels, [w], opt, sched, cfg).item()
    by_hand = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        nll = [log_z - v for v in row]
        by_hand += (0.8 * nll[y] + 0.2 * sum(nll) / len(nll)) / len(labels)
    assert loss == pytest.approx(by_hand, rel=1e-6)


def test_gradients_are_clipped_to_the_global_norm_the_setting_names():
    """After a step, the gradients' global norm is `train.grad_clip` (the raw one is far above it)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(10, 10)), torch.nn.Parameter(torch.randn(10))]
    for clip in (0.5, 2.0):
        cfg = train_cfg(grad_clip=clip, label_smoothing=0.0)
        opt, sched = engine.make_optimizer(params, cfg, total_steps=10)
        logits = (torch.randn(8, 10) @ params[0] + params[1]) * 100  # a large loss gradient
        engine.train_step(logits, torch.arange(8), params, opt, sched, cfg)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        assert norm.item() == pytest.approx(clip, rel=1e-5)


@pytest.mark.parametrize("pct_start", [0.2, 0.45])
def test_the_learning_rate_peaks_at_the_end_of_the_warm_up_that_pct_start_names(pct_start):
    """OneCycleLR reaches the peak `train.lr` after pct_start * steps - 1 steps, from lr / 25."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt, sched = engine.make_optimizer(params, train_cfg(lr=0.1, pct_start=pct_start), total_steps=200)
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(range(200), key=lrs.__getitem__) == round(pct_start * 200) - 1
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1)
