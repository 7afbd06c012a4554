"""Augmentation severity presets of classification, applied to whole batches on the device with kornia.

=============  ==========================================================================================
preset         what each training image gets (p: probability per image)
=============  ==========================================================================================
none           nothing
light          random resized crop (scale 0.8-1, ratio 3/4-4/3, back to H x W), horizontal flip (p 0.5)
moderate       random resized crop (scale 0.5-1), horizontal and vertical flips (p 0.5 each),
               rotation up to 15 degrees (p 0.5), colour jitter 0.2 / 0.2 / 0.2 / 0.05 (p 0.8, RGB only)
aggressive     random resized crop (scale 0.25-1), horizontal and vertical flips (p 0.5 each), rotation up
               to 30 degrees (p 0.5), colour jitter 0.4 / 0.4 / 0.4 / 0.1 (p 0.8, RGB only), grayscale
               (p 0.2, RGB only), Gaussian blur (kernel 5, sigma 0.1-2, p 0.3), random erasing (2-20 % of
               the area, p 0.25)
=============  ==========================================================================================

Colour jitter and grayscale need exactly 3 channels (RGB); with any other channel count a preset
applies its geometric and channel-free parts to every channel alike (extra spectral bands move with
the image). kornia draws from torch's global generator; ``augment_batch`` runs it inside a forked
generator seeded with ``derive_seed(seed, epoch, *item indices)``, so a batch's augmentation depends
only on the run's seed, the epoch and which items it holds (a resumed run draws the same, bit for bit
on the CPU), and the training generator is left alone.
"""


import torch
from torch import nn

from nenya.data.batch_transforms import batch_generator
from nenya.errors import NenyaError

PRESETS = ("none", "light", "moderate", "aggressive")

def build_preset(name: str, size: tuple[int, int], channels: int) -> nn.Module | None:
    """The kornia pipeline of preset ``name`` for images [B, channels, H, W] of ``size`` (H, W); None for "none"."""
    import kornia.augmentation as K

    if name not in PRESETS:
        raise NenyaError(f"augment_preset '{name}' is unknown; choose from: {', '.join(PRESETS)}")
    if name == "none":
        return None
    rgb = channels == 3
    if name == "light":
        steps = [K.RandomResizedCrop(size, scale=(0.8, 1.0)), K.RandomHorizontalFlip(p=0.5)]
    else:
        strong = name == "aggressive"
        steps = [K.RandomResizedCrop(size, scale=(0.25, 1.0) if strong else (0.5, 1.0)),
                 K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5),
                 K.RandomRotation(30.0 if strong else 15.0, p=0.5)]
        if rgb:
            jitter = (0.4, 0.4, 0.4, 0.1) if strong else (0.2, 0.2, 0.2, 0.05)
            steps.append(K.ColorJitter(*jitter, p=0.8))
        if strong:
            if rgb:
                steps.append(K.RandomGrayscale(p=0.2))
            steps += [K.RandomGaussianBlur((5, 5), (0.1, 2.0), p=0.3), K.RandomErasing((0.02, 0.2), p=0.25)]
    return K.AugmentationSequential(*steps)

def augment_batch(pipeline: nn.Module | None, images: torch.Tensor, seed: int, epoch: int,
                  indices: torch.Tensor) -> torch.Tensor:
    """``pipeline`` applied to images [B, C, H, W] with draws seeded by (seed, epoch, the items' indices)."""
    if pipeline is None:
        return images
    with batch_generator(seed, epoch, indices, images.device):
        return pipeline(images.float()).to(images.dtype)  # [B, C, H, W]

def check_preset_size(name: str, size) -> None:
    """A NenyaError when images are too small for a preset's 5-pixel blur kernel or crops (below 8 pixels)."""
    if name != "none" and min(size) < 8:
        raise NenyaError(f"augment_preset '{name}' needs images of at least 8 x 8 pixels, got "
                         f"{size[0]} x {size[1]}; use augment_preset none")

