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


def encoder_options(opt, img_size) -> dict:
    """The keyword arguments of ``opt.model``'s builder beyond nchannels: the HViT geometry for "hvit" (built for
    images of ``img_size`` pixels), none for the ResNets."""
    if opt.model != "hvit":
        return {}
    return {"img_size": img_size, "patch_size": opt.hvit_patch_size, "embed_dim": opt.embed_dim,
            "depths": tuple(opt.depths), "num_heads": tuple(opt.num_heads), "window_size": opt.window_size,
            "attention": opt.attention, "drop_path_rate": opt.drop_path_rate,
            "spectral_channels": opt.spectral_channels}
