import math

import pytest
import torch
import torch.nn.functional as F

from src.augment import augment, normalize, rotation_grid


def _batch(n=16, height=28, width=28):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, height, width), generator=g, dtype=torch.uint8)


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


def test_rotation_turns_each_image_within_its_range():
    x = torch.zeros(256, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 13:15, 22:25] = 255  # a bright dot right of the centre (13.5, 13.5)
    out = augment(x, torch.Generator().manual_seed(0), rotation=7, brightness=0, contrast=0)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = out.sum(dim=(1, 2, 3))
    dy = (out[:, 0] * rows).sum(dim=(1, 2)) / mass - 13.5
    dx = (out[:, 0] * cols).sum(dim=(1, 2)) / mass - 13.5
    angle = torch.rad2deg(torch.atan2(dy, dx))
    assert angle.abs().max() <= 7.5  # within +-7 degrees (plus the dot's own width)
    assert angle.min() < -5 and angle.max() > 5 and angle.std() > 3  # spread over the range, image by image


@pytest.mark.parametrize(("height", "width"), [(28, 28), (28, 20), (12, 40)])
def test_the_rotation_grid_is_affine_grids_own(height, width):
    """affine_grid of the rotation in pixels, written in normalized coordinates (x scaled by 2 / W, y by 2 / H):
    [[cos, -sin H / W], [sin W / H, cos]]."""
    angle = (torch.rand(64, generator=torch.Generator().manual_seed(3)) * 2 - 1) * math.radians(30)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([cos, -sin * height / width, zero, sin * width / height, cos, zero], dim=1).view(-1, 2, 3)
    expected = F.affine_grid(theta, [64, 1, height, width], align_corners=False)
    torch.testing.assert_close(rotation_grid(angle, height, width), expected, rtol=0, atol=1e-6)


def test_brightness_scales_each_image_by_its_own_draw_from_the_range():
    """A flat grey batch with brightness b only: image i becomes grey x (1 + u_i), u_i the generator's i-th draw
    from U(-b, b), the same draws recomputed here by hand."""
    grey = torch.full((64, 1, 28, 28), 100, dtype=torch.uint8)
    out = augment(grey, torch.Generator().manual_seed(5), rotation=0, brightness=0.2, contrast=0)
    draws = torch.rand(64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    expected = (100 / 255 * (1 + 0.2 * draws)).view(64, 1, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    means = out.mean(dim=(1, 2, 3))
    assert means.min() < 100 / 255 * 0.85 and means.max() > 100 / 255 * 1.15  # the batch spreads over the range


def test_brightness_alone_clips_at_white():
    """ColorJitter clips a brightened image at 1, also when no contrast jitter follows to clip it."""
    white = torch.full((64, 1, 28, 28), 200, dtype=torch.uint8)
    out = augment(white, torch.Generator().manual_seed(5), rotation=0, brightness=0.5, contrast=0)
    draws = torch.rand(64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    expected = (200 / 255 * (1 + 0.5 * draws)).clamp(0, 1).view(64, 1, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out == 1).any()


def test_contrast_blends_each_image_with_its_mean_grey_by_its_own_draw():
    """Contrast c alone: image i becomes (x - m_i)(1 + u_i) + m_i, clipped to [0, 1], with m_i its mean and u_i the
    generator's i-th draw from U(-c, c) (the first draws: brightness is off)."""
    x = torch.full((64, 1, 28, 28), 10, dtype=torch.uint8)
    x[:, :, :, 14:] = 245  # two levels, far enough apart that a factor above 1 clips them
    x[:, :, :4, :] = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1)  # each image its own mean
    out = augment(x, torch.Generator().manual_seed(7), rotation=0, brightness=0, contrast=0.5)
    draws = torch.rand(64, generator=torch.Generator().manual_seed(7)) * 2 - 1
    pixels = x.float() / 255
    grey = pixels.mean(dim=(1, 2, 3), keepdim=True)
    expected = ((pixels - grey) * (1 + 0.5 * draws).view(64, 1, 1, 1) + grey).clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out == 0).any() and (out == 1).any() and (out != out[:1]).any()


@pytest.mark.parametrize(("height", "width"), [(28, 28), (12, 40)])
def test_the_rotation_is_torchvisions_bilinear_rotation_by_each_images_draw(height, width):
    """torchvision turns pixels, so on a wide image too (rotating normalized coordinates would shear it)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    x = _batch(8, height, width)
    out = augment(x, torch.Generator().manual_seed(3), rotation=30, brightness=0, contrast=0)
    angles = (torch.rand(8, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 30  # degrees, counter-clockwise
    expected = torch.stack([TF.rotate(x[i].float() / 255, float(angles[i]), interpolation=InterpolationMode.BILINEAR)
                            for i in range(8)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
