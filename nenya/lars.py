"""LARS: SGD with a per-layer trust ratio, for large-batch SimCLR."""

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling; groups with ``lars_exclude=True`` get plain momentum SGD, no decay."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update: decay, trust-ratio scaling, momentum."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = param.norm(), update.norm()
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / (update_norm + group["eps"]),
                                        torch.ones_like(param_norm))
                    update = update.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
