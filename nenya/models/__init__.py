"""Model registry: every model family registers its builders here under a name."""

import difflib
from typing import Callable

from torch import nn

from nenya.errors import NenyaError

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(*names: str) -> Callable:
    """Decorator that registers a model builder under each of `names`."""

    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for name in names:
            if name in MODEL_BUILDERS:
                raise ValueError(f"model name {name!r} is already registered")
            MODEL_BUILDERS[name] = builder
        return builder

    return register


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model called `name`, passing `kwargs` to its builder."""
    if name not in MODEL_BUILDERS:
        close = difflib.get_close_matches(name, MODEL_BUILDERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise NenyaError(
            f"unknown model {name!r}{hint} (choose from: {', '.join(sorted(MODEL_BUILDERS))})"
        )
    return MODEL_BUILDERS[name](**kwargs)


# Importing a model module registers its builders; these imports must stay below the registry.
from nenya.models import resnet_big  # noqa: E402,F401
from nenya.models import mae_spectral  # noqa: E402,F401
