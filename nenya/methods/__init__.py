"""The training methods, one file per family, registered by name in :mod:`nenya.registry`."""

from nenya.errors import NenyaError
from nenya.methods import classify, contrastive, mae, segment  # noqa: F401  (importing a method file registers it)
from nenya.methods.base import Method
from nenya.registry import METHODS, UnknownName, lookup


def get_method(opt) -> Method:
    """The Method object for ``opt.method`` (options already validated)."""
    try:
        return lookup(METHODS, opt.method, "method")(opt)
    except UnknownName as err:
        raise NenyaError(str(err)) from None
