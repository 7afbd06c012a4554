"""Figures of a masked autoencoder on hyperspectral cubes, drawn from plain numpy arrays (matplotlib Agg).

Cubes are [C, H, W]; a voxel mask is a bool array of the same shape, True where the value was hidden
from the encoder. Every function writes one PNG and returns its path.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

from nenya.io.atomic import write_png

MASKED_GREY = 0.5  # value of a hidden channel in the masked-input composite


def default_rgb_bands(bands: int) -> list[int]:
    """Three evenly spaced band indices, red first (highest index): 5/6, 1/2 and 1/6 of the way through."""
    return [min(bands - 1, bands * k // 6) for k in (5, 3, 1)]


def percentile_limits(cube: np.ndarray, rgb_bands, low: float = 2.0, high: float = 98.0):
    """(lo [3], hi [3]): the low and high percentiles of each of the three bands of ``cube`` [C, H, W]."""
    planes = np.asarray(cube, dtype=np.float64)[list(rgb_bands)].reshape(3, -1)
    return np.percentile(planes, low, axis=1), np.percentile(planes, high, axis=1)


def rgb_composite(cube: np.ndarray, rgb_bands, lo, hi, voxel_mask: np.ndarray | None = None) -> np.ndarray:
    """[H, W, 3] image in [0, 1]: bands ``rgb_bands`` of ``cube`` scaled by (lo, hi) per channel.

    Where ``voxel_mask`` is True the channel is drawn mid-grey (the value is hidden).
    """
    planes = np.asarray(cube, dtype=np.float64)[list(rgb_bands)]
    lo = np.asarray(lo, dtype=np.float64)[:, None, None]
    span = np.asarray(hi, dtype=np.float64)[:, None, None] - lo
    image = np.clip((planes - lo) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    if voxel_mask is not None:
        image = np.where(np.asarray(voxel_mask)[list(rgb_bands)], MASKED_GREY, image)
    return image.transpose(1, 2, 0)


def reconstruction_grid(originals, masks, reconstructions, rgb_bands, path: str, title: str = "",
                        dpi: int = 100) -> str:
    """One row per cube: original, masked input, reconstruction, and reconstruction with the visible voxels pasted.

    ``originals``, ``masks`` and ``reconstructions`` are sequences of [C, H, W] arrays; every panel of a
    row is scaled by the 2nd and 98th percentiles of that row's original, per channel.
    """
    rows = len(originals)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.7 * rows + 0.6), squeeze=False)
    for row, (original, mask, reconstruction) in enumerate(zip(originals, masks, reconstructions)):
        lo, hi = percentile_limits(original, rgb_bands)
        hidden = float(np.mean(mask)) if mask is not None else 0.0
        panels = ((rgb_composite(original, rgb_bands, lo, hi), "original"),
                  (rgb_composite(original, rgb_bands, lo, hi, mask), f"masked input ({hidden:.0%} hidden: grey)"),
                  (rgb_composite(reconstruction, rgb_bands, lo, hi), "reconstruction"),
                  (rgb_composite(np.where(mask, reconstruction, original) if mask is not None else reconstruction,
                                 rgb_bands, lo, hi), "reconstruction + visible"))
        for column, (image, name) in enumerate(panels):
            axes[row, column].imshow(image, interpolation="nearest")
            axes[row, column].set_axis_off()
            axes[row, column].set_title(name, fontsize=9)
    bands = ", ".join(str(int(b)) for b in rgb_bands)
    fig.suptitle(f"{title}\nRGB = bands {bands}, each scaled to the original's 2-98 percentiles".strip(),
                 fontsize=10)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path


def band_mse_plot(mse_whole, mse_masked, path: str, title: str = "", baseline_masked=None,
                  dpi: int = 100) -> str:
    """Mean squared error per band index: over whole cubes, over masked voxels, and the baseline's (if given)."""
    bands = np.arange(len(mse_whole))
    fig, axis = plt.subplots(figsize=(6.5, 3.8))
    axis.plot(bands, mse_whole, "o-", ms=3, label="whole cube")
    axis.plot(bands, mse_masked, "s-", ms=3, label="masked voxels")
    if baseline_masked is not None:
        axis.plot(bands, baseline_masked, "--", color="grey", label="masked, mean-of-visible baseline")
    axis.set(title=title, xlabel="band index", ylabel="MSE")
    if np.all(np.isfinite(mse_masked)) and np.nanmin(np.concatenate([mse_whole, mse_masked])) > 0:
        axis.set_yscale("log")
    axis.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path


def spectra_plot(originals, reconstructions, masks, labels, path: str, title: str = "", dpi: int = 100) -> str:
    """One panel per pixel: its input spectrum and its reconstruction against band index.

    ``originals`` and ``reconstructions`` are [K, C]; ``masks`` [K, C] bool marks the hidden bands
    (shaded); ``labels`` names each pixel.
    """
    count = len(originals)
    columns = min(count, 2) or 1
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.9 * rows + 0.3), squeeze=False)
    for index, axis in enumerate(axes.flat):
        if index >= count:
            axis.set_axis_off()
            continue
        bands = np.arange(len(originals[index]))
        for band in bands[np.asarray(masks[index], dtype=bool)]:
            axis.axvspan(band - 0.5, band + 0.5, color="0.9", lw=0)
        axis.plot(bands, originals[index], "k-", lw=1.2, label="input")
        axis.plot(bands, reconstructions[index], "r--", lw=1.2, label="reconstruction")
        axis.set_title(labels[index], fontsize=9)
        axis.set_xlabel("band index")
        if index == 0:
            axis.legend(fontsize=7)
    fig.suptitle(f"{title}\n(shaded: bands hidden from the encoder)".strip(), fontsize=10)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path


SPECTRA_PIXELS = 4  # pixels drawn in the spectra figure
FIGURES = ("mae_reconstruction", "mae_band_mse", "mae_spectra")


def spectra_pixels(voxel_masks: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """(cube, row, column) of up to ``count`` pixels with the most hidden bands, spread over the candidates."""
    fraction = voxel_masks.mean(axis=1)  # [N, H, W]
    order = np.argsort(-fraction.reshape(-1), kind="stable")
    if order.size == 0:
        return []
    threshold = fraction.reshape(-1)[order[min(count, order.size) - 1]]
    candidates = order[fraction.reshape(-1)[order] >= threshold]
    picks = candidates[np.unique(np.linspace(0, candidates.size - 1, min(count, candidates.size)).round().astype(int))]
    return [tuple(int(i) for i in np.unravel_index(index, fraction.shape)) for index in picks]


def write_mae_figures(data: dict, folder: str, suffix: str, title: str, opt) -> list[str]:
    """Draw the reconstruction, per-band MSE and spectra figures of an MAE evaluation pass into ``folder``.

    ``data``: ``band_mse``, ``band_mse_masked``, ``band_mse_baseline`` [C] and lists of sample cubes
    ``original``, ``mask``, ``reconstruction`` [C, H, W]; ``opt`` gives ``rgb_bands`` and ``dpi``.
    """
    os.makedirs(folder, exist_ok=True)
    dpi = opt.dpi
    paths = [os.path.join(folder, f"{name}{suffix}.png") for name in FIGURES]
    if data["original"]:
        rgb = opt.rgb_bands or default_rgb_bands(data["original"][0].shape[0])
        reconstruction_grid(data["original"], data["mask"], data["reconstruction"], rgb, paths[0],
                            f"MAE reconstructions ({title})", dpi)
    band_mse_plot(data["band_mse"], data["band_mse_masked"], paths[1], f"MSE per band ({title})",
                  data["band_mse_baseline"], dpi)
    if data["original"]:
        masks = np.stack(data["mask"])
        picks = spectra_pixels(masks, SPECTRA_PIXELS)
        spectra_plot([data["original"][n][:, y, x] for n, y, x in picks],
                     [data["reconstruction"][n][:, y, x] for n, y, x in picks],
                     [masks[n][:, y, x] for n, y, x in picks],
                     [f"cube {n}, pixel ({y}, {x})" for n, y, x in picks], paths[2], f"spectra ({title})", dpi)
    return [path for path in paths if os.path.exists(path)]
