"""Per-band normalisation of cubes: statistics computed once in a streaming pass, cached as JSON or NPZ."""

import json
import os
import warnings

import numpy as np
import torch
from tqdm import tqdm

from nenya.errors import NenyaError
from nenya.io.atomic import atomic_path, write_json


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


def load_or_compute_band_stats(stats_path, dataset, max_items=None, fingerprint=None):
    """Read (mean, std) from `stats_path` (.json or .npz), or compute them on `dataset` and write them there.

    ``fingerprint`` (a string naming the data the statistics describe, e.g. a hash of a cube list) is
    recorded in the file; a file with another fingerprint was computed on other data, so the statistics
    are computed again and the file rewritten (with a warning). A file without one is used as it is.
    """
    stats_path = os.fspath(stats_path) if stats_path is not None else default_stats_path(dataset)
    bands = _band_count(dataset)
    if os.path.exists(stats_path) and fingerprint is not None:
        recorded = _read_fingerprint(stats_path)
        if recorded is not None and recorded != fingerprint:
            warnings.warn(f"band statistics {stats_path} were computed on other data (its fingerprint "
                          f"differs); computing them again on {getattr(dataset, 'path', 'the training data')}")
            mean, std = band_statistics(dataset, max_items)
            _write_stats(stats_path, mean, std, source=getattr(dataset, "path", None), items=len(dataset),
                         fingerprint=fingerprint)
            return mean, std
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
    _write_stats(stats_path, mean, std, source=getattr(dataset, "path", None), items=items, fingerprint=fingerprint)
    return mean, std


def _read_fingerprint(path):
    """The fingerprint recorded in a statistics file, or None."""
    try:
        if path.endswith(".json"):
            with open(path) as handle:
                return json.load(handle).get("fingerprint")
        with np.load(path) as data:
            return str(data["fingerprint"]) if "fingerprint" in data.files else None
    except (OSError, ValueError, AttributeError):
        return None


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


def _write_stats(path, mean, std, source=None, items=None, fingerprint=None):
    """Write statistics to a temporary file beside `path`, then move it into place."""
    if not path.endswith((".json", ".npz")):
        raise NenyaError(f"band statistics file {path} must end in .json or .npz")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".json"):
        write_json(path, {"mean": mean.tolist(), "std": std.tolist(), "source": source, "items": items,
                          "fingerprint": fingerprint})
        return
    extra = {} if fingerprint is None else {"fingerprint": np.asarray(fingerprint)}
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, mean=mean, std=std, **extra)
