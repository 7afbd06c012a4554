"""Segmentation figures (matplotlib Agg): image / ground truth / prediction overlays and per-class Dice bars.

Images are [C, H, W] numpy arrays (a volume's middle depth slice), masks [H, W] integer label maps.
Every function writes one PNG and returns its path.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from nenya.io.atomic import write_png

COLOURS = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#ffff33", "#a65628", "#f781bf"]


def grey(image: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1]: the first channel of ``image`` [C, H, W], scaled by its 1st-99th percentiles."""
    plane = np.asarray(image, np.float64)[0]
    low, high = np.percentile(plane, [1, 99])
    return np.clip((plane - low) / (high - low if high > low else 1.0), 0, 1)


def _overlay(axis, image, mask, title):
    axis.imshow(grey(image), cmap="gray", interpolation="nearest")
    labels = np.ma.masked_equal(np.asarray(mask), 0)  # background transparent
    axis.imshow(labels, cmap=ListedColormap(COLOURS), vmin=1, vmax=len(COLOURS), alpha=0.45,
                interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.set_axis_off()


def overlays(samples, path: str, title: str, dpi: int = 100) -> str:
    """One row per sample (image, ground truth, prediction): ``samples`` is a list of (image, true, pred, dice)."""
    rows = max(len(samples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, (image, true, pred, dice) in enumerate(samples):
        axes[row, 0].imshow(grey(image), cmap="gray", interpolation="nearest")
        axes[row, 0].set_title("image (channel 0)", fontsize=9)
        axes[row, 0].set_axis_off()
        _overlay(axes[row, 1], image, true, "ground truth")
        _overlay(axes[row, 2], image, pred, f"prediction (Dice {dice:.3f})")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path


def dice_bars(per_class: dict, path: str, title: str, dpi: int = 100) -> str:
    """Bar chart of the mean Dice of each class {name: value}."""
    fig, axis = plt.subplots(figsize=(1.2 + 0.9 * len(per_class), 3.0))
    names, values = list(per_class), [per_class[n] for n in per_class]
    bars = axis.bar(names, values, color=[COLOURS[i % len(COLOURS)] for i in range(len(names))])
    for bar, value in zip(bars, values):
        axis.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}", ha="center", fontsize=8)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("mean Dice per image")
    axis.set_title(title, fontsize=10)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path


def draw_figures(data, folder, suffix, title, dpi):
    """The overlay and per-class Dice figures of ``data`` (from ``_figure_inputs``) into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    samples, per_class = data
    if samples:
        overlays(samples, os.path.join(folder, f"segmentation{suffix}.png"), title, dpi)
    dice_bars(per_class, os.path.join(folder, f"dice_per_class{suffix}.png"), title, dpi)


def figure_inputs(outputs: dict, class_names) -> tuple:
    """(overlay samples, per-class mean Dice) of an evaluation pass."""
    order = outputs["sample_index"].argsort().tolist() if "sample_index" in outputs else []
    dice = outputs["score_dice"].double()  # [N, K]
    samples = [(outputs["sample_image"][i].numpy(), outputs["sample_true"][i].numpy(),
                outputs["sample_pred"][i].numpy(), float(dice[int(outputs["sample_index"][i])].mean()))
               for i in order]
    return samples, dict(zip(class_names, dice.mean(0).tolist()))
