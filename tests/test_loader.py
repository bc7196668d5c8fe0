"""`train.loader: torchvision`, the write-up's data path (src/loader.py), against hand computations."""

import torch

from src.data import load_data
from src.engine import fit, make_model, make_optimizer, predict, score
from src.evaluate import score_model
from src.loader import WRITEUP_MEAN, WRITEUP_STD, Loader, input_stats, torchvision_batches
from tests.conftest import model_cfg, train_cfg

CPU = torch.device("cpu")


def _epoch(data, **cfg):
    torch.manual_seed(0)
    steps, batches = torchvision_batches(data, train_cfg(loader="torchvision", **cfg), CPU, torch.contiguous_format)
    return steps, list(batches())


def test_every_image_is_served_once_an_epoch_standardized_by_the_writeups_constants(dataset_file):
    data = load_data(dataset_file)  # 512 training images
    steps, batches = _epoch(data, batch_size=200, rotation=0, brightness=0, contrast=0)
    assert steps == 3 and [len(y) for _, y in batches] == [200, 200, 112]  # the last partial batch is kept
    served = torch.cat([x for x, _ in batches]).flatten(1)
    labels = torch.cat([y for _, y in batches])
    by_hand = ((data.train_images.float() / 255 - 0.1307) / 0.3081).flatten(1)
    nearest = torch.cdist(served, by_hand, compute_mode="donot_use_mm_for_euclid_dist").min(1)
    assert nearest.values.max() < 1e-4  # each served image is one of the training images, standardized
    assert sorted(nearest.indices.tolist()) == list(range(512))  # each exactly once
    assert torch.equal(labels, data.train_labels[nearest.indices])
    assert nearest.indices.tolist() != list(range(512))  # shuffled


def test_the_rotation_is_nearest_neighbour_with_the_fill_1(dataset_file):
    """PIL's rotation takes each pixel from one source pixel (no bilinear blend), and fills the corners with 1."""
    data = load_data(dataset_file)
    _, batches = _epoch(data, batch_size=512, rotation=7, brightness=0, contrast=0)
    pixels = torch.cat([x for x, _ in batches]) * WRITEUP_STD + WRITEUP_MEAN
    levels = pixels * 255
    assert (levels - levels.round()).abs().max() < 1e-3  # still 8-bit values
    rotated = levels.round().to(torch.uint8)
    assert set(rotated.unique().tolist()) <= set(data.train_images.unique().tolist()) | {1}
    assert (rotated[:, :, 0, 0] == 1).float().mean() > 0.4  # a corner left empty by the rotation is filled with 1
    assert not torch.equal(rotated.sort(0).values, data.train_images.sort(0).values)


def test_brightness_is_colorjitters_one_factor_per_image_truncated_to_8_bits(dataset_file):
    """ColorJitter's brightness on a PIL image: each pixel times one factor per image from [0.6, 1.4], truncated
    to an integer and clipped at 255 (PIL's blend with black), so that min(255, floor(x * f)) holds for one f."""
    data = load_data(dataset_file)  # synthetic digits: faint noise (0-39) and bands of 255
    _, batches = _epoch(data, batch_size=512, rotation=0, brightness=0.4, contrast=0)
    served = ((torch.cat([x for x, _ in batches]) * WRITEUP_STD + WRITEUP_MEAN) * 255).flatten(1)
    assert (served - served.round()).abs().max() < 1e-3  # 8-bit levels
    served = served.round()
    source = data.train_images.float().flatten(1)
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    index = (unit(served) @ unit(source).T).argmax(1)  # the source image of each served one (its noise is its own)
    assert sorted(index.tolist()) == list(range(512))
    source = source[index]
    lit = source > 0
    assert (served[~lit] == 0).all()
    # floor(x * f) = s  <=>  s / x <= f < (s + 1) / x; a pixel clipped at 255 only bounds f from below.
    low = torch.where(lit, served / source, 0).max(1).values
    high = torch.where(lit & (served < 255), (served + 1) / source, torch.inf).min(1).values
    assert (low < high).all()  # one factor explains every pixel of the image
    assert 0.6 <= low.min() < 0.62 and 1.38 < high.max() <= 1.41


def test_training_on_it_scores_with_its_constants_and_takes_every_step(dataset_file):
    data = load_data(dataset_file)
    cfg = train_cfg(epochs=2, batch_size=200, lr=0.1, loader="torchvision")
    models, histories = [], []
    for _ in range(2):
        models.append(make_model(model_cfg(norm="bn"), seed=1))
        histories.append(fit(models[-1], data, cfg, CPU, progress=False))
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
    last = histories[0][-1]
    opt, sched = make_optimizer([torch.zeros(1, requires_grad=True)], cfg, total_steps=6)
    for _ in range(6):  # 2 epochs of 3 batches: 200, 200 and the partial 112
        opt.step()
        sched.step()
    assert last["lr"] == sched.get_last_lr()[0]
    by_hand = score(predict(models[0], data.test_images, 0.1307, 0.3081), data.test_labels)
    assert (last["test_loss"], last["test_acc"]) == by_hand
    scored = score_model(models[0], data, loader=Loader.torchvision)
    assert (scored["test_loss"], scored["test_acc"]) == by_hand
    assert score_model(models[0], data)["test_loss"] != by_hand[0]  # the data's own statistics give another loss
    assert input_stats("tensors", data) == (data.mean, data.std) != input_stats("torchvision", data)


# --- the tensor path (the shipped `train.loader: tensors`) ------------------------------------------------------------

def test_the_tensor_path_serves_full_batches_in_its_generators_order_standardized_by_the_datas_own_stats(
        dataset_file):
    from src.loader import batches

    data = load_data(dataset_file)  # 512 training images
    cfg = train_cfg(batch_size=200, seed=5, rotation=0, brightness=0, contrast=0)
    steps, epochs = batches(data, cfg, CPU, torch.contiguous_format)
    served = list(epochs())
    assert steps == 2 and [len(y) for _, y in served] == [200, 200]  # the last partial batch (112) is dropped
    order = torch.randperm(512, generator=torch.Generator().manual_seed(5))  # a generator of its own, seeded
    for step, (x, y) in enumerate(served):
        idx = order[step * 200 : (step + 1) * 200]
        by_hand = (data.train_images[idx].float() / 255 - data.mean) / data.std
        assert torch.allclose(x, by_hand, atol=1e-6) and torch.equal(y, data.train_labels[idx])
    assert input_stats("tensors", data) == (data.mean, data.std)


def test_each_process_gets_its_slice_of_every_batch_one_process_draws(dataset_file):
    from src.loader import batches

    data = load_data(dataset_file)
    cfg = train_cfg(batch_size=200, seed=2, rotation=10, brightness=0.3, contrast=0.3)
    whole = list(batches(data, cfg, CPU, torch.contiguous_format)[1]())
    for rank, rows in ((0, slice(0, 100)), (1, slice(100, 200))):
        steps, epochs = batches(data, cfg, CPU, torch.contiguous_format, share=(rank, 2))
        assert steps == 2
        for (x, y), (wx, wy) in zip(epochs(), whole, strict=True):
            assert len(y) == 100 and torch.equal(y, wy[rows])
            assert torch.allclose(x, wx[rows], atol=1e-6)


def test_the_writeups_path_runs_in_one_process_only(dataset_file):
    import pytest

    from src.errors import ConfigError
    from src.loader import batches

    data = load_data(dataset_file)
    with pytest.raises(ConfigError, match="train.processes > 1 needs train.loader = tensors"):
        batches(data, train_cfg(loader="torchvision"), CPU, torch.contiguous_format, share=(0, 2))
