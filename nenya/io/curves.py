"""HDF5 loss and metric curves, appended on disk every epoch and cut back on resume."""

import h5py
import numpy as np

EPOCH_INDEX = "epoch"  # per-epoch rows: the epoch of each row
STEP_INDEX = "step_epoch"  # per-step rows: the epoch each step belongs to


def _append(handle, name: str, values, kind: str) -> None:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if name not in handle:
        handle.create_dataset(name, data=values, maxshape=(None,), chunks=True)
        handle[name].attrs["kind"] = kind
        return
    dataset = handle[name]
    start = dataset.shape[0]
    dataset.resize((start + values.size,))
    dataset[start:] = values


def append_epoch(path: str, epoch: int, scalars: dict, steps: dict | None = None) -> None:
    """Append one epoch: a row per scalar (``loss_train``, ``knn_acc_valid``, …) and the per-step series."""
    with h5py.File(path, "a") as handle:
        _append(handle, EPOCH_INDEX, [epoch], "epoch")
        for name, value in scalars.items():
            _append(handle, name, [value], "epoch")
        if steps:
            count = len(next(iter(steps.values())))
            _append(handle, STEP_INDEX, [epoch] * count, "step")
            for name, values in steps.items():
                _append(handle, name, values, "step")


def truncate_after(path: str, epoch: int) -> None:
    """Drop every row written after ``epoch`` (a run resumed from that epoch's checkpoint)."""
    try:
        handle = h5py.File(path, "a")
    except FileNotFoundError:
        return
    with handle:
        keep = {}
        for kind, index in (("epoch", EPOCH_INDEX), ("step", STEP_INDEX)):
            keep[kind] = int(np.sum(handle[index][:] <= epoch)) if index in handle else 0
        for name in handle:
            dataset = handle[name]
            dataset.resize((min(dataset.shape[0], keep[dataset.attrs["kind"]]),))


def read_curves(path: str) -> dict:
    """Every curve in the file as a numpy array."""
    with h5py.File(path, "r") as handle:
        return {name: handle[name][:] for name in handle}
