"""Pictures of embeddings: PCA scatter of encoder features, and images beside their augmented views."""

import matplotlib.pyplot as plt
import torch

from nenya.io.atomic import write_png


def embedding_scatter(features, labels, path: str, title: str, dpi: int = 100) -> str:
    """Scatter of the first two principal components of ``features`` [N, D], coloured by label."""
    centred = features.float() - features.float().mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    projected = (centred @ components[:2].T).numpy()
    fig, axis = plt.subplots(figsize=(5, 4.5))
    classes = int(labels.max()) + 1 if len(labels) else 1
    colours = plt.get_cmap("tab10" if classes <= 10 else "tab20", max(classes, 2))
    points = axis.scatter(projected[:, 0], projected[:, 1], c=labels.numpy(), cmap=colours, s=8,
                          vmin=-0.5, vmax=max(classes, 2) - 0.5)
    fig.colorbar(points, ax=axis, label="label", ticks=range(classes))
    axis.set(title=title, xlabel="PC 1", ylabel="PC 2")
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path


def views_grid(images, views, path: str, dpi: int = 100) -> str:
    """Each original image (first channel) beside its two augmented views."""
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(4.5, 1.5 * rows), squeeze=False)
    for row in range(rows):
        for column, (picture, name) in enumerate(((images[row], "image"), (views[row][0], "view 1"),
                                                  (views[row][1], "view 2"))):
            axes[row, column].imshow(picture[0].numpy(), cmap="gray")
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(name)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path
