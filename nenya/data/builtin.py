"""Built-in data sets that are made locally, with no download."""

import os

import h5py
import numpy as np

from nenya.atomic import atomic_path
from nenya.data.synthetic import write_hyperspectral_h5
from nenya.errors import NenyaError

PREFIX = "builtin:"


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
    _write_atomically(os.fspath(path), arrays, attrs)
    return os.fspath(path)


def _write_atomically(path, arrays, attrs):
    """Write datasets and file attributes to a temporary file beside `path`, then move it into place."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
        f.attrs.update(attrs)


BUILTIN_DATASETS = {"digits": write_digits_h5, "hyperspectral": write_hyperspectral_h5}


def resolve_builtin(images_file, data_folder):
    """Return the local file for a "builtin:<name>" images_file (made on first use), or None otherwise."""
    if not images_file.startswith(PREFIX):
        return None
    name = images_file[len(PREFIX):].strip()
    writer = BUILTIN_DATASETS.get(name)
    if writer is None:
        known = ", ".join(f"{PREFIX}{key}" for key in sorted(BUILTIN_DATASETS))
        raise NenyaError(f"images_file={images_file} is not a built-in data set; known ones: {known}")
    path = os.path.join(data_folder, f"nenya_{name}.h5")
    if not os.path.exists(path):
        if data_folder:
            os.makedirs(data_folder, exist_ok=True)
        writer(path)
    return path
