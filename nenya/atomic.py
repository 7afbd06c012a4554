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
