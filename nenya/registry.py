"""Name -> class tables (methods, models, built-in data), their register decorators and did-you-mean lookup.

This module imports nothing else from nenya, so every other module can register into it without an
import cycle. The tables are filled when ``nenya.methods``, ``nenya.models`` and ``nenya.data`` are
imported (each of their files registers what it defines).
"""

import difflib

METHODS: dict = {}
MODELS: dict = {}
BUILTIN_DATA: dict = {}


class UnknownName(LookupError):
    """A name that is not in a table; the message lists the known names and the closest one."""


def _register(table: dict, kind: str, names):
    def register(thing):
        for name in names:
            if name in table:
                raise ValueError(f"{kind} name {name!r} is already registered")
            table[name] = thing
        return thing
    return register


def register_method(*names: str):
    """Decorator that registers a Method class under each of ``names``."""
    return _register(METHODS, "method", names)


def register_model(*names: str):
    """Decorator that registers a model builder under each of ``names``."""
    return _register(MODELS, "model", names)


def register_builtin(*names: str):
    """Decorator that registers a built-in data writer ``writer(path)`` under each of ``names``."""
    return _register(BUILTIN_DATA, "built-in data", names)


def did_you_mean(word: str, candidates) -> str:
    """'; did you mean 'x'?' for the closest candidate, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def lookup(table: dict, name: str, kind: str):
    """``table[name]``, or UnknownName naming the known names and the closest one."""
    if name in table:
        return table[name]
    raise UnknownName(f"unknown {kind} '{name}'{did_you_mean(name, table)} "
                      f"(choose from: {', '.join(sorted(table))})")
