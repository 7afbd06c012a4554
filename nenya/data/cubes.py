"""Hyperspectral cubes listed in a CSV (one HDF5 file per cube)."""

import csv
import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from nenya.data.hdf5 import ItemBatch, _dataset_names, batch_tensors, checked_index, checked_indices, read_item
from nenya.errors import NenyaError


class CubeCSV(Dataset):
    """Cubes (C, H, W) stored under `key`, one HDF5 file per row of a CSV with columns `path` and optional `split`."""

    def __init__(self, csv_path, split=None, key="cube", transform=None, normalize=None):
        self.path = os.fspath(csv_path)
        self.key = key
        self.split = split
        self.transform = transform
        self.normalize = normalize
        self.files = _read_cube_list(self.path, split)
        self.shapes = [self._cube_shape(path) for path in self.files]  # from the metadata: no data is read
        bands, height, width = self.shapes[0]
        for path, shape in zip(self.files, self.shapes):
            if shape[0] != bands:
                raise NenyaError(f"{path}:{key} has {shape[0]} bands (shape {shape}) but {self.files[0]} has "
                                 f"{bands}; every cube listed in {self.path} needs the same band count")
        self.stored_shape = (len(self.files), bands, height, width)

    def sizes(self):
        """(file, height, width) of every listed cube."""
        return [(path, shape[1], shape[2]) for path, shape in zip(self.files, self.shapes)]

    @property
    def image_shape(self):
        """Shape (C, H, W) of the first listed cube, before normalisation and transforms."""
        return self.stored_shape[1:]

    @property
    def has_labels(self):
        """Always False: CSV-listed cubes carry no labels."""
        return False

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        """(cube [C, H, W] normalised and transformed, label -1, index), all tensors."""
        index = checked_index(index, len(self), "cubes")
        cube = torch.from_numpy(self._read(index, np.empty(self.shapes[index], np.float32)))
        if self.normalize is not None:
            cube = self.normalize(cube)
        if self.transform is not None:
            cube = self.transform(cube)
        return cube, torch.tensor(-1, dtype=torch.int64), torch.tensor(index, dtype=torch.int64)

    def __getitems__(self, indices):
        """The items at ``indices``, one file read each; without normalisation or transform, read straight into
        one stacked batch (an :class:`~nenya.data.hdf5.ItemBatch`) when the cubes have one shape."""
        positions = checked_indices(indices, len(self), "cubes")
        shapes = {self.shapes[p] for p in positions.tolist()}
        if self.normalize is not None or self.transform is not None or len(shapes) != 1:
            return [self[p] for p in positions.tolist()]
        cubes, labels, index = batch_tensors(len(positions), shapes.pop())  # cubes [B, C, H, W]
        for row, position in enumerate(positions.tolist()):
            self._read(position, cubes[row].numpy())
        labels.fill_(-1)
        index.numpy()[:] = positions
        return ItemBatch(cubes, labels, index)

    def _read(self, index: int, out: np.ndarray) -> np.ndarray:
        """Read cube ``index`` into the float32 array ``out`` [C, H, W]; return ``out``."""
        path = self.files[index]
        with _open(path) as f:
            node = self._node(f, path, bands=self.stored_shape[1])
            if node.shape != out.shape:
                raise NenyaError(f"{path}:{self.key} has shape {node.shape} but had {out.shape} when {self.path} "
                                 f"was read; the file changed during the run")
            if node.dtype == out.dtype:
                read_item(lambda: node.read_direct(out), path, self.key, index)
            else:
                out[...] = read_item(lambda: node[()], path, self.key, index)
        return out

    def _cube_shape(self, path):
        """The (C, H, W) shape of the cube in `path`, checking its key and rank."""
        with _open(path) as f:
            return tuple(self._node(f, path).shape)

    def _node(self, f, path, bands=None):
        """The cube dataset in open file `f` (with `bands` bands if given), or NenyaError naming what is wrong."""
        node = f.get(self.key)
        if not isinstance(node, h5py.Dataset):
            names = _dataset_names(f)
            raise NenyaError(
                f"{path} (listed in {self.path}) has no dataset '{self.key}'; it has: "
                f"{', '.join(names) or 'no datasets'}"
            )
        if node.ndim != 3:
            raise NenyaError(f"{path}:{self.key} has shape {node.shape}; expected one cube (C, H, W)")
        if bands is not None and node.shape[0] != bands:
            raise NenyaError(
                f"{path}:{self.key} has {node.shape[0]} bands (shape {node.shape}) but {self.files[0]} has "
                f"{bands}; every cube listed in {self.path} needs the same band count"
            )
        return node


def _read_cube_list(csv_path, split):
    """Absolute cube file paths listed in `csv_path`, keeping rows of `split` when given."""
    if not os.path.isfile(csv_path):
        raise NenyaError(f"cube list {csv_path} does not exist")
    folder = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        if "path" not in columns:
            raise NenyaError(
                f"{csv_path} has no 'path' column; its columns are: {', '.join(columns) or 'none'} "
                f"(the header needs 'path' and optionally 'split')"
            )
        if split is not None and "split" not in columns:
            raise NenyaError(f"split={split} was asked for but {csv_path} has no 'split' column")
        rows = []
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row["path"]:
                raise NenyaError(f"{csv_path} line {reader.line_num} has an empty 'path'")
            rows.append(row)
    if split is not None:
        present = sorted({row["split"] for row in rows})
        rows = [row for row in rows if row["split"] == split]
        if not rows:
            raise NenyaError(f"split={split} is not in {csv_path}; its splits are: {', '.join(present) or 'none'}")
    if not rows:
        raise NenyaError(f"{csv_path} lists no cubes; add rows with a 'path' to one HDF5 file each")
    files = [os.path.join(folder, row["path"]) for row in rows]
    for path in files:
        if not os.path.isfile(path):
            raise NenyaError(f"cube file {path} (listed in {csv_path}) does not exist")
    return files


def _open(path):
    """Open an HDF5 file for reading, or NenyaError naming it."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise NenyaError(f"{path} is not a readable HDF5 file ({err})") from None
