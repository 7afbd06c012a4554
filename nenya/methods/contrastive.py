"""Contrastive SSL: SimCLR (no labels) and SupCon (labels), two augmented views per image, kNN monitor."""

import os

import torch

from nenya.data.builtin import images_path
from nenya.data.hdf5 import HDF5Images, check_channels, check_images
from nenya.data.transforms import Demean, build_augmentation
from nenya.data.views import TwoViews
from nenya.errors import NenyaError
from nenya.losses.contrastive import SupConLoss
from nenya.methods.base import Method
from nenya.metrics.knn import knn_accuracy
from nenya.models import build_model, unwrap
from nenya.plots.embedding import embedding_scatter, views_grid
from nenya.registry import register_method


@register_method("simclr")
class SimCLR(Method):
    """SimCLR: the other view of the same image is the only positive."""

    name = "simclr"
    metrics = {"loss": "min", "knn_acc": "max", "knn_acc_loo": "max"}
    monitor = "knn_acc"
    uses_labels = False

    def __init__(self, opt):
        super().__init__(opt)
        self._valid_features = None

    def build_criterion(self):
        """SupConLoss with the options' temperature and contrast mode."""
        opt = self.opt
        return SupConLoss(temperature=opt.temp, contrast_mode=opt.contrast_mode, base_temperature=opt.base_temp)

    def build_model(self):
        """SupConResNet (or another registered encoder) with a projection head."""
        opt = self.opt
        return build_model(opt.model, nchannels=opt.nchannels, head=opt.head, feat_dim=opt.feat_dim)

    def _images(self, path, key, transform, option=None):
        dataset = HDF5Images(path, key, transform=transform, preload=self.opt.preload, key_option=option)
        check_images(dataset, self.opt.model)
        check_channels(dataset, self.opt.nchannels)
        return dataset

    def _views(self):
        opt = self.opt
        return TwoViews(build_augmentation(flip=opt.flip, rotate=opt.rotate, random_cropjitter=opt.random_cropjitter,
                                           gauss_noise=opt.gauss_noise, demean=opt.demean))

    def _plain(self):
        return Demean() if self.opt.demean else None

    def build_datasets(self):
        """Two augmented views of each training (and validation) image, with labels (-1 when none)."""
        opt, path = self.opt, images_path(self.opt)
        train = self._images(path, opt.train_key, self._views(), "train_key")
        if self.uses_labels and not train.has_labels:
            raise NenyaError(f"supcon needs labels: {path} has no dataset '{opt.train_key}_labels' "
                             f"(train_key + '_labels')")
        valid = self._images(path, opt.valid_key, self._views(), "valid_key") if opt.valid_key else None
        return train, valid

    def loss(self, model, batch):
        """SupConLoss of the two views' embeddings (labels only for SupCon)."""
        views, labels = batch  # views [B, 2, C, H, W]
        features = model(views.flatten(0, 1)).view(views.shape[0], views.shape[1], -1)  # [B, 2, feat_dim]
        return self.criterion(features, labels if self.uses_labels else None), {}

    def feature_step(self, model, batch, indices):
        """Encoder features [B, D] and labels [B] of un-augmented images."""
        images, labels = batch
        return {"features": unwrap(model).encode(images).float(), "labels": labels}

    def embed_step(self, model, batch, indices, encoder=False):
        """Encoder features (``encoder``) or the head's normalised projections of un-augmented images."""
        images, _ = batch
        return {"latents": (unwrap(model).encode(images) if encoder else model(images)).float()}

    def _knn_sets(self):
        """(bank or None, queries) of un-augmented images for the kNN monitor; () without validation labels."""
        opt = self.opt
        if not opt.valid_key:
            return ()
        path = images_path(opt)
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
        """Loss on augmented pairs, and kNN accuracy (cosine, knn_k) of encoder features against the bank."""
        metrics, steps = super().validation(model, run, valid_data)
        sets = self._knn_sets()
        if sets:
            bank, queries = sets
            found = run(queries, self.feature_step, "knn queries")
            self._valid_features = (found["features"], found["labels"])
            if bank is None:  # no training labels: leave-one-out among the validation images
                metrics["knn_acc"] = knn_accuracy(found["features"], found["labels"], found["features"],
                                                  found["labels"], self.opt.knn_k, exclude_self=True)
            else:
                stored = run(bank, self.feature_step, "knn bank")
                metrics["knn_acc"] = knn_accuracy(stored["features"], stored["labels"], found["features"],
                                                  found["labels"], self.opt.knn_k)
        return metrics, steps

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
            plain, views = self._images(path, key, None), self._images(path, key, self._views())
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
        """Loss on augmented pairs and, with labels, leave-one-out kNN accuracy of encoder features + PCA plot."""
        pairs = self._images(dataset.path, dataset.key, self._views())
        metrics = self.summarize(run(pairs, self.eval_step))
        if dataset.has_labels:
            found = run(dataset, self.feature_step, "features")
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
