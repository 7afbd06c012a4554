"""Segmentation losses: cross-entropy, BCE, Dice, Dice + CE and focal, always computed in float32.

``segmentation_loss(name, num_classes, ...)`` builds a module called as ``loss(logits, target)``
with logits ``[B, K, *S]`` (K = ``num_classes`` logit channels; K = 1 is binary, one sigmoid logit)
and integer label maps target ``[B, *S]``. The logits are cast to float32 and autocast is switched
off inside, so the value is the same under bf16 / fp16 mixed precision.

- ``"ce"``: cross-entropy over K >= 2 classes, optional ``class_weights`` w:
  ``-sum_i w[y_i] log softmax(z_i)[y_i] / sum_i w[y_i]`` over pixels i (torch's weighted mean);
- ``"bce"``: binary cross-entropy on one logit channel, optional ``pos_weight`` (the weight of
  the foreground term);
- ``"dice"``: MONAI's ``DiceLoss`` (softmax and one-hot targets for K >= 2, background included;
  sigmoid for K = 1): 1 - (2 sum p t + 1e-5) / (sum p + sum t + 1e-5) per image and channel, averaged;
- ``"dice_ce"``: that Dice plus the ``"ce"`` (K >= 2) or ``"bce"`` (K = 1) term, weights applying
  to the cross-entropy term only (without weights it equals MONAI's ``DiceCELoss``);
- ``"focal"``: MONAI's ``FocalLoss`` (gamma ``focal_gamma``; softmax for K >= 2 with optional
  ``class_weights``, sigmoid for K = 1).

``class_weights="auto"`` (and ``pos_weight="auto"``) come from the training masks' label counts
n_c (``label_counts``): w_c = N / (K n_c) with N = sum_c n_c the pixel count (scikit-learn's
"balanced" weights; a class that never occurs counts as n_c = 1 in the denominator), and
pos_weight = n_0 / n_1 (background over foreground pixels).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nenya.errors import NenyaError

LOSSES = ("ce", "bce", "dice", "dice_ce", "focal")


def label_counts(masks, num_classes: int) -> np.ndarray:
    """Pixels per label value 0 .. num_classes - 1 of integer masks (any shape), as int64 [num_classes]."""
    masks = np.asarray(masks)
    counts = np.bincount(masks.ravel().astype(np.int64), minlength=num_classes)
    if len(counts) > num_classes:
        raise NenyaError(f"the masks hold label {len(counts) - 1}, which is not below num_classes={num_classes}")
    return counts


def auto_class_weights(counts) -> list[float]:
    """Inverse-frequency weights w_c = N / (K n_c), N = sum of the counts, n_c at least 1."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts.sum() / (len(counts) * np.maximum(counts, 1.0))).tolist()


class SegmentationLoss(nn.Module):
    """One of :data:`LOSSES` on logits ``[B, K, *S]`` and label maps ``[B, *S]``, in float32."""

    def __init__(self, name: str, num_classes: int, class_weights=None, pos_weight=None, focal_gamma: float = 2.0):
        super().__init__()
        from monai.losses import DiceLoss, FocalLoss

        self.name, self.num_classes = name, num_classes
        binary = num_classes == 1
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))
        self.register_buffer("pos_weight", None if pos_weight is None
                             else torch.as_tensor([pos_weight], dtype=torch.float32))
        self.dice = DiceLoss(sigmoid=binary, softmax=not binary, to_onehot_y=not binary) \
            if name in ("dice", "dice_ce") else None
        self.focal = FocalLoss(gamma=focal_gamma, use_softmax=not binary, to_onehot_y=not binary,
                               weight=class_weights) if name == "focal" else None

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted softmax cross-entropy (K >= 2) or BCE with pos_weight (K = 1)."""
        if self.num_classes == 1:
            return F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), pos_weight=self.pos_weight)
        return F.cross_entropy(logits, target.long(), weight=self.class_weights)

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> dict:
        """The loss's terms, each a float32 scalar: ``dice`` and ``ce`` / ``bce`` (dice_ce), else the one term."""
        with torch.no_grad(), torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            if self.name not in ("dice", "dice_ce"):
                return {self.name: self.forward(logits, target)}
            parts = {"dice": self.dice(logits, target.unsqueeze(1).float())}
            if self.name == "dice_ce":
                parts["bce" if self.num_classes == 1 else "ce"] = self.cross_entropy(logits, target)
            return parts

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss (a float32 scalar) of logits ``[B, K, *S]`` against label maps ``[B, *S]``."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            if self.name in ("ce", "bce"):
                return self.cross_entropy(logits, target)
            channel_target = target.unsqueeze(1).float()  # [B, 1, *S], labels or the binary mask
            if self.name == "focal":
                return self.focal(logits, channel_target)
            dice = self.dice(logits, channel_target)
            return dice if self.name == "dice" else dice + self.cross_entropy(logits, target)


def segmentation_loss(name: str, num_classes: int, class_weights=None, pos_weight=None, label_counts=None,
                      focal_gamma: float = 2.0) -> SegmentationLoss:
    """Build the loss ``name`` for ``num_classes`` logit channels; a NenyaError for any option it cannot use."""
    if name not in LOSSES:
        raise NenyaError(f"loss {name!r} is not a segmentation loss; choose from: {', '.join(LOSSES)}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise NenyaError(f"num_classes={num_classes} is invalid; use 1 (binary, one logit) or the class count")
    binary = num_classes == 1
    if name == "ce" and binary:
        raise NenyaError("loss 'ce' needs num_classes >= 2 logit channels; with num_classes=1 use 'bce'")
    if name == "bce" and not binary:
        raise NenyaError(f"loss 'bce' needs num_classes=1 (one logit channel), got {num_classes}; use 'ce'")
    if class_weights is not None:
        if binary or name not in ("ce", "dice_ce", "focal"):
            raise NenyaError(f"class_weights apply to 'ce', 'dice_ce' and 'focal' with num_classes >= 2, "
                             f"not to loss {name!r} with num_classes={num_classes}"
                             + ("; use pos_weight for binary losses" if binary else ""))
        class_weights = _resolve("class_weights", class_weights, label_counts, num_classes)
    if pos_weight is not None:
        if not binary or name not in ("bce", "dice_ce"):
            raise NenyaError(f"pos_weight applies to 'bce' and 'dice_ce' with num_classes=1, not to loss "
                             f"{name!r} with num_classes={num_classes}")
        pos_weight = _resolve("pos_weight", pos_weight, label_counts, 2)
    return SegmentationLoss(name, num_classes, class_weights, pos_weight, focal_gamma)


def _resolve(key: str, value, counts, num_classes: int):
    """Explicit weights as floats, or the "auto" ones from ``counts``; a NenyaError when they do not fit."""
    if value == "auto":
        if counts is None:
            raise NenyaError(f"{key}='auto' needs the label counts of the training masks")
        counts = np.asarray(counts, dtype=np.float64)
        if len(counts) != num_classes:
            raise NenyaError(f"{key}='auto': got counts of {len(counts)} labels, expected {num_classes}")
        return auto_class_weights(counts) if key == "class_weights" else float(counts[0] / max(counts[1], 1.0))
    if key == "pos_weight":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise NenyaError(f"pos_weight={value!r} is invalid; use a positive number or 'auto'")
        return float(value)
    values = list(value) if isinstance(value, (list, tuple)) else []
    if len(values) != num_classes or not all(isinstance(v, (int, float)) and v >= 0 for v in values):
        raise NenyaError(f"class_weights={value!r} is invalid; use 'auto' or a list of {num_classes} "
                         f"non-negative numbers, one per class")
    return [float(v) for v in values]
