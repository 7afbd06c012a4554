"""Projection heads that map encoder features to the space the contrastive loss works in."""

from torch import nn

from nenya.errors import NenyaError

HEAD_KINDS = ("mlp", "linear")


def projection_head(kind: str, dim_in: int, feat_dim: int) -> nn.Module:
    """Build a projection head: "mlp" (Linear-ReLU-Linear) or "linear" (one Linear)."""
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(dim_in, dim_in),
            nn.ReLU(inplace=True),
            nn.Linear(dim_in, feat_dim),
        )
    if kind == "linear":
        return nn.Linear(dim_in, feat_dim)
    raise NenyaError(f"unknown projection head {kind!r}; choose from: {', '.join(HEAD_KINDS)}")
