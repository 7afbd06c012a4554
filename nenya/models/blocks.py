"""Building blocks of the convolutional segmentation models, 2-D or 3-D by ``spatial_dims``.

:class:`UNet` is the encoder-decoder both :mod:`nenya.models.attention_unet` and
:mod:`nenya.models.unet3d` are made of: at each level two 3x3 convolutions (each followed by a
norm and ReLU), 2x2 max pooling down, a 2x2 stride-2 transposed convolution up, the skip
concatenated with the upsampled features. A ``gate`` module per level may rewrite the skip
before the concatenation (the attention gates of the Attention U-Net); without gates it is the
plain U-Net of Ronneberger et al. (2015) / Cicek et al. (2016).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from nenya.errors import NenyaError

NORMS = ("batch", "instance")


def check_spatial_dims(spatial_dims: int, allowed=(2, 3)) -> int:
    """Return ``spatial_dims`` if it is one of ``allowed``, else a NenyaError."""
    if spatial_dims not in allowed:
        raise NenyaError(f"spatial_dims={spatial_dims} is not supported; use "
                         f"{' or '.join(str(a) for a in allowed)}")
    return spatial_dims


def check_widths(widths, minimum: int = 2) -> list[int]:
    """``widths`` as a list of positive ints with at least ``minimum`` levels, else a NenyaError."""
    widths = list(widths)
    if len(widths) < minimum or any(int(w) != w or w < 1 for w in widths):
        raise NenyaError(f"widths={widths} is invalid; give at least {minimum} positive integers, "
                         f"one per level, e.g. [32, 64, 128, 256, 512]")
    return [int(w) for w in widths]


def check_classes(num_classes: int, nchannels: int) -> None:
    """NenyaError unless ``num_classes`` and ``nchannels`` are positive integers."""
    for name, value in (("num_classes", num_classes), ("nchannels", nchannels)):
        if int(value) != value or value < 1:
            raise NenyaError(f"{name}={value} is invalid; use a positive integer")


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d or nn.Conv3d."""
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def norm_nd(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    """A batch or instance (affine) norm over ``channels`` for 2-D or 3-D feature maps."""
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    raise NenyaError(f"norm={kind!r} is not supported; choose from: {', '.join(NORMS)}")


class ConvBlock(nn.Sequential):
    """(3x3 conv without bias -> norm -> ReLU) twice: ``[B, C_in, *S]`` -> ``[B, C_out, *S]``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str = "batch"):
        conv = conv_nd(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            norm_nd(norm, spatial_dims, out_channels), nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            norm_nd(norm, spatial_dims, out_channels), nn.ReLU(inplace=True),
        )


def pad_to_multiple(x: torch.Tensor, multiple) -> torch.Tensor:
    """Zero-pad the far end of each spatial axis of x ``[B, C, *S]`` up to a multiple of ``multiple``.

    ``multiple`` is one int for every axis or one per axis. Returns x itself when nothing is needed.
    """
    sizes = x.shape[2:]
    multiple = [multiple] * len(sizes) if isinstance(multiple, int) else list(multiple)
    extra = [math.ceil(n / m) * m - n for n, m in zip(sizes, multiple)]
    if not any(extra):
        return x
    pad = []
    for amount in reversed(extra):  # F.pad lists the last axis first
        pad += [0, amount]
    return F.pad(x, pad)


def crop_to(x: torch.Tensor, sizes) -> torch.Tensor:
    """The leading ``sizes`` of each spatial axis of x ``[B, C, *S]`` (undoes :func:`pad_to_multiple`)."""
    if tuple(x.shape[2:]) == tuple(sizes):
        return x
    return x[(slice(None), slice(None)) + tuple(slice(0, n) for n in sizes)]


class UNet(nn.Module):
    """U-Net with an optional gate on every skip; logits ``[B, num_classes, *S]`` for any input size.

    ``widths[i]`` is the channel count of level i (level 0 full resolution, the last one the
    bottleneck at 1 / 2**(len(widths) - 1)). ``gate(level)`` builds the module that takes
    (skip ``[B, widths[level], *S_l]``, g ``[B, widths[level + 1], *S_l / 2]``) and returns the skip
    to concatenate; ``None`` concatenates the skip as it is. An input whose sizes are not
    multiples of 2**(len(widths) - 1) is zero-padded at the far end and the logits cropped back.
    Weights and feature maps are kept channels-last (``torch.channels_last`` / ``channels_last_3d``).
    """

    def __init__(self, spatial_dims: int, nchannels: int, num_classes: int, widths, norm: str = "batch",
                 gate=None):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_classes(num_classes, nchannels)
        widths = check_widths(widths)
        norm_nd(norm, spatial_dims, 1)  # a bad norm name fails here, before any layer is built
        self.widths, self.num_classes = widths, num_classes
        self.multiple = 2 ** (len(widths) - 1)
        conv = conv_nd(spatial_dims)
        up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(2)
        self.encoder = nn.ModuleList(
            ConvBlock(spatial_dims, c_in, c_out, norm) for c_in, c_out in zip([nchannels] + widths, widths))
        levels = range(len(widths) - 2, -1, -1)  # decoder levels, coarse to fine
        self.ups = nn.ModuleList(up(widths[i + 1], widths[i], 2, stride=2) for i in levels)
        self.gates = nn.ModuleList(gate(i) if gate else nn.Identity() for i in levels)
        self.decoder = nn.ModuleList(ConvBlock(spatial_dims, 2 * widths[i], widths[i], norm) for i in levels)
        self.head = conv(widths[0], num_classes, 1)
        # Channels-last feature maps: about 10 % (2-D) to 25 % (3-D) faster training steps on the CPU
        self.memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        self.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, *S]`` of images x ``[B, nchannels, *S]``."""
        sizes = x.shape[2:]
        x = pad_to_multiple(x, self.multiple).contiguous(memory_format=self.memory_format)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))  # [B, widths[level], *S / 2**level]
            skips.append(x)
        g = skips.pop()  # the bottleneck gates the deepest skip
        for up, gate, block in zip(self.ups, self.gates, self.decoder):
            skip = skips.pop()
            gated = skip if isinstance(gate, nn.Identity) else gate(skip, g)
            g = block(torch.cat([gated, up(g)], dim=1))  # [B, widths[level], *S_level]
        return crop_to(self.head(g), sizes)
