"""Reading a batch of items (rows along the first axis) of one HDF5 dataset with few calls.

An unfiltered dataset (no compression, no checksums) keeps its values as plain bytes in the file: a
contiguous one in one block at ``dataset.id.get_offset()``, a chunked one in chunks. Where every item lies
whole at a known byte offset, items smaller than 1 MiB are read through a read-only ``numpy.memmap`` of
the file, which gathers a batch in one numpy call, several times faster than h5py. Larger items (cubes)
are read one h5py call each straight into the batch; anything else (compressed chunks, chunks that split
an item, storage never written) goes through h5py, one call per batch for a contiguous dataset and one per
chunk or per item for a chunked one, never more calls than one per item.
"""

import math
import os

import h5py
import numpy as np

PLAIN_KINDS = "biuf"  # numpy dtype kinds stored as plain numbers: bool, int, uint, float
# Items this large are read one h5py call each, straight into the batch: mapping them into a fresh DataLoader
# worker (a new process every epoch) costs more page faults than the call (cubes of 30 x 500 x 500: 1.5x).
LARGE_ITEM_BYTES = 1 << 20


def locate_rows(node: h5py.Dataset, path: str) -> tuple:
    """How to read ``node``'s items: ("memmap", byte offset), ("chunk-map", item byte offsets [N]) or ("h5py", why)."""
    count = node.shape[0]
    item_bytes = node.dtype.itemsize * math.prod(node.shape[1:])
    if count == 0 or node.dtype.kind not in PLAIN_KINDS or node.dtype.hasobject:
        return "h5py", "no items or not plain numbers"
    if node.is_virtual or node.external:
        return "h5py", "virtual or external storage"
    if item_bytes >= LARGE_ITEM_BYTES:
        return "h5py", "large items: one read each"
    plist = node.id.get_create_plist()
    if plist.get_nfilters():
        return "h5py", "compressed or filtered"
    layout = plist.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = node.id.get_offset()
        if offset is None:
            return "h5py", "storage not allocated"
        offsets = None
    elif layout == h5py.h5d.CHUNKED and tuple(node.chunks[1:]) == tuple(node.shape[1:]):
        offsets = item_offsets(node, item_bytes)
        if offsets is None:
            return "h5py", "chunks not all written"
        offset = int(offsets[0])
        if np.all(np.diff(offsets) == item_bytes):  # chunks one after another: one block after all
            offsets = None
    else:
        return "h5py", "compact layout or chunks that split items"
    end = offset + count * item_bytes if offsets is None else int(offsets.max()) + item_bytes
    if end > os.path.getsize(path):
        return "h5py", "the file is shorter than its dataset"
    return ("memmap", offset) if offsets is None else ("chunk-map", offsets)


def item_offsets(node: h5py.Dataset, item_bytes: int) -> np.ndarray | None:
    """Byte offset of every item [N] of a dataset chunked in whole items, or None if a chunk is missing."""
    per_chunk = node.chunks[0]
    chunks = -(-node.shape[0] // per_chunk)
    if node.id.get_num_chunks() != chunks:
        return None
    starts = np.full(chunks, -1, np.int64)

    def visit(info):
        if info.size == per_chunk * item_bytes and not info.filter_mask:
            starts[info.chunk_offset[0] // per_chunk] = info.byte_offset

    try:
        node.id.chunk_iter(visit)
    except (AttributeError, RuntimeError, NotImplementedError):  # an HDF5 older than 1.12.3: one call per chunk
        for number in range(chunks):
            visit(node.id.get_chunk_info(number))
    if (starts < 0).any():
        return None
    within = np.arange(per_chunk, dtype=np.int64) * item_bytes
    return (starts[:, None] + within[None, :]).reshape(-1)[:node.shape[0]]


class RowReader:
    """One process's reader of dataset ``key`` of ``path``, by the route :func:`locate_rows` chose."""

    def __init__(self, path: str, key: str, route: tuple):
        self.file = h5py.File(path, "r")
        self.node = self.file[key]
        self.mode = route[0]
        self.item_shape = tuple(self.node.shape[1:])
        self.rows = self.bytes = self.offsets = None
        if self.mode == "memmap":
            self.rows = np.memmap(path, dtype=self.node.dtype, mode="r", offset=route[1], shape=self.node.shape)
        elif self.mode == "chunk-map":
            self.bytes = np.memmap(path, dtype=np.uint8, mode="r")
            self.offsets = route[1]

    def read(self, positions: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` ``[len(positions), *item_shape]`` with the items at ``positions`` (any order, repeats too)."""
        if self.mode == "memmap":
            gather(self.rows, positions, out)
        elif self.mode == "chunk-map":
            self._read_chunk_map(positions, out)
        else:
            self._read_h5py(positions, out)

    def _read_chunk_map(self, positions, out):
        """Copy each item's bytes from where its chunk lies in the file."""
        dtype = self.node.dtype
        rows = out if out.dtype == dtype else np.empty(out.shape, dtype)
        flat = rows.reshape(len(positions), -1).view(np.uint8)  # [B, item bytes]
        size = flat.shape[1]
        for row, start in enumerate(self.offsets[positions].tolist()):
            flat[row] = self.bytes[start:start + size]
        if rows is not out:
            out[...] = rows

    def _read_h5py(self, positions, out):
        """Items through h5py: large uncompressed ones one call each into ``out``; else sorted unique items, then
        reordered: one call when contiguous; when chunked, one per run of items in one chunk or next to each
        other (one per item where few lie far apart in an uncompressed chunk)."""
        node = self.node
        compressed = node.chunks is not None and node.id.get_create_plist().get_nfilters() > 0
        item_bytes = node.dtype.itemsize * math.prod(self.item_shape)
        if item_bytes >= LARGE_ITEM_BYTES and not compressed and node.dtype == out.dtype:
            for row, position in enumerate(positions.tolist()):  # one call each, straight into the batch
                node.read_direct(out, np.s_[position], np.s_[row])
            return
        unique, inverse = np.unique(positions, return_inverse=True)
        if node.chunks is None:  # contiguous: one sorted fancy read
            rows = node[unique[0]:unique[0] + 1] if len(unique) == 1 else node[unique]
        else:
            rows = np.empty((len(unique), *self.item_shape), node.dtype)
            chunk_of = unique // node.chunks[0]
            bounds = np.flatnonzero((np.diff(chunk_of) > 0) & (np.diff(unique) > 1)) + 1  # same chunk or neighbours
            for members in np.split(np.arange(len(unique)), bounds):
                first, last = int(unique[members[0]]), int(unique[members[-1]])
                if compressed or last - first + 1 <= 2 * len(members):  # one call: the span (whole chunks decompress)
                    rows[members] = node[first:last + 1][unique[members] - first]
                else:  # few items far apart in one uncompressed chunk: one call each, like per-item reads
                    for member in members:
                        rows[member] = node[int(unique[member])]
        gather(rows, inverse, out)


def gather(rows: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = rows[positions]`` in one pass when the dtypes match (a conversion otherwise)."""
    if rows.dtype == out.dtype:
        np.take(rows, positions, axis=0, out=out, mode="clip")  # positions are checked: clip never clips
    else:
        out[...] = rows[positions]
