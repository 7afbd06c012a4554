"""What frozen embeddings are worth: a linear probe's accuracy and the retrieval of an image from its view."""

import numpy as np
import torch
import torch.nn.functional as F

from nenya.metrics.knn import knn_accuracy


def linear_probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                          test_labels: torch.Tensor, max_iter: int = 1000) -> float:
    """Accuracy on the test set of a logistic regression fitted on standardised training features [N, D].

    NaN when a feature is not finite (the loop then names the data or the learning rate at fault).
    """
    if not (torch.isfinite(train_features).all() and torch.isfinite(test_features).all()):
        return float("nan")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(train_features.double().numpy(), train_labels.numpy())
    return float(np.mean(probe.predict(test_features.double().numpy()) == test_labels.numpy()))


def retrieval_top1(queries: torch.Tensor, originals: torch.Tensor) -> float:
    """Fraction of queries [N, D] whose most cosine-similar row of originals [N, D] is their own (row i)."""
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(originals.float(), dim=1).T  # [N, N]
    return (similarity.argmax(dim=1) == torch.arange(len(queries))).float().mean().item()


def feature_metrics(queries: dict, bank: dict | None, k: int, probe=None) -> dict:
    """kNN accuracy (leave-one-out without a bank), linear-probe accuracy (with a bank) and the accuracy of an
    online ``probe`` (a linear layer) of query ``features`` [N, D] with ``labels`` [N] against a bank's."""
    features, labels = queries["features"], queries["labels"]
    if bank is None:
        metrics = {"knn_acc": knn_accuracy(features, labels, features, labels, k, exclude_self=True)}
    else:
        metrics = {"knn_acc": knn_accuracy(bank["features"], bank["labels"], features, labels, k),
                   "linear_probe_acc": linear_probe_accuracy(bank["features"], bank["labels"], features, labels)}
    if probe is not None:
        with torch.no_grad():
            logits = probe(features.to(next(probe.parameters()).device)).cpu()
        metrics["probe_acc"] = (logits.argmax(dim=1) == labels).float().mean().item()
    return metrics
