"""Views of one image for contrastive learning."""

import torch

from nenya.data.batch_transforms import ImageAugment, two_views


class TwoViews:
    """Return two independent draws of `transform` stacked as [2, C, H, W]."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return torch.stack([self.transform(image), self.transform(image)])

    def __repr__(self):
        return f"TwoViews({self.transform!r})"


class SeededTwoViews:
    """Two views [2, C, H, W] of one image drawn from its seed: the per-sample form of batch_transforms.two_views."""

    def __init__(self, augment: ImageAugment):
        self.augment = augment

    def __call__(self, image, seed=None):
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()))
        return two_views(image[None], [seed], self.augment)[0]

    def __repr__(self):
        return f"SeededTwoViews({self.augment!r})"
