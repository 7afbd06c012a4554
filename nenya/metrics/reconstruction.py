"""Reconstruction metrics on hyperspectral cubes [B, C, H, W]: MSE, SAM, PSNR, SSIM, whole and masked.

Masks mark what to include with 1 (or True). ``mse`` and ``psnr`` take a voxel mask
``[B, C, H, W]`` or a pixel mask ``[B, 1, H, W]`` / ``[B, H, W]`` (all bands of its pixels).
``sam`` and ``masked_ssim`` work on whole pixels: given a voxel mask they use the pixels
whose every band is included. A mask that selects nothing gives NaN.

Batch reductions: ``mse``, ``sam``, ``ssim`` and ``masked_ssim`` pool every included voxel,
pixel or SSIM-map value of the batch; ``psnr`` is computed per image and averaged over the
images that have an included voxel (an image reconstructed exactly has PSNR inf, and so
then has the batch mean, as in scikit-image).

SSIM follows scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)`` with bands as channels: local means,
variances and covariance come from an 11 x 11 Gaussian window (sigma 1.5, weights summing
to 1), ``K1 = 0.01``, ``K2 = 0.03``, and the window is applied with 'valid' padding only,
so the SSIM map of an ``H x W`` band is ``(H - 10) x (W - 10)``; map value ``[i, j]``
belongs to image pixel ``[i + 5, j + 5]``. This is scikit-image's map with its 5-pixel
border cropped, which is what its mean SSIM averages, so ``ssim`` equals scikit-image's
value and ``masked_ssim`` with an all-ones mask equals ``ssim``. Images need H, W >= 11.
"""

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_BORDER = SSIM_WINDOW // 2


def patch_mask_to_pixels(mask: torch.Tensor, bands: int, height: int, width: int, patch: int,
                         band_patch: int) -> torch.Tensor:
    """Voxel mask [B, C, H, W] (bool) where every voxel of a patch takes that patch's value in mask [B, L].

    Tokens are ordered spectral group first, then patch row, then patch column:
    ``l = (g * (H // patch) + i) * (W // patch) + j`` covers bands
    ``g * band_patch ... (g + 1) * band_patch - 1`` and pixels
    ``[i * patch ... (i + 1) * patch - 1, j * patch ... (j + 1) * patch - 1]``,
    as a Conv3d patch embedding flattened over its (group, row, column) output gives.
    """
    if bands % band_patch or height % patch or width % patch:
        raise ValueError(f"cube {bands}x{height}x{width} does not divide into "
                         f"{band_patch}x{patch}x{patch} patches")
    groups, rows, columns = bands // band_patch, height // patch, width // patch
    if mask.dim() != 2 or mask.shape[1] != groups * rows * columns:
        raise ValueError(f"mask must be [B, {groups * rows * columns}], got {tuple(mask.shape)}")
    grid = mask.bool().reshape(-1, groups, 1, rows, 1, columns, 1)
    voxels = grid.expand(-1, groups, band_patch, rows, patch, columns, patch)
    return voxels.reshape(-1, bands, height, width)


def mse(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the included voxels of the batch."""
    pred, target = _checked(pred, target)
    squared_error = (pred - target).pow(2)
    if pixel_mask is None:
        return squared_error.mean()
    include = _voxel_mask(pixel_mask, pred)
    return (squared_error * include).sum() / include.sum()


def spectral_angle(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle [B, H, W] (radians, float64) between each pixel's predicted and target spectra over all C bands.

    A pixel whose predicted and target spectra are identical has angle 0; otherwise a zero
    spectrum has angle pi/2.
    """
    pred, target = _checked(pred, target)
    pred, target = pred.double(), target.double()
    dot = (pred * target).sum(dim=1)
    squared_norms = pred.pow(2).sum(dim=1) * target.pow(2).sum(dim=1)
    cosine = dot / squared_norms.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    cosine = torch.where((pred == target).all(dim=1), torch.ones_like(cosine), cosine)
    return torch.arccos(cosine.clamp(-1.0, 1.0))


def sam(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean spectral angle (radians, over all C bands, in float64) over the included pixels of the batch."""
    angle = spectral_angle(pred, target)
    if pixel_mask is None:
        return angle.mean()
    include = _pixel_mask(pixel_mask, pred)
    return (angle * include).sum() / include.sum()


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float,
         pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over images of 10 log10(data_range^2 / MSE of the image's included voxels), in dB."""
    pred, target = _checked(pred, target)
    _check_data_range(data_range)
    squared_error = (pred - target).pow(2)
    include = torch.ones_like(pred) if pixel_mask is None else _voxel_mask(pixel_mask, pred).to(pred.dtype)
    counts = include.flatten(1).sum(dim=1)
    image_mse = (squared_error * include).flatten(1).sum(dim=1) / counts
    image_psnr = 10 * torch.log10(data_range ** 2 / image_mse[counts > 0])
    return image_psnr.mean()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM map [B, C, H - 10, W - 10] of each band (module docstring: window, constants, 'valid' padding)."""
    pred, target = _checked(pred, target)
    _check_data_range(data_range)
    height, width = pred.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
    channels = pred.shape[1]
    offsets = torch.arange(SSIM_WINDOW, dtype=pred.dtype, device=pred.device) - SSIM_BORDER
    gaussian = torch.exp(-offsets.pow(2) / (2 * SSIM_SIGMA ** 2))
    gaussian = gaussian / gaussian.sum()
    window = torch.outer(gaussian, gaussian).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    stacked = torch.cat([pred, target, pred * pred, target * target, pred * target])
    mean_pred, mean_target, mean_pred_sq, mean_target_sq, mean_cross = (
        F.conv2d(stacked, window, groups=channels).chunk(5))
    var_pred = mean_pred_sq - mean_pred.pow(2)
    var_target = mean_target_sq - mean_target.pow(2)
    covariance = mean_cross - mean_pred * mean_target

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mean_pred * mean_target + c1) * (2 * covariance + c2)
    denominator = (mean_pred.pow(2) + mean_target.pow(2) + c1) * (var_pred + var_target + c2)
    return numerator / denominator


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean SSIM over bands (as channels), the valid SSIM map and the batch; equals scikit-image's."""
    return ssim_map(pred, target, data_range).mean()


def masked_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float,
                pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the SSIM map over all bands at the included pixels more than 5 pixels from the border."""
    values = ssim_map(pred, target, data_range)
    border = SSIM_BORDER
    include = _pixel_mask(pixel_mask, pred)[:, None, border:-border, border:-border].expand_as(values)
    return (values * include).sum() / include.sum()


def reconstruction_sums(pred: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor,
                        data_range: float) -> dict[str, torch.Tensor]:
    """Per-cube sums and counts [B] (float64) from which ``summarize_reconstruction`` gives the metrics.

    Summing them over any split of a data set into batches and dividing gives the metrics of the whole
    set: mse and ssim weighted by voxel / SSIM-map count, sam by pixel count, psnr averaged over cubes.
    """
    pred, target = _checked(pred, target)
    voxels = _voxel_mask(voxel_mask, pred).double()
    pixels = voxels.bool().all(dim=1).double()  # pixels whose every band is included
    squared = (pred - target).double().pow(2)
    angle = spectral_angle(pred, target)
    batch, channels, height, width = pred.shape
    ones = torch.ones(batch, dtype=torch.float64, device=pred.device)
    sums = {"mse_sum": squared.flatten(1).sum(1), "mse_count": ones * (channels * height * width),
            "mse_masked_sum": (squared * voxels).flatten(1).sum(1), "mse_masked_count": voxels.flatten(1).sum(1),
            "sam_sum": angle.flatten(1).sum(1), "sam_count": ones * (height * width),
            "sam_masked_sum": (angle * pixels).flatten(1).sum(1), "sam_masked_count": pixels.flatten(1).sum(1)}
    if min(height, width) >= SSIM_WINDOW:
        values = ssim_map(pred, target, data_range).double()
        border = SSIM_BORDER
        inside = pixels[:, None, border:-border, border:-border].expand_as(values)
        sums.update({"ssim_sum": values.flatten(1).sum(1), "ssim_count": ones * values[0].numel(),
                     "ssim_masked_sum": (values * inside).flatten(1).sum(1),
                     "ssim_masked_count": inside.flatten(1).sum(1)})
    return sums


def summarize_reconstruction(sums: dict[str, torch.Tensor], data_range: float) -> dict[str, float]:
    """mse, sam, psnr, ssim of the whole cubes and their "_masked" versions from per-cube sums (NaN: none).

    mse, sam and ssim pool every included voxel, pixel or SSIM-map value of the data set; psnr is
    computed per cube and averaged over the cubes that have an included voxel.
    """
    _check_data_range(data_range)
    metrics = {}
    for name in ("mse", "sam", "ssim", "mse_masked", "sam_masked", "ssim_masked"):
        if f"{name}_sum" in sums:
            count = sums[f"{name}_count"].sum()
            metrics[name] = float(sums[f"{name}_sum"].sum() / count) if count > 0 else float("nan")
    for name, key in (("psnr", "mse"), ("psnr_masked", "mse_masked")):
        counts = sums[f"{key}_count"]
        per_cube = sums[f"{key}_sum"][counts > 0] / counts[counts > 0]
        metrics[name] = float((10 * torch.log10(data_range ** 2 / per_cube)).mean()) if per_cube.numel() \
            else float("nan")
    return metrics


def reconstruction_metrics(pred: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor,
                           data_range: float) -> dict[str, float]:
    """mse, sam, psnr (and ssim for cubes of 11 x 11 pixels or more), whole and "_masked", of one batch."""
    with torch.no_grad():
        return summarize_reconstruction(reconstruction_sums(pred, target, voxel_mask, data_range), data_range)


def visible_mean_baseline(patches: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """Patches [B, L, P] with every masked patch (mask [B, L], 1 = masked) replaced by a mean of visible ones.

    The fill of a masked patch is the element-wise mean of the visible patches of the same cube and
    the same spectral group (tokens are ordered spectral group first, so group g holds tokens
    ``g * L / groups ... (g + 1) * L / groups - 1``); a group with no visible patch takes the mean of
    every visible patch of the cube. Visible patches are returned unchanged.
    """
    batch, length, values = patches.shape
    x = patches.reshape(batch, groups, length // groups, values)
    hidden = mask.reshape(batch, groups, length // groups, 1).to(x.dtype)
    visible = 1 - hidden
    group_count = visible.sum(dim=2, keepdim=True)
    group_mean = (x * visible).sum(dim=2, keepdim=True) / group_count.clamp_min(1)
    cube_count = visible.sum(dim=(1, 2), keepdim=True)
    cube_mean = (x * visible).sum(dim=(1, 2), keepdim=True) / cube_count.clamp_min(1)
    fill = torch.where(group_count > 0, group_mean, cube_mean)
    return torch.where(hidden.bool(), fill.expand_as(x), x).reshape(batch, length, values)


def _checked(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pred and target as [B, C, H, W] of one float dtype, half precision raised to float32."""
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred and target must both be [B, C, H, W], got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    return pred.to(dtype), target.to(dtype)


def _check_data_range(data_range: float) -> None:
    """Reject a data range that is not a positive finite number."""
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")


def _voxel_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """mask [B, C, H, W], [B, 1, H, W] or [B, H, W] as a bool [B, C, H, W] shaped like `like`."""
    if mask.dim() == 3:
        mask = mask[:, None]
    batch, channels, height, width = like.shape
    if mask.dim() != 4 or mask.shape[0] != batch or mask.shape[2:] != (height, width) \
            or mask.shape[1] not in (1, channels):
        raise ValueError(f"mask must be [B, C, H, W], [B, 1, H, W] or [B, H, W] for a "
                         f"{tuple(like.shape)} cube, got {tuple(mask.shape)}")
    return mask.to(like.device).bool().expand(batch, channels, height, width)


def _pixel_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool [B, H, W]: pixels whose every band is included by mask (any shape _voxel_mask takes)."""
    return _voxel_mask(mask, like).all(dim=1)
