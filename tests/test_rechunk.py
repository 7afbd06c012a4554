"""python -m nenya.rechunk: every dataset copied, image datasets rewritten in the asked layout, never overwriting."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import nenya.rechunk as rechunk_module
from nenya.data.hdf5 import HDF5Images
from nenya.rechunk import cli, rechunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def source(tmp_path):
    """A file in an awkward layout: gzip chunks of 5 images, labels, masks, a nested group, a link, attributes."""
    rng = np.random.default_rng(0)
    arrays = {"train": rng.normal(size=(12, 2, 6, 5)).astype(np.float32),
              "train_labels": rng.integers(0, 3, size=12),
              "train_masks": rng.integers(0, 2, size=(12, 6, 5)).astype(np.uint8),
              "extra/volumes": rng.normal(size=(3, 1, 2, 4, 4))}
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.attrs["source"] = "test"
        f.create_dataset("train", data=arrays["train"], chunks=(5, 2, 6, 5), compression="gzip")
        f["train"].attrs["units"] = "counts"
        f.create_dataset("train_labels", data=arrays["train_labels"], compression="gzip")
        f.create_dataset("train_masks", data=arrays["train_masks"], chunks=(1, 3, 5))
        f.create_group("extra").attrs["note"] = "nested"
        f["extra"].create_dataset("volumes", data=arrays["extra/volumes"], chunks=(1, 1, 1, 4, 4))
        f["alias"] = h5py.SoftLink("/train_labels")
    return path, arrays


def assert_same_contents(path, arrays):
    """Every dataset of ``path`` holds the arrays, and the attributes and link came along."""
    with h5py.File(path, "r") as f:
        for key, array in arrays.items():
            np.testing.assert_array_equal(f[key][()], array)
            assert f[key].dtype == array.dtype
        assert f.attrs["source"] == "test" and f["train"].attrs["units"] == "counts"
        assert f["extra"].attrs["note"] == "nested"
        assert f.get("alias", getlink=True).path == "/train_labels"
        np.testing.assert_array_equal(f["alias"][()], arrays["train_labels"])


def test_contiguous_by_default_rewrites_every_image_dataset(source, tmp_path, capsys):
    path, arrays = source
    out = tmp_path / "out.h5"
    assert cli([str(path), str(out)]) == 0
    assert_same_contents(out, arrays)
    with h5py.File(out, "r") as f:
        for key in ("train", "train_masks", "extra/volumes"):
            assert f[key].chunks is None and f[key].compression is None, key
        assert f["train_labels"].compression == "gzip"  # not an image dataset: copied as it was
    printed = capsys.readouterr().out
    assert f"{out}:train contiguous" in printed and f"{out}:extra/volumes contiguous" in printed
    assert HDF5Images(out, "train").read_mode == "memmap"
    assert HDF5Images(path, "train").read_mode == "h5py"
    assert sorted(os.listdir(tmp_path)) == ["in.h5", "out.h5"]  # no temporary left


def test_chunks_of_whole_images_for_the_chosen_keys(source, tmp_path):
    path, arrays = source
    out = tmp_path / "out.h5"
    assert cli([str(path), str(out), "--chunk-images", "4", "--keys", "train", "extra/volumes"]) == 0
    assert_same_contents(out, arrays)
    with h5py.File(out, "r") as f:
        assert f["train"].chunks == (4, 2, 6, 5) and f["train"].compression is None
        assert f["extra/volumes"].chunks == (3, 1, 2, 4, 4)  # fewer images than a chunk: one chunk of them all
        assert f["train_masks"].chunks == (1, 3, 5)  # not asked for: as it was
    assert HDF5Images(out, "train").read_mode in ("memmap", "chunk-map")
    np.testing.assert_array_equal(HDF5Images(out, "train").__getitems__([11, 0, 4]).stacked[0].numpy(),
                                  arrays["train"][[11, 0, 4]])


def test_never_overwrites(source, tmp_path, capsys):
    path, _ = source
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    assert cli([str(path), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nenya: error: ") and "already exists" in err and str(out) in err
    assert out.read_bytes() == b"precious"
    assert cli([str(path), str(path)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert h5py.is_hdf5(path)


@pytest.mark.parametrize("argv, expect", [
    (["{tmp}/missing.h5", "{tmp}/o.h5"], "input file {tmp}/missing.h5 does not exist"),
    (["{tmp}/text.h5", "{tmp}/o.h5"], "{tmp}/text.h5 is not an HDF5 file"),
    (["{tmp}/in.h5", "{tmp}/o.h5", "--keys", "trian"], "has no dataset 'trian' (--keys); its image datasets are: "
                                                       "extra/volumes, train, train_masks"),
    (["{tmp}/in.h5", "{tmp}/o.h5", "--keys", "train_labels"], "train_labels has shape (12,); --keys takes image"),
    (["{tmp}/in.h5", "{tmp}/o.h5", "--chunk-images", "0"], "must be a whole number of at least 1, got '0'"),
    (["{tmp}/in.h5", "{tmp}/o.h5", "--chunk-images", "4", "--contiguous"], "not allowed with argument"),
    (["{tmp}/in.h5", "{tmp}/nowhere/o.h5"], "does not exist; create it first"),
])
def test_bad_input_is_one_line(source, tmp_path, capsys, argv, expect):
    (tmp_path / "text.h5").write_text("not hdf5")
    assert cli([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nenya: error: ")
    assert expect.format(tmp=tmp_path) in err
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.tmp").exists()


def test_a_file_made_meanwhile_at_the_output_path_is_kept(source, tmp_path, monkeypatch, capsys):
    path, _ = source
    out = tmp_path / "out.h5"
    real_copy = rechunk_module.copy_group

    def copy_while_someone_writes_out(*args):
        real_copy(*args)
        out.write_bytes(b"made meanwhile")

    monkeypatch.setattr(rechunk_module, "copy_group", copy_while_someone_writes_out)
    assert cli([str(path), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "appeared while it was being written" in err
    assert out.read_bytes() == b"made meanwhile" and not (tmp_path / "out.h5.tmp").exists()


def test_a_failed_copy_leaves_nothing(source, tmp_path, monkeypatch):
    path, _ = source
    out = tmp_path / "out.h5"

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rechunk_module, "rewrite_dataset", disk_full)
    assert cli([str(path), str(out)]) == 2
    assert not out.exists() and not (tmp_path / "out.h5.tmp").exists()


def test_command_line(source, tmp_path):
    path, arrays = source
    out = tmp_path / "out.h5"
    result = subprocess.run([sys.executable, "-m", "nenya.rechunk", str(path), str(out), "--keys", "train"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{out}:train contiguous"
    assert_same_contents(out, arrays)
    assert rechunk(out, tmp_path / "again.h5", chunk_images=2, progress=False) == {
        "train": (2, 2, 6, 5), "train_masks": (2, 6, 5), "extra/volumes": (2, 1, 2, 4, 4)}
