"""Segmentation (``method: "segment"``): Attention U-Net (2-D/3-D), 3-D U-Net, D-Former-style 3-D transformer.

Items are (image ``[C, *S]``, integer mask ``[*S]``, index) (:mod:`nenya.data.segmentation`), training items
augmented jointly (:mod:`nenya.data.segment_augment`) from (seed, epoch, index). The loss is one of
:mod:`nenya.losses.segmentation` (plus the deep-supervision terms of dformer3d). Evaluation scores
every image and foreground class (:mod:`nenya.metrics.segmentation`) and averages over images and
classes; predictions may come from sliding windows and flip TTA (:mod:`.segment_inference`).
``num_classes``, ``spatial_dims``, ``class_names`` and "auto" weights are derived from the training
data once and recorded in opts.json, so a run evaluates without its training data.
"""

import re

import torch
import torch.nn.functional as F

from nenya import distributed
from nenya.data.builtin import images_path
from nenya.data.segmentation import checked_set, derive_options, manifest_rows
from nenya.errors import NenyaError
from nenya.io.segmentation import write_masks, write_per_image_csv
from nenya.losses.segmentation import segmentation_loss
from nenya.methods.base import Method
from nenya.methods.segment_inference import debug_lines, predict, roi_of, to_labels
from nenya.metrics.segmentation import per_image_scores, summarize_outputs
from nenya.models import build_model
from nenya.plots.segmentation import draw_figures, figure_inputs
from nenya.registry import register_method

MODELS = {"attention_unet": (2, 3), "unet3d": (3,), "dformer3d": (3,)}


@register_method("segment")
class Segment(Method):
    """Semantic segmentation: per-pixel classes (binary: one sigmoid logit) from images and integer masks."""

    name = "segment"
    metrics = {"loss": "min", "loss_main": "min", "loss_deep": "min", "dice": "max", "iou": "max",
               "pixel_accuracy": "max", "boundary_f1": "max", "empty_both": "max", "empty_one": "min"}
    monitor = "dice"

    @classmethod
    def direction(cls, metric):
        """Per-class scores (``dice_<class>``, ``iou_<class>``, ...) are 'max'; the rest as declared."""
        if re.match(r"^(dice|iou|boundary_f1)_.+", metric) and metric not in cls.metrics:
            return "max"
        return super().direction(metric)

    def __init__(self, opt):
        if opt.model not in MODELS:
            raise NenyaError(f"model '{opt.model}' is not a segmentation model; method 'segment' needs one of: "
                             f"{', '.join(MODELS)}")
        self._train_set, self._epoch, self._figure_data, self._debugged = None, 0, None, False
        self._derive(opt)
        super().__init__(opt)

    def _derive(self, opt):
        """Derive what the options leave open from the training data (:func:`derive_options`), then check."""
        if opt.num_classes is None or opt.spatial_dims is None or "auto" in (opt.class_weights, opt.pos_weight):
            derive_options(opt, images_path(opt))
        self._check_classes(opt)

    def _check_classes(self, opt):
        if opt.spatial_dims not in MODELS[opt.model]:
            raise NenyaError(f"model '{opt.model}' takes {' or '.join(f'{d}-D' for d in MODELS[opt.model])} data, "
                             f"but spatial_dims is {opt.spatial_dims}")
        if opt.target_label is not None and opt.num_classes not in (1, 2):
            raise NenyaError(f"target_label={opt.target_label} trains background vs that label: num_classes must "
                             f"be 1 (sigmoid) or 2 (softmax), not {opt.num_classes}")
        if opt.deep_supervision and opt.model != "dformer3d":
            raise NenyaError(f"deep_supervision needs model 'dformer3d', not '{opt.model}'")

    @property
    def classes(self) -> list[int]:
        """The scored label values: the foreground classes 1 .. K - 1 (binary: [1])."""
        return list(range(1, max(self.opt.num_classes, 2)))

    @property
    def class_names(self) -> list[str]:
        """Names of the scored classes, safe in metric names."""
        names = self.opt.class_names
        if self.opt.target_label is not None:
            label = self.opt.target_label
            names = [names[label] if names and label < len(names) else str(label)]
        else:
            names = [names[c] if names and c < len(names) else str(c) for c in self.classes]
        return [re.sub(r"\W+", "_", str(name)) for name in names]

    def build_criterion(self):
        """The ``loss`` option's segmentation loss for num_classes logit channels."""
        opt = self.opt
        return segmentation_loss(opt.loss, opt.num_classes, class_weights=opt.class_weights,
                                 pos_weight=opt.pos_weight, focal_gamma=opt.focal_gamma)

    def build_model(self):
        """The ``model`` for nchannels, num_classes and spatial_dims (``widths``, deep supervision when set)."""
        opt = self.opt
        extra = {"widths": opt.widths} if opt.widths else {}
        if opt.model == "dformer3d":
            extra["deep_supervision"] = opt.deep_supervision
        return build_model(opt.model, nchannels=opt.nchannels, num_classes=opt.num_classes,
                           spatial_dims=opt.spatial_dims, **extra)

    def _set(self, path, key, rows=None, augment=False, option="train_key"):
        """A SegmentationSet of ``key`` checked against the options (:func:`checked_set`)."""
        return checked_set(self.opt, path, key, rows, augment, option)

    def build_datasets(self):
        """(train, valid): augmented training items; validation from valid_key or the split manifest."""
        opt, path = self.opt, images_path(self.opt)
        train_rows, valid_rows = manifest_rows(opt, path)
        self._train_set = self._set(path, opt.train_key, train_rows, augment=True)
        if opt.split_manifest:
            return self._train_set, self._set(path, opt.train_key, valid_rows)
        return self._train_set, self._set(path, opt.valid_key, option="valid_key") if opt.valid_key else None

    @property
    def epoch(self):
        return self._epoch

    @epoch.setter
    def epoch(self, value):  # the loop sets it before each epoch: the augmentation draws from (seed, epoch, index)
        self._epoch = value
        if self._train_set is not None:
            self._train_set.epoch = value

    def eval_dataset(self, path=None, key=None):
        """Items to evaluate: ``key`` of ``path`` (default: the run's validation data), without augmentation."""
        opt = self.opt
        if path is None and key is None and opt.split_manifest:
            path = images_path(opt)
            return self._set(path, opt.train_key, manifest_rows(opt, path)[1])
        return self._set(path or images_path(opt), key or opt.valid_key, option="--key")

    def loss(self, model, batch):
        """The segmentation loss of the logits; with deep supervision plus 1/2, 1/4, ... of the side heads' losses."""
        images, masks = batch[0], batch[1]  # [B, C, *S], [B, *S]
        out = model(images)
        logits, aux = out if isinstance(out, tuple) else (out, [])  # [B, K, *S], [[B, K, *S_j], ...]
        loss = self.criterion(logits, masks)
        parts = {}
        if aux:
            deep = sum(0.5 ** (j + 1) * self.criterion(side, F.interpolate(masks[:, None].float(), side.shape[2:],
                                                                           mode="nearest")[:, 0].long())
                       for j, side in enumerate(aux))
            parts, loss = {"loss_main": loss.detach(), "loss_deep": deep.detach()}, loss + deep
        if self.opt.debug and not self._debugged and distributed.is_main():
            self._debugged = True
            print(debug_lines(images, masks, logits, self.criterion.parts(logits, masks), loss), flush=True)
        return loss, parts

    def eval_step(self, model, batch, indices):
        """Loss, per-image scores [B, K] and pixel accuracy [B]; figure samples; predicted masks when saved."""
        opt = self.opt
        images, masks = batch[0], batch[1]
        logits, probabilities = predict(model, images, tta=opt.tta, roi=roi_of(opt.roi_size, opt.spatial_dims),
                                        overlap=opt.sw_overlap, mode=opt.sw_mode, sw_batch_size=opt.sw_batch_size,
                                        stitch_cpu=opt.sw_stitch_cpu)
        masks = masks.to(logits.device)
        labels = to_labels(probabilities)  # [B, *S]
        scores = per_image_scores(labels, masks, self.classes, opt.bf_tolerance)
        out = {"loss": self.criterion(logits, masks).float(),
               "pixel_accuracy": (labels == masks).flatten(1).float().mean(1),
               **{f"score_{name}": scores[name] for name in ("dice", "iou", "boundary_f1", "empty_both", "empty_one")}}
        keep = indices.to(labels.device) < opt.figure_samples
        if keep.any():
            middle = (lambda t: t[:, :, t.shape[2] // 2]) if opt.spatial_dims == 3 else (lambda t: t)
            out.update(sample_image=middle(images[keep.to(images.device)]).float().cpu(),
                       sample_true=middle(masks[keep][:, None])[:, 0], sample_pred=middle(labels[keep][:, None])[:, 0],
                       sample_index=indices[keep.cpu()])
        if opt.save_masks:  # binary mode: the target label's own value
            out["pred_mask"] = labels * opt.target_label if opt.target_label is not None else labels
        return out

    def summarize(self, outputs):
        """Loss (batch-weighted), then Dice, IoU, boundary F1 per image and class averaged, pixel accuracy."""
        metrics = super().summarize({k: v for k, v in outputs.items() if k in ("batch_size", "loss")})
        return {**metrics, **summarize_outputs(outputs, self.class_names)}

    def validation(self, model, run, valid_data):
        """Metrics of one validation pass; keeps the overlay samples and per-class Dice for the figures."""
        outputs = run(valid_data, self.eval_step)
        self._figure_data = figure_inputs(outputs, self.class_names)
        return self.summarize(outputs), outputs["loss"].tolist()

    def figures(self, model, device, folder, epoch):
        """segmentation_epoch{N}.png (image / truth / prediction) and dice_per_class_epoch{N}.png."""
        if self._figure_data is not None:
            draw_figures(self._figure_data, folder, f"_epoch{epoch}", f"validation, epoch {epoch}", self.opt.dpi)

    def evaluation(self, model, run, dataset, folder):
        """Metrics, per_image_metrics.csv, the figures and (save_masks) masks.h5 of ``dataset`` into ``folder``."""
        outputs = run(dataset, self.eval_step)
        write_per_image_csv(f"{folder}/per_image_metrics.csv", outputs, dataset.rows, self.class_names)
        if self.opt.save_masks:
            write_masks(f"{folder}/masks.h5", outputs["pred_mask"], dataset, self.opt.target_label)
        draw_figures(figure_inputs(outputs, self.class_names), folder, "", "evaluation", self.opt.dpi)
        return self.summarize(outputs)

