"""Synthetic hyperspectral cubes from a linear mixing model, made locally with numpy."""

import os

import numpy as np

from nenya.errors import NenyaError
from nenya.io.atomic import write_h5
from nenya.registry import register_builtin

# Sharpness of the softmax over endmember fields: higher gives purer, more patch-like regions.
_SHARPNESS = 3.0


def endmember_spectra(bands, endmembers, seed=0):
    """Smooth spectra [endmembers, bands] in (0, 1): a baseline plus a few Gaussian bumps each."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    axis = np.linspace(0.0, 1.0, bands)
    spectra = np.empty((endmembers, bands))
    for e in range(endmembers):
        bumps = rng.integers(1, 4)
        centres = rng.uniform(-0.1, 1.1, bumps)
        widths = rng.uniform(0.05, 0.25, bumps)
        heights = rng.uniform(0.3, 1.0, bumps)
        curve = rng.uniform(0.05, 0.3) + (heights * np.exp(-0.5 * ((axis[:, None] - centres) / widths) ** 2)).sum(1)
        spectra[e] = curve / curve.max() * rng.uniform(0.6, 0.95)
    return spectra.astype(np.float32)


def abundance_maps(n, endmembers, size, seed=0):
    """Smooth per-pixel abundances [n, endmembers, size, size] that are positive and sum to 1 over endmembers."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[1])
    noise = rng.standard_normal((n, endmembers, size, size), dtype=np.float32)
    # Gaussian low-pass in the frequency domain: spatial sigma of size / 16 pixels (periodic edges).
    sigma = max(size / 16.0, 1.0)
    freq2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
    transfer = np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * freq2).astype(np.float32)
    fields = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(size, size)).astype(np.float32)
    fields -= fields.mean(axis=(2, 3), keepdims=True)
    fields /= fields.std(axis=(2, 3), keepdims=True) + 1e-8
    fields *= _SHARPNESS
    fields -= fields.max(axis=1, keepdims=True)
    np.exp(fields, out=fields)
    fields /= fields.sum(axis=1, keepdims=True)
    return fields


def make_hyperspectral(n, bands=30, size=64, endmembers=4, noise=0.01, seed=0):
    """Cubes [n, bands, size, size] float32 in [0, 1]: abundances x shared spectra + Gaussian noise."""
    for name, value in (("n", n), ("bands", bands), ("size", size), ("endmembers", endmembers)):
        if int(value) != value or value < 1:
            raise NenyaError(f"{name}={value} is invalid for synthetic cubes; use a positive integer")
    if noise < 0:
        raise NenyaError(f"noise={noise} is negative; use a noise sigma >= 0")
    n, bands, size, endmembers = int(n), int(bands), int(size), int(endmembers)
    spectra = endmember_spectra(bands, endmembers, seed)
    abundances = abundance_maps(n, endmembers, size, seed)
    cubes = np.einsum("neyx,eb->nbyx", abundances, spectra, optimize=True).astype(np.float32, copy=False)
    if noise > 0:
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
        buffer = np.empty(cubes.shape[1:], dtype=np.float32)
        for cube in cubes:  # one cube at a time: cache-friendly and no second full-size array
            rng.standard_normal(out=buffer, dtype=np.float32)
            buffer *= np.float32(noise)
            cube += buffer
    np.clip(cubes, 0.0, 1.0, out=cubes)
    return cubes


@register_builtin("hyperspectral")
def write_hyperspectral_h5(path, n_train=256, n_valid=64, bands=30, size=64, seed=0, endmembers=4, noise=0.01):
    """Write synthetic cubes as `train`/`valid` (N, C, H, W) in Nenya's layout, atomically, with model attrs."""
    if n_train < 1 or n_valid < 1:
        raise NenyaError(f"n_train={n_train}, n_valid={n_valid} are invalid; use at least one cube in each")
    cubes = make_hyperspectral(n_train + n_valid, bands, size, endmembers, noise, seed)
    arrays = {"train": cubes[:n_train], "valid": cubes[n_train:]}
    attrs = {
        "source": "nenya.data.synthetic.make_hyperspectral (linear mixing model)",
        "description": "cube = sum over endmembers of abundance map x spectrum + Gaussian noise, clipped to [0, 1]; "
                       "abundances are smooth softmaxed random fields, spectra are shared by all cubes",
        "bands": bands,
        "size": size,
        "endmembers": endmembers,
        "noise": float(noise),
        "seed": int(seed),
        "endmember_spectra": endmember_spectra(bands, endmembers, seed),
    }
    return write_h5(os.fspath(path), arrays, attrs)
