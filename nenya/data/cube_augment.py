"""Augmentations for hyperspectral cubes [C, H, W] with any band count; draws use torch's global RNG."""

import torch

from nenya.data.augment import Compose, RandomFlip
from nenya.errors import NenyaError


class CubeFlip(RandomFlip):
    """Flip a cube horizontally and vertically, each with probability 0.5."""

    def __repr__(self):
        return "CubeFlip()"


class CubeRot90:
    """Rotate by k x 90 degrees on the H, W axes, k uniform in 0..3 (only 0 or 2 on non-square cubes)."""

    def __call__(self, cube):
        height, width = cube.shape[-2:]
        if height == width:
            k = int(torch.randint(0, 4, ()))
        else:
            k = 2 * int(torch.randint(0, 2, ()))
        return torch.rot90(cube, k, dims=(-2, -1)) if k else cube

    def __repr__(self):
        return "CubeRot90()"


class CubeRandomCrop:
    """Cut a random size x size window out of the H, W axes."""

    def __init__(self, size):
        if not _is_positive_int(size):
            raise NenyaError(f"crop={size!r} is invalid; use a positive whole number of pixels")
        self.size = int(size)

    def __call__(self, cube):
        height, width = cube.shape[-2:]
        size = self.size
        if size > height or size > width:
            raise NenyaError(
                f"crop={size} is larger than the {height}x{width} cube (shape {tuple(cube.shape)}); "
                f"use a crop of at most {min(height, width)}"
            )
        top = int(torch.randint(0, height - size + 1, ()))
        left = int(torch.randint(0, width - size + 1, ()))
        return cube[..., top:top + size, left:left + size]

    def __repr__(self):
        return f"CubeRandomCrop(size={self.size})"


def build_cube_augmentation(flip, rot90, crop=None):
    """Compose the enabled cube augmentations in the order crop, rot90, flip (crop None or 0 is off)."""
    steps = []
    if crop:
        steps.append(CubeRandomCrop(crop))
    elif crop is not None and crop != 0:
        raise NenyaError(f"crop={crop!r} is invalid; use a positive whole number of pixels, 0 or null")
    if rot90:
        steps.append(CubeRot90())
    if flip:
        steps.append(CubeFlip())
    return Compose(steps)


def _is_positive_int(value):
    """Whether `value` is a whole number >= 1 (bools and strings excluded)."""
    try:
        return not isinstance(value, (bool, str)) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        return False
