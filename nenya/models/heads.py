"""Projection heads (encoder features -> contrastive space) and the linear classifier on any encoder."""

import torch
import torch.nn.functional as F
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


class ProjectedEncoder(nn.Module):
    """An encoder (features [B, dim_out]) + a projection head: SupConResNet's interface (forward, encode, dim_in)."""

    def __init__(self, encoder: nn.Module, head: str = "mlp", feat_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        self.dim_in = encoder.dim_out
        self.head = projection_head(head, self.dim_in, feat_dim)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Unit-length projections [B, feat_dim] for the contrastive loss (and the encoder features [B, dim_in])."""
        features = self.encoder(x)
        projections = F.normalize(self.head(features), dim=1)
        return (projections, features) if return_features else projections

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features [B, dim_in] without the head."""
        return self.encoder(x)


class LinearClassifier(nn.Linear):
    """One linear layer from encoder features [B, encoder_dim] to class logits [B, num_classes].

    Also the online linear probe: trained on detached encoder features during pre-training.
    """

    def __init__(self, encoder_dim: int, num_classes: int):
        super().__init__(encoder_dim, num_classes)


class EncoderClassifier(nn.Module):
    """Any registered encoder (a model with ``encode`` and ``dim_in``) + a linear classifier: images -> logits.

    Classification uses the encoder's features, not the contrastive projection head, so the model's
    ``head`` (if it has one) is replaced by an identity: it gets no gradient (DistributedDataParallel
    would stop on unused parameters) and is not counted. The encoder keeps its names under
    ``backbone.`` (``backbone.encoder.*``), so an SSL run's ``encoder.*`` weights load into
    ``model.backbone``.
    """

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        if not (hasattr(model, "encode") and hasattr(model, "dim_in")):
            raise NenyaError(f"{type(model).__name__} has no encode() and dim_in, so it cannot be fine-tuned "
                             "with a linear head; use an encoder model (resnet18/34/50/101, hvit)")
        if hasattr(model, "head"):
            model.head = nn.Identity()
        self.backbone = model
        self.dim_in = model.dim_in
        self.classifier = LinearClassifier(model.dim_in, num_classes)
        self.frozen = False  # True: the encoder runs in eval mode under no_grad (only the classifier learns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] of images [B, C, H, W]."""
        if not self.frozen:
            return self.classifier(self.backbone.encode(x))
        was_training = self.backbone.training
        self.backbone.eval()  # BatchNorm statistics and drop path left alone too
        try:
            with torch.no_grad():
                features = self.backbone.encode(x)  # [B, dim_in]
        finally:
            self.backbone.train(was_training)
        return self.classifier(features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's features [B, dim_in]."""
        return self.backbone.encode(x)

    def no_weight_decay(self) -> set[str]:
        """The backbone's own no-decay names, by their names in this model."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{name}" for name in names}
