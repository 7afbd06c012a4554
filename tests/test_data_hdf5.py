"""Tests for the HDF5 dataset and the built-in digits data."""

import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nenya.data.builtin import resolve_builtin, write_digits_h5
from nenya.data.hdf5 import HDF5Images, check_channels
from nenya.errors import NenyaError


def write_h5(path, **arrays):
    """Write the given arrays as top-level datasets and return the path."""
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
    return path


@pytest.fixture
def cutouts(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 3, 5, 4)).astype(np.float64)
    labels = np.array([0, 1, 2, 0, 1, 2])
    path = write_h5(tmp_path / "cutouts.h5", train=images, train_labels=labels, valid=images[:2])
    return path, images, labels


def test_reads_items_with_labels(cutouts):
    path, images, labels = cutouts
    ds = HDF5Images(path, "train")
    assert len(ds) == 6
    assert ds.has_labels and ds.image_shape == (3, 5, 4)
    np.testing.assert_array_equal(ds.labels, labels)
    image, label, index = ds[4]
    assert image.dtype == torch.float32 and image.shape == (3, 5, 4)
    assert label.dtype == torch.int64 and label.ndim == 0 and label.item() == 1
    assert index.dtype == torch.int64 and index.ndim == 0 and index.item() == 4
    np.testing.assert_allclose(image.numpy(), images[4].astype(np.float32))
    torch.testing.assert_close(ds[-1][0], ds[5][0])
    assert ds[-1][2].item() == 5  # the position in the data set, not the index asked for
    with pytest.raises(IndexError):
        ds[6]


def test_no_labels_gives_minus_one(cutouts):
    path, images, _ = cutouts
    ds = HDF5Images(path, "valid")
    assert not ds.has_labels and ds.labels is None
    assert ds[1][1].item() == -1 and ds[1][1].dtype == torch.int64


def test_three_dim_images_get_one_channel(tmp_path):
    path = write_h5(tmp_path / "gray.h5", train=np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8))
    ds = HDF5Images(path, "train")
    assert ds.image_shape == (1, 8, 8)
    image = ds[1][0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert image[0, 0, 0].item() == 64.0


def test_volumes_keep_depth(tmp_path):
    path = write_h5(tmp_path / "vol.h5", train=np.zeros((2, 2, 3, 4, 5), np.float32))
    ds = HDF5Images(path, "train")
    assert ds.image_shape == (2, 3, 4, 5) and ds[0][0].shape == (2, 3, 4, 5)


def test_transform_is_applied(cutouts):
    path, images, _ = cutouts
    ds = HDF5Images(path, "train", transform=lambda x: x * 2)
    np.testing.assert_allclose(ds[0][0].numpy(), 2 * images[0].astype(np.float32), rtol=1e-6)


def test_lazy_handle_and_pickling(cutouts):
    path, _, _ = cutouts
    ds = HDF5Images(path, "train")
    assert ds._file is None
    ds[0]
    assert ds._file is not None and ds._pid == os.getpid()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    torch.testing.assert_close(clone[2][0], ds[2][0])
    ds.close()


def test_reopens_when_process_changes(cutouts):
    path, _, _ = cutouts
    ds = HDF5Images(path, "train")
    ds[0]
    first = ds._file
    ds._pid = -1  # as if this object had been forked into a DataLoader worker
    ds[0]
    assert ds._file is not first and ds._pid == os.getpid()


def test_dataloader_workers_after_parent_use(cutouts):
    path, images, labels = cutouts
    ds = HDF5Images(path, "train")
    ds[0]
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    got = torch.cat([b[0] for b in batches])
    np.testing.assert_allclose(got.numpy(), images.astype(np.float32))
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), labels)


def test_preload_gives_identical_items(cutouts):
    path, _, _ = cutouts
    lazy, loaded = HDF5Images(path, "train"), HDF5Images(path, "train", preload=True)
    assert loaded._file is None
    for i in range(len(lazy)):
        torch.testing.assert_close(lazy[i], loaded[i], rtol=0, atol=0)


def test_preload_items_do_not_alias_memory(cutouts):
    path, _, _ = cutouts
    ds = HDF5Images(path, "train", preload=True)
    ds[0][0].add_(100.0)
    assert ds[0][0].abs().max().item() < 50


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(NenyaError, match="nope.h5"):
        HDF5Images(missing, "train")


def test_not_hdf5_file(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("hello")
    with pytest.raises(NenyaError, match="bad.h5.*HDF5"):
        HDF5Images(bad, "train")


def test_missing_key_lists_keys(cutouts):
    path, _, _ = cutouts
    with pytest.raises(NenyaError) as err:
        HDF5Images(path, "trian", key_option="train_key")
    message = str(err.value)
    assert "cutouts.h5" in message and "'trian' (train_key)" in message
    assert message.endswith("it has: train, train_labels, valid")
    assert "\n" not in message


def test_unsupported_rank(tmp_path):
    path = write_h5(tmp_path / "flat.h5", train=np.zeros((4, 64)))
    with pytest.raises(NenyaError, match=r"flat.h5:train has shape \(4, 64\)"):
        HDF5Images(path, "train")


def test_label_length_mismatch(tmp_path):
    path = write_h5(tmp_path / "l.h5", train=np.zeros((4, 1, 2, 2)), train_labels=np.arange(3))
    with pytest.raises(NenyaError, match=r"train_labels.*\(4,\)"):
        HDF5Images(path, "train")


def test_check_channels(tmp_path):
    path = write_h5(tmp_path / "gray.h5", train=np.zeros((5, 1, 8, 8)))
    ds = HDF5Images(path, "train")
    check_channels(ds, 1)
    with pytest.raises(NenyaError) as err:
        check_channels(ds, 3)
    assert str(err.value) == f"nchannels=3 but {path}:train has 1 channel per image (shape (5, 1, 8, 8))"
    with pytest.raises(NenyaError, match="in_channels=2"):
        check_channels(ds, 2, option="in_channels")


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    return write_digits_h5(tmp_path_factory.mktemp("digits") / "d.h5")


def test_digits_layout(digits_file):
    with h5py.File(digits_file, "r") as f:
        assert set(f.keys()) == {"train", "train_labels", "valid", "valid_labels"}
        train, valid = f["train"][()], f["valid"][()]
        train_y, valid_y = f["train_labels"][()], f["valid_labels"][()]
        assert "load_digits" in f.attrs["source"]
    assert train.shape[1:] == (1, 8, 8) and valid.shape[1:] == (1, 8, 8)
    assert train.dtype == np.float32 and train_y.dtype == np.int64
    assert len(train) + len(valid) == 1797 and len(valid) == pytest.approx(0.2 * 1797, abs=1)
    assert set(train_y) == set(valid_y) == set(range(10))
    assert 0.0 <= train.min() and train.max() <= 1.0 and train.max() == 1.0
    train_share = np.bincount(train_y) / len(train_y)
    valid_share = np.bincount(valid_y) / len(valid_y)
    np.testing.assert_allclose(train_share, valid_share, atol=0.01)
    assert not [p for p in os.listdir(os.path.dirname(digits_file)) if p.endswith(".tmp")]


def test_digits_readable_as_dataset(digits_file):
    ds = HDF5Images(digits_file, "valid")
    assert ds.image_shape == (1, 8, 8) and ds.has_labels


def test_resolve_builtin_creates_once(tmp_path):
    folder = tmp_path / "data" / "nested"
    path = resolve_builtin("builtin:digits", str(folder))
    assert path == os.path.join(str(folder), "nenya_digits.h5") and os.path.isfile(path)
    stamp = os.stat(path).st_mtime_ns
    assert resolve_builtin("builtin:digits", str(folder)) == path
    assert os.stat(path).st_mtime_ns == stamp


def test_resolve_builtin_ignores_normal_files(tmp_path):
    assert resolve_builtin("cutouts.h5", str(tmp_path)) is None
    assert not os.listdir(tmp_path)


def test_resolve_unknown_builtin(tmp_path):
    with pytest.raises(NenyaError, match="builtin:mnist.*known ones: builtin:digits"):
        resolve_builtin("builtin:mnist", str(tmp_path))
