"""The interface every training method implements; the shared loop in train_util calls nothing else.

A method says how a batch becomes a loss (``loss``), which model, criterion and data it uses, what one
evaluation batch contributes (``eval_step``) and how those contributions become metrics
(``summarize``), and which figures it draws. It never iterates a loader itself: the loop's one
evaluation pass (``run(data, step)``, handed to ``validation`` and ``evaluation``) does.
"""

import torch
from torch import nn

from nenya.errors import NenyaError


class Method:
    """How a batch becomes a loss, which data and model a method uses, and its metrics and figures."""

    name = ""
    metrics = {"loss": "min"}  # every metric the method reports -> "min" or "max" (lower or higher is better)
    monitor = "loss"  # the metric that picks best.pth unless the monitor option names another
    notes: list = []  # lines the method has to say before the run's log exists (train.py logs them)

    def __init__(self, opt):
        self.opt = opt
        self.criterion = self.build_criterion()
        self._datasets = None

    @classmethod
    def direction(cls, metric: str) -> str:
        """'min' or 'max' for a metric this method reports; a NenyaError for any other name."""
        if metric not in cls.metrics:
            raise NenyaError(f"option 'monitor' is '{metric}', which method '{cls.name}' does not report; "
                             f"choose from: {', '.join(cls.metrics)}")
        return cls.metrics[metric]

    def build_criterion(self) -> nn.Module:
        """The loss module (``criterion`` in Nenya's API)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The network this method trains."""
        raise NotImplementedError

    def encoder_options(self, image_shape) -> dict:
        """build_model's geometry keywords of an hvit encoder (none for other models); ``image_shape()``: (C, H, W).

        ``img_size`` defaults to the data's (read only when needed) and is recorded in the options.
        """
        opt = self.opt
        if opt.model != "hvit":
            return {}
        size = opt.img_size
        if size is None:
            height, width = (int(n) for n in image_shape()[-2:])
            size = opt.img_size = height if height == width else None
            size = size or (height, width)
        return {"img_size": size, "patch_size": opt.patch_size[0], "window_size": opt.window_size,
                "attention": opt.attention, "drop_path_rate": opt.drop_path_rate,
                "grad_checkpointing": opt.grad_checkpointing, "spectral_channels": opt.spectral_channels,
                "embed_dim": opt.embed_dim, "depths": tuple(opt.depths), "num_heads": tuple(opt.num_heads)}

    def build_datasets(self):
        """(train dataset, validation dataset or None), each item already prepared for this method."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        """The loss of one training batch (already on the device) and any extra scalars to log."""
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch, indices: torch.Tensor) -> dict:
        """What one evaluation batch contributes: by default its loss and extra scalars (0-dim, per batch)."""
        loss, scalars = self.loss(model, batch)
        return {"loss": loss.float(), **{name: torch.as_tensor(value, dtype=torch.float32)
                                         for name, value in scalars.items() if name != "aux_loss"}}

    def summarize(self, outputs: dict) -> dict:
        """Metrics from an evaluation pass: by default the batch-size-weighted mean of each per-batch scalar."""
        sizes = outputs["batch_size"].double()
        return {name: float((values.double() * sizes).sum() / sizes.sum())
                for name, values in outputs.items() if name != "batch_size" and values.dim() == 1
                and values.shape == sizes.shape and sizes.sum() > 0}

    def validation(self, model: nn.Module, run, valid_data) -> tuple[dict, list]:
        """(metrics, per-batch losses) of one validation; ``run(data, step)`` is the loop's evaluation pass."""
        outputs = run(valid_data, self.eval_step)
        return self.summarize(outputs), outputs["loss"].tolist() if "loss" in outputs else []

    def describe(self) -> dict:
        """The units and definitions of the reported metrics, recorded beside them (default: none)."""
        return {}

    def figures(self, model: nn.Module, device: torch.device, folder: str, epoch: int) -> None:
        """Write the method's figures for this epoch into ``folder`` (default: none)."""

    def eval_dataset(self, path: str | None = None, key: str | None = None):
        """The items ``nenya.evaluate`` and ``nenya.latents`` run on, prepared as validation prepares them.

        ``path``: an HDF5 file in Nenya's layout (default: the run's own data); ``key``: its dataset
        (default: ``valid_key``).
        """
        raise NotImplementedError

    def evaluation(self, model: nn.Module, run, dataset, folder: str) -> dict:
        """Metrics of ``model`` on ``dataset`` (from ``eval_dataset``), figures into ``folder``."""
        return self.summarize(run(dataset, self.eval_step))

    def embed_step(self, model: nn.Module, batch, indices: torch.Tensor, encoder: bool = False) -> dict:
        """Embeddings of one batch of ``eval_dataset`` items: ``{"latents": [B, D]}``."""
        raise NotImplementedError(f"method '{self.name}' makes no embeddings")
