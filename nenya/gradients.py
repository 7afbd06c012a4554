"""One optimizer step: unscale (fp16 gradient scaler), clip the global gradient norm, step, update the scale."""

import torch
from torch import nn


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip: float | None = None) -> tuple[torch.Tensor | None, bool]:
    """Step ``optimizer`` on the accumulated gradients; return (norm before clipping or None, skipped).

    With ``clip``, the gradients are unscaled first (``scaler.unscale_``), so the norm is that of the true
    gradient, then clipped to ``clip``. A step the scaler skips (inf/NaN gradients) stays skipped: the
    scaler remembers what ``unscale_`` found and ``scaler.step`` does not call the optimizer.
    """
    norm = None
    if clip is not None:
        scaler.unscale_(optimizer)  # a no-op when the scaler is off
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = nn.utils.clip_grad_norm_(parameters, clip).detach()
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    skipped = scale is not None and scaler.get_scale() < scale  # the scale drops when a step is skipped
    optimizer.zero_grad(set_to_none=True)
    return norm, skipped
