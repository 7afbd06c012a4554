"""The interface every training method implements; the shared loop calls nothing else."""

import torch
from torch import nn


class Method:
    """How a batch becomes a loss, which data and model a method uses, and its metrics and figures."""

    name = ""
    monitor = ("loss", "min")  # (validation metric that picks best.pth, "min" or "max")

    def __init__(self, opt):
        self.opt = opt

    def build_model(self) -> nn.Module:
        """The network this method trains."""
        raise NotImplementedError

    def build_datasets(self):
        """(train dataset, validation dataset or None), each item already augmented for this method."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        """The loss of one batch (already on the device) and any extra scalars to log."""
        raise NotImplementedError

    def validation_metrics(self, model: nn.Module, device: torch.device) -> dict:
        """Metrics beyond the validation loss, computed in eval mode under no_grad (default: none)."""
        return {}

    def figures(self, model: nn.Module, device: torch.device, folder: str, epoch: int) -> None:
        """Write the method's figures for this epoch into ``folder`` (default: none)."""
