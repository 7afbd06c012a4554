"""Atomic file writes: a temporary file beside the target, renamed over it only when writing succeeded."""

import json
import os
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str):
    """Yield ``path + '.tmp'``; on success it replaces ``path``, on any failure it is removed."""
    temporary = f"{path}.tmp"
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path: str, value, **dump_options) -> None:
    """Write ``value`` as JSON to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "w") as handle:
        json.dump(value, handle, **dump_options)


def write_h5(path: str, arrays: dict, attrs: dict | None = None) -> str:
    """Write datasets (name -> array) and file attributes to an HDF5 file atomically; return the path."""
    import h5py

    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        for name, array in arrays.items():
            handle.create_dataset(name, data=array)
        handle.attrs.update(attrs or {})
    return path
