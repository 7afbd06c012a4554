"""Images with integer masks in Nenya's HDF5 layout, for segmentation: ``{key}`` and ``{key}_masks``.

Images are (N, C, H, W) or (N, C, D, H, W) (without the channel axis when the images have the
masks' rank: one channel); masks are (N, H, W) or (N, D, H, W) of label values 0 .. K - 1. Items
are ``(image float32 ``[C, *S]``, mask int64 ``[*S]``, index)``; ``rows`` picks the file's rows (a split
manifest), ``target_label`` turns the mask into ``mask == target_label`` (binary mode), and
``augment`` (:class:`nenya.data.segment_augment.SegmentAugment`) is seeded per (seed, epoch, index).
"""

import json
import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from nenya.data.batch_transforms import derive_seed
from nenya.data.segment_augment import PROBABILITIES, SegmentAugment
from nenya.errors import NenyaError


def _open(path: str) -> h5py.File:
    """The HDF5 file at ``path`` opened for reading; a NenyaError when it is not one."""
    if not os.path.isfile(path):
        raise NenyaError(f"images file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise NenyaError(f"{path} is not a readable HDF5 file ({err})") from None


def describe(path: str, key: str, option: str = "train_key") -> dict:
    """Geometry of ``key`` and ``{key}_masks`` in ``path``: rows, channels, spatial shape, class names attribute."""
    with _open(path) as f:
        images, masks = f.get(key), f.get(f"{key}_masks")
        if not isinstance(images, h5py.Dataset):
            raise NenyaError(f"{path} has no dataset '{key}' ({option}); it has: {', '.join(sorted(f)) or 'none'}")
        if not isinstance(masks, h5py.Dataset):
            raise NenyaError(f"{path} has no dataset '{key}_masks' ({option} + '_masks'): segmentation needs an "
                             f"integer mask per image, shape (N, H, W) or (N, D, H, W)")
        if masks.ndim not in (3, 4) or images.ndim not in (masks.ndim, masks.ndim + 1) \
                or images.shape[0] != masks.shape[0] or images.shape[-(masks.ndim - 1):] != masks.shape[1:]:
            raise NenyaError(f"{path}:{key}_masks has shape {masks.shape} but {key} has shape {images.shape}; "
                             f"expected masks (N, H, W) for images (N, C, H, W), or (N, D, H, W) for "
                             f"(N, C, D, H, W): one mask per image, of the image's size")
        if masks.dtype.kind not in "iub":
            raise NenyaError(f"{path}:{key}_masks holds {masks.dtype} values; masks must be integer label values")
        names = f.attrs.get("class_names")
        return {"rows": int(images.shape[0]), "spatial": tuple(int(n) for n in masks.shape[1:]),
                "channels": 1 if images.ndim == masks.ndim else int(images.shape[1]),
                "class_names": str(names.decode() if isinstance(names, bytes) else names).split(",")
                if names is not None else None}


def label_counts(path: str, key: str, rows=None, chunk: int = 16) -> np.ndarray:
    """Pixels per label value of ``{key}_masks`` (only ``rows`` when given), read ``chunk`` masks at a time."""
    counts = np.zeros(1, np.int64)
    with _open(path) as f:
        masks = f[f"{key}_masks"]
        rows = np.arange(masks.shape[0]) if rows is None else np.sort(np.asarray(rows, np.int64))
        for start in range(0, len(rows), chunk):
            part = masks[rows[start:start + chunk]] if len(rows) < masks.shape[0] else masks[start:start + chunk]
            if part.size and part.min() < 0:
                raise NenyaError(f"{path}:{key}_masks holds negative label values ({part.min()}); labels are "
                                 f"0 (background), 1, 2, ...")
            found = np.bincount(part.ravel().astype(np.int64))
            counts = np.pad(counts, (0, max(len(found) - len(counts), 0)))
            counts[:len(found)] += found
    return counts


def read_manifest(path: str, data_path: str, key: str) -> dict:
    """The train and valid rows of a :mod:`nenya.split` manifest; a NenyaError when it does not fit the data."""
    if not os.path.isfile(path):
        raise NenyaError(f"split_manifest {path} does not exist; write one with: python -m nenya.split "
                         f"{data_path} --key {key}")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
        rows = {split: [int(i) for i in manifest[split]] for split in ("train", "valid")}
    except (ValueError, KeyError, TypeError) as err:
        raise NenyaError(f"split_manifest {path} is not a nenya.split manifest ({err}); it needs 'train' and "
                         f"'valid' lists of row numbers") from None
    if manifest.get("key", key) != key:
        raise NenyaError(f"split_manifest {path} splits dataset '{manifest['key']}' but train_key is '{key}'")
    return rows


class SegmentationSet(Dataset):
    """Items (image ``[C, *S]``, mask ``[*S]``, index) of ``key`` in ``path``, read lazily (one handle per process)."""

    def __init__(self, path: str, key: str, rows=None, augment=None, seed: int = 0, target_label: int | None = None):
        self.path, self.key, self.augment, self.seed, self.target_label = path, key, augment, seed, target_label
        info = describe(path, key)
        self.spatial, self.channels = info["spatial"], info["channels"]
        self.rows = np.arange(info["rows"]) if rows is None else np.asarray(rows, np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= info["rows"]):
            raise NenyaError(f"row {int(self.rows.max())} is out of range for {path}:{key} ({info['rows']} images)")
        self.epoch = 0  # set by the method before each training epoch: augmentation draws from (seed, epoch, index)
        self._file, self._pid = None, None

    def __len__(self):
        return len(self.rows)

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image ``[C, *S]`` float32, mask ``[*S]`` int64) of item ``index``, as stored."""
        f, row = self._handle(), int(self.rows[index])
        image = np.asarray(f[self.key][row], np.float32)
        mask = np.asarray(f[f"{self.key}_masks"][row]).astype(np.int64)
        return (image[None] if image.ndim == mask.ndim else image), mask

    def __getitem__(self, index):
        image, mask = self.read(int(index))
        image, mask = torch.from_numpy(image), torch.from_numpy(mask)  # [C, *S], [*S]
        if self.target_label is not None:
            mask = (mask == self.target_label).long()
        if self.augment:
            image, mask = self.augment(image, mask, derive_seed(self.seed, self.epoch, int(index)))
        return image, mask, torch.tensor(int(index))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state


def manifest_rows(opt, path: str) -> tuple:
    """(train rows, valid rows) of the ``split_manifest`` option (relative to data_folder), or (None, None)."""
    if not opt.split_manifest:
        return None, None
    manifest = opt.split_manifest if os.path.isabs(opt.split_manifest) else \
        os.path.join(opt.data_folder, opt.split_manifest)
    rows = read_manifest(manifest, path, opt.train_key)
    return rows["train"], rows["valid"]


def derive_options(opt, path: str) -> None:
    """Fill spatial_dims, num_classes, class_names and "auto" class_weights / pos_weight from the training data.

    num_classes: 1 (binary, one sigmoid logit) for masks with values 0/1 or a ``target_label``, else
    the largest label value + 1. Auto weights: N / (K n_c) per class, pos_weight n_0 / n_1.
    """
    info = describe(path, opt.train_key, "train_key")
    opt.spatial_dims = opt.spatial_dims or len(info["spatial"])
    counts = label_counts(path, opt.train_key, manifest_rows(opt, path)[0])
    label = opt.target_label
    if label is not None:
        if label >= len(counts) or counts[label] == 0:
            raise NenyaError(f"target_label={label} does not occur in {path}:{opt.train_key}_masks (label values "
                             f"present: {[int(v) for v in np.flatnonzero(counts)]})")
        counts = np.array([counts.sum() - counts[label], counts[label]])
    if opt.num_classes is None:
        opt.num_classes = 1 if len(counts) <= 2 else len(counts)
    if opt.class_names is None and info["class_names"]:
        opt.class_names = info["class_names"]
    counts = np.pad(counts, (0, max(max(opt.num_classes, 2) - len(counts), 0)))
    if opt.class_weights == "auto":
        opt.class_weights = (counts.sum() / (len(counts) * np.maximum(counts, 1))).tolist()
    if opt.pos_weight == "auto":
        opt.pos_weight = float(counts[0] / max(counts[1], 1))


def checked_set(opt, path: str, key: str, rows=None, augment: bool = False, option: str = "train_key"):
    """A SegmentationSet of ``key`` (``rows``) whose channels, dimensions and label values fit the options."""
    info = describe(path, key, option)
    where = f"{path}:{key}"
    if info["channels"] != opt.nchannels:
        raise NenyaError(f"nchannels={opt.nchannels} but {where} has {info['channels']} channel(s) per image")
    if len(info["spatial"]) != opt.spatial_dims:
        raise NenyaError(f"{where} holds {len(info['spatial'])}-D images but spatial_dims is {opt.spatial_dims}")
    counts = label_counts(path, key, rows)
    if opt.target_label is None and len(counts) > max(opt.num_classes, 2):
        raise NenyaError(f"{where}_masks holds label value {len(counts) - 1}, which needs num_classes >= "
                         f"{len(counts)} (num_classes={opt.num_classes}; 1 means binary masks 0/1)")
    probabilities = {name: getattr(opt, name) for name in PROBABILITIES}
    aug = SegmentAugment(info["spatial"], probabilities, opt.rotation_degrees) if augment else None
    return SegmentationSet(path, key, rows, aug, opt.seed, opt.target_label)
