"""Batched reads: HDF5Images.__getitems__ and CubeCSV.__getitems__ give what per-item reads give, in every layout."""

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

import nenya.data.hdf5 as hdf5_module
import nenya.data.hdf5_rows as hdf5_rows
from nenya.data.cubes import CubeCSV
from nenya.data.hdf5 import HDF5Images, ItemBatch, batch_tensors, collate
from nenya.errors import NenyaError

# Unsorted, repeated and negative indices: what a sampler may ask for (10 items in every file below).
ASKED = [5, 0, 5, -1, 3, 3, 7, 1]
POSITIONS = [5, 0, 5, 9, 3, 3, 7, 1]


def write_layout(path, array, layout):
    """Write ``array`` as dataset ``train`` (labels 10 + i) in the named storage layout; return the path."""
    count = len(array)
    with h5py.File(path, "w", userblock_size=512 if layout == "userblock" else 0) as f:
        f["train_labels"] = np.arange(count) + 10
        if layout in ("contiguous", "userblock"):
            f.create_dataset("train", data=array)
        elif layout == "chunks-in-order":
            f.create_dataset("train", data=array, chunks=(2, *array.shape[1:]))
        elif layout == "chunks-reversed":  # written last chunk first: the chunks lie in the file out of order
            node = f.create_dataset("train", shape=array.shape, dtype=array.dtype, chunks=(3, *array.shape[1:]))
            for start in reversed(range(0, count, 3)):
                node[start:start + 3] = array[start:start + 3]
        elif layout == "gzip":
            f.create_dataset("train", data=array, chunks=(4, *array.shape[1:]), compression="gzip")
        elif layout == "tiles":  # chunks that split an item
            f.create_dataset("train", data=array, chunks=(1,) * (array.ndim - 2) + array.shape[-2:-1] + (1,))
        elif layout == "unwritten-chunk":  # chunk 2 never written: fill value zeros
            node = f.create_dataset("train", shape=array.shape, dtype=array.dtype, chunks=(4, *array.shape[1:]))
            node[:8] = array[:8]
        else:
            raise ValueError(layout)
    return path


def stored(array, layout):
    """What the file holds, as float32 with a channel axis (the unwritten chunk reads as zeros)."""
    values = array.astype(np.float32)
    if layout == "unwritten-chunk":
        values[8:] = 0
    return values[:, None] if values.ndim == 3 else values


RNG = np.random.default_rng(0)
ARRAYS = {
    "f4 2-D": RNG.normal(size=(10, 2, 5, 4)).astype(np.float32),
    "f8 2-D": RNG.normal(size=(10, 3, 4, 4)),
    "u1 (N, H, W)": RNG.integers(0, 255, size=(10, 6, 5)).astype(np.uint8),
    "big-endian f4": RNG.normal(size=(10, 1, 4, 3)).astype(">f4"),
    "f4 3-D": RNG.normal(size=(10, 2, 3, 4, 5)).astype(np.float32),
}
CASES = [  # (array, layout, memmap, preload, expected read_mode)
    ("f4 2-D", "contiguous", True, False, "memmap"),
    ("f4 2-D", "userblock", True, False, "memmap"),
    ("f4 2-D", "chunks-in-order", True, False, "memmap"),
    ("f4 2-D", "chunks-reversed", True, False, "chunk-map"),
    ("f4 2-D", "gzip", True, False, "h5py"),
    ("f4 2-D", "tiles", True, False, "h5py"),
    ("f4 2-D", "unwritten-chunk", True, False, "h5py"),
    ("f4 2-D", "contiguous", False, False, "h5py"),
    ("f4 2-D", "chunks-reversed", False, False, "h5py"),
    ("f4 2-D", "contiguous", True, True, "preload"),
    ("f8 2-D", "contiguous", True, False, "memmap"),
    ("f8 2-D", "chunks-reversed", True, False, "chunk-map"),
    ("u1 (N, H, W)", "contiguous", True, False, "memmap"),
    ("u1 (N, H, W)", "gzip", True, False, "h5py"),
    ("big-endian f4", "contiguous", True, False, "memmap"),
    ("big-endian f4", "chunks-reversed", True, False, "chunk-map"),
    ("f4 3-D", "contiguous", True, False, "memmap"),
    ("f4 3-D", "chunks-reversed", True, False, "chunk-map"),
    ("f4 3-D", "gzip", True, False, "h5py"),
    ("f4 3-D", "tiles", True, False, "h5py"),
    ("f4 3-D", "gzip", True, True, "preload"),
]


@pytest.fixture(params=CASES, ids=[f"{a}-{layout}-memmap{m}-preload{p}" for a, layout, m, p, _ in CASES])
def case(request, tmp_path):
    name, layout, memmap, preload, mode = request.param
    path = write_layout(tmp_path / "images.h5", ARRAYS[name], layout)
    return HDF5Images(path, "train", preload=preload, memmap=memmap), stored(ARRAYS[name], layout), mode


def test_batch_holds_the_stored_items_in_the_order_asked(case):
    ds, expected, mode = case
    assert ds.read_mode == mode
    batch = ds.__getitems__(ASKED)
    assert isinstance(batch, ItemBatch) and len(batch) == len(ASKED)
    images, labels, index = batch.stacked
    assert images.dtype == torch.float32 and images.shape == (len(ASKED), *expected.shape[1:])
    np.testing.assert_array_equal(images.numpy(), expected[POSITIONS])  # exact: a copy of the stored values
    np.testing.assert_array_equal(labels.numpy(), np.array(POSITIONS) + 10)
    assert index.dtype == torch.int64 and index.tolist() == POSITIONS


def test_batch_items_equal_per_item_reads(case):
    ds, expected, _ = case
    items = list(ds.__getitems__(ASKED))
    assert len(items) == len(ASKED)
    for asked, position, item in zip(ASKED, POSITIONS, items):
        one = ds[asked]
        assert len(item) == len(one) == 3
        for got, want in zip(item, one):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want)
        np.testing.assert_array_equal(one[0].numpy(), expected[position])
        assert one[2].ndim == 0 and one[2].item() == position


def test_out_of_range_index_is_an_index_error(case):
    ds = case[0]
    with pytest.raises(IndexError, match="index 10 out of range for 10 images"):
        ds.__getitems__([1, 10])
    with pytest.raises(IndexError):
        ds.__getitems__([-11])


def test_memory_map_path_reads_no_data_through_h5py(tmp_path, monkeypatch):
    array = ARRAYS["f4 2-D"]
    contiguous = HDF5Images(write_layout(tmp_path / "a.h5", array, "contiguous"), "train")
    scattered = HDF5Images(write_layout(tmp_path / "b.h5", array, "chunks-reversed"), "train")
    compressed = HDF5Images(write_layout(tmp_path / "c.h5", array, "gzip"), "train")
    for ds in (contiguous, scattered, compressed):
        ds[0]  # open the reader first: opening reads metadata through h5py

    def refuse(*args, **kwargs):
        raise AssertionError("h5py read data")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", refuse)
    monkeypatch.setattr(h5py.Dataset, "read_direct", refuse)
    assert isinstance(contiguous._handle().rows, np.memmap)
    np.testing.assert_array_equal(contiguous.__getitems__(ASKED).stacked[0].numpy(), array[POSITIONS])
    np.testing.assert_array_equal(scattered.__getitems__(ASKED).stacked[0].numpy(), array[POSITIONS])
    with pytest.raises(AssertionError, match="h5py read data"):
        compressed.__getitems__(ASKED)


class CountingDataset:
    """Count the data reads of an h5py Dataset (its __getitem__ calls)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = h5py.Dataset.__getitem__

        def counted(node, selection, **kwargs):
            self.calls += 1
            return original(node, selection, **kwargs)

        monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)


@pytest.mark.parametrize("layout, indices, most", [
    ("contiguous", [9, 2, 4, 2, 0, 7], 1),  # one sorted read for the whole batch
    ("gzip", [3, 0, 2, 1], 1),  # all in one chunk (items 0-3): one read of it
    ("gzip", [9, 0, 5, 1], 3),  # three chunks touched
    ("tiles", [4, 5, 6, 7, 3], 1),  # neighbours: one span
    ("tiles", [0, 9], 2),  # far apart: one each, as per-item reads
])
def test_h5py_reads_a_batch_with_few_calls(tmp_path, monkeypatch, layout, indices, most):
    array = ARRAYS["f4 2-D"]
    ds = HDF5Images(write_layout(tmp_path / "a.h5", array, layout), "train", memmap=False)
    ds[0]
    counter = CountingDataset(monkeypatch)
    images = ds.__getitems__(indices).stacked[0]
    np.testing.assert_array_equal(images.numpy(), array[indices])
    assert 0 < counter.calls <= most


@pytest.mark.parametrize("layout", ["contiguous", "chunks-reversed", "gzip"])
def test_large_items_are_read_one_call_each_into_the_batch(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(hdf5_rows, "LARGE_ITEM_BYTES", 64)  # these 160-byte items count as large
    array = ARRAYS["f4 2-D"]
    ds = HDF5Images(write_layout(tmp_path / "a.h5", array, layout), "train")
    assert ds.read_mode == "h5py"
    ds[0]
    calls = []
    original = h5py.Dataset.read_direct
    monkeypatch.setattr(h5py.Dataset, "read_direct", lambda *args: calls.append(1) or original(*args))
    batch = ds.__getitems__(ASKED)
    np.testing.assert_array_equal(batch.stacked[0].numpy(), array[POSITIONS])
    assert batch.stacked[2].tolist() == POSITIONS
    assert len(calls) == (0 if layout == "gzip" else len(ASKED))  # compressed: a span per chunk instead


class PerItem(Dataset):
    """The same items, fetched one at a time (no __getitems__): what a DataLoader did before batched reads."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("layout", ["contiguous", "chunks-reversed", "gzip"])
def test_loader_batches_equal_per_item_batches(tmp_path, workers, layout):
    array = ARRAYS["f4 3-D"]
    ds = HDF5Images(write_layout(tmp_path / "a.h5", array, layout), "train")
    ds[0]  # a handle opened in the parent: each worker opens its own

    def batches(dataset, collate_fn):
        generator = torch.Generator().manual_seed(3)
        return list(DataLoader(dataset, batch_size=4, shuffle=True, num_workers=workers, generator=generator,
                               collate_fn=collate_fn))

    batched, per_item = batches(ds, collate), batches(PerItem(ds), None)
    assert len(batched) == len(per_item) == 3
    for new, old in zip(batched, per_item):
        assert len(new) == len(old) == 3
        for got, want in zip(new, old):
            assert torch.equal(got, want) and got.dtype == want.dtype
        np.testing.assert_array_equal(new[0].numpy(), array[new[2].numpy()])
        np.testing.assert_array_equal(new[1].numpy(), new[2].numpy() + 10)
    assert sorted(torch.cat([b[2] for b in batched]).tolist()) == list(range(10))  # every item once


def test_transform_applies_per_item_in_order(tmp_path):
    array = ARRAYS["f4 2-D"]
    path = write_layout(tmp_path / "a.h5", array, "contiguous")
    ds = HDF5Images(path, "train", transform=lambda image: image * 2 + torch.rand(()))  # random: order shows
    torch.manual_seed(0)
    batch = ds.__getitems__(ASKED)
    torch.manual_seed(0)
    one_by_one = [ds[i] for i in ASKED]
    assert isinstance(batch, list) and len(batch) == len(ASKED)
    for item, one, position in zip(batch, one_by_one, POSITIONS):
        for got, want in zip(item, one):
            assert torch.equal(got, want)
        np.testing.assert_allclose(item[0].numpy() - 2 * array[position], one[0].numpy() - 2 * array[position])
    noise = [float(item[0].numpy().ravel()[0] - 2 * array[p].ravel()[0]) for item, p in zip(batch, POSITIONS)]
    assert len(set(np.round(noise, 5))) == len(ASKED)  # one draw per item
    loader = DataLoader(ds, batch_size=5, collate_fn=collate)
    images, labels, index = next(iter(loader))
    assert images.shape == (5, 2, 5, 4) and index.tolist() == [0, 1, 2, 3, 4]


def test_collate_gives_default_collate_batch(tmp_path):
    ds = HDF5Images(write_layout(tmp_path / "a.h5", ARRAYS["f4 3-D"], "contiguous"), "train")
    batch = ds.__getitems__(ASKED)
    got, want = collate(batch), default_collate(list(batch))
    assert isinstance(got, list) and len(got) == len(want) == 3
    for a, b in zip(got, want):
        assert torch.equal(a, b) and a.dtype == b.dtype and a.shape == b.shape
    assert got[0] is batch.stacked[0]  # handed on, not copied
    items = [ds[i] for i in ASKED]
    for a, b in zip(collate(items), default_collate(items)):  # anything else: default_collate
        assert torch.equal(a, b)
    sliced = batch[1:3]
    assert len(sliced) == 2 and all(torch.equal(a, b) for a, b in zip(sliced[1], batch[2]))
    assert torch.equal(batch[-1][0], batch[7][0]) and batch[-1][2].item() == POSITIONS[-1]


def test_batch_tensors_share_one_block_of_shared_memory_in_a_worker(monkeypatch):
    images, labels, index = batch_tensors(3, (2, 4, 4))
    assert not images.is_shared()
    monkeypatch.setattr(hdf5_module, "get_worker_info", lambda: object())  # as inside a DataLoader worker
    images, labels, index = batch_tensors(3, (2, 4, 4))
    assert images.is_shared() and labels.is_shared() and index.is_shared()
    assert images.untyped_storage().data_ptr() == labels.untyped_storage().data_ptr() == \
        index.untyped_storage().data_ptr()
    images.fill_(1.5)
    labels.fill_(-1)
    index.copy_(torch.arange(3))
    assert images.sum().item() == 1.5 * 96 and labels.tolist() == [-1] * 3 and index.tolist() == [0, 1, 2]
    assert batch_tensors(3, (2, 4, 4), shared=False)[0].is_shared() is False


def test_damaged_chunk_names_the_item(tmp_path):
    path = write_layout(tmp_path / "a.h5", ARRAYS["f4 2-D"], "gzip")
    with h5py.File(path, "r") as f:
        info = f["train"].id.get_chunk_info(1)  # items 4-7
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset)
        handle.write(b"\xff" * info.size)
    ds = HDF5Images(path, "train")
    np.testing.assert_array_equal(ds.__getitems__([0, 9]).stacked[0].numpy(), ARRAYS["f4 2-D"][[0, 9]])
    with pytest.raises(NenyaError, match=r"a.h5:train item 5 cannot be read .*damaged"):
        ds.__getitems__([9, 5, 0])


# Cubes listed in a CSV


@pytest.fixture
def cube_csv(tmp_path):
    """(csv, cubes): four 3-band cubes, the last one larger."""
    cubes = [RNG.random((3, 4, 5), dtype=np.float32) for _ in range(3)] + [RNG.random((3, 6, 5))]
    lines = ["path"]
    for i, cube in enumerate(cubes):
        with h5py.File(tmp_path / f"c{i}.h5", "w") as f:
            f["cube"] = cube
        lines.append(f"c{i}.h5")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "list.csv"), cubes


def test_cube_batch_equals_per_item_reads(cube_csv):
    path, cubes = cube_csv
    ds = CubeCSV(path)
    batch = ds.__getitems__([2, 0, 2, -2])
    assert isinstance(batch, ItemBatch)
    images, labels, index = batch.stacked
    np.testing.assert_array_equal(images.numpy(), np.stack([cubes[i] for i in (2, 0, 2, 2)]))
    assert labels.tolist() == [-1] * 4 and index.tolist() == [2, 0, 2, 2]
    for item, asked in zip(batch, [2, 0, 2, -2]):
        for got, want in zip(item, ds[asked]):
            assert torch.equal(got, want) and got.dtype == want.dtype
    mixed = ds.__getitems__([3, 1])  # two sizes: items, as the per-item reads give them
    assert isinstance(mixed, list) and mixed[0][0].shape == (3, 6, 5)
    np.testing.assert_array_equal(mixed[0][0].numpy(), cubes[3].astype(np.float32))
    assert [item[2].item() for item in mixed] == [3, 1]


def test_cube_batch_with_normalisation_and_transform(cube_csv):
    path, cubes = cube_csv
    ds = CubeCSV(path, normalize=lambda cube: cube - 1.0, transform=lambda cube: cube * 2.0)
    batch = ds.__getitems__([1, 0])
    assert isinstance(batch, list)
    np.testing.assert_allclose(batch[0][0].numpy(), (cubes[1] - 1.0) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(default_collate(batch)[0].numpy(), (np.stack(cubes[1::-1]) - 1.0) * 2.0, rtol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_cube_loader_batches_equal_per_item_batches(cube_csv, workers):
    path, cubes = cube_csv
    ds = torch.utils.data.Subset(CubeCSV(path), [0, 1, 2])  # a Subset passes whole batches on

    def batches(dataset, collate_fn):
        return list(DataLoader(dataset, batch_size=2, shuffle=True, num_workers=workers, collate_fn=collate_fn,
                               generator=torch.Generator().manual_seed(1)))

    for new, old in zip(batches(ds, collate), batches(PerItem(ds), None), strict=True):
        for got, want in zip(new, old, strict=True):
            assert torch.equal(got, want)
        np.testing.assert_array_equal(new[0].numpy(), np.stack([cubes[i] for i in new[2].tolist()]))
