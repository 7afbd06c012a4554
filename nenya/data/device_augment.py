"""Where the random augmentation of a run happens: per sample in DataLoader workers, or per batch on the device.

``augment_on: "workers"`` keeps the per-sample transforms inside the data sets (today's path).
``augment_on: "device"`` leaves the data sets un-augmented (batched reads, no per-item work in the
workers) and augments each batch on the training device after the transfer:

- contrastive ``augment: "nenya"``: :func:`nenya.data.batch_transforms.two_views`, item i's views drawn
  from ``derive_seed(seed, epoch, index_i)``;
- contrastive ``augment: "simclr_rgb"`` / ``"simclr_geometric"``: :class:`SimCLRAugment` (kornia) on the
  batch, its draws from torch's global RNG reseeded per batch with ``derive_seed(seed, epoch, *indices)``
  inside ``fork_rng`` (the training RNG is left alone);
- MAE cubes: :func:`nenya.data.batch_transforms.augment_cubes`, item i from ``derive_seed(seed, epoch,
  index_i, 1)``.

Either way the draws depend only on the seed, the epoch and the items, so a resumed run draws the same.
Validation batches use epoch 0 (training epochs count from 1).
"""

import kornia.augmentation as K
import torch
from torch import nn

from nenya.data.batch_transforms import (CubeAugment, ImageAugment, augment_cubes, batch_generator, batch_means,
                                         derive_seed, two_views)
from nenya.data.transforms import build_augmentation
from nenya.data.views import TwoViews
from nenya.errors import NenyaError

RGB = 3  # channels the colour augmentations need
NENYA_ONLY = ("flip", "rotate", "random_cropjitter", "gauss_noise")  # the "nenya" vocabulary's random options


class SimCLRAugment(nn.Module):
    """SimCLR's view recipe (Chen et al. 2020, appendix A) with kornia on a batch [B, C, H, W] -> [B, C, H, W].

    Random resized crop (scale 0.2-1, aspect 3/4-4/3) back to H x W and horizontal flip on every channel;
    with ``colour``: colour jitter (brightness, contrast, saturation 0.8, hue 0.2) with p 0.8, then
    grayscale with p 0.2, on the first three channels (RGB in [0, 1]; any further channels are left
    alone); then Gaussian blur (kernel ~10% of the side, sigma 0.1-2) with p 0.5 on every channel.
    """

    def __init__(self, size: tuple[int, int], colour: bool = True):
        super().__init__()
        kernel = max(3, int(0.1 * min(size)) // 2 * 2 + 1)  # odd
        self.colour = colour
        self.crop = K.RandomResizedCrop(tuple(size), scale=(0.2, 1.0))
        self.flip = K.RandomHorizontalFlip(p=0.5)
        self.jitter = K.ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8)
        self.grayscale = K.RandomGrayscale(p=0.2)
        self.blur = K.RandomGaussianBlur(kernel, (0.1, 2.0), p=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flip(self.crop(x))  # [B, C, H, W]
        if self.colour:
            if x.shape[1] < RGB:
                raise NenyaError(f"augment 'simclr_rgb' needs {RGB} RGB channels, the images have {x.shape[1]}; "
                                 f"use augment 'simclr_geometric' (crop, flip, blur: any channel count)")
            x = torch.cat([self.grayscale(self.jitter(x[:, :RGB])), x[:, RGB:]], dim=1)
        return self.blur(x)


class OneImage:
    """A contrastive run's kornia augmentation of one image [C, H, W] (the per-sample path: torch's global RNG)."""

    def __init__(self, views: "ContrastiveViews"):
        self.views = views

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        out = self.views.simclr(image.shape[-2:])(image[None])  # [1, C, H, W]
        return (demeaned(out) if self.views.demean else out)[0]


def demeaned(images: torch.Tensor) -> torch.Tensor:
    """Each image [B, C, ...] minus its own mean."""
    return images - batch_means(images).reshape(-1, *[1] * (images.dim() - 1))


class ContrastiveViews:
    """The two views of a contrastive run, by the options ``augment``, ``augment_on`` and Nenya's augmentation keys."""

    def __init__(self, opt):
        self.kind, self.seed, self.demean = opt.augment, opt.seed, opt.demean
        self.on_device = opt.augment_on == "device"
        self.options = {key: getattr(opt, key) for key in (*NENYA_ONLY, "demean")}
        self._simclr = {}
        if self.kind == "nenya":
            self.image_augment = ImageAugment.from_options(**self.options)
            return
        given = [key for key in NENYA_ONLY if getattr(opt, key)]
        if given:
            raise NenyaError(f"options {', '.join(given)} belong to augment 'nenya', but augment is '{self.kind}' "
                             f"(its own crop and flip); drop them or set augment 'nenya'")
        image_channels = opt.nchannels - (opt.spectral_channels if opt.model == "hvit" else 0)
        if self.kind == "simclr_rgb" and image_channels != RGB:
            raise NenyaError(f"augment 'simclr_rgb' jitters colour, which needs {RGB} RGB image channels, but "
                             f"nchannels is {opt.nchannels} ({image_channels} image channels); use augment "
                             f"'simclr_geometric' (crop, flip, blur: any channel count) or 'nenya'")

    def simclr(self, size) -> SimCLRAugment:
        """The kornia pipeline for images of this size (built once per size)."""
        size = tuple(int(n) for n in size)
        if size not in self._simclr:
            self._simclr[size] = SimCLRAugment(size, colour=self.kind == "simclr_rgb")
        return self._simclr[size]

    def per_sample(self) -> TwoViews:
        """Two views of one image [C, H, W] -> [2, C, H, W] (the workers path)."""
        return TwoViews(build_augmentation(**self.options) if self.kind == "nenya" else OneImage(self))

    def transform(self):
        """The training/validation data sets' transform: per-sample views, or None when the device makes them."""
        return None if self.on_device else self.per_sample()

    def of_batch(self, batch, epoch: int) -> torch.Tensor:
        """Views [B, 2, C, H, W] of a batch: made here on the batch's device, or as the data set made them."""
        if not self.on_device:
            return batch[0]
        images, indices = batch[0], batch[2]  # [B, C, H, W], [B]
        if self.kind == "nenya":
            seeds = [derive_seed(self.seed, epoch, int(i)) for i in indices]
            return two_views(images, seeds, self.image_augment)
        if images.dim() != 4:
            raise NenyaError(f"augment '{self.kind}' works on 2-D images [B, C, H, W], got {list(images.shape)}")
        with batch_generator(self.seed, epoch, indices, images.device):
            views = self.simclr(images.shape[-2:])(torch.cat([images, images]))  # [2B, C, H, W]
        views = demeaned(views) if self.demean else views
        return views.view(2, *images.shape).transpose(0, 1)  # [B, 2, C, H, W]


def cube_augment(opt) -> CubeAugment:
    """The MAE cube augmentation (crop, rot90, flip) the options name."""
    return CubeAugment.from_options(opt.flip, opt.cube_rot90, opt.cube_crop)


def augment_cube_batch(opt, batch, epoch: int) -> torch.Tensor:
    """The batch's cubes [B, C, H, W], augmented on their device when ``augment_on`` is "device"."""
    if opt.augment_on != "device":
        return batch[0]
    if len(batch) < 3:
        raise NenyaError("augment_on 'device' needs items that carry their index (HDF5 or CSV cubes)")
    seeds = [derive_seed(opt.seed, epoch, int(i), 1) for i in batch[2]]
    return augment_cubes(batch[0], seeds, cube_augment(opt))
