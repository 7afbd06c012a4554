"""Hyperspectral cubes listed in a CSV (one HDF5 file per cube) and per-band normalisation."""

import csv
import json
import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from nenya.atomic import atomic_path, write_json
from nenya.data.hdf5 import _dataset_names, checked_index
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
        bands, height, width = self._cube_shape(self.files[0])
        self.stored_shape = (len(self.files), bands, height, width)

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
        index = checked_index(index, len(self), "cubes")
        path = self.files[index]
        with _open(path) as f:
            node = self._node(f, path, bands=self.stored_shape[1])
            cube = torch.tensor(node[()], dtype=torch.float32)
        if self.normalize is not None:
            cube = self.normalize(cube)
        if self.transform is not None:
            cube = self.transform(cube)
        return cube, torch.tensor(-1, dtype=torch.int64)

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


class BandNormalize:
    """Standardise each band: (x - mean[c]) / std[c] on [C, ...] tensors; bands with std 0 are only centred."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(std, dtype=np.float32))
        if self.mean.ndim != 1 or std.shape != self.mean.shape:
            raise NenyaError(
                f"band statistics need 1-D mean and std of equal length; got shapes "
                f"{tuple(self.mean.shape)} and {tuple(std.shape)}"
            )
        self.std = torch.where(std > 0, std, torch.ones_like(std))

    def __call__(self, cube):
        bands = self.mean.shape[0]
        if cube.shape[0] != bands:
            raise NenyaError(
                f"band statistics have {bands} bands but the cube has {cube.shape[0]} (shape {tuple(cube.shape)})"
            )
        view = (bands,) + (1,) * (cube.ndim - 1)
        mean = self.mean.to(cube.device, cube.dtype).view(view)
        std = self.std.to(cube.device, cube.dtype).view(view)
        return (cube - mean) / std

    def __repr__(self):
        return f"BandNormalize(bands={self.mean.shape[0]})"


def band_statistics(dataset, max_items=None, progress=True):
    """Per-band mean and population std (float64 [C]) of dataset[i][0] over items, in one streaming pass."""
    n = len(dataset)
    if n == 0:
        raise NenyaError("cannot compute band statistics of an empty dataset")
    if max_items is not None and max_items < 1:
        raise NenyaError(f"max_items={max_items} is invalid; use a positive count or None for all items")
    if max_items is None or max_items >= n:
        indices = range(n)
    else:
        indices = np.unique(np.linspace(0, n - 1, int(max_items)).round().astype(int)).tolist()
    count, mean, m2 = 0, None, None
    for index in tqdm(indices, desc="band statistics", leave=False, disable=None if progress else True):
        item = dataset[index][0]
        pixels = np.asarray(item, dtype=np.float64).reshape(item.shape[0], -1)
        if mean is None:
            mean, m2 = np.zeros(pixels.shape[0]), np.zeros(pixels.shape[0])
        elif pixels.shape[0] != mean.shape[0]:
            raise NenyaError(
                f"item {index} has {pixels.shape[0]} bands but earlier items have {mean.shape[0]}; "
                f"band statistics need one band count"
            )
        # Chan et al.'s pairwise update: merge this item's mean and squared deviations into the totals.
        k = pixels.shape[1]
        item_mean = pixels.mean(axis=1)
        item_m2 = ((pixels - item_mean[:, None]) ** 2).sum(axis=1)
        delta = item_mean - mean
        total = count + k
        mean += delta * (k / total)
        m2 += item_m2 + delta ** 2 * (count * k / total)
        count = total
    return mean, np.sqrt(m2 / count)


def default_stats_path(dataset):
    """The band statistics cache beside the data: `<data file or csv>.bandstats.json`."""
    return f"{dataset.path}.bandstats.json"


def load_or_compute_band_stats(stats_path, dataset, max_items=None):
    """Read (mean, std) from `stats_path` (.json or .npz), or compute them on `dataset` and write them there."""
    stats_path = os.fspath(stats_path) if stats_path is not None else default_stats_path(dataset)
    bands = _band_count(dataset)
    if os.path.exists(stats_path):
        mean, std = _read_stats(stats_path)
        if len(mean) != bands:
            raise NenyaError(
                f"band statistics {stats_path} have {len(mean)} bands but {dataset.path} has {bands}; "
                f"delete the file to recompute it or point to statistics for this data"
            )
        return mean, std
    mean, std = band_statistics(dataset, max_items)
    items = len(dataset) if max_items is None else min(int(max_items), len(dataset))
    _write_stats(stats_path, mean, std, source=getattr(dataset, "path", None), items=items)
    return mean, std


def _band_count(dataset):
    """Bands per item, from the dataset's image_shape when it has one."""
    shape = getattr(dataset, "image_shape", None)
    return shape[0] if shape is not None else dataset[0][0].shape[0]


def _read_stats(path):
    """(mean, std) float64 arrays from a .json or .npz statistics file."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as data:
                values = {name: data[name] for name in data.files}
        elif path.endswith(".json"):
            with open(path) as handle:
                values = json.load(handle)
        else:
            raise NenyaError(f"band statistics file {path} must end in .json or .npz")
    except (OSError, ValueError) as err:
        raise NenyaError(f"band statistics file {path} is unreadable ({err})") from None
    if not isinstance(values, dict):
        raise NenyaError(f"band statistics file {path} must hold an object with 'mean' and 'std'")
    for name in ("mean", "std"):
        if name not in values:
            raise NenyaError(f"band statistics file {path} has no '{name}'; it needs 'mean' and 'std' per band")
    mean = np.asarray(values["mean"], dtype=np.float64).reshape(-1)
    std = np.asarray(values["std"], dtype=np.float64).reshape(-1)
    if mean.shape != std.shape:
        raise NenyaError(f"band statistics file {path} has {len(mean)} means but {len(std)} stds; use one per band")
    return mean, std


def _write_stats(path, mean, std, source=None, items=None):
    """Write statistics to a temporary file beside `path`, then move it into place."""
    if not path.endswith((".json", ".npz")):
        raise NenyaError(f"band statistics file {path} must end in .json or .npz")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".json"):
        write_json(path, {"mean": mean.tolist(), "std": std.tolist(), "source": source, "items": items})
        return
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, mean=mean, std=std)
