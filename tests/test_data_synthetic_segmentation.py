"""Built-in synthetic segmentation data: layout, shapes, dtypes, label values, determinism, visibility."""

import os

import h5py
import numpy as np
import pytest

from nenya.data.builtin import resolve_builtin
from nenya.data.synthetic_segmentation import write_segment2d_h5, write_segment3d_h5
from nenya.errors import NenyaError
from nenya.registry import BUILTIN_DATA

SMALL = dict(n_train=6, n_valid=3, n_test=2)


def read(path) -> dict:
    """Every dataset of an HDF5 file as numpy arrays."""
    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle}


@pytest.mark.parametrize("writer, image_shape, labels", [
    (write_segment2d_h5, (2, 64, 64), {0, 1}),
    (write_segment3d_h5, (1, 32, 32, 32), {0, 1, 2}),
])
def test_layout_shapes_dtypes_and_label_values(tmp_path, writer, image_shape, labels):
    data = read(writer(tmp_path / "seg.h5", **SMALL))
    assert sorted(data) == ["test", "test_masks", "train", "train_masks", "valid", "valid_masks"]
    for key, count in (("train", 6), ("valid", 3), ("test", 2)):
        assert data[key].shape == (count, *image_shape) and data[key].dtype == np.float32
        masks = data[f"{key}_masks"]
        assert masks.shape == (count, *image_shape[1:]) and np.issubdtype(masks.dtype, np.integer)
        assert set(np.unique(masks)) <= labels
    every = np.concatenate([data["train_masks"], data["valid_masks"]])
    for image_masks in every:  # every image holds every label
        assert set(np.unique(image_masks)) == labels
    assert not os.path.exists(tmp_path / "seg.h5.tmp")


def test_tumours_lie_inside_the_organ(tmp_path):
    masks = read(write_segment3d_h5(tmp_path / "seg.h5", **SMALL))["train_masks"]
    from scipy import ndimage

    for labels in masks:  # the tumour touches no background voxel
        assert not (ndimage.binary_dilation(labels == 2) & (labels == 0)).any()


@pytest.mark.parametrize("writer", [write_segment2d_h5, write_segment3d_h5])
def test_same_seed_same_data_other_seed_other_data_and_splits_independent(tmp_path, writer):
    first = read(writer(tmp_path / "a.h5", **SMALL))
    again = read(writer(tmp_path / "b.h5", **SMALL))
    other = read(writer(tmp_path / "c.h5", seed=1, **SMALL))
    more_valid = read(writer(tmp_path / "d.h5", n_train=6, n_valid=5, n_test=2))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["train"], other["train"])
    np.testing.assert_array_equal(first["train"], more_valid["train"])
    np.testing.assert_array_equal(first["valid"], more_valid["valid"][:3])
    assert not np.array_equal(first["train"][:3], first["valid"])


@pytest.mark.parametrize("writer, channel", [(write_segment2d_h5, 0), (write_segment3d_h5, 0)])
def test_structures_stand_out_from_the_background(tmp_path, writer, channel):
    data = read(writer(tmp_path / "seg.h5", **SMALL))
    images, masks = data["train"][:, channel], data["train_masks"]
    labels = np.unique(masks)
    means = [images[masks == label].mean() for label in labels]
    noise = np.std(images[masks == 0] - images[masks == 0].mean())
    for a, b in zip(means, means[1:]):  # every class differs from the one before by over twice the spread
        assert abs(a - b) > 2 * noise


def test_defaults_are_small_and_registered(tmp_path):
    assert BUILTIN_DATA["segment2d"] is write_segment2d_h5 and BUILTIN_DATA["segment3d"] is write_segment3d_h5
    path = resolve_builtin("builtin:segment2d", str(tmp_path))
    assert path == str(tmp_path / "nenya_segment2d.h5") and os.path.getsize(path) < 8e6
    with h5py.File(path, "r") as handle:
        assert handle["train"].shape == (96, 2, 64, 64) and handle["valid"].shape == (32, 2, 64, 64)


def test_bad_counts_are_one_line_errors(tmp_path):
    with pytest.raises(NenyaError, match="n_valid=0"):
        write_segment3d_h5(tmp_path / "x.h5", n_valid=0)
    assert not os.path.exists(tmp_path / "x.h5")
