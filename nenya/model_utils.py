"""Small helpers on models that every method and the loop share."""

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel."""
    return getattr(model, "module", model)
