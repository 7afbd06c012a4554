"""Segmentation metrics per image and class, then averaged: Dice, IoU, pixel accuracy, boundary F1.

Inputs are integer label maps, predicted and true, [B, H, W] or [B, D, H, W]; each scored class c
is the binary mask ``labels == c``. Per image and class:

- Dice = 2 #(P and T) / (#P + #T), IoU = #(P and T) / #(P or T) (MONAI's ``compute_dice`` /
  ``compute_iou`` with ``ignore_empty=False``; # counts pixels);
- accuracy = (TP + TN) / pixels of the one-vs-rest mask of c (with one foreground class, the
  pixel accuracy of the image);
- boundary F1: the boundary of a mask is its pixels with a background neighbour along an axis
  (skimage's ``find_boundaries(mode="inner", connectivity=1)``; the image border is not a
  boundary); with B_P, B_T the two boundaries and dil_r the dilation by a disk (2-D) / ball (3-D)
  of radius r = ``bf_tolerance`` pixels (offsets with x^2 + y^2 (+ z^2) <= r^2),
  precision = #(B_P and dil_r(B_T)) / #B_P, recall = #(B_T and dil_r(B_P)) / #B_T,
  F1 = 2 P R / (P + R) (0 when P + R = 0).

Empty masks: when the predicted and true masks of a class are both empty Dice, IoU and boundary F1
are 1, when exactly one is empty they are 0, never NaN; ``empty_both`` and ``empty_one`` mark those
cases and their counts are reported beside the means. For two non-empty masks boundary F1 applies
the same rule to their boundaries (two masks that fill the image have none: 1).

Use: ``per_image_scores`` gives tensors [B, K] per metric; :class:`SegmentationScores` collects
them over batches; ``score_totals`` turns them into sums (add them across ranks with an
all-reduce) and ``summarize`` into means.
"""

import torch
import torch.nn.functional as F

METRICS = ("dice", "iou", "accuracy", "boundary_f1")


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Label maps ``[B, *S]`` of logits ``[B, K, *S]``: logit > 0 (sigmoid > 0.5) for K = 1, else the argmax."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def class_masks(labels: torch.Tensor, classes) -> torch.Tensor:
    """Binary masks ``[B, K, *S]`` (bool) of label maps ``[B, *S]``, one per label value in ``classes``."""
    values = torch.as_tensor(list(classes), device=labels.device)
    return labels.unsqueeze(1) == values.view(1, -1, *[1] * (labels.dim() - 1))


def inner_boundaries(masks: torch.Tensor) -> torch.Tensor:
    """Mask pixels with a background neighbour along an axis, masks ``[N, *S]`` bool -> ``[N, *S]`` bool."""
    background = (~masks).float().unsqueeze(1)  # [N, 1, *S]
    pool = F.max_pool2d if masks.dim() == 3 else F.max_pool3d
    near = torch.zeros_like(background)
    for axis in range(masks.dim() - 1):  # the cross footprint: one axis at a time
        kernel = [1] * (masks.dim() - 1)
        kernel[axis] = 3
        padding = [k // 2 for k in kernel]  # max pooling pads with -inf: outside is not background
        near = torch.maximum(near, pool(background, kernel, stride=1, padding=padding))
    return masks & (near[:, 0] > 0)


def ball(radius: int, spatial_dims: int, device=None) -> torch.Tensor:
    """Disk (2-D) or ball (3-D) footprint [2r + 1] * dims, 1 where x^2 + y^2 (+ z^2) <= r^2."""
    axis = torch.arange(-radius, radius + 1, device=device)
    grids = torch.meshgrid(*[axis] * spatial_dims, indexing="ij")
    return (sum(g ** 2 for g in grids) <= radius ** 2).float()


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Masks ``[N, *S]`` bool dilated by a disk / ball of ``radius`` pixels (radius 0: unchanged)."""
    if radius == 0:
        return masks
    footprint = ball(radius, masks.dim() - 1, masks.device)[None, None]
    conv = F.conv2d if masks.dim() == 3 else F.conv3d
    return conv(masks.float().unsqueeze(1), footprint, padding=radius)[:, 0] > 0.5


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))


def boundary_f1(pred: torch.Tensor, true: torch.Tensor, tolerance: int = 2) -> torch.Tensor:
    """Boundary F1 [B, K] of binary masks pred, true ``[B, K, *S]`` within ``tolerance`` pixels."""
    batch, classes, spatial = pred.shape[0], pred.shape[1], pred.shape[2:]
    pred_b = inner_boundaries(pred.reshape(batch * classes, *spatial))  # [BK, *S]
    true_b = inner_boundaries(true.reshape(batch * classes, *spatial))
    n_pred = pred_b.flatten(1).sum(1).float()  # [BK]
    n_true = true_b.flatten(1).sum(1).float()
    precision = _ratio((pred_b & dilate(true_b, tolerance)).flatten(1).sum(1).float(), n_pred)
    recall = _ratio((true_b & dilate(pred_b, tolerance)).flatten(1).sum(1).float(), n_true)
    f1 = _ratio(2 * precision * recall, precision + recall)  # one boundary empty: P or R is 0, so F1 is 0
    f1 = torch.where((n_pred == 0) & (n_true == 0), torch.ones_like(f1), f1)  # e.g. both masks fill the image
    pred_any, true_any = pred.flatten(2).any(2).flatten(), true.flatten(2).any(2).flatten()
    f1 = torch.where(pred_any ^ true_any, torch.zeros_like(f1), f1)  # the empty-mask rule comes first
    return f1.view(batch, classes)


def per_image_scores(pred: torch.Tensor, target: torch.Tensor, classes, bf_tolerance: int = 2) -> dict:
    """Per image and class scores {metric: [B, K]} of label maps pred, target ``[B, *S]`` (2-D or 3-D).

    Besides :data:`METRICS` the dict holds ``empty_both`` and ``empty_one`` (1.0 where the two
    masks of a class are both empty / exactly one is empty).
    """
    from monai.metrics import compute_dice, compute_iou

    if pred.shape != target.shape or pred.dim() not in (3, 4):
        raise ValueError(f"pred and target must be label maps of one shape [B, H, W] or [B, D, H, W]; "
                         f"got {list(pred.shape)} and {list(target.shape)}")
    pred_m, true_m = class_masks(pred, classes), class_masks(target, classes)  # [B, K, *S] bool
    pred_f, true_f = pred_m.float(), true_m.float()
    pred_any, true_any = pred_m.flatten(2).any(2), true_m.flatten(2).any(2)  # [B, K]
    return {
        "dice": compute_dice(pred_f, true_f, include_background=True, ignore_empty=False),
        "iou": compute_iou(pred_f, true_f, include_background=True, ignore_empty=False),
        "accuracy": (pred_m == true_m).flatten(2).float().mean(2),
        "boundary_f1": boundary_f1(pred_m, true_m, bf_tolerance),
        "empty_both": (~pred_any & ~true_any).float(),
        "empty_one": (pred_any ^ true_any).float(),
    }


def score_totals(scores: dict) -> dict:
    """Sums over images {key: [K]} of per-image scores {key: [N, K]}, plus ``images`` [1]; add across ranks."""
    totals = {key: value.sum(0) for key, value in scores.items()}
    totals["images"] = torch.tensor([float(next(iter(scores.values())).shape[0])])
    return totals


def summarize(totals: dict, class_names=None) -> dict:
    """Means of the totals: each metric over images and classes, per class (``dice_<name>``), and the empty counts."""
    images = float(totals["images"].sum())
    summary = {}
    for metric in METRICS:
        per_class = totals[metric].double() / max(images, 1.0)  # [K]
        summary[metric] = float(per_class.mean())
        names = class_names or [str(k) for k in range(len(per_class))]
        summary.update({f"{metric}_{name}": float(v) for name, v in zip(names, per_class)})
    summary["images"] = int(images)
    summary["empty_both"] = int(totals["empty_both"].sum())
    summary["empty_one"] = int(totals["empty_one"].sum())
    return summary


class SegmentationScores:
    """Collects per-image scores over batches; ``per_image()`` [N, K] tensors, ``summary()`` the means."""

    def __init__(self, classes, bf_tolerance: int = 2, class_names=None):
        self.classes, self.bf_tolerance = list(classes), bf_tolerance
        self.class_names = class_names or [str(c) for c in self.classes]
        self.batches = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> dict:
        """Score one batch of label maps ``[B, *S]``; returns its per-image scores (kept on the CPU)."""
        scores = {k: v.cpu() for k, v in per_image_scores(pred, target, self.classes, self.bf_tolerance).items()}
        self.batches.append(scores)
        return scores

    def per_image(self) -> dict:
        """Every image's scores so far {key: [N, K]}."""
        if not self.batches:
            return {key: torch.zeros(0, len(self.classes)) for key in METRICS + ("empty_both", "empty_one")}
        return {key: torch.cat([b[key] for b in self.batches]) for key in self.batches[0]}

    def totals(self) -> dict:
        """Sums of the scores so far (see :func:`score_totals`)."""
        return score_totals(self.per_image())

    def summary(self) -> dict:
        """Means over images and classes, per class, and the empty-mask counts."""
        return summarize(self.totals(), self.class_names)


def summarize_outputs(outputs: dict, class_names) -> dict:
    """Metrics of an evaluation pass's per-image outputs (``score_<metric>`` [N, K], ``pixel_accuracy`` [N]).

    Dice, IoU and boundary F1 averaged over images and classes; with several classes also per class
    (``dice_<name>``, ``iou_<name>``); pixel accuracy (all labels) averaged over images; the counts of
    empty cases (``empty_both``, ``empty_one``) over images and classes.
    """
    scores = {name: outputs[f"score_{name}"].double() for name in ("dice", "iou", "boundary_f1", "empty_both",
                                                                     "empty_one")}
    totals = score_totals({**scores, "accuracy": torch.zeros_like(scores["dice"])})
    summary = summarize(totals, class_names)
    metrics = {name: summary[name] for name in ("dice", "iou", "boundary_f1")}
    if len(class_names) > 1:
        metrics.update({f"{name}_{cls}": summary[f"{name}_{cls}"] for name in ("dice", "iou") for cls in class_names})
    metrics["pixel_accuracy"] = float(outputs["pixel_accuracy"].double().mean())
    metrics["empty_both"], metrics["empty_one"] = float(summary["empty_both"]), float(summary["empty_one"])
    return metrics
