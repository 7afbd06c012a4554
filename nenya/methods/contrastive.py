"""Contrastive SSL: SimCLR (no labels) and SupCon (labels), two augmented views per image, kNN monitor."""

import os

import torch
import torch.nn.functional as F

from nenya import distributed
from nenya.data.builtin import images_path
from nenya.data.device_augment import ContrastiveViews
from nenya.data.hdf5 import HDF5Images, check_channels, check_images
from nenya.data.transforms import Demean
from nenya.errors import NenyaError
from nenya.losses.contrastive import SupConLoss
from nenya.methods.base import Method
from nenya.metrics.knn import knn_accuracy
from nenya.metrics.probe import feature_metrics, retrieval_top1
from nenya.models import build_model, unwrap
from nenya.models.heads import LinearClassifier
from nenya.plots.embedding import embedding_scatter, views_grid
from nenya.registry import register_method


@register_method("simclr")
class SimCLR(Method):
    """SimCLR: the other view of the same image is the only positive."""

    name = "simclr"
    metrics = {"loss": "min", "knn_acc": "max", "knn_acc_loo": "max", "linear_probe_acc": "max", "probe_acc": "max",
               "retrieval_top1": "max", "probe_loss": "min"}
    monitor = "knn_acc"
    uses_labels = False

    def __init__(self, opt):
        super().__init__(opt)
        self.views = ContrastiveViews(opt)  # per sample in the workers, or per batch on the device (augment_on)
        self._valid_features = None

    def build_criterion(self):
        """SupConLoss with the options' temperature and contrast mode."""
        opt = self.opt
        return SupConLoss(temperature=opt.temp, contrast_mode=opt.contrast_mode, base_temperature=opt.base_temp)

    def build_model(self):
        """SupConResNet (or another registered encoder) with a projection head, and an online linear probe
        (``probe``: a linear head on the detached encoder features) when the training images have labels."""
        opt = self.opt
        train = HDF5Images(images_path(opt), opt.train_key, key_option="train_key")
        model = build_model(opt.model, nchannels=opt.nchannels, head=opt.head, feat_dim=opt.feat_dim,
                            **self.encoder_options(lambda: train.image_shape))
        if opt.num_classes is None:
            labels = train.labels
            opt.num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else None
        if opt.num_classes:
            model.probe = LinearClassifier(model.dim_in, opt.num_classes)
        return model

    def _images(self, path, key, transform, option=None):
        dataset = HDF5Images(path, key, transform=transform, preload=self.opt.preload, key_option=option)
        check_images(dataset, self.opt.model)
        check_channels(dataset, self.opt.nchannels)
        return dataset

    def _plain(self):
        return Demean() if self.opt.demean else None

    def build_datasets(self):
        """Two augmented views of each training (and validation) image, with labels (-1 when none)."""
        opt, path = self.opt, images_path(self.opt)
        train = self._images(path, opt.train_key, self.views.transform(), "train_key")
        if self.uses_labels and not train.has_labels:
            raise NenyaError(f"supcon needs labels: {path} has no dataset '{opt.train_key}_labels' "
                             f"(train_key + '_labels')")
        valid = self._images(path, opt.valid_key, self.views.transform(), "valid_key") if opt.valid_key else None
        return train, valid

    def _pairs(self, model, batch, epoch=0):
        """(SupConLoss of the two views' projections, their encoder features [2B, D]); labels only for SupCon."""
        views, labels = self.views.of_batch(batch, epoch), batch[1]  # views [B, 2, C, H, W], labels [B] (-1: none)
        projections, features = model(views.flatten(0, 1), return_features=True)  # [2B, feat_dim], [2B, D]
        projections = projections.view(*views.shape[:2], -1)  # [B, 2, feat_dim]
        if self.opt.gather_negatives and distributed.initialized():  # negatives from the global batch
            projections, labels = distributed.gather_with_gradient(projections), distributed.gather(labels)
        return self.criterion(projections, labels if self.uses_labels else None), features

    def loss(self, model, batch):
        """The contrastive loss; the online probe's cross-entropy on detached features trains on the side."""
        loss, features = self._pairs(model, batch, getattr(self, "epoch", 1))
        probe = getattr(unwrap(model), "probe", None)
        if probe is None:
            return loss, {}
        targets = batch[1].repeat_interleave(2)  # [2B], the label of each view
        known = targets >= 0
        logits = probe(features.detach().float()[known])
        probe_loss = F.cross_entropy(logits, targets[known]) if known.any() else logits.sum() * 0
        return loss, {"probe_loss": probe_loss.detach(), "aux_loss": probe_loss}

    def eval_step(self, model, batch, indices):
        """The loss of a validation pair, and the encoder features of its first view (for retrieval)."""
        loss, features = self._pairs(model, batch)
        return {"loss": loss.float(), "view_features": features.view(batch[0].shape[0], 2, -1)[:, 0].float()}

    def feature_step(self, model, batch, indices):
        """Encoder features [B, D] and labels [B] of un-augmented images."""
        images, labels = batch[0], batch[1]
        return {"features": unwrap(model).encode(images).float(), "labels": labels}

    def embed_step(self, model, batch, indices, encoder=False):
        """Encoder features (``encoder``) or the head's normalised projections of un-augmented images."""
        images = batch[0]
        return {"latents": (unwrap(model).encode(images) if encoder else model(images)).float()}

    def _knn_sets(self):
        """(bank or None, queries) of un-augmented images for the kNN monitor; () without validation labels."""
        opt = self.opt
        path = images_path(opt)
        if opt.overfit_batches:  # the same images validation sees: the first training batches, leave one out
            plain = self._images(path, opt.train_key, self._plain())
            count = min(len(plain), opt.overfit_batches * opt.batch_size_train)
            return (None, torch.utils.data.Subset(plain, range(count))) if plain.has_labels else ()
        if not opt.valid_key:
            return ()
        queries = self._images(path, opt.valid_key, self._plain())
        if not queries.has_labels:
            return ()
        bank = self._images(path, opt.train_key, self._plain())
        if not bank.has_labels:
            return None, queries
        if len(bank) > opt.knn_bank_size:
            order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(opt.seed))
            bank = torch.utils.data.Subset(bank, order[:opt.knn_bank_size].tolist())
        return bank, queries

    def validation(self, model, run, valid_data):
        """Loss on augmented pairs; kNN, linear-probe, online-probe and retrieval accuracy of encoder features."""
        outputs = run(valid_data, self.eval_step)
        metrics = super().summarize({"batch_size": outputs["batch_size"], "loss": outputs["loss"]})
        sets = self._knn_sets()
        if sets:
            bank, queries = sets
            found = run(queries, self.feature_step, "knn queries")
            self._valid_features = (found["features"], found["labels"])
            stored = run(bank, self.feature_step, "knn bank") if bank else None
            metrics.update(feature_metrics(found, stored, self.opt.knn_k, getattr(unwrap(model), "probe", None)))
            metrics["retrieval_top1"] = retrieval_top1(outputs["view_features"], found["features"])
        return metrics, outputs["loss"].tolist()

    def figures(self, model, device, folder, epoch):
        """The validation embedding (PCA of encoder features, by label) and, once, a few images' two views."""
        os.makedirs(folder, exist_ok=True)
        if self._valid_features is not None:
            features, labels = self._valid_features
            embedding_scatter(features, labels, os.path.join(folder, f"embedding_epoch{epoch}.png"),
                              f"validation embedding, epoch {epoch} (PCA)", self.opt.dpi)
        views_path = os.path.join(folder, "augmentations.png")
        if not os.path.exists(views_path):
            path, key = images_path(self.opt), self.opt.train_key
            plain, views = self._images(path, key, None), self._images(path, key, self.views.per_sample())
            count = min(4, len(plain))
            views_grid([plain[i][0] for i in range(count)], [views[i][0] for i in range(count)], views_path,
                       self.opt.dpi)

    def eval_dataset(self, path=None, key=None):
        """Un-augmented images (demeaned when training demeaned) of ``key`` in ``path`` (default: valid_key)."""
        key = key if key is not None else self.opt.valid_key
        if key is None:
            raise NenyaError("the run has no valid_key; pass --key to name the dataset to evaluate")
        if path is not None and not os.path.isfile(path):
            raise NenyaError(f"data file {path} does not exist (--data)")
        return self._images(path if path is not None else images_path(self.opt), key, self._plain(), "--key")

    def evaluation(self, model, run, dataset, folder):
        """Loss on augmented pairs, retrieval and, with labels, leave-one-out kNN accuracy + PCA plot."""
        outputs = run(self._images(dataset.path, dataset.key, self.views.transform()), self.eval_step)
        metrics = super().summarize({"batch_size": outputs["batch_size"], "loss": outputs["loss"]})
        found = run(dataset, self.feature_step, "features")
        metrics["retrieval_top1"] = retrieval_top1(outputs["view_features"], found["features"])
        if dataset.has_labels:
            metrics["knn_acc_loo"] = knn_accuracy(found["features"], found["labels"], found["features"],
                                                  found["labels"], self.opt.knn_k, exclude_self=True)
            os.makedirs(folder, exist_ok=True)
            embedding_scatter(found["features"], found["labels"], os.path.join(folder, "embedding.png"),
                              f"{dataset.key}: encoder features (PCA)", self.opt.dpi)
        return metrics


@register_method("supcon")
class SupCon(SimCLR):
    """Supervised contrastive: every view of every same-label image is a positive."""

    name = "supcon"
    uses_labels = True
