import torch

from src.augment import augment, normalize


def _batch(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def test_shapes_and_range_are_kept():
    out = augment(_batch(), torch.Generator().manual_seed(1), rotation=7, brightness=0.1, contrast=0.1)
    assert out.shape == (16, 1, 28, 28) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_each_image_gets_its_own_transform():
    same = _batch(1).repeat(8, 1, 1, 1)
    out = augment(same, torch.Generator().manual_seed(1), rotation=7, brightness=0.1, contrast=0.1)
    diffs = [(out[0] - out[i]).abs().max().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3


def test_seeded_and_identity_when_disabled():
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(3), 7, 0.1, 0.1)
    b = augment(x, torch.Generator().manual_seed(3), 7, 0.1, 0.1)
    assert torch.equal(a, b)
    plain = augment(x, torch.Generator().manual_seed(3), 0, 0, 0)
    torch.testing.assert_close(plain, x.float() / 255)


def test_normalize_standardizes():
    x = _batch(64)
    mean, std = (x.float() / 255).mean().item(), (x.float() / 255).std().item()
    out = normalize(x, mean, std)
    assert abs(out.mean().item()) < 1e-3 and abs(out.std().item() - 1) < 1e-2


def test_translate_shifts_each_image_within_its_range():
    x = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 12:16, 12:16] = 255  # a bright square at the centre
    out = augment(x, torch.Generator().manual_seed(0), rotation=0, brightness=0, contrast=0, translate=0.1)
    cols = torch.arange(28.0)
    centre_x = (out.sum(dim=(1, 2)) * cols).sum(1) / out.sum(dim=(1, 2, 3))
    shift = centre_x - 13.5
    assert shift.abs().max() <= 0.1 * 28 + 0.5  # within +-10% of the width
    assert shift.abs().max() > 1 and shift.std() > 0.5  # images move, each by its own amount


def test_no_translate_keeps_the_random_stream():
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(5), 7, 0.1, 0.1)
    b = augment(x, torch.Generator().manual_seed(5), 7, 0.1, 0.1, translate=0.0)
    assert torch.equal(a, b)
