"""Losses, one file per family: contrastive (SupCon / SimCLR), reconstruction (spectral MAE)."""

from nenya.losses.contrastive import SupConLoss  # noqa: F401
from nenya.losses.reconstruction import MAESpectralLoss  # noqa: F401
