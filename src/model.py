"""The CNN compared in this project: one architecture, three choices of normalization.

The network is fully convolutional (global average pooling, no flatten), so no
layer size depends on a hard-coded feature-map size. With the project's settings:

    28x28 -> conv3x3 8 -> conv3x3 12 -> max-pool -> conv3x3 16 (x3) -> conv3x3 pad 1, 16 -> conv1x1 10 -> average

every 3x3 convolution weight-standardized and followed by the norm and a ReLU (9,914 parameters; with
`relu_before_norm`, by a ReLU and the norm, the write-up's order).

`arch="writeup"` builds instead the network of the write-up this project reproduces, the yardstick
(docs/yardstick.md): 8,880 parameters, ReLU before the norm, a 1x1 transition and element-wise dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.config import Arch, ModelConfig, Norm, channel_plan


def norm_layer(norm: str, channels: int, gn_groups: int, bn_images: int = 0) -> nn.Module:
    if norm == Norm.bn:
        return PerDeviceBatchNorm2d(channels, bn_images) if bn_images else nn.BatchNorm2d(channels)
    if norm == Norm.gn:
        return nn.GroupNorm(gn_groups, channels)
    return nn.GroupNorm(1, channels)  # layer norm over (C, H, W)


class PerDeviceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from each group of `images` consecutive images of the batch alone:
    what local BatchNorm computes on `batch / images` data-parallel devices, each holding one group. Its running
    statistics follow the first group only, as under DDP (whose default `broadcast_buffers` hands every process
    rank 0's buffers, which rank 0 updates from its own share). In evaluation mode, and on a batch of at most
    `images` images, it is BatchNorm2d; its weights and buffers are BatchNorm2d's."""

    def __init__(self, channels: int, images: int) -> None:
        super().__init__(channels)
        self.images = images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or len(x) <= self.images:
            return super().forward(x)
        first, *rest = x.split(self.images)
        others = [F.batch_norm(group, None, None, self.weight, self.bias, True, 0.0, self.eps) for group in rest]
        return torch.cat([super().forward(first), *others])


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardization (Qiao et al., 2019): each filter is used with zero mean and unit
    variance, which smooths the loss landscape for batch-independent norms (GN, LN). No extra parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        return self._conv_forward(x, (w - mean) * torch.rsqrt(var + 1e-5), self.bias)


class ConvBlock(nn.Sequential):
    """conv -> norm -> ReLU -> dropout, or with `relu_before_norm` conv -> ReLU -> norm -> dropout.

    With `pool`, a 2x2 max-pool follows the norm, before the ReLU in the default order: the two commute
    (max of ReLUs = ReLU of the max, with the same gradients), and the ReLU then runs on a quarter of the values.
    """

    def __init__(self, cin: int, cout: int, k: int, cfg: ModelConfig, padding: int = 0, pool: bool = False) -> None:
        conv = StdConv2d if cfg.weight_std else nn.Conv2d
        norm, relu = norm_layer(cfg.norm, cout, cfg.gn_groups, cfg.bn_images), nn.ReLU(inplace=True)
        pooled = [nn.MaxPool2d(2)] if pool else []
        super().__init__(
            conv(cin, cout, k, padding=padding, bias=False),  # the norm's shift is the bias
            *([relu, norm, *pooled] if cfg.relu_before_norm else [norm, *pooled, relu]),
            nn.Dropout2d(cfg.dropout) if cfg.dropout else nn.Identity(),
        )


# The write-up's network: (in, out, GroupNorm groups, padding, dropout) of its six 3x3 convolutions, and where
# its 1x1 transition (16 -> 8, neither norm nor ReLU) and the max-pool come: after the second one. Its dropout
# follows the 12 -> 16 and the first 16 -> 16 convolution, so the next norm sees it; none after the padded last.
WRITEUP_PLAN = [(1, 8, 2, 0, 0.0), (8, 16, 4, 0, 0.0), (8, 12, 3, 0, 0.0), (12, 16, 4, 0, 0.04),
                (16, 16, 4, 0, 0.04), (16, 16, 4, 1, 0.0)]


class WriteupBlock(nn.Sequential):
    """The write-up's block: conv (no bias) -> ReLU -> norm -> element-wise dropout."""

    def __init__(self, cin: int, cout: int, groups: int, padding: int, dropout: float, norm: str,
                 bn_images: int = 0) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=padding, bias=False),
            nn.ReLU(inplace=True),
            norm_layer(norm, cout, groups, bn_images),
            nn.Dropout(dropout) if dropout else nn.Identity(),
        )


class Net(nn.Module):
    """A sub-10k-parameter CNN for 28x28 grey images, 10 classes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.arch == Arch.writeup:
            blocks = [WriteupBlock(*spec, norm=cfg.norm, bn_images=cfg.bn_images) for spec in WRITEUP_PLAN]
            self.features = nn.Sequential(
                *blocks[:2],  # (B, 16, 24, 24)
                nn.Conv2d(16, 8, 1, bias=False),  # the transition
                nn.MaxPool2d(2),  # (B, 8, 12, 12)
                *blocks[2:],  # (B, 16, 6, 6)
            )
            self.head = nn.Conv2d(16, 10, 1, bias=False)
            return
        c1, c2, c3, c4, c5, c6 = channel_plan(cfg.width)
        self.features = nn.Sequential(
            ConvBlock(1, c1, 3, cfg),  # (B, c1, 26, 26)
            ConvBlock(c1, c2, 3, cfg, pool=True),  # (B, c2, 24, 24) -> max-pool (B, c2, 12, 12)
            ConvBlock(c2, c3, 3, cfg),  # (B, c3, 10, 10)
            ConvBlock(c3, c4, 3, cfg),  # (B, c4, 8, 8)
            ConvBlock(c4, c5, 3, cfg),  # (B, c5, 6, 6)
            ConvBlock(c5, c6, 3, cfg, padding=1),  # (B, c6, 6, 6)
        )
        self.head = nn.Conv2d(c6, 10, 1)  # (B, 10, 6, 6) -> averaged to (B, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10) for images (B, 1, 28, 28). (The 1x1 head and the average commute: the write-up's
        average-then-convolve is the same map.)"""
        x = self.head(self.features(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
