"""Atomic file writes: a temporary file beside the target, renamed over it only when writing succeeded.

A write that fails for want of space or permission is a :class:`~nenya.errors.WriteFailed` (one
``nenya: error:`` line naming the file and the free space); the target keeps its previous content.
"""

import errno
import glob
import json
import os
import shutil
from contextlib import contextmanager

from nenya.errors import WriteFailed

TEMPORARY_SUFFIX = ".tmp"
# errno values of a write that failed because of the disk or the permissions, not because of nenya
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def human_bytes(count: float) -> str:
    """``123 B``, ``4.5 MiB``, ``1.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def free_space(path: str) -> str:
    """Free space on the disk that holds ``path`` (its nearest existing folder), e.g. ``'1.2 GiB free'``."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return f"{human_bytes(shutil.disk_usage(folder or '/').free)} free"
    except OSError:
        return "free space unknown"


def _os_error(err: BaseException) -> OSError | None:
    """The OSError of a write failure in ``err`` or what caused it (torch and h5py wrap them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            text = str(err)
            if err.errno in WRITE_ERRNOS or "No space left" in text or "errno = 28" in text:
                return err
        err = err.__cause__ or err.__context__
    return None


def write_failure(err: BaseException, path: str) -> WriteFailed | None:
    """A WriteFailed naming ``path``, the reason and the free space, when ``err`` is a disk or permission error."""
    cause = _os_error(err)
    if cause is None:
        return None
    reason = cause.strerror or str(cause).strip().splitlines()[0]
    if "errno = 28" in str(cause) or cause.errno == errno.ENOSPC:
        reason = "No space left on device"
    kept = f"the previous {os.path.basename(path)} is intact" if os.path.exists(path) else "nothing was written"
    return WriteFailed(f"cannot write {path}: {reason} ({free_space(path)}); {kept}")


@contextmanager
def atomic_path(path: str, publish=os.replace):
    """Yield ``path + '.tmp'``; on success ``publish(temporary, path)`` gives it its name (by default replacing
    ``path``), on any failure it is removed.

    A disk-full or permission error becomes a WriteFailed naming ``path``.
    """
    temporary = f"{path}{TEMPORARY_SUFFIX}"
    try:
        yield temporary
        publish(temporary, path)
    except BaseException as err:
        if os.path.lexists(temporary):
            os.remove(temporary)
        failure = write_failure(err, path) if isinstance(err, Exception) else None
        if failure is not None:
            raise failure from None
        raise


def remove_temporaries(folder: str) -> list[str]:
    """Delete the ``*.tmp`` files an interrupted write left in ``folder`` and its subfolders; return them."""
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "**", f"*{TEMPORARY_SUFFIX}"), recursive=True))
    removed = []
    for path in found:
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
            removed.append(path)
    return removed


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


def write_png(figure, path: str, dpi: int = 100) -> str:
    """Save a matplotlib figure as a PNG atomically (never a half-written picture); return the path."""
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=dpi, format="png")
    except BaseException:
        import matplotlib.pyplot as plt

        plt.close(figure)
        raise
    return path
