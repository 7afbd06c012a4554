"""Metrics computed from model outputs: kNN accuracy of embeddings."""

import torch
import torch.nn.functional as F


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int,
                exclude_self: bool = False) -> torch.Tensor:
    """Majority vote of the k most cosine-similar bank vectors (ties go to the class nearer on average)."""
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    similarity = queries @ bank.T
    if exclude_self:
        similarity.fill_diagonal_(-float("inf"))
    k = min(k, bank.shape[0] - int(exclude_self))
    top_similarity, top_index = similarity.topk(k, dim=1)
    neighbour_labels = bank_labels[top_index]
    num_classes = int(bank_labels.max()) + 1
    votes = F.one_hot(neighbour_labels, num_classes).float().sum(dim=1)
    closeness = torch.zeros_like(votes).scatter_add_(1, neighbour_labels, top_similarity.clamp(-1, 1) + 1)
    return (votes + closeness / (2 * k + 1)).argmax(dim=1)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, k: int, exclude_self: bool = False) -> float:
    """Fraction of queries whose kNN vote (cosine similarity) equals their label."""
    predicted = knn_predict(bank, bank_labels, queries, k, exclude_self)
    return (predicted == query_labels).float().mean().item()
