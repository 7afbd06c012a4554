"""Tests for the spectral reconstruction metrics against numpy loops and scikit-image."""

import math

import numpy as np
import pytest
import torch

from nenya.metrics import reconstruction as metrics

BATCH, BANDS, SIZE = 2, 4, 16
BORDER = 5


def make_cubes(seed=0, dtype=torch.float64):
    """A target in [0, 1] and a noisy prediction of it, [B, C, H, W]."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(BATCH, BANDS, SIZE, SIZE, generator=generator, dtype=dtype)
    noise = torch.randn(BATCH, BANDS, SIZE, SIZE, generator=generator, dtype=dtype)
    pred = (target + 0.1 * noise).clamp(0, 1)
    return pred, target


def random_pixel_mask(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, SIZE, SIZE, generator=generator) < 0.4


def reference_mse(pred, target, voxels):
    """Mean squared error over the voxels where voxels is True, looped in float64."""
    total, count = 0.0, 0
    for index in zip(*np.nonzero(voxels)):
        total += (float(pred[index]) - float(target[index])) ** 2
        count += 1
    return total / count


def reference_sam(pred, target, pixels):
    """Mean spectral angle over the pixels [B, H, W] where pixels is True, looped in float64."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    angles = []
    for b, i, j in zip(*np.nonzero(pixels)):
        p, t = pred[b, :, i, j], target[b, :, i, j]
        dot = sum(float(x) * float(y) for x, y in zip(p, t))
        cosine = dot / (math.sqrt(float(p @ p)) * math.sqrt(float(t @ t)))
        angles.append(math.acos(min(max(cosine, -1.0), 1.0)))
    return sum(angles) / len(angles)


def test_patch_mask_to_pixels_matches_a_loop():
    bands, height, width, patch, band_patch = 6, 8, 12, 4, 3
    groups, rows, columns = bands // band_patch, height // patch, width // patch
    mask = torch.randint(0, 2, (2, groups * rows * columns), generator=torch.Generator().manual_seed(0))
    voxels = metrics.patch_mask_to_pixels(mask, bands, height, width, patch, band_patch)
    assert voxels.shape == (2, bands, height, width) and voxels.dtype == torch.bool
    for b in range(2):
        for c in range(bands):
            for y in range(height):
                for x in range(width):
                    token = ((c // band_patch) * rows + y // patch) * columns + x // patch
                    assert voxels[b, c, y, x].item() == bool(mask[b, token]), (b, c, y, x)


def test_patch_mask_to_pixels_rejects_bad_shapes():
    with pytest.raises(ValueError):
        metrics.patch_mask_to_pixels(torch.ones(1, 7), 6, 8, 8, 4, 3)
    with pytest.raises(ValueError):
        metrics.patch_mask_to_pixels(torch.ones(1, 8), 6, 8, 10, 4, 3)


@pytest.mark.parametrize("mask_shape", [None, "BHW", "B1HW", "BCHW"])
def test_mse_matches_numpy(mask_shape):
    pred, target = make_cubes()
    pixels = random_pixel_mask()
    if mask_shape is None:
        mask, voxels = None, np.ones(pred.shape, dtype=bool)
    elif mask_shape == "BCHW":
        mask = torch.rand(pred.shape, generator=torch.Generator().manual_seed(2)) < 0.5
        voxels = mask.numpy()
    else:
        mask = pixels if mask_shape == "BHW" else pixels[:, None]
        voxels = np.broadcast_to(pixels.numpy()[:, None], pred.shape)
    value = metrics.mse(pred, target, mask)
    assert value.item() == pytest.approx(reference_mse(pred.numpy(), target.numpy(), voxels), rel=1e-10)


@pytest.mark.parametrize("mask_shape", [None, "BHW", "B1HW"])
def test_sam_matches_numpy(mask_shape):
    pred, target = make_cubes()
    pixels = random_pixel_mask()
    mask = {None: None, "BHW": pixels, "B1HW": pixels[:, None]}[mask_shape]
    expected_pixels = np.ones((BATCH, SIZE, SIZE), dtype=bool) if mask is None else pixels.numpy()
    expected = reference_sam(pred.numpy(), target.numpy(), expected_pixels)
    assert metrics.sam(pred, target, mask).item() == pytest.approx(expected, rel=1e-10)


def test_voxel_mask_for_sam_and_ssim_keeps_pixels_with_every_band_masked():
    pred, target = make_cubes()
    pixels = random_pixel_mask()
    voxels = pixels[:, None].expand(BATCH, BANDS, SIZE, SIZE).clone()
    partly = torch.zeros_like(voxels)
    partly[:, :2] = True  # half the bands of every pixel: no pixel qualifies
    voxels |= partly
    assert metrics.sam(pred, target, voxels).item() == pytest.approx(metrics.sam(pred, target, pixels).item())
    assert metrics.masked_ssim(pred, target, 1.0, voxels).item() == pytest.approx(
        metrics.masked_ssim(pred, target, 1.0, pixels).item())
    assert metrics.mse(pred, target, voxels).item() == pytest.approx(
        reference_mse(pred.numpy(), target.numpy(), voxels.numpy()))


def test_empty_mask_gives_nan():
    pred, target = make_cubes()
    empty = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
    assert math.isnan(metrics.mse(pred, target, empty).item())
    assert math.isnan(metrics.sam(pred, target, empty).item())
    assert math.isnan(metrics.psnr(pred, target, 1.0, empty).item())
    assert math.isnan(metrics.masked_ssim(pred, target, 1.0, empty).item())


def test_psnr_matches_scikit_image_per_image_mean():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    pred, target = make_cubes(dtype=torch.float32)
    expected = np.mean([
        skimage_metrics.peak_signal_noise_ratio(target[b].double().numpy(), pred[b].double().numpy(),
                                                data_range=2.0)
        for b in range(BATCH)])
    assert metrics.psnr(pred, target, data_range=2.0).item() == pytest.approx(expected, abs=1e-4)


def test_masked_psnr_uses_each_images_masked_voxels():
    pred, target = make_cubes()
    pixels = random_pixel_mask()
    voxels = np.broadcast_to(pixels.numpy()[:, None], pred.shape)
    expected = np.mean([
        10 * math.log10(1.0 / reference_mse(pred[b].numpy(), target[b].numpy(), voxels[b]))
        for b in range(BATCH)])
    assert metrics.psnr(pred, target, 1.0, pixels).item() == pytest.approx(expected, rel=1e-10)
    # an image with no masked voxel is left out of the mean
    only_first = pixels.clone()
    only_first[1] = False
    first = 10 * math.log10(1.0 / reference_mse(pred[0].numpy(), target[0].numpy(), voxels[0]))
    assert metrics.psnr(pred, target, 1.0, only_first).item() == pytest.approx(first, rel=1e-10)


def skimage_ssim(pred, target, data_range, full=False):
    """scikit-image's SSIM of each image with the settings metrics_spectral follows, in float64."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    return [skimage_metrics.structural_similarity(
        target[b].double().numpy(), pred[b].double().numpy(), data_range=data_range, gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, channel_axis=0, full=full) for b in range(len(pred))]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_ssim_matches_scikit_image(dtype, tolerance):
    pred, target = make_cubes(dtype=dtype)
    expected = np.mean(skimage_ssim(pred, target, 1.0))
    assert metrics.ssim(pred, target, data_range=1.0).item() == pytest.approx(expected, abs=tolerance)


def test_ssim_map_is_scikit_images_map_without_its_border():
    pred, target = make_cubes()
    values = metrics.ssim_map(pred, target, 1.0)
    assert values.shape == (BATCH, BANDS, SIZE - 2 * BORDER, SIZE - 2 * BORDER)
    for b, (_, full_map) in enumerate(skimage_ssim(pred, target, 1.0, full=True)):
        np.testing.assert_allclose(values[b].numpy(), full_map[:, BORDER:-BORDER, BORDER:-BORDER], atol=1e-10)


def test_masked_ssim_is_scikit_images_map_averaged_over_the_mask():
    pred, target = make_cubes()
    pixels = random_pixel_mask()
    selected = []
    for b, (_, full_map) in enumerate(skimage_ssim(pred, target, 1.0, full=True)):
        inside = pixels[b, BORDER:-BORDER, BORDER:-BORDER].numpy()
        selected.extend(full_map[:, BORDER:-BORDER, BORDER:-BORDER][:, inside].ravel())
    value = metrics.masked_ssim(pred, target, 1.0, pixels)
    assert value.item() == pytest.approx(np.mean(selected), abs=1e-10)
    everything = torch.ones(BATCH, 1, SIZE, SIZE)
    assert metrics.masked_ssim(pred, target, 1.0, everything).item() == pytest.approx(
        metrics.ssim(pred, target, 1.0).item(), abs=1e-12)


def test_ssim_valid_map_equals_torchmetrics_interior():
    functional = pytest.importorskip("torchmetrics.functional.image")
    pred, target = make_cubes()
    _, full_map = functional.structural_similarity_index_measure(
        pred, target, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, k1=0.01, k2=0.03,
        return_full_image=True)
    interior = full_map[..., BORDER:-BORDER, BORDER:-BORDER]
    torch.testing.assert_close(metrics.ssim_map(pred, target, 1.0), interior, atol=1e-10, rtol=0)


def test_identical_cubes():
    _, target = make_cubes(dtype=torch.float32)
    target[0, :, 3, 4] = 0  # an all-zero spectrum too
    assert metrics.ssim(target, target, 1.0).item() == pytest.approx(1.0, abs=1e-6)
    assert metrics.sam(target, target).item() == 0
    assert metrics.psnr(target, target, 1.0).item() == math.inf
    assert metrics.mse(target, target).item() == 0


def test_zero_spectrum_against_a_nonzero_one_is_a_right_angle():
    pred, target = make_cubes()
    pred = pred[:, :, :1, :1].clone()
    target = target[:, :, :1, :1].clone()
    pred.zero_()
    assert metrics.sam(pred, target).item() == pytest.approx(math.pi / 2)


def test_reconstruction_metrics_combines_whole_and_masked_values():
    pred, target = make_cubes(dtype=torch.float32)
    patch_mask = torch.tensor([[1, 0, 0, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0, 1]])
    voxels = metrics.patch_mask_to_pixels(patch_mask, BANDS, SIZE, SIZE, patch=8, band_patch=2)
    values = metrics.reconstruction_metrics(pred, target, voxels, data_range=1.0)
    assert set(values) == {"mse", "sam", "psnr", "ssim", "mse_masked", "sam_masked", "psnr_masked",
                           "ssim_masked"}
    assert all(isinstance(value, float) and math.isfinite(value) for value in values.values())
    assert values["mse"] == pytest.approx(metrics.mse(pred, target).item())
    assert values["ssim"] == pytest.approx(metrics.ssim(pred, target, 1.0).item())
    assert values["mse_masked"] == pytest.approx(metrics.mse(pred, target, voxels).item())
    assert values["psnr_masked"] == pytest.approx(metrics.psnr(pred, target, 1.0, voxels).item())
    every_band = voxels.all(dim=1)
    assert values["sam_masked"] == pytest.approx(metrics.sam(pred, target, every_band).item())
    assert values["ssim_masked"] == pytest.approx(metrics.masked_ssim(pred, target, 1.0, every_band).item())


def test_bad_inputs_are_rejected():
    pred, target = make_cubes()
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(pred[..., :10], target[..., :10], 1.0)
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr(pred, target, 0.0)
    with pytest.raises(ValueError, match="mask"):
        metrics.mse(pred, target, torch.ones(BATCH, 2, SIZE, SIZE))
    with pytest.raises(ValueError, match="pred and target"):
        metrics.sam(pred, target[:1])


def test_sums_over_batches_of_different_sizes_give_the_metrics_of_the_whole_set():
    """Voxel-weighted mse, pixel-weighted sam, pooled ssim, per-cube psnr: independent of the batching."""
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(9, BANDS, SIZE, SIZE, generator=generator, dtype=torch.float64)
    pred = (target + 0.2 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    # voxel masks of very different densities per cube (0 to 95% hidden), whole pixels and partial ones
    density = torch.linspace(0.0, 0.95, 9).view(9, 1, 1, 1)
    voxels = torch.rand(target.shape, generator=generator, dtype=torch.float64) < density
    voxels[:, :, :4] = (torch.rand(9, 1, 4, SIZE, generator=generator) < density.view(9, 1, 1, 1))
    parts = [metrics.reconstruction_sums(pred[a:b], target[a:b], voxels[a:b], 1.0) for a, b in ((0, 1), (1, 4), (4, 9))]
    summed = metrics.summarize_reconstruction({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, 1.0)

    p, t, m = pred.numpy(), target.numpy(), voxels.numpy()
    squared = (p - t) ** 2
    assert summed["mse"] == pytest.approx(squared.mean(), rel=1e-12)
    assert summed["mse_masked"] == pytest.approx(squared[m].sum() / m.sum(), rel=1e-12)
    angles = np.arccos(np.clip((p * t).sum(1) / np.sqrt((p ** 2).sum(1) * (t ** 2).sum(1)), -1, 1))  # [N, H, W]
    every_band = m.all(axis=1)
    assert summed["sam"] == pytest.approx(angles.mean(), rel=1e-9)
    assert summed["sam_masked"] == pytest.approx(angles[every_band].mean(), rel=1e-9)
    per_cube = [squared[n][m[n]].mean() for n in range(9) if m[n].any()]
    assert summed["psnr_masked"] == pytest.approx(np.mean([10 * np.log10(1 / v) for v in per_cube]), rel=1e-9)
    assert summed["ssim"] == pytest.approx(metrics.ssim(pred, target, 1.0).item(), rel=1e-9)
