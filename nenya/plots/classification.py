"""The confusion-matrix figure of a classifier (rows: true class, columns: predicted), counts and row shares."""

import matplotlib.pyplot as plt
import numpy as np

from nenya.io.atomic import write_png


def confusion_figure(matrix, class_names, path: str, title: str, dpi: int = 100) -> str:
    """Heat map of a confusion matrix [K, K]: colour = share of the true class, text = count; returns ``path``."""
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    classes = len(counts)
    side = max(4.0, 0.6 * classes + 2.0)
    fig, axis = plt.subplots(figsize=(side + 1.0, side))
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=axis, label="share of the true class")
    for i in range(classes):
        for j in range(classes):
            axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                      color="white" if shares[i, j] > 0.5 else "black")
    axis.set_xticks(range(classes), class_names, rotation=45, ha="right")
    axis.set_yticks(range(classes), class_names)
    axis.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path
