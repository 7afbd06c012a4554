"""Synthetic hyperspectral data, CSV-listed cubes, per-band statistics and cube augmentations."""

import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from nenya.data import band_stats
from nenya.data.band_stats import BandNormalize, band_statistics, default_stats_path, load_or_compute_band_stats
from nenya.data.builtin import resolve_builtin
from nenya.data.cubes import CubeCSV
from nenya.data.hdf5 import HDF5Images, check_channels
from nenya.data.transforms import Compose, CubeRandomCrop, CubeRot90, RandomFlip, build_cube_augmentation
from nenya.data.synthetic import abundance_maps, make_hyperspectral, write_hyperspectral_h5
from nenya.errors import NenyaError


def pixel_band_energy(cubes, rank):
    """Share of the pixel x band matrix's energy in its top `rank` singular values."""
    matrix = cubes.transpose(0, 2, 3, 1).reshape(-1, cubes.shape[1]).astype(np.float64)
    values = np.linalg.svd(matrix, compute_uv=False)
    return (values[:rank] ** 2).sum() / (values ** 2).sum()


# Synthetic data


def test_cubes_shape_dtype_range():
    cubes = make_hyperspectral(5, bands=12, size=16)
    assert cubes.shape == (5, 12, 16, 16) and cubes.dtype == np.float32
    assert cubes.min() >= 0.0 and cubes.max() <= 1.0 and cubes.std() > 0.01


def test_abundances_sum_to_one():
    maps = abundance_maps(3, 4, 16, seed=1)
    assert maps.shape == (3, 4, 16, 16) and maps.min() > 0
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-5)


def test_shared_spectra_make_data_low_rank():
    clean = make_hyperspectral(4, bands=20, size=16, endmembers=3, noise=0.0)
    assert pixel_band_energy(clean, 3) > 0.999
    assert pixel_band_energy(clean, 2) < 0.999
    noisy = make_hyperspectral(4, bands=20, size=16, endmembers=3, noise=0.01)
    assert pixel_band_energy(noisy, 3) > 0.95


def test_seeds_and_cubes_differ():
    first = make_hyperspectral(3, bands=8, size=16, seed=0)
    np.testing.assert_array_equal(first, make_hyperspectral(3, bands=8, size=16, seed=0))
    assert not np.allclose(first, make_hyperspectral(3, bands=8, size=16, seed=1))
    assert not np.allclose(first[0], first[1])


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n=0"),
    ({"n": 2, "bands": 2.5}, "bands=2.5"),
    ({"n": 2, "noise": -0.1}, "noise=-0.1"),
])
def test_bad_synthetic_arguments(kwargs, match):
    with pytest.raises(NenyaError, match=match):
        make_hyperspectral(**kwargs)


def test_written_file_layout(tmp_path):
    path = write_hyperspectral_h5(tmp_path / "hs.h5", n_train=6, n_valid=3, bands=10, size=16, seed=2)
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"train", "valid"}
        assert f["train"].shape == (6, 10, 16, 16) and f["valid"].shape == (3, 10, 16, 16)
        assert f["train"].dtype == np.float32
        assert f.attrs["bands"] == 10 and f.attrs["endmembers"] == 4 and f.attrs["seed"] == 2
        assert f.attrs["endmember_spectra"].shape == (4, 10)
        stored = np.concatenate([f["train"][()], f["valid"][()]])
    np.testing.assert_array_equal(stored, make_hyperspectral(9, bands=10, size=16, seed=2))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    image, label, index = HDF5Images(path, "valid")[0]
    assert image.shape == (10, 16, 16) and label.item() == -1 and index.item() == 0


def test_builtin_resolves_and_is_written_once(tmp_path):
    path = resolve_builtin("builtin:hyperspectral", str(tmp_path / "data"))
    assert path == os.path.join(str(tmp_path / "data"), "nenya_hyperspectral.h5")
    stamp = os.stat(path).st_mtime_ns
    assert resolve_builtin("builtin:hyperspectral", str(tmp_path / "data")) == path
    assert os.stat(path).st_mtime_ns == stamp
    train = HDF5Images(path, "train")
    assert len(train) == 256 and train.image_shape == (30, 64, 64) and len(HDF5Images(path, "valid")) == 64


# Cubes listed in a CSV


def write_cube(path, cube, key="cube"):
    """One cube per HDF5 file."""
    with h5py.File(path, "w") as f:
        f[key] = cube
    return str(path)


@pytest.fixture
def cube_list(tmp_path):
    """(csv path, cubes): five 6-band 8x10 cubes under cubes/, the last listed by absolute path."""
    rng = np.random.default_rng(0)
    cubes = rng.random((5, 6, 8, 10), dtype=np.float32)
    (tmp_path / "cubes").mkdir()
    lines = ["path,split"]
    for i, cube in enumerate(cubes):
        write_cube(tmp_path / "cubes" / f"c{i}.h5", cube)
        name = str(tmp_path / "cubes" / f"c{i}.h5") if i == 4 else f"cubes/c{i}.h5"
        lines.append(f"{name},{'train' if i < 3 else 'valid'}")
    csv_path = tmp_path / "cubes.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return str(csv_path), cubes


def test_csv_reads_every_cube(cube_list):
    csv_path, cubes = cube_list
    ds = CubeCSV(csv_path)
    assert len(ds) == 5 and ds.image_shape == (6, 8, 10) and not ds.has_labels
    for i in range(5):
        cube, label, index = ds[i]
        assert cube.dtype == torch.float32 and label.dtype == torch.int64 and label.item() == -1
        assert index.dtype == torch.int64 and index.ndim == 0 and index.item() == i
        np.testing.assert_array_equal(cube.numpy(), cubes[i])
    np.testing.assert_array_equal(ds[-1][0].numpy(), cubes[4])
    assert ds[-1][2].item() == 4  # the position in the data set, not the index asked for
    with pytest.raises(IndexError):
        ds[5]
    check_channels(ds, 6)
    with pytest.raises(NenyaError, match=f"nchannels=3 but {csv_path}:cube has 6 channels"):
        check_channels(ds, 3)


def test_csv_split_and_relative_paths(cube_list, tmp_path, monkeypatch):
    csv_path, cubes = cube_list
    train, valid = CubeCSV(csv_path, split="train"), CubeCSV(csv_path, split="valid")
    assert len(train) == 3 and len(valid) == 2
    np.testing.assert_array_equal(valid[0][0].numpy(), cubes[3])
    monkeypatch.chdir(tmp_path / "cubes")
    np.testing.assert_array_equal(CubeCSV(csv_path, split="train")[2][0].numpy(), cubes[2])


def test_csv_is_lazy_and_picklable(cube_list):
    ds = CubeCSV(cube_list[0])
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[1][0].numpy(), ds[1][0].numpy())
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    assert sum(len(batch[0]) for batch in loader) == 5


def test_csv_normalize_then_transform(cube_list):
    csv_path, cubes = cube_list
    ds = CubeCSV(csv_path, normalize=lambda x: x - 1.0, transform=lambda x: x * 2.0)
    np.testing.assert_allclose(ds[0][0].numpy(), (cubes[0] - 1.0) * 2.0, rtol=1e-6)


def test_csv_unknown_split_lists_present(cube_list):
    with pytest.raises(NenyaError, match=r"split=test is not in .*cubes.csv; its splits are: train, valid"):
        CubeCSV(cube_list[0], split="test")


def test_csv_split_without_split_column(tmp_path, cube_list):
    csv_path = tmp_path / "nosplit.csv"
    csv_path.write_text("path\ncubes/c0.h5\n")
    assert len(CubeCSV(csv_path)) == 1
    with pytest.raises(NenyaError, match=f"split=train was asked for but {csv_path} has no 'split' column"):
        CubeCSV(csv_path, split="train")


def test_csv_missing_file(tmp_path):
    with pytest.raises(NenyaError, match=f"cube list {tmp_path / 'none.csv'} does not exist"):
        CubeCSV(tmp_path / "none.csv")


def test_csv_missing_path_column(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("file,split\na.h5,train\n")
    with pytest.raises(NenyaError, match=f"{csv_path} has no 'path' column; its columns are: file, split"):
        CubeCSV(csv_path)


def test_csv_empty_and_blank_paths(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("path\n")
    with pytest.raises(NenyaError, match=f"{empty} lists no cubes"):
        CubeCSV(empty)
    blank = tmp_path / "blank.csv"
    blank.write_text("path,split\n,train\n")
    with pytest.raises(NenyaError, match=f"{blank} line 2 has an empty 'path'"):
        CubeCSV(blank)


def test_csv_missing_listed_file(tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path\nmissing.h5\n")
    with pytest.raises(NenyaError, match=f"cube file {tmp_path / 'missing.h5'} \\(listed in {csv_path}\\) does not"):
        CubeCSV(csv_path)


def test_csv_missing_key_lists_keys(tmp_path, cube_list):
    csv_path, _ = cube_list
    with pytest.raises(NenyaError, match=r"c0.h5 \(listed in .*cubes.csv\) has no dataset 'data'; it has: cube"):
        CubeCSV(csv_path, key="data")
    write_cube(tmp_path / "cubes" / "c2.h5", np.zeros((6, 8, 10), np.float32), key="other")
    with pytest.raises(NenyaError, match="c2.h5 .* has no dataset 'cube'; it has: other"):
        CubeCSV(csv_path)  # every listed file is checked when the data set is built


def test_csv_wrong_rank_and_band_count(tmp_path):
    write_cube(tmp_path / "flat.h5", np.zeros((8, 8), np.float32))
    write_cube(tmp_path / "a.h5", np.zeros((6, 8, 8), np.float32))
    write_cube(tmp_path / "b.h5", np.zeros((5, 8, 8), np.float32))
    (tmp_path / "flat.csv").write_text("path\nflat.h5\n")
    with pytest.raises(NenyaError, match=r"flat.h5:cube has shape \(8, 8\); expected one cube \(C, H, W\)"):
        CubeCSV(tmp_path / "flat.csv")
    (tmp_path / "mixed.csv").write_text("path\na.h5\nb.h5\n")
    with pytest.raises(NenyaError, match=r"b.h5:cube has 5 bands .* but .*a.h5 has 6"):
        CubeCSV(tmp_path / "mixed.csv")  # found from the metadata when the data set is built, not mid-training


def test_csv_not_hdf5(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    (tmp_path / "list.csv").write_text("path\ntext.h5\n")
    with pytest.raises(NenyaError, match="text.h5 is not a readable HDF5 file"):
        CubeCSV(tmp_path / "list.csv")


# Per-band statistics


@pytest.fixture
def offset_images(tmp_path):
    """An HDF5 file of 7 four-band images with large per-band offsets (tests numerical stability)."""
    rng = np.random.default_rng(3)
    data = (rng.random((7, 4, 9, 11)) * np.array([1.0, 2.0, 0.5, 3.0])[None, :, None, None]
            + np.array([1e4, -5.0, 0.0, 300.0])[None, :, None, None]).astype(np.float32)
    path = tmp_path / "images.h5"
    with h5py.File(path, "w") as f:
        f["train"] = data
    return str(path), data


def test_band_statistics_match_numpy(offset_images):
    path, data = offset_images
    mean, std = band_statistics(HDF5Images(path, "train"))
    reference = data.astype(np.float64)
    np.testing.assert_allclose(mean, reference.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, reference.std(axis=(0, 2, 3)), rtol=1e-9)
    assert mean.dtype == np.float64 and std.shape == (4,)


def test_band_statistics_of_uneven_cubes_and_subsets(tmp_path):
    rng = np.random.default_rng(4)
    cubes = [rng.random((3, h, w)) for h, w in ((4, 5), (8, 8), (2, 9))]
    for i, cube in enumerate(cubes):
        write_cube(tmp_path / f"c{i}.h5", cube.astype(np.float32))
    (tmp_path / "list.csv").write_text("path\nc0.h5\nc1.h5\nc2.h5\n")
    ds = CubeCSV(tmp_path / "list.csv")
    pixels = np.concatenate([c.astype(np.float32).reshape(3, -1) for c in cubes], axis=1).astype(np.float64)
    mean, std = band_statistics(ds)
    np.testing.assert_allclose(mean, pixels.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(1), rtol=1e-10)
    ends = np.concatenate([cubes[0].reshape(3, -1), cubes[2].reshape(3, -1)], 1).astype(np.float32)
    np.testing.assert_allclose(band_statistics(ds, max_items=2)[0], ends.astype(np.float64).mean(1), rtol=1e-12)
    with pytest.raises(NenyaError, match="max_items=0"):
        band_statistics(ds, max_items=0)


def test_stats_cache_written_once_and_reused(offset_images, monkeypatch):
    path, data = offset_images
    ds = HDF5Images(path, "train")
    stats_path = default_stats_path(ds)
    assert stats_path == path + ".bandstats.json"
    mean, std = load_or_compute_band_stats(None, ds)
    assert os.path.isfile(stats_path)
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]
    stamp = os.stat(stats_path).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("statistics were recomputed")

    monkeypatch.setattr(band_stats, "band_statistics", fail)
    again_mean, again_std = load_or_compute_band_stats(stats_path, ds)
    assert os.stat(stats_path).st_mtime_ns == stamp
    np.testing.assert_array_equal(again_mean, mean)
    np.testing.assert_array_equal(again_std, std)
    normalized = torch.stack([BandNormalize(mean, std)(ds[i][0]) for i in range(len(ds))]).double()
    # float32 normalisation: band 0's 1e4 offset is rounded to ~1e-3, i.e. ~5e-3 of its std.
    np.testing.assert_allclose(normalized.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-2)
    np.testing.assert_allclose(normalized.std(dim=(0, 2, 3), correction=0).numpy(), 1.0, atol=1e-3)


def test_stats_cache_as_npz(offset_images, tmp_path):
    ds = HDF5Images(offset_images[0], "train")
    stats_path = str(tmp_path / "sub" / "stats.npz")
    mean, std = load_or_compute_band_stats(stats_path, ds)
    with np.load(stats_path) as data:
        np.testing.assert_array_equal(data["mean"], mean)
    np.testing.assert_array_equal(load_or_compute_band_stats(stats_path, ds)[1], std)


def test_stats_band_count_mismatch(offset_images, tmp_path):
    ds = HDF5Images(offset_images[0], "train")
    stats_path = tmp_path / "three.json"
    stats_path.write_text('{"mean": [0, 0, 0], "std": [1, 1, 1]}')
    with pytest.raises(NenyaError, match=f"band statistics {stats_path} have 3 bands but .*images.h5 has 4"):
        load_or_compute_band_stats(str(stats_path), ds)


def test_stats_file_errors(offset_images, tmp_path):
    ds = HDF5Images(offset_images[0], "train")
    no_std = tmp_path / "no_std.json"
    no_std.write_text('{"mean": [0, 0, 0, 0]}')
    with pytest.raises(NenyaError, match=f"{no_std} has no 'std'"):
        load_or_compute_band_stats(str(no_std), ds)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(NenyaError, match=f"{broken} is unreadable"):
        load_or_compute_band_stats(str(broken), ds)
    with pytest.raises(NenyaError, match=r"stats.txt must end in .json or .npz"):
        load_or_compute_band_stats(str(tmp_path / "stats.txt"), ds)


def test_band_normalize():
    cube = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    out = BandNormalize([1.0, 2.0], [2.0, 0.0])(cube)
    torch.testing.assert_close(out[0], (cube[0] - 1.0) / 2.0)
    torch.testing.assert_close(out[1], cube[1] - 2.0)
    assert out.dtype == torch.float32
    with pytest.raises(NenyaError, match=r"band statistics have 2 bands but the cube has 3 \(shape \(3, 4, 4\)\)"):
        BandNormalize([0.0, 0.0], [1.0, 1.0])(torch.zeros(3, 4, 4))
    with pytest.raises(NenyaError, match="equal length"):
        BandNormalize([0.0, 0.0], [1.0])


# Cube augmentations


def cube(height=6, width=6, bands=7):
    return torch.arange(bands * height * width, dtype=torch.float32).reshape(bands, height, width)


@pytest.mark.parametrize("transform", [RandomFlip(), CubeRot90(), CubeRandomCrop(4),
                                       build_cube_augmentation(True, True, 5)])
@pytest.mark.parametrize("shape", [(7, 6, 6), (31, 6, 9)])
def test_augmentations_keep_bands_and_dtype(transform, shape):
    torch.manual_seed(0)
    for _ in range(8):
        out = transform(torch.rand(shape, dtype=torch.float64))
        assert out.shape[0] == shape[0] and out.dtype == torch.float64


def test_rot90_is_exact_rotation():
    x = cube()
    rotations = [torch.rot90(x, k, dims=(1, 2)) for k in range(4)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        out = CubeRot90()(x)
        matches = [k for k, r in enumerate(rotations) if torch.equal(out, r)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_rot90_non_square_keeps_shape():
    x = cube(4, 7)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        out = CubeRot90()(x)
        assert out.shape == x.shape
        seen.add(0 if torch.equal(out, x) else 2)
        assert torch.equal(out, x) or torch.equal(out, torch.rot90(x, 2, dims=(1, 2)))
    assert seen == {0, 2}


def test_flip_draws_all_four():
    x = cube(5, 6)
    flips = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        out = RandomFlip()(x)
        seen.update(i for i, f in enumerate(flips) if torch.equal(out, f))
    assert seen == {0, 1, 2, 3}


def test_crop_size_and_position():
    x = cube(9, 12)
    torch.manual_seed(0)
    corners = set()
    for _ in range(50):
        out = CubeRandomCrop(5)(x)
        assert out.shape == (7, 5, 5)
        top, left = divmod(int(out[0, 0, 0]), 12)
        assert 0 <= top <= 4 and 0 <= left <= 7
        assert torch.equal(out, x[:, top:top + 5, left:left + 5])
        corners.add((top, left))
    assert len(corners) > 10
    assert torch.equal(CubeRandomCrop(9)(cube(9, 9)), cube(9, 9))


def test_crop_errors():
    with pytest.raises(NenyaError, match=r"crop=10 is larger than the 9x12 cube \(shape \(7, 9, 12\)\); .* at most 9"):
        CubeRandomCrop(10)(cube(9, 12))
    for bad in (0, -3, 2.5, "4", True):
        with pytest.raises(NenyaError, match="crop="):
            CubeRandomCrop(bad)
    with pytest.raises(NenyaError, match="crop=-1"):
        build_cube_augmentation(False, False, -1)


def test_build_cube_augmentation_is_reproducible():
    aug = build_cube_augmentation(flip=True, rot90=True, crop=4)
    assert isinstance(aug, Compose)
    assert [type(t) for t in aug.transforms] == [CubeRandomCrop, CubeRot90, RandomFlip]
    x = torch.rand(5, 8, 8)
    torch.manual_seed(11)
    first = [aug(x) for _ in range(5)]
    torch.manual_seed(11)
    second = [aug(x) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(first[0], other) for other in first[1:])
    identity = build_cube_augmentation(False, False, None)
    assert identity.transforms == [] and torch.equal(identity(x), x)
    assert build_cube_augmentation(False, False, 0).transforms == []
