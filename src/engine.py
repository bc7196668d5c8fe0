"""The training loop and evaluation, shared by the DVC stages, the notebook and the benchmark."""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src.augment import augment, normalize, standardize
from src.data import Data
from src.errors import ConfigError, UserError
from src.model import ModelConfig, Net


def _parse(cls: type[Enum], value: object) -> Enum:
    """A member of `cls` from its name in any case; YAML booleans become `true` / `false`."""
    if isinstance(value, cls):
        return value
    if isinstance(value, bool):
        return cls("true" if value else "false")
    return cls(str(value).lower())


class Precision(str, Enum):
    """`train.precision`: how training computes, and so whether its results depend on the CPU."""

    exact = "exact"  # float32, one memory layout per norm, CPU kernels capped at AVX2: the same bits on any x86-64
    fast = "fast"  # bfloat16 autocast and layouts chosen per CPU (`resolve_fast_path`): faster, CPU-dependent bits

    parse = classmethod(_parse)


class Layout(str, Enum):
    """Which layers run in the channels-last memory format (`resolve_fast_path` picks one)."""

    true = "true"  # the whole model
    false = "false"  # none: NCHW throughout
    stem = "stem"  # only the convolutions before the pool; norms and the rest in NCHW


# The kernels `exact` runs on the CPU: PyTorch's own (ATen), oneDNN's convolutions and MKL's matrix products each
# pick code for the best instruction set of the CPU, and AVX2 and AVX-512 code sum in different orders. Every
# x86-64 CPU of the last decade has AVX2, so capping all three there gives every such CPU the same arithmetic.
EXACT_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule, augmentation and data-split settings (`params.yaml` section `train`); the defaults
are the shipped recipe."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05  # peak learning rate of the one-cycle schedule
    momentum: float = 0.9
    nesterov: bool = True
    cycle_momentum: bool = False  # True: momentum cycles inversely to the learning rate, from 0.85 to `momentum`
    weight_decay: float = 0.0
    pct_start: float = 0.2  # fraction of steps spent warming up to the peak
    l1: float = 0.0  # L1 penalty factor on all weights; BatchNorm models only
    l1_tensor_mean: bool = False  # the L1 term: False = sum of all |w|; True = sum of each tensor's mean |w|
    seed: int = 1
    rotation: float = 7.0  # degrees, U(-r, r)
    brightness: float = 0.1
    contrast: float = 0.1
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # clip the gradients' global norm to this; 0 = off
    validation: int = 0  # hold out the last N training images and score them instead of the test set; 0 = off
    precision: Precision | str = Precision.exact  # exact: the same bits on every CPU; fast: see resolve_fast_path

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision.parse(self.precision))
        except ValueError:
            raise ConfigError(f"train.precision must be exact or fast (got {self.precision!r})") from None
        rules = {  # field: (valid?, what is allowed)
            "epochs": (self.epochs >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"),
            "momentum": (0.85 <= self.momentum < 1 if self.cycle_momentum else 0 <= self.momentum < 1,
                         "in [0.85, 1) with train.cycle_momentum (it cycles from 0.85 up to it)" if self.cycle_momentum
                         else "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "pct_start": (0 < self.pct_start < 1, "in (0, 1)"),
            "l1": (self.l1 >= 0, ">= 0"),
            "rotation": (0 <= self.rotation <= 180, "in [0, 180] degrees"),
            "brightness": (0 <= self.brightness < 1, "in [0, 1)"),
            "contrast": (0 <= self.contrast < 1, "in [0, 1)"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "grad_clip": (self.grad_clip >= 0, ">= 0 (0 = off)"),
            "validation": (self.validation >= 0, ">= 0 (0 = score the test set)"),
        }
        for name, (ok, allowed) in rules.items():
            if not ok:
                key = "variants.<variant>.l1" if name == "l1" else f"train.{name}"
                raise ConfigError(f"{key} must be {allowed} (got {getattr(self, name)!r})")

    @property
    def split(self) -> str:
        """What the per-epoch and final scores are measured on: `test`, or `validation` for a tuning run."""
        return split_name(self.validation)


def split_name(validation: int) -> str:
    """The split that `train.validation` scores: `test`, or `validation` when it holds images out."""
    return "validation" if validation else "test"


def check_l1(norm: str, l1: float) -> None:
    """L1 is part of the BN recipe only: refuse it with GN or LN instead of silently ignoring it."""
    if l1 and norm != "bn":
        raise ConfigError(f"l1 = {l1} is only allowed with norm 'bn'; set l1 to 0 for norm '{norm}'")


def pick_device(name: str = "auto", threads: int | str = "auto",
                precision: Precision | str = Precision.exact) -> torch.device:
    """`auto` means CUDA when present, else the CPU; call it before any other torch work of the process.

    On the CPU, torch uses `threads` threads; with `auto`, OMP_NUM_THREADS if set, else one per physical
    core. The thread count decides how sums are split, so it is part of the result: the same count gives the same
    bits on any number of cores. With `exact` precision the CPU kernels are capped at AVX2 (EXACT_CPU_KERNELS);
    on a GPU, cuDNN is held to deterministic algorithms (the same bits run to run there, not the CPU's).
    """
    count = parse_threads(threads)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = {name!r} is unknown; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device = {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if Precision.parse(precision) == Precision.exact:
        if device.type == "cpu":
            cap_cpu_kernels()
        else:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    if device.type == "cpu" and (count or not os.environ.get("OMP_NUM_THREADS")):
        torch.set_num_threads(count or physical_cores())
    return device


def cap_cpu_kernels() -> None:
    """Cap the CPU kernels at AVX2 (EXACT_CPU_KERNELS). Each library reads its setting when it
    first computes, so this works only before the process's first tensor operation; if it is too late, or the
    CPU is not an x86-64 with AVX2, a note says that the results may differ from other machines'."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    os.environ.update(EXACT_CPU_KERNELS)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        print(f"note: train.precision=exact could not cap PyTorch's CPU kernels at AVX2 (they run {capability}: the "
              "CPU lacks AVX2, or torch computed before the cap); results may differ from other machines'",
              file=sys.stderr)


def parse_threads(value: int | str) -> int | None:
    """`train.threads`: None for `auto`, else the positive thread count it names."""
    if str(value).strip().lower() == "auto":
        return None
    if not isinstance(value, bool) and str(value).strip().isdigit() and int(value) >= 1:
        return int(value)
    raise ConfigError(f"train.threads must be auto or a positive integer (got {value!r})")


def amx_cpu() -> bool:
    """Whether this CPU has AMX tiles (Xeon since Sapphire Rapids), on which oneDNN has other bf16 kernels."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16); elsewhere bf16 is slower than fp32."""
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check() for check in checks if check is not None)


def resolve_fast_path(precision: Precision | str, norm: str, device: torch.device) -> tuple[Layout, bool]:
    """(layout, bf16) for training `norm` on `device` with `precision`.

    `exact` never depends on the CPU: float32, channels-last for GroupNorm and LayerNorm (their per-image
    statistics are contiguous reductions there) and NCHW for BatchNorm on the CPU, NCHW on a GPU. `fast` takes
    what `python -m benchmarks.throughput --precision fast` measured fastest per kind of CPU (docs/performance.md):
    bf16 autocast where the CPU computes bfloat16 natively (AMX or AVX512-BF16), but not for LayerNorm, which is
    faster in float32 channels-last; with bf16, NCHW on a CPU with AMX and `stem` without; without bf16, as exact.
    On a GPU both are NCHW float32: this small model is bound by kernel launches there.
    """
    on_cpu = device.type == "cpu"
    fp32_layout = Layout.true if on_cpu and norm in ("gn", "ln") else Layout.false
    if Precision.parse(precision) == Precision.exact or not on_cpu or norm == "ln" or not native_bf16_cpu():
        return fp32_layout, False
    return (Layout.false if amx_cpu() else Layout.stem), True


def describe_path(layout: Layout, bf16: bool) -> str:
    """What a precision resolves to on this device, e.g. `fp32, channels-last` or `bf16, channels-last stem`."""
    where = {Layout.false: "NCHW", Layout.true: "channels-last", Layout.stem: "channels-last stem"}[layout]
    return f"{'bf16' if bf16 else 'fp32'}, {where}"


@contextlib.contextmanager
def stem_channels_last(model: Net) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """While the `with` block runs, the convolutions before the pool (but the first, on one channel) compute in
    channels-last and hand NCHW on (`Layout.stem`).

    A convolution computes in its input's memory format, so a forward pre-hook converts the input and a forward
    hook converts the output back; the weights, and so the model file, stay as they are. Yields the hooks'
    handles; they are removed on leaving the block, also when it raises.
    """
    handles = []
    stem = itertools.takewhile(lambda module: not isinstance(module, nn.MaxPool2d), model.features.modules())
    try:
        for conv in (m for m in stem if isinstance(m, nn.Conv2d)):
            if conv.in_channels == 1:  # one input channel: the same memory either way, and its backward was slower
                continue
            handles.append(conv.register_forward_pre_hook(
                lambda _, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:])))
            handles.append(conv.register_forward_hook(lambda _, args, out: out.contiguous()))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads slow small convolutions down)."""
    import psutil

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(available, psutil.cpu_count(logical=False) or available))


def make_model(cfg: ModelConfig, seed: int) -> Net:
    """A freshly initialized `Net`, identical for the same config and seed."""
    torch.manual_seed(seed)
    return Net(cfg)


def predict(model: nn.Module, images: torch.Tensor, mean: float, std: float, batch_size: int = 2000,
            channels_last: bool | None = None) -> torch.Tensor:
    """Logits (N, 10) for uint8 images (N, 1, 28, 28), in evaluation mode and float32 (whatever the training
    precision: scores are read from the full-precision model).

    With `channels_last` a channels-last copy of the model computes them; `None` means on the CPU, where float32
    inference measured 1.6x faster that way with BatchNorm and LayerNorm and 1.2x with GroupNorm (10,000 test
    images, 2 threads), with the same predictions as NCHW. The model is left as it was: its memory format and
    its training or evaluation mode.
    """
    device = next(model.parameters()).device
    if channels_last is None:
        channels_last = device.type == "cpu"
    net = copy.deepcopy(model).to(memory_format=torch.channels_last) if channels_last else model
    training = model.training
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(net(normalize(images[i : i + batch_size].to(device), mean, std)))
    model.train(training)
    return torch.cat(out)


def score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in percent."""
    loss = F.cross_entropy(logits, labels.to(logits.device), reduction="sum").item() / len(labels)
    acc = (logits.argmax(1) == labels.to(logits.device)).sum().item() * 100.0 / len(labels)
    return loss, acc


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig,
                   total_steps: int) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.OneCycleLR]:
    """SGD (with Nesterov momentum unless `cfg.nesterov` is off) and its one-cycle learning-rate schedule over
    `total_steps` steps: from `lr / 25` up to `lr`, then down to `lr / 25e4` (OneCycleLR's defaults); with
    `cfg.cycle_momentum` the momentum falls from `momentum` to 0.85 while the rate rises, and back."""
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    # OneCycleLR divides by (pct_start * total - 1) and by its complement: keep both from zero on tiny runs.
    pct_start = min(max(cfg.pct_start, 1.5 / total_steps), 0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct_start,
                                                cycle_momentum=cfg.cycle_momentum, base_momentum=0.85,
                                                max_momentum=cfg.momentum)
    return opt, sched


def train_step(logits: torch.Tensor, y: torch.Tensor, params: list[nn.Parameter], opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig) -> torch.Tensor:
    """One update from a batch's logits: label-smoothed cross-entropy plus the L1 penalty on `params`,
    backward, gradient clipping, the optimizer's and the schedule's step. Returns the cross-entropy (no L1)."""
    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    objective = loss + cfg.l1 * l1_term(params, cfg.l1_tensor_mean) if cfg.l1 else loss
    opt.zero_grad(set_to_none=True)
    objective.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    sched.step()
    return loss


def l1_term(params: list[nn.Parameter], tensor_mean: bool = False) -> torch.Tensor:
    """The L1 penalty before its factor: the sum of all |w|, or with `tensor_mean` the sum over the tensors of
    each one's mean |w| (the write-up's form, which weighs a 16-value norm tensor like a 2,304-value kernel)."""
    if tensor_mean:
        return torch.stack([p.abs().mean() for p in params]).sum()
    return torch.cat([p.reshape(-1) for p in params]).abs().sum()


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: training cannot recover, so it stops at once."""


def fit(
    model: Net,
    data: Data,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train `model` for `cfg.epochs` epochs; return one dict of metrics per epoch.

    Data must already be on `device`. Each epoch visits the training set in a
    fresh random order (the last partial batch is dropped) with fresh
    augmentation, then scores the un-augmented test set, or with
    `cfg.validation` the held-out end of the training set (`Data.holdout`).
    """
    check_l1(model.cfg.norm, cfg.l1)
    data = data.holdout(cfg.validation)
    n = len(data.train_images)
    steps = n // cfg.batch_size
    if steps == 0:
        raise ConfigError(f"train.batch_size = {cfg.batch_size} exceeds the {n} training images")
    torch.manual_seed(cfg.seed)  # dropout
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # order and augmentation
    model.to(device)
    layout, bf16 = resolve_fast_path(cfg.precision, model.cfg.norm, device)
    fmt = torch.channels_last if layout == Layout.true else torch.contiguous_format
    model.to(memory_format=fmt)
    params = list(model.parameters())
    opt, sched = make_optimizer(params, cfg, cfg.epochs * steps)
    # How often the host reads the losses back (a sync on the GPU) to check them and update the bar.
    check_every = 10 if device.type == "cpu" else 50
    history = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen, device=device)
        losses = torch.empty(steps, device=device)  # per-step loss, read back in chunks
        correct = torch.zeros((), dtype=torch.long, device=device)
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                   disable=None if progress else True, mininterval=0.5, dynamic_ncols=True)
        checked = 0
        with stem_channels_last(model) if layout == Layout.stem else contextlib.nullcontext():
            for step in bar:
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x = augment(data.train_images[idx], gen, cfg.rotation, cfg.brightness, cfg.contrast)
                x = standardize(x, data.mean, data.std).contiguous(memory_format=fmt)
                y = data.train_labels[idx]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x)
                loss = train_step(logits, y, params, opt, sched, cfg)
                losses[step] = loss.detach()
                correct += (logits.argmax(1) == y).sum()
                if (step + 1) % check_every == 0 or step + 1 == steps:
                    _check_finite(losses[checked : step + 1], epoch, checked)
                    checked = step + 1
                    if progress:
                        bar.set_postfix(loss=f"{losses[:checked].mean().item():.4f}", refresh=False)
        bar.close()
        train_loss = losses.mean().item()
        train_acc = correct.item() * 100.0 / (steps * cfg.batch_size)
        train_seconds = time.perf_counter() - start
        test_loss, test_acc = score(predict(model, data.test_images, data.mean, data.std), data.test_labels)
        row = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
            "test_loss": test_loss, "test_acc": test_acc, "lr": sched.get_last_lr()[0],
            "epoch_seconds": train_seconds, "eval_seconds": time.perf_counter() - start - train_seconds,
        }
        history.append(row)
        if progress:
            print(f"epoch {epoch:>2}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:6.2f}%  "
                  f"test loss {test_loss:.4f} acc {test_acc:6.2f}%  lr {row['lr']:.4f}  {train_seconds:5.1f}s",
                  flush=True)
        if on_epoch:
            on_epoch(row)
    return history


def _check_finite(losses: torch.Tensor, epoch: int, first_step: int) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step = first_step + int(bad[0]) + 1
        raise NonFiniteLoss(
            f"loss became {losses[int(bad[0])].item()} at epoch {epoch}, step {step}; no model was saved",
            hint="lower train.lr (or the l1 factor) and run again",
        )
