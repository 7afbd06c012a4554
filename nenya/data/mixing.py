"""MixUp and CutMix on a batch, with soft (optionally label-smoothed) targets.

MixUp (Zhang et al. 2018, eq. 1): x = lam * x_i + (1 - lam) * x_j, y = lam * y_i + (1 - lam) * y_j.
CutMix (Yun et al. 2019, eq. 1-2): a box of area fraction (1 - lam) is pasted from x_j into x_i; the
box is clipped at the image border, so lam is recomputed from the box actually pasted.
In both lam ~ Beta(alpha, alpha) (`mixup_alpha`, `cutmix_alpha`: Beta parameters, not probabilities)
and j is a random permutation of the batch. Every draw comes from torch's global RNG, so
`torch.manual_seed` makes a run repeatable.

Label smoothing: y = (1 - eps) * one_hot + eps / K, applied once, before mixing. Smooth in one place
only: here, or in the loss (nenya.losses.classification), not both.
"""

import math

import torch
import torch.nn.functional as F

from nenya.errors import NenyaError


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer labels [B] -> targets [B, K] = (1 - smoothing) * one_hot + smoothing / K (float32)."""
    one_hot = F.one_hot(labels.long(), num_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def sample_beta(alpha: float) -> float:
    """One draw of lam ~ Beta(alpha, alpha) from torch's global RNG."""
    concentration = torch.tensor([alpha, alpha], dtype=torch.float64)
    return float(torch.distributions.Beta(concentration[0], concentration[1]).sample())


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """Box (top, bottom, left, right) of about (1 - lam) of the image, centred uniformly, clipped to it."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    top, left = cy - cut_h // 2, cx - cut_w // 2
    return (max(top, 0), min(top + cut_h, height), max(left, 0), min(left + cut_w, width))


class Mixer:
    """Mix a batch (images [B, C, H, W], integer labels [B]) into (images, soft targets [B, K]).

    With probability `mixup_prob` a batch is mixed: by CutMix with probability `mixup_switch_prob`
    when both alphas are > 0 (always CutMix when only `cutmix_alpha` is, always MixUp when only
    `mixup_alpha` is); otherwise it passes unchanged with (smoothed) one-hot targets. An alpha of 0
    turns that kind off. ``mix`` also returns what it did (kind, lam, perm, box) for logging and tests.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 mixup_prob: float = 1.0, mixup_switch_prob: float = 0.5, label_smoothing: float = 0.0):
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise NenyaError(f"{name} must be >= 0 (the Beta(alpha, alpha) parameter; 0 turns it off), "
                                 f"got {value}")
        for name, value in (("mixup_prob", mixup_prob), ("mixup_switch_prob", mixup_switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise NenyaError(f"{name} is a probability and must be in [0, 1], got {value}")
        if not 0.0 <= label_smoothing < 1.0:
            raise NenyaError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.mixup_prob, self.mixup_switch_prob = mixup_prob, mixup_switch_prob

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images [B, C, H, W], soft targets [B, K] summing to 1)."""
        mixed, targets, _ = self.mix(images, labels)
        return mixed, targets

    def choose(self) -> str:
        """Which mixing this batch gets: "none", "mixup" or "cutmix" (draws from torch's RNG)."""
        if (self.mixup_alpha == 0 and self.cutmix_alpha == 0) or float(torch.rand(())) >= self.mixup_prob:
            return "none"
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return "cutmix" if float(torch.rand(())) < self.mixup_switch_prob else "mixup"
        return "cutmix" if self.cutmix_alpha > 0 else "mixup"

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(mixed images, soft targets [B, K], {"kind", "lam", "perm", "box"})."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing).to(images.device)  # [B, K]
        kind = self.choose()
        if kind == "none":
            return images, targets, {"kind": kind, "lam": 1.0, "perm": None, "box": None}
        perm = torch.randperm(images.shape[0]).to(images.device)
        box = None
        if kind == "mixup":
            lam = sample_beta(self.mixup_alpha)
            mixed = images * lam + images[perm] * (1.0 - lam)
        else:
            height, width = images.shape[-2:]
            box = cutmix_box(height, width, sample_beta(self.cutmix_alpha))
            top, bottom, left, right = box
            mixed = images.clone()
            mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area actually kept
        targets = targets * lam + targets[perm] * (1.0 - lam)
        return mixed, targets, {"kind": kind, "lam": lam, "perm": perm, "box": box}
