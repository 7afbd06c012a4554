"""Built-in data sets made locally with no download (``images_file: "builtin:NAME"``), and where a run's data is."""

import os

import numpy as np

from nenya.errors import NenyaError
from nenya.io.atomic import write_h5
from nenya.registry import BUILTIN_DATA, register_builtin

PREFIX = "builtin:"


@register_builtin("digits")
def write_digits_h5(path, valid_fraction=0.2, seed=0):
    """Write scikit-learn's 8x8 digits in Nenya's layout (train/valid, 1 channel, values in [0, 1])."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < valid_fraction < 1.0:
        raise NenyaError(f"valid_fraction={valid_fraction} is invalid; use a fraction strictly between 0 and 1")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    train_x, valid_x, train_y, valid_y = train_test_split(
        images, labels, test_size=valid_fraction, stratify=labels, random_state=seed
    )
    arrays = {"train": train_x, "train_labels": train_y, "valid": valid_x, "valid_labels": valid_y}
    attrs = {
        "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
        "description": "8x8 grey-scale scans of handwritten digits 0-9, divided by 16 to lie in [0, 1]",
        "n_classes": 10,
        "valid_fraction": float(valid_fraction),
        "split_seed": int(seed),
    }
    return write_h5(os.fspath(path), arrays, attrs)


TEXTURE_CLASSES = ("brick", "grass", "gravel", "cell", "moon", "coins", "text", "hubble_deep_field")


@register_builtin("textures")
def write_textures_h5(path, size=16, zoom=2, n_train=100, n_valid=25, valid_fraction=0.3, seed=0):
    """Write grey-scale patches of 8 pictures scikit-image ships (labels: the picture) in Nenya's layout.

    Each picture is scaled to [0, 1] and shrunk by ``zoom`` (block mean); training patches come from its
    left part and validation patches from its right ``valid_fraction``, a half patch apart on each side,
    so no validation patch overlaps a training one. A random network is a weak feature on these
    textures, so the SimCLR demo shows what training adds.
    """
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import downscale_local_mean

    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "valid": ([], [])}
    for label, name in enumerate(TEXTURE_CLASSES):
        image = getattr(skimage.data, name)()
        image = rgb2gray(image[..., :3]) if image.ndim == 3 else image / 255.0
        height, width = (image.shape[0] // zoom) * zoom, (image.shape[1] // zoom) * zoom
        image = downscale_local_mean(image[:height, :width], (zoom, zoom))
        height, width = image.shape
        cut = int(round(width * (1 - valid_fraction)))
        for split, count, (start, stop) in (("train", n_train, (0, cut - size // 2)),
                                            ("valid", n_valid, (cut + size // 2, width))):
            tops = rng.integers(0, height - size + 1, count)
            lefts = rng.integers(start, stop - size + 1, count)
            for top, left in zip(tops, lefts):
                parts[split][0].append(image[top:top + size, left:left + size])
                parts[split][1].append(label)
    arrays = {}
    for split, (images, labels) in parts.items():
        arrays[split] = np.asarray(images, np.float32)[:, None]  # [N, 1, size, size]
        arrays[f"{split}_labels"] = np.asarray(labels, np.int64)
    attrs = {"source": "skimage.data: " + ", ".join(TEXTURE_CLASSES), "n_classes": len(TEXTURE_CLASSES),
             "description": f"{size}x{size} grey-scale patches of each picture shrunk {zoom}x; label = picture; "
                            f"validation patches from the right {valid_fraction:.0%} of each picture",
             "seed": int(seed)}
    return write_h5(os.fspath(path), arrays, attrs)


PHOTO_CLASSES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "china", "flower")


def photo(name: str) -> np.ndarray:
    """One colour picture shipped with scikit-image (or scikit-learn: china, flower) as float32 [H, W, 3] in [0, 1]."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
    return np.asarray(image[..., :3], dtype=np.float32) / 255.0


@register_builtin("photos")
def write_photos_h5(path, size=32, zoom=2, n_train=80, n_valid=30, seed=0):
    """Write RGB patches of 7 colour pictures scikit-image and scikit-learn ship (label: the picture).

    Each picture is shrunk by ``zoom`` (block mean) and cut into a checkerboard of 2 x ``size`` blocks:
    training patches lie inside the "white" blocks and validation patches inside the "black" ones, so no
    validation pixel is ever seen in training, while both come from every part of the picture. Images
    [N, 3, size, size] in [0, 1]; ``class_names`` in the file's attributes.
    """
    from skimage.transform import downscale_local_mean

    rng = np.random.default_rng(seed)
    block = 2 * size
    parts = {"train": ([], []), "valid": ([], [])}
    for label, name in enumerate(PHOTO_CLASSES):
        image = photo(name)
        height, width = (image.shape[0] // zoom) * zoom, (image.shape[1] // zoom) * zoom
        image = downscale_local_mean(image[:height, :width], (zoom, zoom, 1))  # [H, W, 3]
        rows, columns = image.shape[0] // block, image.shape[1] // block
        cells = [(r, c) for r in range(rows) for c in range(columns)]
        for split, count, parity in (("train", n_train, 0), ("valid", n_valid, 1)):
            mine = [cell for cell in cells if (cell[0] + cell[1]) % 2 == parity]
            picks = rng.integers(0, len(mine), count)
            offsets = rng.integers(0, block - size + 1, (count, 2))
            for pick, (dy, dx) in zip(picks, offsets):
                top, left = mine[pick][0] * block + dy, mine[pick][1] * block + dx
                parts[split][0].append(image[top:top + size, left:left + size].transpose(2, 0, 1))
                parts[split][1].append(label)
    arrays = {}
    for split, (images, labels) in parts.items():
        arrays[split] = np.asarray(images, np.float32)  # [N, 3, size, size]
        arrays[f"{split}_labels"] = np.asarray(labels, np.int64)
    attrs = {"source": "skimage.data and sklearn.datasets.load_sample_image: " + ", ".join(PHOTO_CLASSES),
             "n_classes": len(PHOTO_CLASSES), "class_names": ",".join(PHOTO_CLASSES),
             "description": f"{size}x{size} RGB patches of each picture shrunk {zoom}x; label = picture; training "
                            f"and validation patches from alternate {block}x{block} blocks (a checkerboard)",
             "seed": int(seed)}
    return write_h5(os.fspath(path), arrays, attrs)


def resolve_builtin(images_file, data_folder):
    """Return the local file for a "builtin:<name>" images_file (made on first use), or None otherwise."""
    if not images_file.startswith(PREFIX):
        return None
    name = images_file[len(PREFIX):].strip()
    writer = BUILTIN_DATA.get(name)
    if writer is None:
        known = ", ".join(f"{PREFIX}{key}" for key in sorted(BUILTIN_DATA))
        raise NenyaError(f"images_file={images_file} is not a built-in data set; known ones: {known}")
    path = os.path.join(data_folder, f"nenya_{name}.h5")
    if not os.path.exists(path):
        if data_folder:
            os.makedirs(data_folder, exist_ok=True)
        writer(path)
    return path


def images_path(opt) -> str:
    """The HDF5 file the options point to; a NenyaError when it is not given or does not exist."""
    if not opt.images_file:
        raise NenyaError(f"option 'images_file' is required for {opt.method}: an HDF5 file under "
                         f"data_folder, or builtin:digits")
    builtin = resolve_builtin(opt.images_file, opt.data_folder)
    if builtin is not None:
        return builtin
    path = os.path.join(opt.data_folder, opt.images_file)
    if not os.path.isfile(path):
        raise NenyaError(f"images_file {path} does not exist (option 'images_file' under data_folder "
                         f"'{opt.data_folder}')")
    return path
