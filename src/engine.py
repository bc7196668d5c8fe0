"""The training loop and evaluation, shared by the DVC stages, the notebook and the benchmark."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src import parallel
from src.augment import normalize
from src.config import ModelConfig, Precision, TrainConfig
from src.data import Data
from src.errors import ConfigError, UserError
from src.loader import batches, input_stats
from src.model import Net
from src.speed import cap_cpu_kernels, plan


def pick_device(name: str = "auto", threads: int | str = "auto",
                precision: Precision = Precision.exact) -> torch.device:
    """`auto` means CUDA when present, else the CPU; call it before any other torch work of the process.

    On the CPU, torch uses `threads` threads; with `auto`, OMP_NUM_THREADS if set, else one per physical
    core. The thread count decides how sums are split, so it is part of the result: the same count gives the same
    bits on any number of cores. With `exact` precision the CPU kernels are capped at AVX2 (`speed.cap_cpu_kernels`);
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
    if Precision(precision) == Precision.exact:
        if device.type == "cpu":
            cap_cpu_kernels()
        else:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    if device.type == "cpu" and (count or not os.environ.get("OMP_NUM_THREADS")):
        torch.set_num_threads(count or physical_cores())
    return device


def parse_threads(value: int | str) -> int | None:
    """`train.threads`: None for `auto`, else the positive thread count it names."""
    if str(value).strip().lower() == "auto":
        return None
    if not isinstance(value, bool) and str(value).strip().isdigit() and int(value) >= 1:
        return int(value)
    raise ConfigError(f"train.threads must be auto or a positive integer (got {value!r})")


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

    With `channels_last` a channels-last copy of the model computes them; `None` means on the CPU, where that is
    faster for every norm (docs/performance.md). The model is left as it was: its memory format and its training
    or evaluation mode.
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
    fresh random order with fresh augmentation, its batches from `cfg.loader`
    (src/loader.py: the tensor path drops the last partial batch, the write-up's
    keeps it), then scores the un-augmented test set, or with `cfg.validation`
    the held-out end of the training set (`Data.holdout`).

    In a data-parallel process group (src/parallel.py) every process trains its share of each batch and the
    epoch's train loss and accuracy are the whole batch's; rank 0 alone scores the test set (the others' rows
    have no test scores) and shows progress.
    """
    data = data.holdout(cfg.validation)
    n = len(data.train_images)
    if n // cfg.batch_size == 0:
        raise ConfigError(f"train.batch_size = {cfg.batch_size} exceeds the {n} training images")
    rank, processes = parallel.share()
    progress = progress and rank == 0
    torch.manual_seed(cfg.seed + rank)  # dropout (its own masks in each process); on the torchvision path also
    np.random.seed(cfg.seed)  # the order and the augmentation (the write-up's seeding)
    mean, std = input_stats(cfg.loader, data)
    model.to(device)
    how = plan(cfg.precision, model.cfg.norm, device)  # layout and bf16: src/speed.py
    # How often the host reads the losses back (a sync on the GPU) to check them and update the bar.
    check_every = 10 if device.type == "cpu" else 50
    history = []
    steps, epoch_batches = batches(data, cfg, device, how.memory_format, (rank, processes))
    with how.applied(model):
        net = parallel.wrap(model, device, cfg.sync_bn)
        params = list(model.parameters())
        opt, sched = make_optimizer(params, cfg, cfg.epochs * steps)
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            model.train()
            losses = torch.empty(steps, device=device)  # per-step loss, read back in chunks
            correct = torch.zeros((), dtype=torch.long, device=device)
            seen = 0
            bar = tqdm(epoch_batches(), total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                       disable=None if progress else True, mininterval=0.5, dynamic_ncols=True)
            checked = 0
            with how.training_steps(model):
                for step, (x, y) in enumerate(bar):
                    seen += len(y)
                    with how.autocast(device):
                        logits = net(x)
                    loss = train_step(logits, y, params, opt, sched, cfg)
                    losses[step] = loss.detach()
                    correct += (logits.argmax(1) == y).sum()
                    if (step + 1) % check_every == 0 or step + 1 == steps:
                        _check_finite(losses[checked : step + 1], epoch, checked)
                        checked = step + 1
                        if progress:
                            bar.set_postfix(loss=f"{losses[:checked].mean().item():.4f}", refresh=False)
            bar.close()
            train_seconds = time.perf_counter() - start
            test_loss, test_acc = (score(predict(model, data.test_images, mean, std), data.test_labels)
                                   if rank == 0 else (float("nan"), float("nan")))
            row = {
                "epoch": epoch, "train_loss": (parallel.total(losses.mean()) / processes).item(),
                "train_acc": parallel.total(correct).item() * 100.0 / (seen * processes),
                "test_loss": test_loss, "test_acc": test_acc, "lr": sched.get_last_lr()[0],
                "epoch_seconds": train_seconds, "eval_seconds": time.perf_counter() - start - train_seconds,
            }
            history.append(row)
            if progress:
                print(f"epoch {epoch:>2}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                      f"acc {row['train_acc']:6.2f}%  test loss {test_loss:.4f} acc {test_acc:6.2f}%  "
                      f"lr {row['lr']:.4f}  {train_seconds:5.1f}s",
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
