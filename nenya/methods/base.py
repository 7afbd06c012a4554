"""The interface every training method implements; the shared loop calls nothing else."""

import os

import torch
from torch import nn
from torch.utils.data import DataLoader

from nenya.errors import NenyaError
from nenya.params import Params
from nenya.train_util import to_device


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

    def eval_dataset(self, path: str | None = None, key: str | None = None):
        """The data ``evaluate`` runs on, prepared as for validation (used by ``python -m nenya.evaluate``).

        ``path``: an HDF5 file in Nenya's layout (default: the run's own data); ``key``: its dataset
        (default: ``valid_key``). Default: the validation set ``build_datasets`` makes from those.
        """
        values = self.opt.to_dict()
        key = key if key is not None else values.get("valid_key")
        if key is None:
            raise NenyaError("the run has no valid_key; pass --key to name the dataset to evaluate")
        if path is not None:
            if not os.path.isfile(path):
                raise NenyaError(f"data file {path} does not exist (--data)")
            values.update(images_file=os.path.abspath(path), data_folder="")
        values.update(train_key=key, valid_key=key)
        return type(self)(Params(values)).build_datasets()[1]

    def evaluate(self, model: nn.Module, dataset, device: torch.device, folder: str) -> dict:
        """Metrics of ``model`` on ``dataset`` (from ``eval_dataset``), figures into ``folder``; eval mode, no_grad.

        Default: the mean loss and the means of the loss's extra scalars, per item; methods add their own
        metrics (and figures) by overriding it.
        """
        loader = DataLoader(dataset, batch_size=self.opt.batch_size_valid, shuffle=False,
                            num_workers=self.opt.num_workers)
        sums, items = {}, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    count = len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
                    loss, scalars = self.loss(model, to_device(batch, device))
                    for name, value in {"loss": loss, **scalars}.items():
                        sums[name] = sums.get(name, 0.0) + float(value) * count
                    items += count
        finally:
            model.train(was_training)
        return {name: total / items for name, total in sums.items()} if items else {}
