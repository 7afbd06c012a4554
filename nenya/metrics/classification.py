"""Classification metrics from gathered predictions: confusion matrix, accuracy, macro-F1, per-class recall.

Every metric comes from the K x K confusion matrix C (rows: true class, columns: predicted class) of
all items, so under torch.distributed they are those of the whole set (the loop's evaluation pass
gathers every process's predictions first). With TP_k = C[k, k], recall_k = TP_k / sum_j C[k, j],
precision_k = TP_k / sum_i C[i, k], F1_k = 2 TP_k / (row_k + column_k); a class with a zero
denominator scores 0 (scikit-learn's zero_division=0). macro-F1 and balanced accuracy are the means
of F1_k and recall_k over the classes that appear in the labels or the predictions.
"""

import torch


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [K, K] (int64) of (true label, predicted class) pairs of predictions [N] and labels [N]."""
    pairs = labels.long() * num_classes + predictions.long()  # [N]
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (float64)."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))


def classification_metrics(matrix: torch.Tensor) -> dict:
    """{"acc", "macro_f1", "balanced_acc", "recall_k" for each class k} of a confusion matrix [K, K]."""
    matrix = matrix.long()
    true_positive = matrix.diagonal()
    rows, columns = matrix.sum(dim=1), matrix.sum(dim=0)  # items per true class, per predicted class
    recall = _ratio(true_positive, rows)
    f1 = _ratio(2 * true_positive, rows + columns)
    present = (rows + columns) > 0
    total = int(matrix.sum())
    metrics = {"acc": float(true_positive.sum()) / total if total else 0.0,
               "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
               "balanced_acc": float(recall[rows > 0].mean()) if (rows > 0).any() else 0.0}
    metrics.update({f"recall_{k}": float(value) for k, value in enumerate(recall)})
    return metrics
