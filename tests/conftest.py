"""Shared fixtures: small HDF5 files in Nenya's layout and opts files that point to them."""

import json

import h5py
import numpy as np
import pytest


def write_images_h5(path, n_train=48, n_valid=24, channels=1, size=8, labels=True, seed=0):
    """A small random image file with train/valid partitions (and labels)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        for key, count in (("train", n_train), ("valid", n_valid)):
            handle[key] = rng.random((count, channels, size, size), dtype=np.float32)
            if labels:
                handle[f"{key}_labels"] = rng.integers(0, 3, count)
    return path


def write_opts(path, **values):
    """Write an opts file and return its path."""
    path.write_text(json.dumps(values))
    return str(path)


@pytest.fixture
def tiny_run(tmp_path):
    """(opts path, run folder) of a tiny SimCLR run on random 8x8 images."""
    write_images_h5(tmp_path / "images.h5")
    opts = write_opts(tmp_path / "opts.json", ssl_method="SimCLR", ssl_model="resnet18", nchannels=1,
                      images_file="images.h5", data_folder=str(tmp_path), model_root=str(tmp_path / "models"),
                      model_name="tiny", batch_size_train=16, batch_size_valid=24, epochs=3, feat_dim=16,
                      learning_rate=0.05, cosine=True, random_cropjitter=[6, 1], flip=True, gauss_noise=0.05,
                      save_freq=2, valid_freq=1, print_freq=1, knn_k=3)
    return opts, tmp_path / "models" / "tiny"
