"""Image folders: one subfolder per class, a stratified train/validation split drawn from a seed.

::

    images/            (images_file, under data_folder)
      healthy/  a.png  b.jpg ...
      rust/     c.tif  d.npy ...

Classes are the subfolders in sorted order (label k = k-th name). Files are read with Pillow (PNG, JPEG,
TIFF; every page of a multi-page TIFF is one more channel, for extra bands) or numpy (``.npy``: [H, W], [C, H, W],
or [H, W, C] when C <= 4 is the smallest axis). Integer pixels are divided by their type's maximum (255 for 8-bit,
65535 for 16-bit) so values lie in [0, 1]; float pixels are kept. Every image must have the same
channels and size as the first one (resize them beforehand). Items are (image float32 [C, H, W],
label, index), as the HDF5 data sets give them.
"""

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from nenya.data.builtin import PREFIX, resolve_builtin
from nenya.errors import NenyaError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")


def list_images(root: str) -> tuple[list[str], list[int], list[str]]:
    """(file paths, labels, class names) of an image folder; a NenyaError when it holds no class or image."""
    if not os.path.isdir(root):
        raise NenyaError(f"image folder {root} does not exist")
    classes = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name))
                     and not name.startswith("."))
    if not classes:
        raise NenyaError(f"image folder {root} has no class subfolders; put each class's images in "
                         f"{root}/CLASS_NAME/")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.lower().endswith(EXTENSIONS))
        if not files:
            raise NenyaError(f"class folder {os.path.join(root, name)} holds no images "
                             f"({', '.join(EXTENSIONS)})")
        paths += [os.path.join(root, name, f) for f in files]
        labels += [label] * len(files)
    return paths, labels, classes


def stratified_split(labels, valid_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train positions, valid positions): round(fraction x count) of each class (at least 1 when it has 2) to valid."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(valid_fraction * len(members)))
        count = min(max(count, 1 if len(members) >= 2 else 0), len(members) - 1)
        valid += members[:count].tolist()
        train += members[count:].tolist()
    return sorted(train), sorted(valid)


def read_image(path: str) -> np.ndarray:
    """One image file as float32 [C, H, W] (integers scaled to [0, 1]); a NenyaError when it cannot be read."""
    try:
        if path.lower().endswith(".npy"):
            array = np.load(path, allow_pickle=False)
            if array.ndim == 3 and array.shape[-1] <= 4 and array.shape[-1] < min(array.shape[:2]):  # [H, W, C]
                array = array.transpose(2, 0, 1)
        else:
            from PIL import Image, ImageSequence

            with Image.open(path) as image:
                pages = [np.asarray(page) for page in ImageSequence.Iterator(image)]
            pages = [page.transpose(2, 0, 1) if page.ndim == 3 else page[None] for page in pages]
            array = np.concatenate(pages) if len(pages) > 1 else pages[0]
    except (OSError, ValueError) as err:
        raise NenyaError(f"image {path} cannot be read ({err})") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise NenyaError(f"image {path} has shape {array.shape}; expected [H, W], [H, W, C] or [C, H, W]")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return (array / np.iinfo(array.dtype).max).astype(np.float32)
    return array.astype(np.float32)


class ImageFolder(Dataset):
    """The ``split`` ("train", "valid" or "all") of an image folder; items (image [C, H, W], label, index)."""

    def __init__(self, root: str, split: str = "all", valid_fraction: float = 0.2, seed: int = 0):
        self.path, self.split = os.fspath(root), split
        paths, labels, self.class_names = list_images(self.path)
        if split == "all":
            keep = list(range(len(paths)))
        else:
            train, valid = stratified_split(labels, valid_fraction, seed)
            keep = train if split == "train" else valid
        self.files = [paths[i] for i in keep]
        self._labels = np.asarray([labels[i] for i in keep], dtype=np.int64)
        first = read_image(paths[0])
        self.image_shape = first.shape
        self.stored_shape = (len(self.files), *first.shape)
        self.key = split

    @property
    def labels(self) -> np.ndarray:
        """Labels [N] (int64)."""
        return self._labels

    has_labels = True

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        image = read_image(self.files[index])
        if image.shape != self.image_shape:
            raise NenyaError(f"image {self.files[index]} has shape {list(image.shape)} (C, H, W) but the folder's "
                             f"first image has {list(self.image_shape)}; every image must have the same channels "
                             f"and size")
        return torch.from_numpy(image), torch.tensor(int(self._labels[index])), torch.tensor(index)


def data_path(opt) -> str:
    """The images the options name: a built-in set, an HDF5 file or an image folder under data_folder."""
    if not opt.images_file:
        raise NenyaError("option 'images_file' is required for classify: an HDF5 file with {key}_labels, a folder "
                         "of class subfolders (under data_folder), or builtin:photos")
    if opt.images_file.startswith(PREFIX):
        return resolve_builtin(opt.images_file, opt.data_folder)
    path = os.path.join(opt.data_folder, opt.images_file)
    if not os.path.exists(path):
        raise NenyaError(f"images_file {path} does not exist (option 'images_file' under data_folder "
                         f"'{opt.data_folder}'): give an HDF5 file or a folder with one subfolder per class")
    return path
