"""A lazily read image dataset stored in Nenya's HDF5 layout, read a batch at a time.

Items are ``(image, label, index)``: the index is the item's position in the data set (an int64 0-dim
tensor), so that a training loop can seed per-sample randomness by it and drop the repeats a distributed
sampler pads with. A DataLoader asks :meth:`HDF5Images.__getitems__` for a whole batch; it reads the batch
with few calls (see :mod:`nenya.data.hdf5_rows`) straight into one stacked tensor and returns it as an
:class:`ItemBatch`, which :func:`collate` (``make_loader``'s ``collate_fn``) hands on without a copy.
"""

import math
import os
from collections.abc import Sequence

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


class ItemBatch(Sequence):
    """The items ``(image, label, index)`` of one batch, kept stacked (``stacked``: images [B, ...], labels [B],
    indices [B]); an item is made (as views) only when asked for, which costs more than reading it."""

    def __init__(self, *stacked: torch.Tensor):
        self.stacked = stacked

    def __len__(self):
        return len(self.stacked[0])

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        return tuple(tensor[position] for tensor in self.stacked)

    def __iter__(self):
        return zip(*(tensor.unbind(0) for tensor in self.stacked))


def collate(items):
    """A DataLoader ``collate_fn``: an :class:`ItemBatch`'s stacked tensors as they are, else ``default_collate``."""
    if isinstance(items, ItemBatch):
        return list(items.stacked)
    return default_collate(items)


def batch_tensors(count: int, image_shape, shared: bool = True) -> tuple:
    """Uninitialised (images float32 ``[B, *image_shape]``, labels int64 [B], indices int64 [B]) in one block of
    memory; in a DataLoader worker (and ``shared``) shared memory, so sending the batch on sends one block."""
    image_bytes = -(-count * math.prod(image_shape) * 4 // 8) * 8  # rounded up to whole int64s
    nbytes = image_bytes + 2 * 8 * count
    if shared and get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(nbytes)  # what default_collate does for its output
    else:  # numpy's allocation: torch's asks for huge pages above 2 MiB, which made large batches 2x slower here
        storage = torch.from_numpy(np.empty(nbytes, np.uint8)).untyped_storage()
    images = torch.empty(0, dtype=torch.float32).set_(storage, 0, (count, *image_shape))
    numbers = torch.empty(0, dtype=torch.int64).set_(storage, image_bytes // 8, (2, count))
    return images, numbers[0], numbers[1]


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
        images, labels, indices = self._read(np.array([index]), shared=False)
        image = images[0]  # [C, H, W] or [C, D, H, W]
        if self.transform is not None:
            image = self.transform(image)
        return image, labels[0].clone(), indices[0].clone()

    def __getitems__(self, indices):
        """The items at ``indices`` (any order, repeats allowed), read as one batch.

        Without a transform an :class:`ItemBatch` (the batch stacked: images [B, C, ...], labels [B], indices
        [B]); with one, a list of items, each image transformed on its own as :meth:`__getitem__` does.
        """
        positions = checked_indices(indices, len(self), "images")
        images, labels, index = self._read(positions, shared=self.transform is None)  # images [B, C, H, W] ...
        if self.transform is not None:
            return [(self.transform(image), label, i) for image, label, i in ItemBatch(images, labels, index)]
        return ItemBatch(images, labels, index)

    def _read(self, positions: np.ndarray, shared: bool) -> tuple:
        """(images float32 ``[B, *image_shape]``, labels [B], indices [B]) of the items at ``positions``."""
        images, labels, index = batch_tensors(len(positions), self.stored_shape[1:], shared=shared)
        index.numpy()[:] = positions
        if self._labels is not None:
            np.take(self._labels, positions, out=labels.numpy())
        else:
            labels.fill_(-1)
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
        return (images.unsqueeze(1) if self._add_channel else images), labels, index

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
