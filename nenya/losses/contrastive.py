"""Supervised contrastive loss (SupCon, Khosla et al. 2020); SimCLR's loss without labels."""

import torch
from torch import nn

CONTRAST_MODES = ("all", "one")


class SupConLoss(nn.Module):
    """SupCon loss over [B, n_views, D] L2-normalised features; SimCLR without labels or mask."""

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all",
                 base_temperature: float = 0.07):
        super().__init__()
        if contrast_mode not in CONTRAST_MODES:
            raise ValueError(
                f"unknown contrast_mode {contrast_mode!r}; choose from: {', '.join(CONTRAST_MODES)}"
            )
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError("temperature and base_temperature must be positive")
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss over anchors with a positive; mask[i, j] = 1 marks sample j positive for i."""
        if features.dim() == 2:
            features = features.unsqueeze(1)
        if features.dim() != 3:
            raise ValueError(
                f"features must be [B, n_views, D] or [B, D], got shape {tuple(features.shape)}"
            )
        batch_size, n_views, _ = features.shape

        if labels is not None and mask is not None:
            raise ValueError("pass labels or mask, not both")
        if labels is not None:
            labels = labels.reshape(-1).to(features.device)
            if labels.numel() != batch_size:
                raise ValueError(f"got {labels.numel()} labels for {batch_size} samples")
            same_sample_mask = labels[:, None] == labels[None, :]
        elif mask is not None:
            if mask.shape != (batch_size, batch_size):
                raise ValueError(
                    f"mask must be [{batch_size}, {batch_size}], got shape {tuple(mask.shape)}"
                )
            same_sample_mask = mask.to(features.device)
        else:
            same_sample_mask = torch.eye(batch_size, dtype=torch.bool, device=features.device)

        # Rows are view-major: row v * B + b is view v of sample b.
        contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
        n_anchor_views = n_views if self.contrast_mode == "all" else 1
        anchors = contrast[: n_anchor_views * batch_size]
        logits = anchors @ contrast.T / self.temperature

        # Anchor i is contrast row i, so its self-similarity sits on the diagonal.
        not_self = ~torch.eye(*logits.shape, dtype=torch.bool, device=features.device)
        positives = same_sample_mask.repeat(n_anchor_views, n_views).to(logits.dtype) * not_self

        # logsumexp subtracts the row max, so the denominator cannot overflow.
        self_excluded = logits.masked_fill(~not_self, float("-inf"))
        log_prob = logits - self_excluded.logsumexp(dim=1, keepdim=True)

        n_positives = positives.sum(dim=1)
        has_positive = n_positives > 0
        if not has_positive.any():
            return features.sum() * 0.0
        sum_log_prob_pos = (positives * log_prob).sum(dim=1)
        mean_log_prob_pos = sum_log_prob_pos[has_positive] / n_positives[has_positive]
        loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos
        return loss.mean()
