"""Synthetic segmentation data made locally with numpy and scipy: 2-D rosettes, 3-D organ and tumour volumes.

- ``builtin:segment2d``: 2-channel 64 x 64 patches (N, 2, 64, 64) float32 with binary masks
  (N, 64, 64) uint8. Each patch holds 1-4 "rosettes": flower-shaped blobs (radius 5-9 px, 5-7
  petals) bright in channel 0, with a bright rim and a dark central lumen in channel 1; plus 0-3
  small round distractor dots in channel 0 only (not in the mask), over a smooth textured
  background and Gaussian noise.
- ``builtin:segment3d``: 1-channel 32^3 volumes (N, 1, 32, 32, 32) float32 with labels
  (N, 32, 32, 32) uint8: 0 background, 1 organ (a bumpy ellipsoid, semi-axes 7-12 voxels),
  2 tumour (a sphere of radius 4-6 voxels inside the organ, not touching the background, darker
  than the organ), over a textured background and Gaussian noise.

Both have ``train``, ``valid`` and ``test`` images with ``{key}_masks`` in Nenya's layout; each
split comes from its own seed stream, so the same ``seed`` gives the same files and changing one
split's size leaves the others as they were.
"""

import os

import numpy as np
from scipy import ndimage

from nenya.errors import NenyaError
from nenya.io.atomic import write_h5
from nenya.registry import register_builtin

SPLITS = ("train", "valid", "test")


def _rngs(seed: int, n: int, split: int) -> list[np.random.Generator]:
    """One generator per sample of split number ``split``, independent of the other splits' sizes."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, split]).spawn(n)]


def _texture(rng: np.random.Generator, shape, sigma: float, amplitude: float) -> np.ndarray:
    """A smooth random field of ``shape`` with standard deviation ``amplitude`` (Gaussian-filtered noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-8) * amplitude


def rosette_patch(rng: np.random.Generator, size: int = 64, noise: float = 0.08):
    """One patch [2, size, size] float32 and its rosette mask [size, size] uint8."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    image = np.stack([0.2 + _texture(rng, (size, size), 4.0, 0.05) for _ in range(2)])
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(6, size - 6, 2)
        radius, petals, phase = rng.uniform(5, 9), rng.integers(5, 8), rng.uniform(0, 2 * np.pi)
        dist, angle = np.hypot(y - cy, x - cx), np.arctan2(y - cy, x - cx)
        edge = radius * (1 + 0.18 * np.cos(petals * angle + phase))  # petal outline r(theta)
        inside = dist <= edge
        mask |= inside
        image[0] += 0.5 * inside * (0.7 + 0.3 * np.cos(petals * angle + phase))
        image[1] += 0.45 * inside * np.clip(dist / edge, 0, 1) ** 2 - 0.15 * (dist < 0.3 * radius)
    for _ in range(rng.integers(0, 4)):  # distractors: small round dots in channel 0 only
        cy, cx = rng.uniform(2, size - 2, 2)
        image[0] += 0.4 * (np.hypot(y - cy, x - cx) <= rng.uniform(1.5, 2.5))
    image += rng.normal(0.0, noise, image.shape)
    return image.astype(np.float32), mask.astype(np.uint8)


def organ_volume(rng: np.random.Generator, size: int = 32, noise: float = 0.08):
    """One volume [1, size, size, size] float32 and its labels [size, size, size] uint8 (0, 1 organ, 2 tumour)."""
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float64)
    centre = size / 2 + rng.uniform(-3, 3, 3) * size / 32
    axes = rng.uniform(7, 12, 3) * size / 32
    radial = np.sqrt(sum(((c - m) / a) ** 2 for c, m, a in zip((z, y, x), centre, axes)))
    organ = radial + _texture(rng, (size,) * 3, 3.0, 0.06) <= 1.0  # a bumpy ellipsoid
    depth_inside = ndimage.distance_transform_edt(organ)  # distance to the nearest background voxel
    tumour_radius = min(rng.uniform(4, 6) * size / 32, depth_inside.max() - 1.5)  # smaller in a small organ
    inner = np.argwhere(depth_inside >= tumour_radius + 1.5)  # centres whose sphere keeps off the background
    tumour_centre = inner[rng.integers(len(inner))]
    tumour = organ & (np.sqrt(sum((c - m) ** 2 for c, m in zip((z, y, x), tumour_centre))) <= tumour_radius)
    labels = organ.astype(np.uint8) + tumour.astype(np.uint8)
    volume = 0.15 + _texture(rng, (size,) * 3, 2.0, 0.05)
    volume += np.where(tumour, 0.3, np.where(organ, 0.6, 0.0)) + organ * _texture(rng, (size,) * 3, 1.5, 0.04)
    volume += rng.normal(0.0, noise, volume.shape)
    return volume[None].astype(np.float32), labels


def _check_counts(**counts) -> None:
    """NenyaError unless every split count is a positive integer."""
    for name, value in counts.items():
        if int(value) != value or value < 1:
            raise NenyaError(f"{name}={value} is invalid for synthetic segmentation data; use at least one sample")


def _write(path, make, counts: dict, seed: int, attrs: dict) -> str:
    """Make every split with ``make(rng)`` and write images and ``{key}_masks`` atomically."""
    arrays = {}
    for number, key in enumerate(SPLITS):
        pairs = [make(rng) for rng in _rngs(seed, counts[key], number)]
        arrays[key] = np.stack([image for image, _ in pairs])
        arrays[f"{key}_masks"] = np.stack([mask for _, mask in pairs])
    return write_h5(os.fspath(path), arrays, dict(attrs, seed=int(seed)))


@register_builtin("segment2d")
def write_segment2d_h5(path, n_train: int = 96, n_valid: int = 32, n_test: int = 32, size: int = 64,
                       noise: float = 0.08, seed: int = 0) -> str:
    """Write 2-channel rosette patches with binary masks (train/valid/test) in Nenya's layout, atomically."""
    _check_counts(n_train=n_train, n_valid=n_valid, n_test=n_test, size=size)
    attrs = {"source": "nenya.data.synthetic_segmentation.rosette_patch",
             "description": "2-channel patches with 1-4 flower-shaped rosettes (mask 1) and distractor dots",
             "n_classes": 2, "size": size, "noise": float(noise)}
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    return _write(path, lambda rng: rosette_patch(rng, size, noise), counts, seed, attrs)


@register_builtin("segment3d")
def write_segment3d_h5(path, n_train: int = 32, n_valid: int = 8, n_test: int = 8, size: int = 32,
                       noise: float = 0.08, seed: int = 0) -> str:
    """Write 1-channel volumes labelled background / organ / tumour (train/valid/test), atomically."""
    _check_counts(n_train=n_train, n_valid=n_valid, n_test=n_test, size=size)
    attrs = {"source": "nenya.data.synthetic_segmentation.organ_volume",
             "description": "volumes with an ellipsoidal organ (label 1) holding a darker spherical tumour (label 2)",
             "n_classes": 3, "class_names": "background,organ,tumour", "size": size, "noise": float(noise)}
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    return _write(path, lambda rng: organ_volume(rng, size, noise), counts, seed, attrs)
