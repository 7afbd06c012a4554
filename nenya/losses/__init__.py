"""Losses, one file per family: contrastive (SupCon / SimCLR), reconstruction (spectral MAE), classification."""

from nenya.losses.classification import ClassificationLoss  # noqa: F401
from nenya.losses.contrastive import SupConLoss  # noqa: F401
from nenya.losses.reconstruction import MAESpectralLoss  # noqa: F401
