"""Rewrite an HDF5 file's image datasets in the layout that reads fastest: ``python -m nenya.rechunk IN OUT``.

``[--keys K ...] [--chunk-images N | --contiguous]``: every dataset of IN is copied to the new file OUT;
the image datasets (``--keys``, default every dataset of rank 3 or more: images and masks) are rewritten
uncompressed, contiguous (the default) or in chunks of N whole images; every other dataset, group, link
and attribute is copied as it is. OUT is written beside itself as ``OUT.tmp`` and appears only when
complete; an existing OUT is never overwritten.
"""

import math
import os
import sys

import h5py
from tqdm import tqdm

from nenya.errors import NenyaError, positive_int, run_cli
from nenya.io.atomic import atomic_path

BLOCK_BYTES = 64 << 20  # bytes copied per read and write


def image_keys(handle: h5py.File) -> list[str]:
    """Paths of the datasets of rank 3 or more (images, volumes, masks) in an open HDF5 file, in file order."""
    keys = []
    handle.visititems(lambda name, node: keys.append(name) if isinstance(node, h5py.Dataset) and node.ndim >= 3
                      else None)
    return keys


def check_paths(source: str, target: str) -> None:
    """A NenyaError unless ``source`` is an HDF5 file and ``target`` is a new file in an existing folder."""
    if not os.path.isfile(source):
        raise NenyaError(f"input file {source} does not exist")
    if not h5py.is_hdf5(source):
        raise NenyaError(f"{source} is not an HDF5 file")
    if os.path.lexists(target):
        what = "is the input file" if os.path.exists(target) and os.path.samefile(source, target) else \
            "already exists"
        raise NenyaError(f"{target} {what}; give a new output file (nenya.rechunk never overwrites one)")
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise NenyaError(f"the folder of {target} ({folder}) does not exist; create it first")


def chosen_keys(handle: h5py.File, source: str, keys) -> list[str]:
    """The datasets to rewrite: ``keys`` (checked: datasets with an item axis) or every image dataset."""
    if not keys:
        return image_keys(handle)
    for key in keys:
        node = handle.get(key)
        if not isinstance(node, h5py.Dataset):
            names = ", ".join(image_keys(handle)) or "none"
            raise NenyaError(f"{source} has no dataset '{key}' (--keys); its image datasets are: {names}")
        if node.ndim < 2:
            raise NenyaError(f"{source}:{key} has shape {node.shape}; --keys takes image datasets, one item per "
                             f"row along the first axis (rank 2 or more)")
    return [handle[key].name.lstrip("/") for key in keys]


def rechunk(source, target, keys=None, chunk_images: int | None = None, progress: bool = True) -> dict:
    """Copy HDF5 file ``source`` to the new file ``target``, rewriting the image datasets ``keys`` uncompressed,
    contiguous (``chunk_images`` None) or in chunks of ``chunk_images`` images; return {key: chunk shape or None}."""
    source, target = os.fspath(source), os.fspath(target)
    check_paths(source, target)
    with atomic_path(target, publish=publish) as temporary, h5py.File(source, "r") as src:
        rewrite = chosen_keys(src, source, keys)
        total = sum(src[key].size * src[key].dtype.itemsize for key in rewrite)
        with h5py.File(temporary, "w") as out, \
                tqdm(total=total, unit="B", unit_scale=True, desc="rechunk", disable=None if progress else True) as bar:
            copy_group(src, out, set(rewrite), chunk_images, bar)
            layouts = {key: out[key].chunks for key in rewrite}
    return layouts


def publish(temporary: str, target: str) -> None:
    """Give the finished ``temporary`` its name ``target``, failing rather than replacing a file made meanwhile."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise NenyaError(f"{target} appeared while it was being written; it was left as it is") from None
    except OSError:  # a file system without hard links
        if os.path.lexists(target):
            raise NenyaError(f"{target} appeared while it was being written; it was left as it is") from None
        os.replace(temporary, target)
        return
    os.remove(temporary)


def copy_group(src: h5py.Group, out: h5py.Group, rewrite: set, chunk_images, bar) -> None:
    """Copy the attributes, links, groups and datasets of ``src`` into ``out``, rewriting those in ``rewrite``."""
    for name, value in src.attrs.items():
        out.attrs[name] = value
    for name in src:
        link = src.get(name, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            out[name] = link
            continue
        node = src[name]
        if isinstance(node, h5py.Group):
            copy_group(node, out.create_group(name), rewrite, chunk_images, bar)
        elif node.name.lstrip("/") in rewrite:
            rewrite_dataset(node, out, name, chunk_images, bar)
        else:
            src.copy(node, out, name=name)  # as it is: layout, compression and attributes


def rewrite_dataset(node: h5py.Dataset, out: h5py.Group, name: str, chunk_images, bar) -> None:
    """Write ``node`` as ``out[name]``, uncompressed, contiguous or in chunks of ``chunk_images`` whole items."""
    count, item_shape = node.shape[0], node.shape[1:]
    chunks = (min(chunk_images, max(count, 1)), *item_shape) if chunk_images else None
    copy = out.create_dataset(name, shape=node.shape, dtype=node.dtype, chunks=chunks)
    for key, value in node.attrs.items():
        copy.attrs[key] = value
    item_bytes = node.dtype.itemsize * math.prod(item_shape)
    block = max(1, BLOCK_BYTES // max(item_bytes, 1))
    for start in range(0, count, block):
        values = node[start:start + block]
        copy[start:start + len(values)] = values
        bar.update(values.nbytes)


def cli(argv=None) -> int:
    """Command-line entry point of nenya.rechunk."""
    def add_arguments(parser):
        parser.add_argument("input", help="HDF5 file to read")
        parser.add_argument("output", help="new HDF5 file to write (never overwritten)")
        parser.add_argument("--keys", nargs="+", help="image datasets to rewrite (default: every dataset of rank "
                                                      "3 or more)")
        layout = parser.add_mutually_exclusive_group()
        layout.add_argument("--chunk-images", type=positive_int, metavar="N",
                            help="chunks of N whole images, uncompressed")
        layout.add_argument("--contiguous", action="store_true", help="one contiguous block, uncompressed "
                                                                      "(the default)")

    def run(args):
        layouts = rechunk(args.input, args.output, args.keys, args.chunk_images)
        for key, chunks in layouts.items():
            print(f"{args.output}:{key} " + (f"chunks {list(chunks)}" if chunks else "contiguous"))

    return run_cli("nenya.rechunk", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
