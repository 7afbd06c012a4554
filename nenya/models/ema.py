"""Exponential moving average (EMA) of a model's weights and buffers, on torch.optim.swa_utils.AveragedModel.

The first ``update`` copies the model. The t-th update after it (t = 1, 2, ...) moves every
floating-point parameter and buffer (BatchNorm running mean and variance included) towards the model:

    ema = decay_t * ema + (1 - decay_t) * model,   decay_t = min(decay, (1 + t) / (10 + t))

(the warm-up of TensorFlow's ExponentialMovingAverage with num_updates; ``warmup=False`` uses
``decay`` from the first update). Integer buffers (BatchNorm's num_batches_tracked) are copied, not
averaged: an average of a count is not a count. The state_dict holds tensors only (the update count
``n_averaged`` and ``module.*``), so the EMA is saved in, and resumed exactly from, a weights-only
checkpoint. Pass the bare model (unwrapped from DataParallel / DDP); evaluate with ``ema.module``
or ``ema(x)``.
"""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from nenya.errors import NenyaError


def ema_decay(decay: float, t: int, warmup: bool = True) -> float:
    """Decay of the t-th averaging update (t >= 1): min(decay, (1 + t) / (10 + t)) with warm-up, else decay."""
    return min(decay, (1.0 + t) / (10.0 + t)) if warmup else decay


class ModelEMA(AveragedModel):
    """EMA of ``model``'s parameters and buffers with a warmed-up decay; ``update(model)`` after each step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise NenyaError(f"ema_decay must be in [0, 1], got {decay}")
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.decay, self.warmup = decay, warmup
        self.module.requires_grad_(False)

    def _average(self, ema_tensors: list, model_tensors: list, n_averaged: torch.Tensor) -> None:
        """AveragedModel's multi_avg_fn: one device-and-dtype group of tensors, after n_averaged updates."""
        if not (ema_tensors[0].is_floating_point() or ema_tensors[0].is_complex()):
            for ema_tensor, model_tensor in zip(ema_tensors, model_tensors):
                ema_tensor.copy_(model_tensor)
            return
        decay = ema_decay(self.decay, int(n_averaged), self.warmup)
        torch._foreach_lerp_(ema_tensors, model_tensors, 1.0 - decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model`` (its parameters and buffers) into the EMA."""
        self.update_parameters(model)

    def current_decay(self) -> float:
        """The decay the next update will use (0 for the first one, which copies)."""
        t = int(self.n_averaged)
        return 0.0 if t == 0 else ema_decay(self.decay, t, self.warmup)
