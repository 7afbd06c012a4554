"""Classification metrics and the confusion-matrix figure against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix as sk_confusion
from sklearn.metrics import f1_score, recall_score

from nenya.metrics.classification import classification_metrics, confusion_matrix
from nenya.plots.classification import confusion_figure


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_with_a_class_never_predicted_and_one_never_present(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 60)  # classes 0..3 present, class 4 absent from the labels, class 5 from both
    predictions = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 5, 60))
    predictions[predictions == 2] = 1  # class 2 never predicted
    matrix = confusion_matrix(torch.from_numpy(predictions), torch.from_numpy(labels), 6)
    np.testing.assert_array_equal(matrix.numpy(), sk_confusion(labels, predictions, labels=range(6)))
    metrics = classification_metrics(torch.from_numpy(predictions), torch.from_numpy(labels), 6)
    seen = np.unique(np.r_[labels, predictions])
    assert metrics["acc"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro", labels=seen,
                                                         zero_division=0))
    assert metrics["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, predictions))
    recalls = recall_score(labels, predictions, average=None, labels=range(6), zero_division=0)
    for k in range(6):
        assert metrics[f"recall_{k}"] == pytest.approx(recalls[k])


def test_confusion_figure_is_written(tmp_path):
    matrix = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    path = confusion_figure(matrix, ["a", "b", "c"], str(tmp_path / "c.png"), "title")
    assert (tmp_path / "c.png").stat().st_size > 1000 and path.endswith("c.png")
