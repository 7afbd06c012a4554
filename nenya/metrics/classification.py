"""Classification metrics from gathered predictions (torchmetrics): confusion matrix, accuracy, macro-F1, recall.

The loop's evaluation pass gathers every process's predictions first, so under torch.distributed the
metrics are those of the whole set. Conventions (scikit-learn's, with zero_division=0): a class with a
zero denominator scores 0; macro-F1 averages over the classes that appear in the labels or the
predictions (torchmetrics leaves out classes with no true positive, false positive or false negative);
balanced accuracy is the mean recall over the classes present in the labels.
"""

import torch
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_confusion_matrix,
                                                    multiclass_f1_score, multiclass_recall)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [K, K] (int64) of (true label, predicted class) pairs of predictions [N] and labels [N]."""
    return multiclass_confusion_matrix(predictions.long(), labels.long(), num_classes).long()


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """{"acc", "macro_f1", "balanced_acc", "recall_k" for each class k} of predicted classes [N] and labels [N]."""
    if len(labels) == 0:
        return {"acc": 0.0, "macro_f1": 0.0, "balanced_acc": 0.0, **{f"recall_{k}": 0.0 for k in range(num_classes)}}
    predictions, labels = predictions.long(), labels.long()
    recall = multiclass_recall(predictions, labels, num_classes, average="none")  # [K]
    supported = torch.bincount(labels, minlength=num_classes) > 0  # [K]
    metrics = {"acc": multiclass_accuracy(predictions, labels, num_classes, average="micro").item(),
               "macro_f1": multiclass_f1_score(predictions, labels, num_classes, average="macro").item(),
               "balanced_acc": recall[supported].mean().item()}
    metrics.update({f"recall_{k}": float(value) for k, value in enumerate(recall)})
    return metrics


def accuracy_of(matrix: torch.Tensor) -> float:
    """The fraction of items on the diagonal of a confusion matrix [K, K]."""
    total = int(matrix.sum())
    return float(matrix.diagonal().sum()) / total if total else 0.0
