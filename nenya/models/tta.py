"""Test-time augmentation of a classifier: softmax averaged over an image and its flips."""

import torch
from torch import nn

TTA_VIEWS = ("original", "horizontal flip", "vertical flip")


def tta_probabilities(model: nn.Module, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Class probabilities [B, K]: the mean of softmax(model(v)) over v = images [B, C, H, W], their horizontal
    flip and their vertical flip (``logits``: the model's logits of ``images`` when already computed)."""
    original = model(images) if logits is None else logits
    probabilities = original.float().softmax(dim=-1)  # [B, K]
    for dims in ((-1,), (-2,)):
        probabilities = probabilities + model(images.flip(dims)).float().softmax(dim=-1)
    return probabilities / len(TTA_VIEWS)
