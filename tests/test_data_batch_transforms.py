"""Tests for the batched augmentations: batched == per-sample, references, distributions, determinism."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from skimage.transform import resize as sk_resize
from skimage.transform import rotate as sk_rotate

from nenya.data.batch_transforms import (
    CubeAugment,
    ImageAugment,
    ImageParams,
    apply_cube_params,
    apply_image_params,
    augment_cubes,
    augment_images,
    batch_means,
    cat_params,
    derive_seed,
    draw_cube_params,
    draw_image_params,
    seeds_from,
    two_views,
    view_seeds,
)
from nenya.data.transforms import build_augmentation, build_cube_augmentation
from nenya.data.views import SeededTwoViews, TwoViews
from nenya.errors import NenyaError

OPTIONS = dict(flip=True, rotate=True, random_cropjitter=[10, 2], gauss_noise=0.1, demean=True)
FULL = ImageAugment.from_options(**OPTIONS)
AUGMENTS = {
    "full": FULL,
    "no-rotate": ImageAugment.from_options(True, False, [10, 2], 0.1, True),
    "rotate-only": ImageAugment.from_options(False, True, None, 0.0, False),
    "crop-only": ImageAugment.from_options(False, False, [11, 3], 0.0, False),
    "rotate-flip-no-crop": ImageAugment.from_options(True, True, None, 0.0, True),
}
SHAPES = [(1, 16, 16), (3, 16, 16), (5, 13, 16), (2, 3, 16, 16)]


def batch_of(count, shape, seed=0, dtype=torch.float32):
    """A reproducible random batch [count, *shape]."""
    return torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# The batched path equals the per-sample path


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", AUGMENTS)
def test_batched_equals_per_sample(name, shape):
    aug = AUGMENTS[name]
    batch, seeds = batch_of(7, shape), [11, 5, 2**40 + 3, 0, 99, 12345678901, 7]
    batched = augment_images(batch, seeds, aug)
    assert batched.shape == batch.shape and batched.dtype == batch.dtype
    for image, seed, out in zip(batch, seeds, batched):
        torch.testing.assert_close(aug(image, seed), out, rtol=0, atol=0)


def test_item_does_not_depend_on_its_batch_position_or_threads():
    # 3 x 224 x 224 elements: torch's multi-threaded mean would sum an item alone in another order
    aug, shape = FULL, (3, 224, 224)
    alone = augment_images(batch_of(1, shape, seed=3), [42], aug)[0]
    batch = batch_of(5, shape, seed=4)
    batch[3] = batch_of(1, shape, seed=3)[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        within = augment_images(batch, [1, 2, 3, 42, 5], aug)[3]
        first = augment_images(batch[[3]], [42], aug)[0]
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(within, alone, rtol=0, atol=0)
    torch.testing.assert_close(first, alone, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", [*AUGMENTS, "noise-only"])
def test_two_views_match_per_view_augmentation_and_seeded_two_views(name, shape):
    aug = AUGMENTS.get(name, ImageAugment(gauss_noise=0.1))
    batch, seeds = batch_of(4, shape), [8, 9, 10, 11]
    before = batch.clone()
    views = two_views(batch, seeds, aug)
    assert views.shape == (4, 2, *shape)
    for i, seed in enumerate(seeds):
        for v in range(2):
            torch.testing.assert_close(views[i, v], aug(batch[i], derive_seed(seed, v)), rtol=0, atol=0)
        torch.testing.assert_close(SeededTwoViews(aug)(batch[i], seed), views[i], rtol=0, atol=0)
        assert not torch.allclose(views[i, 0], views[i, 1])
    assert torch.equal(batch, before)  # the caller's batch is not written to


def test_batch_means_against_numpy():
    for length in (1, 2, 3, 7, 1040, 4097):
        values = batch_of(3, (length,), dtype=torch.float64)
        np.testing.assert_allclose(batch_means(values).numpy(), values.numpy().mean(1), rtol=0, atol=1e-14)
        assert batch_means(values[1:2]).item() == batch_means(values)[1].item()


def test_legacy_classes_agree_with_batched_path_for_the_same_draws():
    # replay the global-RNG draws of build_augmentation's classes as params for the batched path; the classes
    # compute the same maps with affine_grid, interpolate and mean, so they agree to float rounding
    image, jitter = batch_of(1, (3, 16, 14))[0], 2
    legacy = build_augmentation(**OPTIONS)
    for seed in range(6):
        torch.manual_seed(seed)
        expected = legacy(image)
        torch.manual_seed(seed)
        angle = (torch.rand(()).item() * 2.0 - 1.0) * 180.0
        flip_h, flip_v = (torch.rand(2) < 0.5).tolist()
        dy, dx = torch.randint(-jitter, jitter + 1, (2,)).tolist()
        noise = torch.randn(image.shape)
        top, left = min(max(3 + dy, 0), 6), min(max(2 + dx, 0), 4)
        rad = math.radians(angle)
        params = ImageParams((3, 16, 14), *(torch.tensor([v], dtype=torch.float64) for v in
                                            (angle, math.cos(rad), math.sin(rad))),
                             torch.tensor([flip_h]), torch.tensor([flip_v]),
                             *(torch.tensor([v]) for v in (dy, dx, top, left)), noise=0.1 * noise[None])
        torch.testing.assert_close(apply_image_params(image[None], params, FULL)[0], expected, rtol=0, atol=1e-5)


# The batched path against an independent computation (scikit-image, numpy)


def reference_image(image, params, i, aug):
    """One item augmented by scikit-image and numpy from its params: rotate, flip, crop, resize, noise, demean."""
    planes = image.numpy().astype(np.float64).reshape(-1, *image.shape[-2:])  # [P, H, W]
    height, width = planes.shape[-2:]
    angle = float(params.angle[i])
    out = np.stack([sk_rotate(p, angle, order=1, mode="constant", cval=0.0, clip=False, preserve_range=True)
                    for p in planes])
    if bool(params.flip_h[i]):
        out = out[:, :, ::-1]
    if bool(params.flip_v[i]):
        out = out[:, ::-1, :]
    if aug.crop:
        top, left = int(params.top[i]), int(params.left[i])
        window = out[:, top:top + aug.crop, left:left + aug.crop]
        out = np.stack([sk_resize(w, (height, width), order=1, mode="edge", anti_aliasing=False,
                                  preserve_range=True) for w in window])
    out = out.reshape(image.shape)
    if aug.gauss_noise:
        out = out + params.noise[i].numpy()  # drawn already scaled by gauss_noise
    if aug.demean:
        out = out - out.mean()
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", AUGMENTS)
def test_matches_scikit_image_reference(name, shape):
    aug, batch, seeds = AUGMENTS[name], batch_of(5, shape, seed=1), [3, 1, 4, 1, 5]
    params = draw_image_params(seeds, shape, aug)
    out = apply_image_params(batch, params, aug)
    for i in range(len(seeds)):
        np.testing.assert_allclose(out[i].numpy(), reference_image(batch[i], params, i, aug), atol=2e-5, rtol=0)


def test_window_is_clamped_inside_the_image():
    aug = ImageAugment.from_options(False, False, [6, 50], 0.0, False)
    params = draw_image_params(range(200), (1, 8, 8), aug)
    assert params.top.min() == 0 and params.top.max() == 2 and params.left.max() == 2
    expected = (1 + params.dy).clamp(0, 2)
    assert torch.equal(params.top, expected)


def test_params_follow_the_seed_protocol():
    # each item: a CPU generator seeded with its seed draws 5 float64 uniforms, then the noise
    aug, shape = FULL, (2, 16, 16)
    params = draw_image_params([77, 2**63 - 5], shape, aug)
    for i, seed in enumerate([77, 2**63 - 5]):
        generator = torch.Generator().manual_seed(seed)
        u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        assert params.angle[i].item() == (u[0] * 2 - 1) * 180.0
        assert params.cos[i].item() == math.cos(math.radians(params.angle[i].item()))
        assert (params.flip_h[i].item(), params.flip_v[i].item()) == (u[1] < 0.5, u[2] < 0.5)
        assert (params.dy[i].item(), params.dx[i].item()) == (math.floor(u[3] * 5) - 2, math.floor(u[4] * 5) - 2)
        assert params.top[i].item() == 3 + params.dy[i].item()
        assert torch.equal(params.noise[i], 0.1 * torch.randn(shape, generator=generator))


def test_switched_off_augmentations_do_nothing():
    batch = batch_of(3, (2, 8, 8))
    off = ImageAugment.from_options(False, False, None, 0.0, False)
    assert torch.equal(augment_images(batch, [1, 2, 3], off), batch)
    # a zero-degree rotation of an 8x8 image samples the pixel centres exactly
    assert torch.equal(augment_images(batch, [1, 2, 3], ImageAugment(rotate=True, max_degrees=0.0)), batch)
    flipped = augment_images(batch, [1, 2, 3], ImageAugment(flip=True))
    for image, out in zip(batch, flipped):
        assert any(torch.equal(out, image.flip(dims)) for dims in ([], [-1], [-2], [-1, -2]))


def test_float64_and_demean():
    batch = batch_of(4, (3, 12, 12), dtype=torch.float64) + 5.0
    out = augment_images(batch, [1, 2, 3, 4], FULL)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.reshape(4, -1).mean(1).numpy(), 0.0, atol=1e-12)


# Distributions of the draws, and of the views against today's per-sample path


def test_image_draws_have_the_documented_distributions():
    count, aug = 4000, ImageAugment.from_options(True, True, [10, 3], 0.0, False)
    params = draw_image_params(range(count), (1, 16, 16), aug)
    assert stats.kstest(params.angle.numpy(), stats.uniform(-180, 360).cdf).pvalue > 1e-3
    bound = 4 * math.sqrt(count / 4)  # 4 standard deviations of a Binomial(count, 0.5)
    for flips in (params.flip_h, params.flip_v, params.flip_h ^ params.flip_v):
        assert abs(int(flips.sum()) - count / 2) < bound
    for offsets in (params.dy, params.dx):
        observed = np.bincount((offsets + 3).numpy(), minlength=7)
        assert len(observed) == 7 and stats.chisquare(observed).pvalue > 1e-3
    pairs = np.bincount((params.dy + 3).numpy() * 7 + (params.dx + 3).numpy(), minlength=49)
    assert stats.chisquare(pairs).pvalue > 1e-3  # dy and dx independent


def structured_image(channels=1, size=16):
    """An image whose pixels tell position and orientation apart (two ramps and an off-centre blob)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    image = xs / size + 2.0 * ys / size + 3.0 * torch.exp(-((xs - 4) ** 2 + (ys - 11) ** 2) / 6.0)
    return image.expand(channels, size, size).clone()


def pixel_statistics(views):
    """Per-view statistics [N, 4]: one off-centre pixel, the top-left quadrant mean, a row difference, and a
    handedness (the ramp's direction crossed with the blob's, negated by reflections, kept by rotations)."""
    flat = views.reshape(-1, *views.shape[-3:])[:, 0]  # [N, 16, 16]
    ramp_x = flat[:, :, -4:].mean((1, 2)) - flat[:, :, :4].mean((1, 2))
    ramp_y = flat[:, -4:, :].mean((1, 2)) - flat[:, :4, :].mean((1, 2))
    peaks = flat.reshape(len(flat), -1).argmax(1)  # the blob's pixel
    blob_y, blob_x = (peaks // 16).float() - 7.5, (peaks % 16).float() - 7.5
    handedness = ramp_x * blob_y - ramp_y * blob_x
    return torch.stack([flat[:, 4, 11], flat[:, :8, :8].mean((1, 2)), flat[:, 2].mean(1) - flat[:, 13].mean(1),
                        handedness], 1).numpy()


def test_views_have_the_same_distribution_as_todays_per_sample_path():
    image, count = structured_image(), 600
    legacy = TwoViews(build_augmentation(**OPTIONS))
    torch.manual_seed(0)
    today = torch.stack([legacy(image) for _ in range(count)])  # [N, 2, 1, 16, 16]
    batched = two_views(image.expand(count, 1, 16, 16), range(10**6, 10**6 + count), FULL)
    for a, b in zip(pixel_statistics(today).T, pixel_statistics(batched).T):
        assert stats.ks_2samp(a, b).pvalue > 1e-3


def test_cube_draws_have_the_documented_distributions():
    count = 4000
    params = draw_cube_params(range(count), (2, 9, 12), CubeAugment.from_options(True, True, 5))
    for values, levels in ((params.top, 5), (params.left, 8), (params.k, 4)):
        observed = np.bincount(values.numpy(), minlength=levels)
        assert len(observed) == levels and stats.chisquare(observed).pvalue > 1e-3
    bound = 4 * math.sqrt(count / 4)
    for flips in (params.flip_h, params.flip_v):
        assert abs(int(flips.sum()) - count / 2) < bound
    non_square = draw_cube_params(range(400), (2, 6, 9), CubeAugment.from_options(False, True, None))
    assert set(non_square.k.tolist()) == {0, 2}


def test_cube_views_have_the_same_distribution_as_todays_per_sample_path():
    cube, count = torch.arange(2 * 9 * 12, dtype=torch.float32).reshape(2, 9, 12), 800
    legacy = build_cube_augmentation(flip=True, rot90=True, crop=5)
    torch.manual_seed(0)
    today = torch.stack([legacy(cube) for _ in range(count)])
    batched = augment_cubes(cube.expand(count, 2, 9, 12), range(count), CubeAugment(flip=True, rot90=True, crop=5))
    for pixel in ((0, 0, 0), (1, 0, 4), (0, 2, 3)):
        a, b = today[(slice(None), *pixel)].numpy(), batched[(slice(None), *pixel)].numpy()
        assert stats.ks_2samp(a, b).pvalue > 1e-3


# Determinism and seeds


def test_same_seeds_same_views_different_seeds_different_views():
    batch = batch_of(6, (1, 16, 16))
    first, again = two_views(batch, range(6), FULL), two_views(batch, range(6), FULL)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    other = two_views(batch, range(6, 12), FULL)
    assert all(not torch.allclose(first[i], other[i]) for i in range(6))


def test_derive_seed_mixes_every_input_into_the_32_bits_the_cpu_generator_uses():
    seeds = [derive_seed(7, epoch, index, view) for epoch in range(5) for index in range(1000) for view in range(2)]
    assert all(0 <= s < 2**63 for s in seeds)
    assert len({s & 0xFFFFFFFF for s in seeds}) >= len(seeds) - 2  # birthday bound: ~0.05 expected collisions
    assert derive_seed(1, 2) != derive_seed(2, 1) and derive_seed(1, 2) == derive_seed(1, 2)
    assert view_seeds([5, 6], 2) == [derive_seed(5, 0), derive_seed(5, 1), derive_seed(6, 0), derive_seed(6, 1)]
    assert view_seeds(torch.tensor([5, 6]), 1) == [derive_seed(5, 0), derive_seed(6, 0)]
    drawn = seeds_from(torch.Generator().manual_seed(0), 4)
    assert drawn == seeds_from(torch.Generator().manual_seed(0), 4) and len(set(drawn)) == 4


def test_params_drawn_per_item_join_into_the_batch_params():
    seeds = [4, 5, 6]
    joined = cat_params([draw_image_params(view_seeds([s]), (2, 16, 16), FULL) for s in seeds])
    whole = draw_image_params(view_seeds(seeds), (2, 16, 16), FULL)
    for name in ("angle", "flip_h", "flip_v", "top", "left", "noise"):
        assert torch.equal(getattr(joined, name), getattr(whole, name))
    batch = batch_of(3, (2, 16, 16))
    assert torch.equal(apply_image_params(batch, joined, FULL, views=2),
                       apply_image_params(batch, whole, FULL, views=2))
    cubes = cat_params([draw_cube_params([s], (3, 9, 9), CubeAugment(True, True, 5)) for s in seeds])
    assert torch.equal(cubes.k, draw_cube_params(seeds, (3, 9, 9), CubeAugment(True, True, 5)).k)
    with pytest.raises(ValueError, match="image_shape"):
        cat_params([draw_image_params([1], (1, 12, 12), FULL), draw_image_params([1], (1, 13, 13), FULL)])


def test_per_sample_call_without_seed_uses_the_global_rng():
    image = batch_of(1, (1, 16, 16))[0]
    torch.manual_seed(3)
    a = FULL(image)
    torch.manual_seed(3)
    b = FULL(image)
    c = FULL(image)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


# Cubes


def reference_cube(cube, params, i, size):
    """One cube cropped, rotated and flipped with numpy from its drawn params."""
    top, left, k = int(params.top[i]), int(params.left[i]), int(params.k[i])
    out = np.rot90(cube.numpy()[..., top:top + size, left:left + size], k, axes=(-2, -1))
    if bool(params.flip_h[i]):
        out = out[..., ::-1]
    if bool(params.flip_v[i]):
        out = out[..., ::-1, :]
    return out


@pytest.mark.parametrize("shape,crop", [((3, 9, 12), 5), ((4, 8, 8), None), ((2, 6, 9), None), ((2, 2, 7, 7), 7)],
                         ids=str)
def test_cubes_batched_equal_per_sample_and_numpy(shape, crop):
    aug = CubeAugment.from_options(flip=True, rot90=True, crop=crop)
    batch, seeds = batch_of(40, shape, seed=2), range(100, 140)
    params = draw_cube_params(seeds, shape, aug)
    out = apply_cube_params(batch, params, aug)
    size = crop or shape[-1]
    for i, seed in enumerate(seeds):
        np.testing.assert_array_equal(out[i].numpy(), reference_cube(batch[i], params, i, size))
        torch.testing.assert_close(aug(batch[i], seed), out[i], rtol=0, atol=0)
    assert set(params.k.tolist()) == ({0, 2} if shape[-1] != shape[-2] and not crop else {0, 1, 2, 3})


def test_cube_legacy_classes_equal_batched_path_for_the_same_draws():
    cube = torch.rand(3, 9, 12)
    legacy, aug = build_cube_augmentation(True, True, 5), CubeAugment(flip=True, rot90=True, crop=5)
    for seed in range(8):
        torch.manual_seed(seed)
        expected = legacy(cube)
        torch.manual_seed(seed)
        top, left, k = int(torch.randint(0, 5, ())), int(torch.randint(0, 8, ())), int(torch.randint(0, 4, ()))
        flip_h, flip_v = (torch.rand(2) < 0.5).tolist()
        params = draw_cube_params([0], cube.shape, aug)
        params.top[0], params.left[0], params.k[0], params.flip_h[0], params.flip_v[0] = top, left, k, flip_h, flip_v
        assert torch.equal(apply_cube_params(cube[None], params, aug)[0], expected)


# Bad input


def test_errors():
    with pytest.raises(NenyaError, match=r"random_cropjitter=\[20, 1\].*16x16.*at most 16"):
        draw_image_params([1], (1, 16, 16), ImageAugment.from_options(False, False, [20, 1], 0.0, False))
    with pytest.raises(NenyaError, match=r"crop=10 is larger than the 9x12 cube \(shape \(7, 9, 12\)\)"):
        draw_cube_params([1], (7, 9, 12), CubeAugment.from_options(False, False, 10))
    for bad in ([12], [0, 2], [-1, 0], ["a", 1]):
        with pytest.raises(NenyaError, match="random_cropjitter"):
            ImageAugment.from_options(False, False, bad, 0.0, False)
    with pytest.raises(NenyaError, match="gauss_noise=-0.1"):
        ImageAugment.from_options(False, False, None, -0.1, False)
    for bad in (-3, 2.5, "4"):
        with pytest.raises(NenyaError, match="crop="):
            CubeAugment.from_options(False, False, bad)
    params = draw_image_params([1, 2], (1, 16, 16), FULL)
    with pytest.raises(ValueError, match=r"2 items of shape \(1, 16, 16\) but the batch has shape \(3, 1, 16, 16\)"):
        apply_image_params(batch_of(3, (1, 16, 16)), params, FULL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batched_equals_per_sample_and_is_close_to_cpu():
    batch, seeds = batch_of(8, (3, 32, 32)), range(8)
    cpu = two_views(batch, seeds, FULL)
    gpu = two_views(batch.cuda(), seeds, FULL)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    for i, seed in enumerate(seeds):
        torch.testing.assert_close(SeededTwoViews(FULL)(batch[i].cuda(), seed), gpu[i], rtol=0, atol=0)
    cubes = batch_of(8, (30, 16, 16))
    cube_aug = CubeAugment(flip=True, rot90=True, crop=8)
    assert torch.equal(augment_cubes(cubes.cuda(), seeds, cube_aug).cpu(), augment_cubes(cubes, seeds, cube_aug))
