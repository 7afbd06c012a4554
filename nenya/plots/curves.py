"""training_plots.png: loss per step and per epoch, learning rate, gradient norm and every validation metric."""

import os

import matplotlib.pyplot as plt

from nenya.io.atomic import write_png
from nenya.io.curves import read_curves


def training_plots(folder: str, dpi: int = 100) -> str:
    """Draw loss per step and per epoch, learning rate and every validation metric; return the PNG path."""
    train = read_curves(os.path.join(folder, "losses_train.h5"))
    valid_path = os.path.join(folder, "losses_valid.h5")
    valid = read_curves(valid_path) if os.path.isfile(valid_path) else {}
    metric_names = sorted(name for name in valid if name.endswith("_valid") and name not in
                          ("loss_valid", "loss_step_valid", "loss_avg_valid"))
    norms = "grad_norm_train" in train  # clip_grad_norm on: the norm before clipping of every optimizer step
    panels = 3 + norms + len(metric_names)
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
    if "lr_step_train" in train:
        axes[2].plot(train["lr_step_train"], lw=1.0)
        axes[2].set(title="learning rate", xlabel="step", ylabel="lr")
    else:
        axes[2].plot(train["epoch"], train["lr"], "o-")
        axes[2].set(title="learning rate", xlabel="epoch", ylabel="lr")
    if norms:
        axes[3].plot(train["grad_norm_train"], lw=0.8)
        axes[3].set(title="gradient norm before clipping", xlabel="optimizer step", ylabel="norm")
    for axis, name in zip(axes[3 + norms:], metric_names):
        axis.plot(valid["epoch"], valid[name], "o-")
        axis.set(title=name.removesuffix("_valid"), xlabel="epoch (0 = at initialisation)")
    fig.tight_layout()
    path = os.path.join(folder, "training_plots.png")
    write_png(fig, path, dpi)
    plt.close(fig)
    return path
