"""HDF5 loss and metric curves, appended every epoch and cut back on resume.

Every change is made on a copy that replaces the file only when complete (:mod:`nenya.io.atomic`), so
a full disk or a kill in the middle of a write leaves the previous curves intact.
"""

import os
import shutil
from contextlib import contextmanager

import h5py
import numpy as np

from nenya.io.atomic import atomic_path

EPOCH_INDEX = "epoch"  # per-epoch rows: the epoch of each row
STEP_INDEX = "step_epoch"  # per-step rows (one per training batch): the epoch each step belongs to
UPDATE_INDEX = "update_epoch"  # per-update rows (one per optimizer step): the epoch each update belongs to


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


@contextmanager
def _edited(path: str):
    """An open copy of the curves file at ``path`` (empty when absent) that replaces it when the block ends."""
    with atomic_path(path) as temporary:
        if os.path.exists(path):
            shutil.copyfile(path, temporary)
        with h5py.File(temporary, "a") as handle:
            yield handle


def append_epoch(path: str, epoch: int, scalars: dict, steps: dict | None = None,
                 updates: dict | None = None) -> None:
    """Append one epoch: a row per scalar (``loss_train``, ``knn_acc_valid``, …), the per-step series (one value
    per batch: ``loss_step_train``, ``lr_step_train``) and the per-update series (one value per optimizer
    step: ``grad_norm_train``)."""
    with _edited(path) as handle:
        _append(handle, EPOCH_INDEX, [epoch], "epoch")
        for name, value in scalars.items():
            _append(handle, name, [value], "epoch")
        for series, index, kind in ((steps, STEP_INDEX, "step"), (updates, UPDATE_INDEX, "update")):
            if series:
                count = len(next(iter(series.values())))
                _append(handle, index, [epoch] * count, kind)
                for name, values in series.items():
                    _append(handle, name, values, kind)


def _rows_to_keep(handle, epoch: int) -> dict:
    """Dataset name -> rows written up to ``epoch``."""
    keep = {}
    for kind, index in (("epoch", EPOCH_INDEX), ("step", STEP_INDEX), ("update", UPDATE_INDEX)):
        keep[kind] = int(np.sum(handle[index][:] <= epoch)) if index in handle else 0
    return {name: min(handle[name].shape[0], keep[handle[name].attrs["kind"]]) for name in handle}


def truncate_after(path: str, epoch: int) -> None:
    """Drop every row written after ``epoch`` (a run resumed from that epoch's checkpoint)."""
    if not os.path.exists(path):
        return
    with h5py.File(path, "r") as handle:
        keep = _rows_to_keep(handle, epoch)
        if all(handle[name].shape[0] == rows for name, rows in keep.items()):
            return
    with _edited(path) as handle:
        for name, rows in keep.items():
            handle[name].resize((rows,))


def read_curves(path: str) -> dict:
    """Every curve in the file as a numpy array."""
    with h5py.File(path, "r") as handle:
        return {name: handle[name][:] for name in handle}
