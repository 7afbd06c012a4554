"""A lazily read image dataset stored in Nenya's HDF5 layout, read a batch at a time.

Items are ``(image, label, index)``: the index is the item's position in the data set (an int64 0-dim
tensor), so that a training loop can seed per-sample randomness by it and drop the repeats a distributed
sampler pads with. A DataLoader asks :meth:`HDF5Images.__getitems__` for a whole batch; it reads the batch
with few calls (see :mod:`nenya.data.hdf5_rows`) and returns the items together with the batch already
stacked, which :func:`collate` hands on without a second copy.
"""

import math
import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from nenya.data.hdf5_rows import RowReader, gather, locate_rows
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


def checked_indices(indices, count: int, what: str) -> np.ndarray:
    """Non-negative int64 positions [B] of ``indices`` below ``count`` (negative ones count from the end)."""
    positions = np.asarray(indices, dtype=np.int64).reshape(-1)
    positions = np.where(positions < 0, positions + count, positions)
    bad = (positions < 0) | (positions >= count)
    if bad.any():
        raise IndexError(f"index {np.asarray(indices).reshape(-1)[bad.argmax()]} out of range for {count} {what}")
    return positions


class ItemBatch(list):
    """Items ``(image, label, index)`` of one batch that also carry the batch stacked (``stacked``), or None."""

    stacked = None


def collate(items):
    """A DataLoader ``collate_fn``: an :class:`ItemBatch`'s stacked tensors as they are, else ``default_collate``."""
    stacked = getattr(items, "stacked", None)
    if stacked is not None and len(stacked[0]) == len(items):
        return list(stacked)
    return default_collate(items)


def batch_tensor(shape, dtype=torch.float32, shared=True) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker (and ``shared``) in shared memory, so passing it on copies nothing."""
    if not shared or get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)  # what default_collate does
    return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))


class HDF5Images(Dataset):
    """Images `key` (N, C, H, W), (N, H, W) or (N, C, D, H, W) with optional labels `key_labels` (N,).

    ``memmap`` (default True) reads uncompressed data through a memory map of the file where the items lie
    whole in it (:attr:`read_mode` says how this data set is read); False reads through h5py only.
    """

    def __init__(self, path, key, transform=None, preload=False, key_option=None, memmap=True):
        self.path = os.fspath(path)
        self.key = key
        self.transform = transform
        self._reader = None
        self._pid = None
        self._images = None
        self._route = ("h5py", "memmap=False")
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
            elif memmap:
                self._route = locate_rows(node, self.path)

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

    @property
    def read_mode(self) -> str:
        """How items are read: "preload" (in memory), "memmap", "chunk-map" (memory map, per chunk) or "h5py"."""
        return "preload" if self._images is not None else self._route[0]

    def __len__(self):
        return self.stored_shape[0]

    def __getitem__(self, index):
        index = checked_index(index, len(self), "images")
        image = self._read(np.array([index]), shared=False)[0]  # [C, H, W] or [C, D, H, W]
        if self.transform is not None:
            image = self.transform(image)
        label = int(self._labels[index]) if self._labels is not None else -1
        return image, torch.tensor(label, dtype=torch.int64), torch.tensor(index, dtype=torch.int64)

    def __getitems__(self, indices):
        """The items at ``indices`` (any order, repeats allowed) read as one batch: an :class:`ItemBatch`.

        Without a transform it carries the batch stacked (images [B, C, ...], labels [B], indices [B]);
        with one, each image is transformed on its own, as :meth:`__getitem__` does.
        """
        positions = checked_indices(indices, len(self), "images")
        images = self._read(positions, shared=self.transform is None)  # [B, C, H, W] or [B, C, D, H, W]
        labels = (torch.from_numpy(self._labels[positions]) if self._labels is not None
                  else torch.full((len(positions),), -1, dtype=torch.int64))
        index = torch.from_numpy(positions)
        if self.transform is not None:
            return ItemBatch((self.transform(image), label, i)
                             for image, label, i in zip(images.unbind(0), labels.unbind(0), index.unbind(0)))
        batch = ItemBatch(zip(images.unbind(0), labels.unbind(0), index.unbind(0)))
        batch.stacked = (images, labels, index)
        return batch

    def _read(self, positions: np.ndarray, shared: bool) -> torch.Tensor:
        """The stored images at ``positions`` as one float32 tensor [B, *image_shape]."""
        images = batch_tensor((len(positions), *self.stored_shape[1:]), shared=shared)
        out = images.numpy()
        if self._images is not None:
            gather(self._images, positions, out)
        else:
            reader = self._handle()
            try:
                reader.read(positions, out)
            except (OSError, RuntimeError) as err:  # name the first item that cannot be read
                for position in positions.tolist():
                    read_item(lambda: reader.read(np.array([position]), out[:1]), self.path, self.key, position)
                raise damaged(err, self.path, self.key, f"items {positions.tolist()}") from None
        return images.unsqueeze(1) if self._add_channel else images

    def _handle(self) -> RowReader:
        """This process's reader (its h5py File, and memory map), opened on first use; each worker gets its own."""
        if self._reader is None or self._pid != os.getpid():
            self._reader = RowReader(self.path, self.key, self._route)
            self._pid = os.getpid()
        return self._reader

    @property
    def _file(self):
        """This process's h5py File, or None before the first read."""
        return self._reader.file if self._reader is not None else None

    def close(self):
        """Close this process's file handle, if open."""
        if self._reader is not None and self._pid == os.getpid():
            self._reader.file.close()
        self._reader = None
        self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_pid"] = None
        return state


def read_item(read, path, key, index):
    """``read()``: one item's values from an HDF5 file; a damaged file is a NenyaError naming the item."""
    try:
        return read()
    except (OSError, RuntimeError) as err:  # h5py: unreadable chunk, truncated file, failed filter
        raise damaged(err, path, key, f"item {index}") from None


def damaged(err: Exception, path, key, what: str) -> NenyaError:
    """The NenyaError of an h5py read error: ``what`` (e.g. ``item 3``) of ``path:key`` cannot be read."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return NenyaError(f"{path}:{key} {what} cannot be read ({reason}); the file is damaged")


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
