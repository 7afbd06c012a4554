"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas"), 2-D or 3-D.

A U-Net (:class:`nenya.models.blocks.UNet`) whose skips pass through additive attention gates.
At each decoder level the skip x ``[B, C, *S]`` is gated by g ``[B, C_g, *S / 2]``, the coarser
decoder features (the bottleneck at the deepest level)::

    q     = ReLU(W_x x + W_g g + b_g)        # [B, C / 2, *S / 2]
    alpha = sigmoid(psi q + b_psi)           # [B, 1, *S / 2], upsampled (bi/trilinear) to *S
    out   = x * alpha                        # [B, C, *S]

W_x is a 2x2 stride-2 convolution (it brings x to g's grid, as in the paper), W_g and psi are
1x1 convolutions, and the inner width is C / 2. The gated skip is concatenated with the
upsampled g and refined by two 3x3 convolutions.

Parameter counts (2 input channels, 1 class, batch norm; see :func:`nenya.models.count_parameters`):
widths [32, 64, 128, 256, 512] (default): 8,024,357; widths [64, 128, 256, 512, 1024] (the paper's):
32,082,501.
"""

import torch
import torch.nn.functional as F
from torch import nn

from nenya.models.blocks import UNet, check_spatial_dims, conv_nd
from nenya.registry import register_model

DEFAULT_WIDTHS = (32, 64, 128, 256, 512)


class AttentionGate(nn.Module):
    """Additive attention gate: skip x ``[B, C, *S]`` times alpha ``[B, 1, *S]`` from x and g ``[B, C_g, *S/2]``."""

    def __init__(self, spatial_dims: int, skip_channels: int, gate_channels: int):
        super().__init__()
        conv = conv_nd(check_spatial_dims(spatial_dims))
        inner = max(skip_channels // 2, 1)
        self.w_x = conv(skip_channels, inner, 2, stride=2, bias=False)
        self.w_g = conv(gate_channels, inner, 1)
        self.psi = conv(inner, 1, 1)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """alpha ``[B, 1, *S]`` in (0, 1) for skip x ``[B, C, *S]`` and gating signal g ``[B, C_g, *S / 2]``."""
        q = F.relu(self.w_x(x) + self.w_g(g))  # [B, C / 2, *S / 2]
        alpha = torch.sigmoid(self.psi(q))  # [B, 1, *S / 2]
        return F.interpolate(alpha, size=x.shape[2:], mode=self.mode, align_corners=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The gated skip x * alpha ``[B, C, *S]``."""
        return x * self.attention(x, g)


class AttentionUNet(UNet):
    """U-Net with an :class:`AttentionGate` on every skip; logits ``[B, num_classes, *S]`` for any input size.

    ``num_classes`` 1 gives one logit channel (binary, sigmoid), K > 1 gives K channels (softmax).
    """

    def __init__(self, spatial_dims: int = 2, nchannels: int = 1, num_classes: int = 1, widths=DEFAULT_WIDTHS,
                 norm: str = "batch"):
        widths = list(widths)
        super().__init__(spatial_dims, nchannels, num_classes, widths, norm,
                         gate=lambda level: AttentionGate(spatial_dims, widths[level], widths[level + 1]))


@register_model("attention_unet")
def attention_unet(*, nchannels: int = 1, num_classes: int = 1, spatial_dims: int = 2, widths=DEFAULT_WIDTHS,
                   norm: str = "batch") -> AttentionUNet:
    """Attention U-Net (Oktay et al. 2018), 2-D or 3-D, batch or instance norm."""
    return AttentionUNet(spatial_dims, nchannels, num_classes, widths, norm)
