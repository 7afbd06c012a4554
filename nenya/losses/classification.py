"""Classification losses for soft targets [B, K] (MixUp / CutMix) or integer labels [B].

With p = softmax(logits), t the target distribution, w the class weights (1 when not given), and the
per-sample losses averaged over the batch (a plain mean, as torch's cross_entropy does for soft
targets; class weights with mean 1 over the samples, as `class_weights` gives, keep the scale):

- focal loss (Lin et al. 2017, eq. 5, with alpha_t = w):  -sum_k w_k t_k (1 - p_k)^gamma log p_k;
  gamma = 0 is the (weighted) cross-entropy.
- label-smoothed cross-entropy (Szegedy et al. 2016, section 7):  -sum_k w_k t'_k log p_k with
  t' = (1 - eps) t + eps / K.
- the combined loss: focal_weight * focal + ce_weight * smoothed CE (0.5 and 0.5 by default).

Label smoothing is applied once: either here (the CE term's `smoothing`) or in the targets
(nenya.data.mixing.Mixer's `label_smoothing`), not both. Logits are cast to float32 inside, so the
losses are the same under fp16 / bf16 autocast.
"""

import torch
import torch.nn.functional as F
from torch import nn

from nenya.errors import NenyaError


def target_distribution(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels [B] -> one-hot [B, K]; soft targets [B, K] pass through; float32 either way."""
    if targets.ndim == 1:
        return F.one_hot(targets.long(), num_classes).float()
    if targets.shape[-1] != num_classes:
        raise ValueError(f"soft targets have {targets.shape[-1]} classes, the logits {num_classes}")
    return targets.float()


def class_weights(labels, num_classes: int) -> torch.Tensor:
    """Balanced class weights w_k = N / (K * count_k) [K] (sklearn's "balanced"); a class with no sample counts as 1."""
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() == 0:
        raise NenyaError("class weights need at least one label")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise NenyaError(f"labels must be in 0..{num_classes - 1} for {num_classes} classes, "
                         f"got {int(labels.min())}..{int(labels.max())}")
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    return labels.numel() / (num_classes * counts)


def _weighted(log_probs: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return log_probs if weight is None else log_probs * weight.float()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of -sum_k w_k t_k (1 - p_k)^gamma log p_k; logits [B, K], targets [B] or [B, K]."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # [B, K]
    t = target_distribution(targets, logits.shape[-1])
    # Clamped away from 0 so that (1 - p)^gamma has a finite gradient for gamma < 1 when p rounds to 1.
    modulation = (1.0 - log_probs.exp()).clamp(min=1e-12).pow(gamma)
    return -(t * modulation * _weighted(log_probs, weight)).sum(-1).mean()


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1,
                           weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of -sum_k w_k ((1 - eps) t_k + eps / K) log p_k; targets [B] or [B, K]."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # [B, K]
    num_classes = logits.shape[-1]
    t = target_distribution(targets, num_classes) * (1.0 - smoothing) + smoothing / num_classes
    return -(t * _weighted(log_probs, weight)).sum(-1).mean()


def _check(name: str, value: float, low: float, high: float | None = None) -> float:
    if value < low or (high is not None and value >= high):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise NenyaError(f"{name} must be {'in ' if high is not None else ''}{bound}, got {value}")
    return value


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) for soft or integer targets, optional class weights `alpha` [K]; with
    ``smoothing`` eps the targets are (1 - eps) t + eps / K first."""

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.gamma = _check("focal gamma", gamma, 0.0)
        self.smoothing = _check("label_smoothing", smoothing, 0.0, 1.0)
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha).float(), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.smoothing:
            num_classes = logits.shape[-1]
            targets = target_distribution(targets, num_classes) * (1.0 - self.smoothing) + self.smoothing / num_classes
        return focal_loss(logits, targets, self.gamma, self.alpha)


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against (1 - smoothing) * targets + smoothing / K, optional class weights [K]."""

    def __init__(self, smoothing: float = 0.1, weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = _check("label_smoothing", smoothing, 0.0, 1.0)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float(), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return smoothed_cross_entropy(logits, targets, self.smoothing, self.weight)


class ClassificationLoss(nn.Module):
    """focal_weight * focal + ce_weight * label-smoothed CE; ``terms`` gives the two parts for logging."""

    def __init__(self, focal_weight: float = 0.5, ce_weight: float = 0.5, gamma: float = 2.0,
                 smoothing: float = 0.1, weight: torch.Tensor | None = None):
        super().__init__()
        self.focal_weight = _check("focal_weight", focal_weight, 0.0)
        self.ce_weight = _check("ce_weight", ce_weight, 0.0)
        self.focal = FocalLoss(gamma, weight)
        self.ce = LabelSmoothingCrossEntropy(smoothing, weight)

    def terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"focal": ..., "ce": ...}, each a 0-dim float32 tensor."""
        return {"focal": self.focal(logits, targets), "ce": self.ce(logits, targets)}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        parts = self.terms(logits, targets)
        return self.focal_weight * parts["focal"] + self.ce_weight * parts["ce"]


LOSS_KINDS = ("ce", "focal", "combined")


def build_classification_loss(kind: str, gamma: float = 2.0, smoothing: float = 0.0,
                              weight: torch.Tensor | None = None) -> nn.Module:
    """The ``loss`` option's module: "ce" (label-smoothed CE), "focal" (on smoothed targets when smoothing > 0)
    or "combined" (0.5 focal on the targets as given + 0.5 label-smoothed CE)."""
    if kind == "ce":
        return LabelSmoothingCrossEntropy(smoothing, weight)
    if kind == "focal":
        return FocalLoss(gamma, weight, smoothing)
    if kind == "combined":
        return ClassificationLoss(0.5, 0.5, gamma, smoothing, weight)
    raise NenyaError(f"loss '{kind}' is unknown; choose from: {', '.join(LOSS_KINDS)}")
