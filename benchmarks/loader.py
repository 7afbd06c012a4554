"""Input speed: a shuffling nenya loader against a raw sequential h5py read of the same page-cached file.

Run: python benchmarks/loader.py [--images 20000] [--size 64] [--cubes 40] [--cube-size 500] [--bands 30]
                                 [--batch 64] [--cube-batch 8] [--workers 0 2] [--repeats 5] [--seconds 2]
                                 [--folder DIR] [--skip-cutouts] [--skip-cubes] [--skip-csv] [--quick]

Writes the data (once, into --folder, default a temporary folder removed at the end), reads every file
once so that it is in the page cache, then measures side by side in one run, repeating each measurement
--repeats times in turn and printing medians (the machine may be shared):

* raw: ``dataset[start:start + block]`` over the whole dataset in blocks of about 64 MiB, in images/s;
* before: a shuffling DataLoader over today's per-item reads (one h5py call per image, default collate);
* after: ``nenya.train_util.make_loader`` over ``HDF5Images`` / ``CubeCSV`` (batched reads, nenya's collate);
* floor: a DataLoader whose data set reads nothing (returns an empty batch): torch's own cost per batch.

for (a) --images cutouts 1 x size x size float32 in one HDF5 file: contiguous, chunked by 64 images, and
chunked by 64 and gzip-compressed; (b) --cubes cubes bands x cube-size x cube-size float32 in one HDF5
dataset (contiguous and one cube per chunk) and as a CSV of one file per cube. Loaders use the demos'
batch sizes (64 cutouts, 8 cubes), shuffle and drop the last partial batch, like training. Every
measurement runs epochs (whole passes for the raw read) until --seconds have passed. A loader's
rate per epoch counts the wall time from creating each epoch's iterator (worker start-up included, as in
every epoch of make_loader, whose workers are not persistent) to its last batch; its steady rate counts
from each epoch's first batch; its rate per CPU-second counts the CPU time of this process and its
workers (steadier than the wall clock on a busy machine). Ratios are to the raw read of the same dataset
(wall to wall, CPU to CPU); the target is at least 0.5.
--quick: 4,000 cutouts, 12 cubes of 30 x 200 x 200, 3 repeats.
"""

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nenya.data.cubes import CubeCSV
from nenya.data.hdf5 import HDF5Images, ItemBatch, batch_tensors
from nenya.train_util import make_loader

TARGET = 0.5
BLOCK_BYTES = 64 << 20


class TodayHDF5(Dataset):
    """HDF5Images.__getitem__ as it was before batched reads (commit 1f60983): one h5py call per image."""

    def __init__(self, path, key):
        self.path, self.key, self._file, self._pid = path, key, None, None
        with h5py.File(path, "r") as f:
            self.length, self.add_channel = f[key].shape[0], f[key].ndim == 3

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        image = torch.tensor(self._file[self.key][index], dtype=torch.float32)
        return (image.unsqueeze(0) if self.add_channel else image), torch.tensor(-1, dtype=torch.int64)


class TodayCubes(Dataset):
    """CubeCSV.__getitem__ as it was before batched reads: open the cube's file, read it, copy it to a tensor."""

    def __init__(self, files, key="cube"):
        self.files, self.key = files, key

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with h5py.File(self.files[index], "r") as f:
            cube = torch.tensor(f[self.key][()], dtype=torch.float32)
        return cube, torch.tensor(-1, dtype=torch.int64)


class NoRead(Dataset):
    """Batches of the right shape that read nothing: what torch's DataLoader costs per batch on its own."""

    def __init__(self, length, image_shape):
        self.length, self.image_shape = length, image_shape

    def __len__(self):
        return self.length

    def __getitems__(self, indices):
        return ItemBatch(*batch_tensors(len(indices), self.image_shape))


def write_data(folder, args) -> dict:
    """Write the benchmark files into ``folder`` (kept if already there); return their paths."""
    rng = np.random.default_rng(0)
    paths = {"cutouts": os.path.join(folder, "cutouts.h5"), "cubes": os.path.join(folder, "cubes.h5"),
             "csv": os.path.join(folder, "cubes.csv")}
    if not os.path.exists(paths["cutouts"]):
        images = rng.normal(size=(args.images, 1, args.size, args.size)).astype(np.float32)
        images = np.round(images * 16) / 16  # a little redundancy for gzip, as real data has
        with h5py.File(paths["cutouts"] + ".tmp", "w") as f:
            f.create_dataset("contiguous", data=images)
            f.create_dataset("chunked", data=images, chunks=(64, 1, args.size, args.size))
            f.create_dataset("gzip", data=images, chunks=(64, 1, args.size, args.size), compression="gzip",
                             compression_opts=4)
        os.replace(paths["cutouts"] + ".tmp", paths["cutouts"])
    if args.skip_cubes:
        return paths
    shape = (args.bands, args.cube_size, args.cube_size)
    if not os.path.exists(paths["cubes"]):
        with h5py.File(paths["cubes"] + ".tmp", "w") as f:
            contiguous = f.create_dataset("contiguous", shape=(args.cubes, *shape), dtype=np.float32)
            chunked = f.create_dataset("chunked", shape=(args.cubes, *shape), dtype=np.float32, chunks=(1, *shape))
            for i in range(args.cubes):
                contiguous[i] = chunked[i] = rng.random(shape, dtype=np.float32)
        os.replace(paths["cubes"] + ".tmp", paths["cubes"])
    if not args.skip_csv and not os.path.exists(paths["csv"]):
        os.makedirs(os.path.join(folder, "cubes"), exist_ok=True)
        with h5py.File(paths["cubes"], "r") as f:
            for i in range(args.cubes):
                with h5py.File(os.path.join(folder, "cubes", f"c{i:03d}.h5"), "w") as out:
                    out["cube"] = f["contiguous"][i]
        with open(paths["csv"], "w") as handle:
            handle.write("path\n" + "".join(f"cubes/c{i:03d}.h5\n" for i in range(args.cubes)))
    return paths


def page_cache(folder) -> None:
    """Read every file under ``folder`` once, so the measurements read from memory."""
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                while handle.read(BLOCK_BYTES):
                    pass


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (the DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def raw_rate(path, key, seconds) -> tuple:
    """(images/s, images/s, images per CPU-second) of sequential h5py reads of the whole dataset in blocks of
    about 64 MiB, repeated for ``seconds``."""
    with h5py.File(path, "r") as f:
        node = f[key]
        block = max(1, BLOCK_BYTES // (node.dtype.itemsize * int(np.prod(node.shape[1:]))))
        count, start, cpu = 0, time.perf_counter(), cpu_seconds()
        while count == 0 or time.perf_counter() - start < seconds:
            for first in range(0, node.shape[0], block):
                count += len(node[first:first + block])
        rate = count / (time.perf_counter() - start)
        return rate, rate, count / (cpu_seconds() - cpu)


def raw_csv_rate(files, seconds) -> tuple:
    """(cubes/s, cubes/s, cubes per CPU-second) of reading every listed file in order, repeated for ``seconds``."""
    count, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while count == 0 or time.perf_counter() - start < seconds:
        for path in files:
            with h5py.File(path, "r") as f:
                f["cube"][()]
            count += 1
    rate = count / (time.perf_counter() - start)
    return rate, rate, count / (cpu_seconds() - cpu)


def loader_rate(make, seconds) -> tuple:
    """Images/s of epochs of the loader ``make()`` (a new iterator each, as training makes them) for ``seconds``
    (stopping mid-epoch once they have passed): from each iterator's creation to its last batch; steady, from
    each epoch's first batch to its last; and per CPU-second of this process and its workers."""
    count = steady_count = 0
    begin, cpu = time.perf_counter(), cpu_seconds()
    steady_time = 0.0
    while time.perf_counter() - begin < seconds:
        loader, first = make(), None
        for batch in loader:
            count += len(batch[0])
            if first is None:
                first, first_count = time.perf_counter(), count
            if time.perf_counter() - begin > seconds:
                break
        steady_count += count - first_count
        steady_time += time.perf_counter() - first
        del batch, loader  # a stopped epoch: its workers end here and their CPU time is counted
    wall = time.perf_counter() - begin
    return count / wall, steady_count / steady_time if steady_count else float("nan"), count / (cpu_seconds() - cpu)


def plain_loader(dataset, batch, workers) -> DataLoader:
    """A shuffling DataLoader with torch's default collate (how per-item data sets were loaded)."""
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      generator=torch.Generator().manual_seed(0))


def measure(cases, args) -> dict:
    """Median rate of every case (name -> rate function), measuring the cases in turn --repeats times."""
    rates = {name: [] for name in cases}
    for repeat in range(args.repeats):
        for name, rate in cases.items():
            rates[name].append(rate())
        print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    return {name: tuple(statistics.median(v[i] for v in values) for i in range(3)) for name, values in rates.items()}


def data_cases(label, path, key, before, after, image_shape, batch, args) -> tuple:
    """(raw case name, cases) for one dataset: raw read, and before / after / floor loaders per worker count."""
    raw = f"{label} | raw h5py read"
    cases = {raw: lambda: raw_rate(path, key, args.seconds)}
    nothing = NoRead(len(after), image_shape)
    for workers in args.workers:
        cases[f"{label} | before: per-item reads | {workers}"] = \
            lambda w=workers: loader_rate(lambda: plain_loader(before, batch, w), args.seconds)
        cases[f"{label} | after: batched reads | {workers}"] = \
            lambda w=workers: loader_rate(lambda: make_loader(after, batch, True, w, drop_last=True), args.seconds)
        cases[f"{label} | floor: loader reading nothing | {workers}"] = \
            lambda w=workers: loader_rate(lambda: make_loader(nothing, batch, True, w, drop_last=True), args.seconds)
    return raw, cases


def git_commit() -> str:
    """The checked-out commit, or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_table(groups, medians) -> None:
    """One Markdown table: every case's median rates and their ratios to the raw read of its dataset."""
    print("| data | loader | workers | images/s per epoch | ratio | steady images/s | ratio | images per CPU-s "
          "| ratio | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for raw, cases in groups:
        for name in cases:
            label, what, *workers = name.split(" | ")
            after = what.startswith("after")
            cells = []
            for column, rate in enumerate(medians[name]):
                ratio = rate / medians[raw][0 if column < 2 else 2]
                shown = "1" if name == raw else f"**{ratio:.2f}**" if after else f"{ratio:.3f}"
                cells += ["" if name == raw and column == 1 else f"{rate:,.0f}",
                          "" if name == raw and column == 1 else shown]
            print(f"| {label} | {what} | {workers[0] if workers else ''} | {' | '.join(cells)} | "
                  f"{f'>= {TARGET}' if after else ''} |")


def main() -> None:
    """Write and page-cache the data, measure every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cubes", type=int, default=40)
    parser.add_argument("--cube-size", type=int, default=500)
    parser.add_argument("--bands", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="cutouts per batch (demo_simclr)")
    parser.add_argument("--cube-batch", type=int, default=8, help="cubes per batch (demo_mae)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="time one measurement runs (whole epochs)")
    parser.add_argument("--folder", help="where to write the data (kept); default a temporary folder")
    parser.add_argument("--skip-cutouts", action="store_true")
    parser.add_argument("--skip-cubes", action="store_true")
    parser.add_argument("--skip-csv", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.images, args.cubes, args.cube_size, args.repeats = 4000, 12, 200, 3
    folder = args.folder or tempfile.mkdtemp(prefix="nenya_loader_")
    os.makedirs(folder, exist_ok=True)
    try:
        paths = write_data(folder, args)
        page_cache(folder)
        load = os.getloadavg()[0]
        groups = []
        for layout in () if args.skip_cutouts else ("contiguous", "chunked", "gzip"):
            label = f"{args.images:,} cutouts 1x{args.size}x{args.size}, {layout}" + \
                    (" (64 images per chunk)" if layout != "contiguous" else "")
            after = HDF5Images(paths["cutouts"], layout)
            label += f", read by {after.read_mode}"
            groups.append(data_cases(label, paths["cutouts"], layout, TodayHDF5(paths["cutouts"], layout), after,
                                     after.image_shape, args.batch, args))
        if not args.skip_cubes:
            for layout in ("contiguous", "chunked"):
                after = HDF5Images(paths["cubes"], layout)
                label = (f"{args.cubes} cubes {args.bands}x{args.cube_size}x{args.cube_size}, one dataset, {layout}"
                         + (" (one cube per chunk)" if layout != "contiguous" else "") + f", read by {after.read_mode}")
                groups.append(data_cases(label, paths["cubes"], layout, TodayHDF5(paths["cubes"], layout), after,
                                         after.image_shape, args.cube_batch, args))
            if not args.skip_csv:
                after = CubeCSV(paths["csv"])
                label = f"{args.cubes} cubes, CSV of one file per cube"
                raw, cases = data_cases(label, paths["csv"], None, TodayCubes(after.files), after,
                                        after.image_shape, args.cube_batch, args)
                cases[raw] = lambda: raw_csv_rate(after.files, args.seconds)
                groups.append((raw, cases))
        everything = {name: rate for _, cases in groups for name, rate in cases.items()}
        print(f"measuring {len(everything)} cases x {args.repeats} repeats ...", file=sys.stderr)
        medians = measure(everything, args)
        print(f"\n{platform.node()}: {os.cpu_count()} CPUs, load average {load:.1f} before and "
              f"{os.getloadavg()[0]:.1f} after (shared machine: medians of {args.repeats} repeats), "
              f"torch {torch.__version__}, h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, commit {git_commit()}, "
              f"{time.strftime('%Y-%m-%d')}\n")
        print_table(groups, medians)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
