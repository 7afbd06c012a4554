"""Where a run's data file is: data_folder/images_file, or a built-in data set made on first use."""

import os

from nenya.data.builtin import resolve_builtin
from nenya.errors import NenyaError


def images_path(opt) -> str:
    """The HDF5 file the options point to; a NenyaError when it is not given or does not exist."""
    if not opt.images_file:
        raise NenyaError(f"option 'images_file' is required for {opt.ssl_method}: an HDF5 file under "
                         f"data_folder, or builtin:digits")
    builtin = resolve_builtin(opt.images_file, opt.data_folder)
    if builtin is not None:
        return builtin
    path = os.path.join(opt.data_folder, opt.images_file)
    if not os.path.isfile(path):
        raise NenyaError(f"images_file {path} does not exist (option 'images_file' under data_folder "
                         f"'{opt.data_folder}')")
    return path
