"""Pictures of a run: training_plots.png from the HDF5 curves."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nenya.curves import read_curves  # noqa: E402


def training_plots(folder: str, dpi: int = 100) -> str:
    """Draw loss per step and per epoch, learning rate and every validation metric; return the PNG path."""
    train = read_curves(os.path.join(folder, "losses_train.h5"))
    valid_path = os.path.join(folder, "losses_valid.h5")
    valid = read_curves(valid_path) if os.path.isfile(valid_path) else {}
    metric_names = sorted(name for name in valid if name.endswith("_valid") and name not in
                          ("loss_valid", "loss_step_valid", "loss_avg_valid"))
    panels = 3 + len(metric_names)
    columns = min(panels, 4)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    axes = axes.ravel()
    for axis in axes[panels:]:
        axis.set_visible(False)
    axes[0].plot(train["loss_step_train"], lw=0.6, alpha=0.5, label="step")
    axes[0].plot(train["loss_avg_train"], lw=1.2, label="running mean")
    axes[0].set(title="training loss per step", xlabel="step", ylabel="loss")
    axes[0].legend()
    axes[1].plot(train["epoch"], train["loss_train"], "o-", label="train")
    if "loss_valid" in valid:
        axes[1].plot(valid["epoch"], valid["loss_valid"], "s-", label="valid")
    axes[1].set(title="loss per epoch", xlabel="epoch", ylabel="loss")
    axes[1].legend()
    axes[2].plot(train["epoch"], train["lr"], "o-")
    axes[2].set(title="learning rate", xlabel="epoch", ylabel="lr")
    for axis, name in zip(axes[3:], metric_names):
        axis.plot(valid["epoch"], valid[name], "o-")
        axis.set(title=name.removesuffix("_valid"), xlabel="epoch (0 = at initialisation)")
    fig.tight_layout()
    path = os.path.join(folder, "training_plots.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def embedding_scatter(features, labels, path: str, title: str, dpi: int = 100) -> str:
    """Scatter of the first two principal components of ``features`` [N, D], coloured by label."""
    import torch

    centred = features.float() - features.float().mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    projected = (centred @ components[:2].T).numpy()
    fig, axis = plt.subplots(figsize=(5, 4.5))
    points = axis.scatter(projected[:, 0], projected[:, 1], c=labels.numpy(), cmap="tab10", s=8)
    fig.colorbar(points, ax=axis, label="label")
    axis.set(title=title, xlabel="PC 1", ylabel="PC 2")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
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
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
