"""Where the training batches come from (`train.loader`): the project's tensors, or the write-up's PIL path.

* `tensors` (the shipped recipe): the images stay uint8 tensors on the device; each batch is augmented by a
  handful of tensor ops (`src.augment`) and standardized by the training set's own mean and std.
* `torchvision`: the write-up's data path, as its notebook builds it: each image a PIL image from
  torchvision's own `MNIST.__getitem__`, through `RandomRotation((-r, r), fill=(1,))`,
  `ColorJitter(brightness, contrast, saturation=0.4, hue=0.1)`, `ToTensor` and
  `Normalize((0.1307,), (0.3081,))`, batched by a shuffled `DataLoader` that keeps the last partial batch,
  every random draw from torch's global generator. The yardstick (`make yardstick`) trains on it; the
  benchmark's baseline is the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST
from torchvision.datasets.vision import VisionDataset

from src.augment import augment, standardize
from src.config import Loader, TrainConfig
from src.data import Data
from src.errors import ConfigError

# The write-up's `Normalize((0.1307,), (0.3081,))`: the original MNIST training set's pixel mean and std.
WRITEUP_MEAN, WRITEUP_STD = 0.1307, 0.3081
# The write-up's ColorJitter also jitters saturation and hue: no-ops on one-channel images, but drawn all the same.
WRITEUP_SATURATION, WRITEUP_HUE = 0.4, 0.1

Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # one call: one epoch of (images, labels)


def input_stats(loader: Loader | str, data: Data) -> tuple[float, float]:
    """The mean and std that standardize a model's input: the training set's own, or on the write-up's path its
    constants. Training and every score of the model use the same pair."""
    if Loader(loader) == Loader.torchvision:
        return WRITEUP_MEAN, WRITEUP_STD
    return data.mean, data.std


def batches(data: Data, cfg: TrainConfig, device: torch.device, memory_format: torch.memory_format,
            share: tuple[int, int] = (0, 1)) -> tuple[int, Batches]:
    """Steps per epoch and the epochs of `cfg.loader`'s path, on `device` in `memory_format`: the tensor path
    draws from its own generator seeded with `cfg.seed`, the write-up's from torch's global one. `share` is
    (rank, processes) of a data-parallel run: each process gets its slice of every batch (tensor path only)."""
    if Loader(cfg.loader) == Loader.torchvision:
        if share[1] > 1:
            raise ConfigError("train.processes > 1 needs train.loader = tensors (the write-up's path runs in "
                              "one process)")
        return torchvision_batches(data, cfg, device, memory_format)
    return tensor_batches(data, cfg, torch.Generator(device=device).manual_seed(cfg.seed), memory_format, share)


def tensor_batches(data: Data, cfg: TrainConfig, gen: torch.Generator, memory_format: torch.memory_format,
                   share: tuple[int, int] = (0, 1)) -> tuple[int, Batches]:
    """Steps per epoch and the epochs of the tensor path: a fresh order from `gen` each epoch, the last partial
    batch dropped, each batch augmented with draws from `gen`. Every process of a data-parallel run draws the
    same batches and keeps rows `rank * batch_size / processes` onwards of each (`share` = (rank, processes)):
    together the processes train on what one process would."""
    n = len(data.train_images)
    steps = n // cfg.batch_size
    mean, std = input_stats(Loader.tensors, data)
    rank, processes = share
    part = cfg.batch_size // processes
    rows = slice(rank * part, (rank + 1) * part) if processes > 1 else slice(None)

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n, generator=gen, device=data.train_images.device)
        for step in range(steps):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = augment(data.train_images[idx], gen, cfg.rotation, cfg.brightness, cfg.contrast, rows)
            yield standardize(x, mean, std).contiguous(memory_format=memory_format), data.train_labels[idx[rows]]

    return steps, epoch


def torchvision_batches(data: Data, cfg, device: torch.device,
                        memory_format: torch.memory_format) -> tuple[int, Batches]:
    """Steps per epoch and the epochs of the write-up's path (every draw from torch's global generator)."""
    loader = torchvision_loader(data.train_images, data.train_labels, cfg, train=True)

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            yield x.to(device).contiguous(memory_format=memory_format), y.to(device)

    return len(loader), epoch


def torchvision_loader(images: torch.Tensor, labels: torch.Tensor, cfg, train: bool = True,
                       batch_size: int | None = None) -> DataLoader:
    """A DataLoader of the write-up's path over uint8 images (N, 1, 28, 28): with `train`, shuffled and augmented
    with `cfg`'s strengths; else in order and only standardized."""
    steps = [
        transforms.RandomRotation((-cfg.rotation, cfg.rotation), fill=(1,)),
        transforms.ColorJitter(cfg.brightness, cfg.contrast, WRITEUP_SATURATION, WRITEUP_HUE),
    ] if train else []
    standard = [transforms.ToTensor(), transforms.Normalize((WRITEUP_MEAN,), (WRITEUP_STD,))]
    dataset = InMemoryMNIST(images, labels, transforms.Compose([*steps, *standard]), train)
    return DataLoader(dataset, batch_size=batch_size or cfg.batch_size, shuffle=train)


class InMemoryMNIST(MNIST):
    """`torchvision.datasets.MNIST` over tensors in memory instead of files under root/MNIST/raw: only the
    constructor differs, so each item is made as there (`Image.fromarray(img.numpy(), mode="L")`, the transform)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None, train: bool = True) -> None:
        VisionDataset.__init__(self, root=None, transform=transform)
        self.train = train
        self.data = images.reshape(-1, images.shape[-2], images.shape[-1]).cpu()  # (N, 28, 28) uint8
        self.targets = labels.cpu()
