"""Batched data augmentation on tensors: every image gets its own random parameters.

The whole batch is transformed by a handful of tensor ops (one `grid_sample`
for all rotations), on whatever device the batch lives on; no PIL, no per-image
Python loop.
"""

from __future__ import annotations

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
) -> torch.Tensor:
    """Randomly jitter brightness and contrast, then rotate; uint8 (B, 1, H, W) -> float in [0, 1].

    Brightness scales pixels by U(1-b, 1+b) and contrast blends each image with its
    mean grey by U(1-c, 1+c), as torchvision's ColorJitter does; rotation is
    U(-r, r) degrees about the centre with a black fill (torchvision's RandomRotation), bilinear.
    """
    x = images.float() / 255.0  # (B, 1, H, W)
    b, device = x.shape[0], x.device
    if brightness:
        x = (x * (1 + _uniform(b, brightness, gen, device)).view(b, 1, 1, 1)).clamp_(0, 1)
    if contrast:
        grey = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - grey) * (1 + _uniform(b, contrast, gen, device)).view(b, 1, 1, 1) + grey).clamp_(0, 1)
    if rotation:
        angle = _uniform(b, math.radians(rotation), gen, device)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(b, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x
