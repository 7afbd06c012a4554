"""Joint image + mask augmentation for segmentation, with MONAI dictionary transforms, seeded per item.

:class:`SegmentAugment` applies, each with its own probability, flips (left-right, up-down, depth),
a rotation in the H-W plane, an elastic deformation (2-D: ``Rand2DElasticd``, 3-D: ``Rand3DElasticd``),
a random affine map and coarse dropout. The geometric ones move image and mask together (the image
bilinear, the mask nearest, so it keeps its label values); coarse dropout blanks boxes of the image
only. Every call takes a seed: ``Compose.set_random_state(seed)`` reseeds every transform (MONAI
transforms keep their own random state), so an item's augmentation depends on (seed, epoch, index)
alone, whichever worker draws it, and a resumed run draws the same.
"""

import math

import numpy as np
import torch

PROBABILITIES = ("horizontal_flip", "vertical_flip", "depth_flip", "rotation", "elastic_transform",
                 "affine_transform", "coarse_dropout")


class SegmentAugment:
    """Random joint augmentation of (image ``[C, *S]``, mask ``[*S]``) for 2-D or 3-D ``S``."""

    def __init__(self, spatial_shape, probabilities: dict, rotation_degrees: float = 30.0):
        from monai.transforms import (Compose, Rand2DElasticd, Rand3DElasticd, RandAffined, RandCoarseDropoutd,
                                      RandFlipd, RandRotated)

        dims = len(spatial_shape)
        size = max(spatial_shape)
        p = {name: float(probabilities.get(name, 0.0)) for name in PROBABILITIES}
        both, modes = ["image", "mask"], ("bilinear", "nearest")
        steps = []
        for name, axis in (("horizontal_flip", dims - 1), ("vertical_flip", dims - 2), ("depth_flip", 0)):
            if p[name] > 0 and not (name == "depth_flip" and dims == 2):
                steps.append(RandFlipd(both, prob=p[name], spatial_axis=axis))
        if p["rotation"] > 0:  # 2-D: the image plane; 3-D: range_x turns the (H, W) plane of every depth slice
            angle = math.radians(rotation_degrees)
            steps.append(RandRotated(both, range_x=angle, prob=p["rotation"], mode=modes, padding_mode="zeros"))
        if p["elastic_transform"] > 0:
            if dims == 2:
                steps.append(Rand2DElasticd(both, spacing=max(size // 4, 2), magnitude_range=(1.0, 2.0),
                                            prob=p["elastic_transform"], mode=modes, padding_mode="zeros"))
            else:
                steps.append(Rand3DElasticd(both, sigma_range=(max(size / 16, 2.0), max(size / 10, 3.0)),
                                            magnitude_range=(size, 2.0 * size),
                                            prob=p["elastic_transform"], mode=modes, padding_mode="zeros"))
        if p["affine_transform"] > 0:
            steps.append(RandAffined(both, prob=p["affine_transform"], rotate_range=[math.radians(10)] * (dims - 1)
                                     if dims == 2 else [math.radians(10)] * 3, scale_range=[0.1] * dims,
                                     translate_range=[0.1 * n for n in spatial_shape], mode=modes,
                                     padding_mode="zeros"))
        if p["coarse_dropout"] > 0:
            steps.append(RandCoarseDropoutd(["image"], holes=1, max_holes=8, spatial_size=max(size // 16, 1),
                                            max_spatial_size=max(size // 8, 1), fill_value=0.0,
                                            prob=p["coarse_dropout"]))
        self.steps = len(steps)
        self.compose = Compose(steps) if steps else None

    def __bool__(self):
        return self.compose is not None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, seed: int):
        """(image float32 ``[C, *S]``, mask int64 ``[*S]``) augmented by the draws of ``seed``."""
        if self.compose is None:
            return image, mask
        self.compose.set_random_state(seed=int(seed) % 2**32)
        out = self.compose({"image": image, "mask": mask[None].float()})
        image = torch.as_tensor(np.asarray(out["image"]) if not isinstance(out["image"], torch.Tensor)
                                else out["image"].as_subclass(torch.Tensor), dtype=torch.float32)
        mask = out["mask"].as_subclass(torch.Tensor) if isinstance(out["mask"], torch.Tensor) \
            else torch.as_tensor(np.asarray(out["mask"]))
        return image.contiguous(), mask[0].round().long().contiguous()
