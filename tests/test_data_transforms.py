"""Tests for the tensor augmentations."""

import pytest
import torch
import torch.nn.functional as F

from nenya.data.transforms import (
    Compose,
    Demean,
    GaussianNoise,
    JitterCrop,
    RandomFlip,
    RandomRotate,
    build_augmentation,
    rotate,
)
from nenya.data.views import TwoViews
from nenya.errors import NenyaError

FULL = dict(flip=True, rotate=True, random_cropjitter=[12, 2], gauss_noise=0.1, demean=True)


def image(channels=3, height=16, width=16, seed=0):
    """A reproducible random image [C, H, W]."""
    return torch.randn(channels, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3, 7])
@pytest.mark.parametrize(
    "transform",
    [RandomFlip(), RandomRotate(), JitterCrop(10, 3), GaussianNoise(0.1), Demean(), build_augmentation(**FULL)],
    ids=repr,
)
def test_shape_and_dtype_kept(transform, channels):
    x = image(channels, 16, 12)
    y = transform(x)
    assert y.shape == x.shape and y.dtype == torch.float32


def test_reproducible_under_seed_and_differs_across_seeds():
    transform = build_augmentation(**FULL)
    x = image()
    torch.manual_seed(1)
    a = transform(x)
    torch.manual_seed(1)
    b = transform(x)
    torch.manual_seed(2)
    c = transform(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_flip_is_exact_and_hits_all_four_cases():
    x = image()
    variants = [x, x.flip(-1), x.flip(-2), x.flip([-1, -2])]
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        y = RandomFlip()(x)
        matches = [i for i, v in enumerate(variants) if torch.equal(y, v)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotate_multiple_of_90_matches_rot90(k):
    x = image(2, 9, 9)
    torch.testing.assert_close(rotate(x, 90 * k), torch.rot90(x, k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_rotate_180_non_square():
    x = image(3, 6, 10)
    torch.testing.assert_close(rotate(x, 180), x.flip([-1, -2]), atol=1e-5, rtol=0)


def test_rotate_pads_corners_with_zeros_and_volume_planes():
    x = torch.ones(1, 11, 11)
    y = rotate(x, 45)
    assert y[0, 0, 0].item() == 0.0 and y[0, 5, 5].item() == pytest.approx(1.0)
    volume = image(2, 8, 8).reshape(2, 2, 4, 8).repeat(1, 1, 2, 1)  # [C, D, H, W] with H == W == 8
    torch.testing.assert_close(rotate(volume, 90), torch.rot90(volume, 1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_random_rotate_zero_range_is_identity_and_range_respected():
    x = image()
    torch.testing.assert_close(RandomRotate(0)(x), x, atol=1e-5, rtol=0)
    torch.manual_seed(3)
    angle = (torch.rand(()).item() * 2 - 1) * 30.0
    torch.manual_seed(3)
    torch.testing.assert_close(RandomRotate(30)(x), rotate(x, angle))
    assert abs(angle) <= 30


def crop_resized(x, top, left, crop):
    """Reference: crop a window and resize it back with F.interpolate."""
    window = x[None, :, top:top + crop, left:left + crop]
    return F.interpolate(window, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=False)[0]


def test_jittercrop_without_jitter_is_centre_crop():
    x = image(3, 16, 20)
    torch.testing.assert_close(JitterCrop(10, 0)(x), crop_resized(x, 3, 5, 10))


def test_jittercrop_with_jitter_is_one_shifted_crop():
    x = image(3, 16, 16)
    candidates = [crop_resized(x, 3 + dy, 3 + dx, 10) for dy in range(-2, 3) for dx in range(-2, 3)]
    torch.manual_seed(0)
    for _ in range(10):
        y = JitterCrop(10, 2)(x)
        assert any(torch.allclose(y, c) for c in candidates)


def test_jittercrop_clamps_inside_image():
    x = image(1, 8, 8)
    torch.manual_seed(0)
    for _ in range(20):
        assert JitterCrop(6, 50)(x).shape == x.shape
    torch.testing.assert_close(JitterCrop(8, 3)(x), x)


def test_jittercrop_too_large_raises():
    with pytest.raises(NenyaError, match=r"random_cropjitter=\[20, 1\].*16x16"):
        JitterCrop(20, 1)(image())


def test_noise_std_close_to_sigma():
    torch.manual_seed(0)
    noise = GaussianNoise(0.3)(torch.zeros(3, 256, 256))
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean().item()) < 0.01


def test_demean_gives_zero_mean():
    y = Demean()(image() + 5.0)
    assert abs(y.mean().item()) < 1e-5


def test_two_views_are_independent():
    torch.manual_seed(0)
    views = TwoViews(build_augmentation(**FULL))(image())
    assert views.shape == (2, 3, 16, 16)
    assert not torch.allclose(views[0], views[1])


def test_build_order_and_switches():
    steps = build_augmentation(**FULL).transforms
    assert [type(s) for s in steps] == [RandomRotate, RandomFlip, JitterCrop, GaussianNoise, Demean]
    for off in (None, [], [0, 0]):
        none = build_augmentation(flip=False, rotate=False, random_cropjitter=off, gauss_noise=0.0, demean=False)
        assert isinstance(none, Compose) and none.transforms == []
    x = image()
    assert torch.equal(none(x), x)


@pytest.mark.parametrize("bad", [[12], [0, 2], [-1, 0], ["a", 1]])
def test_bad_cropjitter_raises(bad):
    with pytest.raises(NenyaError, match="random_cropjitter"):
        build_augmentation(flip=False, rotate=False, random_cropjitter=bad, gauss_noise=0.0, demean=False)


def test_negative_noise_raises():
    with pytest.raises(NenyaError, match="gauss_noise=-0.1"):
        build_augmentation(flip=False, rotate=False, random_cropjitter=None, gauss_noise=-0.1, demean=False)
