"""The augmentation vocabulary, as tensor operations on one image [C, H, W] or cube (any C, CPU or GPU).

Nenya's image augmentations (rotate, flip, jitter-crop, noise, demean) and the cube augmentations of
the MAE (random and centre crop, 90-degree rotations, flips). Every random draw comes from torch's
global RNG, so torch.manual_seed makes runs repeatable. Images with extra leading axes ([C, D, H, W])
are treated as a stack of [H, W] planes.
"""

import math

import torch
import torch.nn.functional as F

from nenya.errors import NenyaError


class Compose:
    """Apply transforms one after another."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class RandomFlip:
    """Flip horizontally and vertically, each with probability 0.5."""

    def __call__(self, image):
        flip_h, flip_v = (torch.rand(2) < 0.5).tolist()
        dims = [d for d, on in ((-1, flip_h), (-2, flip_v)) if on]
        return image.flip(dims) if dims else image

    def __repr__(self):
        return "RandomFlip()"


def rotate(image, degrees, padding_mode="zeros"):
    """Rotate [..., H, W] counter-clockwise by `degrees` about the centre (bilinear; like torch.rot90 for 90)."""
    height, width = image.shape[-2:]
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    # affine_grid maps output to input in coordinates normalised per axis; rescale so the
    # rotation happens in pixel units and non-square images are not sheared.
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]],
        dtype=image.dtype,
        device=image.device,
    )
    planes = image.reshape(1, -1, height, width)
    grid = F.affine_grid(theta[None], list(planes.shape), align_corners=False)
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.reshape(image.shape)


class RandomRotate:
    """Rotate by an angle uniform in [-max_degrees, max_degrees]; corners filled with zeros."""

    def __init__(self, max_degrees=180.0, padding_mode="zeros"):
        self.max_degrees = float(max_degrees)
        self.padding_mode = padding_mode

    def __call__(self, image):
        angle = (torch.rand(()).item() * 2.0 - 1.0) * self.max_degrees
        return rotate(image, angle, self.padding_mode)

    def __repr__(self):
        return f"RandomRotate(max_degrees={self.max_degrees})"


class JitterCrop:
    """Crop a crop x crop window near the centre (integer jitter up to `jitter`), resize back to H x W."""

    def __init__(self, crop, jitter):
        crop, jitter = int(crop), int(jitter)
        if crop < 1 or jitter < 0:
            raise NenyaError(
                f"random_cropjitter=[{crop}, {jitter}] is invalid; use [crop, jitter] with crop >= 1 and jitter >= 0"
            )
        self.crop = crop
        self.jitter = jitter

    def __call__(self, image):
        height, width = image.shape[-2:]
        crop = self.crop
        if crop > height or crop > width:
            raise NenyaError(
                f"random_cropjitter=[{crop}, {self.jitter}] crops {crop} pixels but the images are "
                f"{height}x{width}; use a crop of at most {min(height, width)}"
            )
        dy, dx = torch.randint(-self.jitter, self.jitter + 1, (2,)).tolist()
        top = min(max((height - crop) // 2 + dy, 0), height - crop)
        left = min(max((width - crop) // 2 + dx, 0), width - crop)
        window = image[..., top:top + crop, left:left + crop]
        if (crop, crop) == (height, width):
            return window
        planes = window.reshape(1, -1, crop, crop)
        out = F.interpolate(planes, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
        return out.reshape(image.shape)

    def __repr__(self):
        return f"JitterCrop(crop={self.crop}, jitter={self.jitter})"


class GaussianNoise:
    """Add noise drawn from N(0, sigma^2) to every pixel."""

    def __init__(self, sigma):
        self.sigma = float(sigma)

    def __call__(self, image):
        return image + self.sigma * torch.randn_like(image)

    def __repr__(self):
        return f"GaussianNoise(sigma={self.sigma})"


class Demean:
    """Subtract the image's mean over all pixels and channels."""

    def __call__(self, image):
        return image - image.mean()

    def __repr__(self):
        return "Demean()"


def build_augmentation(flip, rotate, random_cropjitter, gauss_noise, demean):
    """Compose the enabled augmentations in Nenya's order: rotate, flip, jitter-crop, noise, demean."""
    steps = []
    if rotate:
        steps.append(RandomRotate())
    if flip:
        steps.append(RandomFlip())
    crop_jitter = _parse_cropjitter(random_cropjitter)
    if crop_jitter is not None:
        steps.append(JitterCrop(*crop_jitter))
    if gauss_noise:
        if gauss_noise < 0:
            raise NenyaError(f"gauss_noise={gauss_noise} is negative; use a noise sigma >= 0 (0 turns it off)")
        steps.append(GaussianNoise(gauss_noise))
    if demean:
        steps.append(Demean())
    return Compose(steps)


def _parse_cropjitter(value):
    """Return (crop, jitter) from Nenya's random_cropjitter option, or None when it is off."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) not in (0, 2):
        raise NenyaError(f"random_cropjitter={value!r} is invalid; use [crop, jitter], [] or null")
    if len(value) == 0:
        return None
    try:
        crop, jitter = (int(v) for v in value)
    except (TypeError, ValueError):
        raise NenyaError(f"random_cropjitter={value!r} is invalid; use two integers [crop, jitter]") from None
    if crop == 0 and jitter == 0:
        return None
    return crop, jitter


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


class CubeCenterCrop:
    """Cut the central size x size window out of the H, W axes (the validation counterpart of CubeRandomCrop)."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, cube):
        height, width = cube.shape[-2:]
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return cube[..., top:top + self.size, left:left + self.size]

    def __repr__(self):
        return f"CubeCenterCrop(size={self.size})"


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
        steps.append(RandomFlip())
    return Compose(steps)


def _is_positive_int(value):
    """Whether `value` is a whole number >= 1 (bools and strings excluded)."""
    try:
        return not isinstance(value, (bool, str)) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        return False
