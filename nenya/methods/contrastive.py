"""Contrastive SSL: SimCLR (no labels) and SupCon (labels), two augmented views per image."""

import os

import torch

from nenya.data.augment import Demean, TwoViews, build_augmentation
from nenya.data.hdf5 import HDF5Images, check_channels
from nenya.data.paths import images_path
from nenya.errors import NenyaError
from nenya.features import extract_features
from nenya.losses import SupConLoss
from nenya.methods.base import Method
from nenya.metrics import knn_accuracy
from nenya.model_utils import unwrap
from nenya.models import build_model
from nenya.plots import embedding_scatter, views_grid


class SimCLR(Method):
    """SimCLR: the other view of the same image is the only positive."""

    name = "simclr"
    monitor = ("knn_acc", "max")
    uses_labels = False

    def __init__(self, opt):
        super().__init__(opt)
        self.criterion = SupConLoss(temperature=opt.temp, contrast_mode=opt.contrast_mode,
                                    base_temperature=opt.base_temp)
        self._plain = None
        self._valid_features = None

    def build_model(self):
        """SupConResNet (or another registered encoder) with a projection head."""
        opt = self.opt
        return build_model(opt.ssl_model, nchannels=opt.nchannels, head=opt.head, feat_dim=opt.feat_dim)

    def _dataset(self, key, transform):
        option = "train_key" if key == self.opt.train_key else "valid_key"
        dataset = HDF5Images(images_path(self.opt), key, transform=transform, preload=self.opt.preload,
                             key_option=option)
        check_channels(dataset, self.opt.nchannels)
        return dataset

    def build_datasets(self):
        """Two augmented views of each training (and validation) image, with labels (-1 when none)."""
        opt = self.opt
        augment = TwoViews(build_augmentation(flip=opt.flip, rotate=opt.rotate,
                                              random_cropjitter=opt.random_cropjitter,
                                              gauss_noise=opt.gauss_noise, demean=opt.demean))
        train = self._dataset(opt.train_key, augment)
        if self.uses_labels and not train.has_labels:
            raise NenyaError(f"supcon needs labels: {images_path(opt)} has no dataset "
                             f"'{opt.train_key}_labels' (train_key + '_labels')")
        valid = self._dataset(opt.valid_key, augment) if opt.valid_key else None
        return train, valid

    def loss(self, model, batch):
        """SupConLoss of the two views' embeddings (labels only for SupCon)."""
        views, labels = batch
        batch_size = views.shape[0]
        features = model(views.flatten(0, 1)).view(batch_size, views.shape[1], -1)
        return self.criterion(features, labels if self.uses_labels else None), {}

    def _plain_datasets(self):
        """Un-augmented train (bank) and validation (queries) images for the kNN monitor."""
        if self._plain is None:
            opt = self.opt
            transform = Demean() if opt.demean else None
            bank = self._dataset(opt.train_key, transform)
            queries = self._dataset(opt.valid_key, transform) if opt.valid_key else None
            if queries is None or not queries.has_labels:
                self._plain = ()
            else:
                if bank.has_labels and len(bank) > opt.knn_bank_size:
                    order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(opt.seed))
                    bank = torch.utils.data.Subset(bank, order[:opt.knn_bank_size].tolist())
                self._plain = (bank if bank.has_labels else None, queries)
        return self._plain

    def validation_metrics(self, model, device):
        """kNN accuracy (cosine, knn_k) of encoder features of validation images against the training bank."""
        plain = self._plain_datasets()
        if not plain:
            return {}
        bank, queries = plain
        encode = unwrap(model).encode
        size = self.opt.batch_size_valid
        query_features, query_labels = extract_features(encode, queries, size, device)
        self._valid_features = (query_features, query_labels)
        if bank is None:
            accuracy = knn_accuracy(query_features, query_labels, query_features, query_labels,
                                    self.opt.knn_k, exclude_self=True)
        else:
            bank_features, bank_labels = extract_features(encode, bank, size, device)
            accuracy = knn_accuracy(bank_features, bank_labels, query_features, query_labels, self.opt.knn_k)
        return {"knn_acc": accuracy}


    def figures(self, model, device, folder, epoch):
        """The validation embedding (PCA of encoder features, by label) and, once, a few images' two views."""
        os.makedirs(folder, exist_ok=True)
        if self._valid_features is not None:
            features, labels = self._valid_features
            embedding_scatter(features, labels, os.path.join(folder, f"embedding_epoch{epoch}.png"),
                              f"validation embedding, epoch {epoch} (PCA)")
        views_path = os.path.join(folder, "augmentations.png")
        if not os.path.exists(views_path):
            train = self.build_datasets()[0]
            count = min(4, len(train))
            originals = [self._dataset(self.opt.train_key, None)[i][0] for i in range(count)]
            views_grid(originals, [train[i][0] for i in range(count)], views_path)


    def evaluate(self, model, dataset, device, folder):
        """Mean loss, and with labels the leave-one-out kNN accuracy of encoder features and their PCA plot."""
        metrics = super().evaluate(model, dataset, device, folder)
        plain = HDF5Images(dataset.path, dataset.key, transform=Demean() if self.opt.demean else None)
        if plain.has_labels:
            was_training = model.training
            model.eval()
            features, labels = extract_features(unwrap(model).encode, plain, self.opt.batch_size_valid, device)
            model.train(was_training)
            metrics["knn_acc_loo"] = knn_accuracy(features, labels, features, labels, self.opt.knn_k,
                                                  exclude_self=True)
            os.makedirs(folder, exist_ok=True)
            embedding_scatter(features, labels, os.path.join(folder, "embedding.png"),
                              f"{dataset.key}: encoder features (PCA)")
        return metrics


class SupCon(SimCLR):
    """Supervised contrastive: every view of every same-label image is a positive."""

    name = "supcon"
    uses_labels = True
