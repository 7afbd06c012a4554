"""summary.png of a sweep: each experiment's best monitored value, and its validation curve of that metric."""

import os

import h5py
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from nenya.io.atomic import write_png


def _curve(folder: str, metric: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, values) of ``metric`` in a run's validation (or training, for loss_train) curves."""
    if not metric:
        return None
    name, file = (metric, "losses_train.h5") if metric == "loss_train" else (f"{metric}_valid", "losses_valid.h5")
    path = os.path.join(folder, file)
    if not os.path.isfile(path):
        return None
    with h5py.File(path, "r") as handle:
        if name not in handle:
            return None
        return handle["epoch"][:], handle[name][:]


def sweep_summary(rows: list[dict], path: str, dpi: int = 100) -> str:
    """Draw the comparison of a sweep's experiments (rows of experiment_summary.csv) into ``path``."""
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 2.5))
    names = [row["name"] for row in rows]
    values = [row.get("best_value") for row in rows]
    monitors = sorted({row["monitor"] for row in rows if row.get("monitor")})
    heights = [v if v is not None else 0.0 for v in values]
    colours = ["tab:red" if row["status"] == "failed" else "tab:blue" if v is not None else "lightgrey"
               for row, v in zip(rows, values)]
    bars.barh(range(len(rows)), heights, color=colours)
    bars.set_yticks(range(len(rows)), names)
    bars.invert_yaxis()
    for index, (row, value) in enumerate(zip(rows, values)):
        text = f" {value:.4g} (epoch {row['best_epoch']})" if value is not None else f" {row['status']}"
        bars.text(heights[index], index, text, va="center", fontsize=8,
                  color="tab:red" if row["status"] == "failed" else "black")
    bars.set_xlim(right=max(heights + [1e-12]) * 1.4)  # room for the labels
    bars.set(title="best " + " / ".join(monitors) if monitors else "best value", xlabel=", ".join(monitors))
    for row in rows:
        curve = _curve(row.get("folder", ""), row.get("monitor"))
        if curve is not None:
            curves.plot(curve[0], curve[1], "o-", ms=3, label=row["name"])
    curves.set(title="validation curve of the monitored metric", xlabel="epoch (0 = at initialisation)",
               ylabel=", ".join(monitors))
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves.lines:
        curves.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, path, dpi)
    plt.close(fig)
    return path
