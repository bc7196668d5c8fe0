"""Batched data augmentation on tensors: every image gets its own random parameters.

The whole batch is transformed by a handful of tensor ops (one `grid_sample`
for all rotations), on whatever device the batch lives on; no PIL, no per-image
Python loop.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def _uniform(n: int, spread: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """n samples from U(-spread, spread)."""
    return (torch.rand(n, generator=gen, device=device) * 2 - 1) * spread


def standardize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Pixels in [0, 1] -> zero mean, unit variance with the training set's statistics."""
    return (x - mean) / std


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (B, 1, H, W) -> float, standardized."""
    return standardize(images.float() / 255.0, mean, std)


def augment(
    images: torch.Tensor,
    gen: torch.Generator,
    rotation: float,
    brightness: float,
    contrast: float,
    rows: slice = slice(None),
) -> torch.Tensor:
    """Randomly jitter brightness and contrast, then rotate; uint8 (B, 1, H, W) -> float in [0, 1].

    Brightness scales pixels by U(1-b, 1+b) and contrast blends each image with its
    mean grey by U(1-c, 1+c), as torchvision's ColorJitter does; rotation is
    U(-r, r) degrees about the centre with a black fill (torchvision's RandomRotation), bilinear.
    With `rows`, only those images come out, transformed as in the whole batch (a data-parallel process's share):
    the draws are the whole batch's either way.
    """
    x = images[rows].float() / 255.0  # (B, 1, H, W)
    n, b, device = len(images), x.shape[0], x.device
    if brightness:
        x = (x * (1 + _uniform(n, brightness, gen, device)[rows]).view(b, 1, 1, 1)).clamp_(0, 1)
    if contrast:
        grey = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - grey) * (1 + _uniform(n, contrast, gen, device)[rows]).view(b, 1, 1, 1) + grey).clamp_(0, 1)
    if rotation:
        grid = rotation_grid(_uniform(n, math.radians(rotation), gen, device)[rows], x.shape[-2], x.shape[-1])
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x


def rotation_grid(angle: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The sampling grid (B, H, W, 2) of `F.affine_grid` (align_corners=False) for rotations by `angle` (B,) radians
    about the centre, computed as the rotated identity grid: the same values as `affine_grid` of the rotation
    matrices, without its batched matrix product (docs/performance.md).

    The grid's coordinates are x / (W / 2) and y / (H / 2): the rotation turns pixels, so the cross terms carry
    the aspect ratio (1 on a square image) and a non-square image turns without shearing."""
    x, y = _identity_grid(height, width, angle.device)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    return torch.stack([x * cos - y * (sin * (height / width)), x * (sin * (width / height)) + y * cos], dim=-1)


@functools.cache
def _identity_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y (1, H, W) of `affine_grid`'s identity grid, in [-1, 1]; made once per size and device."""
    base = F.affine_grid(torch.eye(2, 3, device=device).unsqueeze(0), [1, 1, height, width], align_corners=False)
    return base[..., 0], base[..., 1]
