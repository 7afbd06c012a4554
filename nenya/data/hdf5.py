"""A lazily read image dataset stored in Nenya's HDF5 layout."""

import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from nenya.errors import NenyaError

# Rank of the stored dataset -> whether the images lack a channel axis.
_MISSING_CHANNEL = {3: True, 4: False, 5: False}


def checked_index(index, count: int, what: str) -> int:
    """A non-negative index below ``count`` (negative ones count from the end); IndexError otherwise."""
    index = int(index)
    if index < 0:
        index += count
    if not 0 <= index < count:
        raise IndexError(f"index {index} out of range for {count} {what}")
    return index


class HDF5Images(Dataset):
    """Images `key` (N, C, H, W), (N, H, W) or (N, C, D, H, W) with optional labels `key_labels` (N,)."""

    def __init__(self, path, key, transform=None, preload=False, key_option=None):
        self.path = os.fspath(path)
        self.key = key
        self.transform = transform
        self._file = None
        self._pid = None
        self._images = None
        where = f" ({key_option})" if key_option else ""
        if not os.path.isfile(self.path):
            raise NenyaError(f"images file {self.path} does not exist")
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise NenyaError(f"{self.path} is not a readable HDF5 file ({err})") from None
        with f:
            node = f.get(key)
            if not isinstance(node, h5py.Dataset):
                names = _dataset_names(f)
                raise NenyaError(
                    f"{self.path} has no dataset '{key}'{where}; it has: {', '.join(names) or 'no datasets'}"
                )
            if node.ndim not in _MISSING_CHANNEL:
                raise NenyaError(
                    f"{self.path}:{key} has shape {node.shape}; expected (N, C, H, W), (N, H, W) "
                    f"or (N, C, D, H, W)"
                )
            self.stored_shape = tuple(node.shape)
            self._add_channel = _MISSING_CHANNEL[node.ndim]
            self._labels = self._read_labels(f)
            if preload:
                self._images = node[()]

    def _read_labels(self, f):
        """Return the labels as int64 numpy array, or None when the file has none."""
        name = f"{self.key}_labels"
        node = f.get(name)
        if node is None:
            return None
        if not isinstance(node, h5py.Dataset) or node.ndim != 1 or node.shape[0] != self.stored_shape[0]:
            shape = node.shape if isinstance(node, h5py.Dataset) else "a group"
            raise NenyaError(
                f"{self.path}:{name} has shape {shape}; expected ({self.stored_shape[0]},), "
                f"one label per image in {self.key}"
            )
        return node[()].astype(np.int64)

    @property
    def has_labels(self):
        """Whether the file holds labels for these images."""
        return self._labels is not None

    @property
    def labels(self):
        """The labels as an int64 numpy array, or None."""
        return self._labels

    @property
    def image_shape(self):
        """Shape of one returned image before transforms: (C, H, W) or (C, D, H, W)."""
        shape = self.stored_shape[1:]
        return (1, *shape) if self._add_channel else shape

    def __len__(self):
        return self.stored_shape[0]

    def __getitem__(self, index):
        index = checked_index(index, len(self), "images")
        if self._images is not None:
            image = torch.tensor(self._images[index], dtype=torch.float32)
        else:
            image = torch.tensor(read_item(lambda: self._handle()[self.key][index], self.path, self.key, index),
                                 dtype=torch.float32)
        if self._add_channel:
            image = image.unsqueeze(0)
        if self.transform is not None:
            image = self.transform(image)
        label = int(self._labels[index]) if self._labels is not None else -1
        return image, torch.tensor(label, dtype=torch.int64)

    def _handle(self):
        """The h5py File for this process, opened on first use (DataLoader workers each get their own)."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self):
        """Close this process's file handle, if open."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state


def read_item(read, path, key, index):
    """``read()``: one item's values from an HDF5 file; a damaged file is a NenyaError naming the item."""
    try:
        return read()
    except (OSError, RuntimeError) as err:  # h5py: unreadable chunk, truncated file, failed filter
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NenyaError(f"{path}:{key} item {index} cannot be read ({reason}); the file is damaged") from None


def check_images(dataset, model: str):
    """Raise NenyaError unless `dataset` holds 2-D images (N, C, H, W) with labels that are class indices >= 0."""
    if len(dataset.image_shape) != 3:
        raise NenyaError(f"{dataset.path}:{dataset.key} holds volumes of shape {dataset.stored_shape} (N, C, D, H, "
                         f"W) but model '{model}' takes 2-D images (N, C, H, W)")
    labels = dataset.labels
    if labels is not None and labels.size and labels.min() < 0:
        raise NenyaError(f"{dataset.path}:{dataset.key}_labels holds negative labels (smallest {labels.min()}); "
                         f"labels must be class indices 0, 1, 2, ...")


def check_channels(dataset, nchannels, option="nchannels"):
    """Raise NenyaError unless `dataset` images have `nchannels` channels."""
    have = dataset.image_shape[0]
    if have != nchannels:
        plural = "channel" if have == 1 else "channels"
        raise NenyaError(
            f"{option}={nchannels} but {dataset.path}:{dataset.key} has {have} {plural} per image "
            f"(shape {dataset.stored_shape})"
        )


def _dataset_names(f):
    """All dataset paths in an open HDF5 file, sorted."""
    names = []
    f.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
    return sorted(names)
