"""The method registry: ``ssl_method`` name -> Method class (one file per method family)."""

from nenya.methods.base import Method
from nenya.methods.contrastive import SimCLR, SupCon
from nenya.methods.mae import MAE

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, SupCon, MAE)}


def get_method(opt) -> Method:
    """The Method object for ``opt.ssl_method`` (options already validated)."""
    return METHODS[opt.ssl_method](opt)
