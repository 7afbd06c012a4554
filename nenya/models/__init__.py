"""The model families (one file each, plain torch), registered by name in :mod:`nenya.registry`."""

from torch import nn

from nenya.errors import NenyaError
from nenya.models import (attention_unet, dformer3d, hvit, mae_spectral, resnet_big,  # noqa: F401
                          unet3d)  # importing a model file registers it
from nenya.registry import MODELS, UnknownName, lookup


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model called ``name``, passing ``kwargs`` to its builder."""
    try:
        builder = lookup(MODELS, name, "model")
    except UnknownName as err:
        raise NenyaError(str(err)) from None
    return builder(**kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel."""
    return getattr(model, "module", model)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters of ``model`` (only those with requires_grad when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

