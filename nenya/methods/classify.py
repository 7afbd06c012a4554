"""Classification: any registered encoder + a linear head, fine-tuned from scratch or from another run's encoder.

A training batch is augmented on the device (``augment_preset``, kornia), mixed (MixUp / CutMix, soft
targets) and scored by the ``loss`` option's criterion; every random draw of a batch comes from a
generator seeded by (seed, epoch, the batch's item indices), so a resumed run repeats them. Validation
gathers every item's class probabilities (softmax, or its TTA average) and label from every process
and derives accuracy, macro-F1, balanced accuracy and per-class recall from one confusion matrix,
drawn as ``figures/confusion_epoch{N}.png``.
"""

import os

import h5py
import torch

from nenya import distributed
from nenya.data.folders import ImageFolder, data_path
from nenya.data.hdf5 import HDF5Images, check_channels, check_images
from nenya.data.mixing import Mixer
from nenya.data.batch_transforms import batch_generator
from nenya.data.presets import build_preset, check_preset_size
from nenya.errors import NenyaError
from nenya.io.pretrained import load_encoder
from nenya.losses.classification import build_classification_loss, class_weights
from nenya.methods.base import Method
from nenya.metrics.classification import accuracy_of, classification_metrics, confusion_matrix
from nenya.models import build_model, unwrap
from nenya.models.heads import EncoderClassifier
from nenya.models.tta import tta_probabilities
from nenya.plots.classification import confusion_figure
from nenya.registry import register_method


@register_method("classify")
class Classify(Method):
    """Fine-tuning: encoder + linear head, soft-target losses, MixUp/CutMix, presets, TTA, confusion matrix."""

    name = "classify"
    metrics = {"loss": "min", "acc": "max", "macro_f1": "max", "balanced_acc": "max"}  # and recall_0, recall_1, ...
    monitor = "acc"
    load_init = True  # build_model loads init_from (nenya.evaluate turns it off: the run's checkpoint follows)

    def __init__(self, opt):
        self.opt, self.notes, self._sets, self._matrix = opt, [], None, None
        self.class_names = None
        train, valid = self._data()
        labels = [train.labels] + ([valid.labels] if valid is not None else [])
        if opt.freeze_encoder_epochs and distributed.initialized():
            raise NenyaError("option 'freeze_encoder_epochs' is not supported under torchrun yet (the frozen encoder's "
                             "parameters get no gradient, which DistributedDataParallel refuses); set it to 0 or train "
                             "the frozen epochs in one process")
        if not len(train):
            raise NenyaError(f"the training data {getattr(train, 'path', '')} hold 0 images; give a train_key (or a "
                             f"folder) that holds images")
        if opt.num_classes is None:  # counted once and recorded in opts.json
            opt.num_classes = int(max(int(part.max()) for part in labels if len(part))) + 1
        for part, what in zip(labels, ("training", "validation")):
            if len(part) and part.max() >= opt.num_classes:
                raise NenyaError(f"the {what} labels reach {int(part.max())} but num_classes is {opt.num_classes}; "
                                 f"raise num_classes or leave it null to count the classes")
        if self.class_names is None or len(self.class_names) != opt.num_classes:
            self.class_names = [str(k) for k in range(opt.num_classes)]
        super().__init__(opt)
        self.mixer = Mixer(opt.num_classes, opt.mixup_alpha, opt.cutmix_alpha, opt.mixup_prob, opt.mixup_switch_prob)
        check_preset_size(opt.augment_preset, train.image_shape[1:])
        self.pipeline = build_preset(opt.augment_preset, train.image_shape[1:], opt.nchannels)

    @classmethod
    def direction(cls, metric):
        """'max' for recall_K of any class K too."""
        return "max" if metric.startswith("recall_") and metric[7:].isdigit() else super().direction(metric)

    def _images(self, path, key, option):
        """Labelled 2-D images ``key`` of an HDF5 file, checked against the options."""
        dataset = HDF5Images(path, key, preload=self.opt.preload, key_option=option)
        check_images(dataset, self.opt.model)
        check_channels(dataset, self.opt.nchannels)
        if not dataset.has_labels:
            raise NenyaError(f"classify needs labels: {path} has no dataset '{key}_labels' ({option} + '_labels')")
        return dataset

    def _data(self):
        """(train, valid or None) from the HDF5 file or image folder, built once."""
        if self._sets is None:
            opt, path = self.opt, data_path(self.opt)
            if os.path.isdir(path):
                split = "train" if opt.valid_key else "all"
                train = ImageFolder(path, split, opt.valid_fraction, opt.seed)
                valid = ImageFolder(path, "valid", opt.valid_fraction, opt.seed) if opt.valid_key else None
                check_channels(train, opt.nchannels)
                self.class_names = train.class_names
            else:
                train = self._images(path, opt.train_key, "train_key")
                valid = self._images(path, opt.valid_key, "valid_key") if opt.valid_key else None
                with h5py.File(path, "r") as handle:
                    names = handle.attrs.get("class_names")
                self.class_names = str(names).split(",") if names is not None else None
            self._sets = (train, valid)
        return self._sets

    def build_datasets(self):
        """(training images, validation images or None); items (image [C, H, W], label, index)."""
        return self._data()

    def build_criterion(self):
        """The ``loss`` option's criterion with label smoothing and class weights ("auto": from the labels)."""
        opt = self.opt
        weight = opt.class_weights
        if weight == "auto":
            weight = class_weights(self._data()[0].labels, opt.num_classes)
        elif weight is not None:
            if len(weight) != opt.num_classes:
                raise NenyaError(f"option 'class_weights' has {len(weight)} numbers but there are "
                                 f"{opt.num_classes} classes; give one weight per class or \"auto\"")
            weight = torch.tensor(weight, dtype=torch.float32)
        return build_classification_loss(opt.loss, opt.focal_gamma, opt.label_smoothing, weight)

    def build_model(self):
        """``opt.model``'s encoder (projection head dropped) + a linear classifier; init_from's encoder loaded."""
        opt = self.opt
        encoder = build_model(opt.model, nchannels=opt.nchannels,
                              **self.encoder_options(lambda: self._data()[0].image_shape))
        model = EncoderClassifier(encoder, opt.num_classes)
        if opt.init_from and self.load_init:
            self.notes += load_encoder(model.backbone.encoder, opt.init_from, opt.model)
        return model

    def loss(self, model, batch):
        """Augment and mix the batch (seeded by seed, epoch and its items), then the criterion on soft targets."""
        images, labels, indices = batch[0], batch[1], batch[2]  # [B, C, H, W], [B], [B]
        epoch = getattr(self, "epoch", 0)
        unwrap(model).frozen = epoch <= self.opt.freeze_encoder_epochs
        with batch_generator(self.opt.seed, epoch, indices, images.device):
            if self.pipeline is not None:
                images = self.pipeline(images.float())
            images, targets = self.mixer(images, labels)  # targets [B, K], soft
        return self.criterion(model(images), targets), {}

    def eval_step(self, model, batch, indices):
        """The batch's loss (plain logits) and every item's class probabilities [B, K] (TTA-averaged) and label."""
        images, labels = batch[0], batch[1]
        unwrap(model).frozen = False
        logits = model(images).float()  # [B, K]
        probabilities = tta_probabilities(model, images, logits) if self.opt.tta else logits.softmax(dim=-1)
        return {"loss": self.criterion(logits, labels), "probabilities": probabilities, "labels": labels}

    def _metrics(self, outputs):
        """Mean loss and the confusion-matrix metrics of one evaluation pass's gathered outputs."""
        metrics = super().summarize({"batch_size": outputs["batch_size"], "loss": outputs["loss"]})
        predictions = outputs["probabilities"].argmax(dim=1)  # [N]
        self._matrix = confusion_matrix(predictions, outputs["labels"], self.opt.num_classes)
        metrics.update(classification_metrics(predictions, outputs["labels"], self.opt.num_classes))
        return metrics

    def validation(self, model, run, valid_data):
        """Loss, accuracy, macro-F1, balanced accuracy and per-class recall of the validation images."""
        outputs = run(valid_data, self.eval_step)
        return self._metrics(outputs), outputs["loss"].tolist()

    def describe(self):
        """What the metrics mean."""
        return {"recall_K": "recall of class K (" + ", ".join(f"{k}: {name}" for k, name in
                                                             enumerate(self.class_names)) + ")",
                "predictions": "softmax averaged over the image and its flips" if self.opt.tta else "softmax"}

    def figures(self, model, device, folder, epoch):
        """The confusion matrix of the last validation."""
        if self._matrix is not None:
            os.makedirs(folder, exist_ok=True)
            confusion_figure(self._matrix, self.class_names, os.path.join(folder, f"confusion_epoch{epoch}.png"),
                             f"validation, epoch {epoch}: accuracy {accuracy_of(self._matrix):.3f}",
                             self.opt.dpi)

    def eval_dataset(self, path=None, key=None):
        """Labelled images of ``key`` in the HDF5 file ``path``, or of an image folder (default: validation data)."""
        if path is None:
            valid = self._data()[1]
            if valid is None:
                raise NenyaError("the run has no validation data (valid_key null); pass --data")
            return valid
        if os.path.isdir(path):
            return ImageFolder(path, "all")
        return self._images(path, key if key is not None else self.opt.valid_key, "--key")

    def evaluation(self, model, run, dataset, folder):
        """The validation metrics of ``dataset`` and its confusion-matrix figure in ``folder``."""
        metrics = self._metrics(run(dataset, self.eval_step))
        os.makedirs(folder, exist_ok=True)
        confusion_figure(self._matrix, self.class_names, os.path.join(folder, "confusion.png"),
                         f"{getattr(dataset, 'key', '')}: accuracy {metrics['acc']:.3f}", self.opt.dpi)
        return metrics

    def embed_step(self, model, batch, indices, encoder=False):
        """Encoder features [B, D] (the classifier's input) of the batch's images."""
        return {"latents": unwrap(model).encode(batch[0]).float()}
