"""Views of one image for contrastive learning."""

import torch


class TwoViews:
    """Return two independent draws of `transform` stacked as [2, C, H, W]."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return torch.stack([self.transform(image), self.transform(image)])

    def __repr__(self):
        return f"TwoViews({self.transform!r})"
