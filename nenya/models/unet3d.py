"""3-D U-Net (Cicek et al. 2016, "3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation").

The plain :class:`nenya.models.blocks.UNet` on volumes [B, C, D, H, W]: two 3x3x3 convolutions
(norm, ReLU) per level, 2x2x2 max pooling, 2x2x2 transposed convolutions up, skips concatenated;
logits [B, num_classes, D, H, W]. Sizes that are not multiples of 2**(levels - 1) are padded
and cropped back.

Parameter count (1 input channel, 3 classes, batch norm, widths [32, 64, 128, 256] (default)):
5,601,187.
"""

from nenya.models.blocks import UNet, check_spatial_dims
from nenya.registry import register_model

DEFAULT_WIDTHS = (32, 64, 128, 256)


@register_model("unet3d")
def unet3d(*, nchannels: int = 1, num_classes: int = 3, spatial_dims: int = 3, widths=DEFAULT_WIDTHS,
           norm: str = "batch") -> UNet:
    """3-D U-Net baseline (``spatial_dims`` is accepted for uniform builders and must be 3)."""
    return UNet(check_spatial_dims(spatial_dims, allowed=(3,)), nchannels, num_classes, widths, norm)
