"""How the arithmetic runs: the precision (`train.precision`) and the speed tricks it allows, chosen in `plan`.

`exact` gives the same bits on every x86-64 CPU: float32, one memory layout per norm, CPU kernels capped at AVX2.
`fast` adds what is faster on some CPUs but changes the bits there: bfloat16 autocast and the layout per CPU.
Measurements behind each choice: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from src.config import Precision


class Layout(str, Enum):
    """Which layers run in the channels-last memory format."""

    true = "true"  # the whole model
    false = "false"  # none: NCHW throughout
    stem = "stem"  # only the convolutions before the pool


# AVX2 and AVX-512 kernels sum in different orders; every x86-64 CPU of the last decade has AVX2. Each library
# picks its code for the best instruction set of the CPU unless told: PyTorch's own (ATen), oneDNN and MKL.
EXACT_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def cap_cpu_kernels() -> None:
    """Cap the CPU kernels at AVX2 (EXACT_CPU_KERNELS). The libraries read these settings when they first compute,
    so this works only before the process's first tensor operation; if it came too late, or the CPU lacks AVX2,
    a note says that the results may differ from other machines'."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    os.environ.update(EXACT_CPU_KERNELS)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        print(f"note: train.precision=exact could not cap PyTorch's CPU kernels at AVX2 (they run {capability}: the "
              "CPU lacks AVX2, or torch computed before the cap); results may differ from other machines'",
              file=sys.stderr)


def amx_cpu() -> bool:
    """Whether this CPU has AMX tiles (Xeon since Sapphire Rapids), on which oneDNN has other bf16 kernels."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16); elsewhere bf16 is slower than float32."""
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check() for check in checks if check is not None)


@dataclass(frozen=True)
class Plan:
    """How one model trains on one device: its memory layout and whether it autocasts to bfloat16."""

    layout: Layout
    bf16: bool

    @property
    def memory_format(self) -> torch.memory_format:
        """The format of the model and its input batches."""
        return torch.channels_last if self.layout == Layout.true else torch.contiguous_format

    def describe(self) -> str:
        """E.g. `fp32, channels-last` or `bf16, channels-last stem`."""
        where = {Layout.false: "NCHW", Layout.true: "channels-last", Layout.stem: "channels-last stem"}[self.layout]
        return f"{'bf16' if self.bf16 else 'fp32'}, {where}"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Put `model` in this plan's layout (it stays there: the committed model files hold its weights in it) and,
        while the block runs, make its 2x2 max-pools `MaxPool2x2`s."""
        model.to(memory_format=self.memory_format)
        pools = _swap_pools(model, MaxPool2x2)
        try:
            yield model
        finally:
            _swap_pools(model, nn.MaxPool2d, pools)

    def training_steps(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Around the training steps (not the evaluation): with `Layout.stem`, the stem in channels-last."""
        return stem_channels_last(model) if self.layout == Layout.stem else contextlib.nullcontext()


def plan(precision: Precision | str, norm: str, device: torch.device) -> Plan:
    """The plan for training `norm` on `device`.

    `exact` never depends on the CPU: float32, channels-last for GroupNorm and LayerNorm (their per-image
    statistics are contiguous reductions there), NCHW for BatchNorm on the CPU and for all on a GPU. `fast`
    takes what `python -m benchmarks.throughput --precision fast` measures fastest: bf16 where the CPU computes it
    natively, but not for LayerNorm (faster in float32 channels-last); with bf16, NCHW with AMX, else `stem`.
    """
    on_cpu = device.type == "cpu"
    fp32 = Plan(Layout.true if on_cpu and norm in ("gn", "ln") else Layout.false, False)
    if Precision(precision) == Precision.exact or not on_cpu or norm == "ln" or not native_bf16_cpu():
        return fp32
    return Plan(Layout.false if amx_cpu() else Layout.stem, True)


@contextlib.contextmanager
def stem_channels_last(model: nn.Module) -> Iterator[list]:
    """While the block runs, the convolutions before the first max-pool (but one on a single channel, the same
    memory either way) compute in channels-last and hand NCHW on, through forward hooks (the block gets their
    handles); weights are untouched."""
    handles = []
    stem = itertools.takewhile(lambda module: not isinstance(module, nn.MaxPool2d), model.modules())
    try:
        for conv in (m for m in stem if isinstance(m, nn.Conv2d) and m.in_channels > 1):
            handles.append(conv.register_forward_pre_hook(
                lambda _, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:])))
            handles.append(conv.register_forward_hook(lambda _, args, out: out.contiguous()))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def _swap_pools(model: nn.Module, cls: type[nn.MaxPool2d], only: list | None = None) -> list:
    """Replace the plain `nn.MaxPool2d(2)`s of `model` (or the modules in `only`) by `cls`'s; return the new ones."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            chosen = any(child is m for m in only) if only is not None else (
                type(child) is nn.MaxPool2d and child.kernel_size == 2 and child.stride == 2)
            if chosen:
                swapped.append(cls(2) if cls is nn.MaxPool2d else cls())
                setattr(parent, name, swapped[-1])
    return swapped


class _PlanesAsChannels(torch.autograd.Function):
    """2x2 max-pool of an NCHW CPU tensor by PyTorch's channels-last kernel, with the image planes as channels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        planes = x.reshape(1, b * c, h, w).contiguous(memory_format=torch.channels_last)  # (H, W, B*C) in memory
        out, indices = torch.ops.aten.max_pool2d_with_indices(planes, [2, 2], [2, 2])
        out = out.reshape(b, c, h // 2, w // 2).contiguous()
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, indices.reshape(b, c, h // 2, w // 2).contiguous())  # offsets within each plane
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                                False, indices)


class MaxPool2x2(nn.MaxPool2d):
    """`nn.MaxPool2d(2)` with the same values, indices and gradients, but a faster forward for large NCHW batches
    on the CPU: PyTorch's NCHW CPU kernel is scalar, its channels-last one vectorized over channels, so the planes
    are pooled as the channels of one image. Below `MIN_PLANES` planes the conversions cost more than they save."""

    MIN_PLANES = 256

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and x.shape[0] * x.shape[1] >= self.MIN_PLANES:
            return _PlanesAsChannels.apply(x)
        return super().forward(x)
