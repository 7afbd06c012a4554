"""The option schema: every key nenya reads, declared one file per family, assembled into one table.

``OPTIONS`` lists every :class:`~nenya.options.base.Option` (general ones first), ``SCHEMA`` maps
name -> Option. ``ALIASES`` are other names accepted as written (the original Nenya's ``ssl_method`` /
``ssl_model``; the former ``cube_flip``); ``LEGACY_KEYS`` are keys of Nenya opts files that nenya
accepts with a warning and ignores.
"""

from nenya.options import classify, contrastive, general, hvit, mae, segment, supervised
from nenya.options.base import ALL, Option  # noqa: F401  (re-exported)

OPTIONS: list[Option] = [*general.OPTIONS, *contrastive.OPTIONS, *mae.OPTIONS, *hvit.OPTIONS,
                         *supervised.OPTIONS, *segment.OPTIONS, *classify.OPTIONS]
SCHEMA: dict[str, Option] = {option.name: option for option in OPTIONS}
ALIASES = {"ssl_method": "method", "ssl_model": "model", "cube_flip": "flip"}
LEGACY_KEYS = general.LEGACY_KEYS
