"""Options of contrastive SSL (SimCLR, SupCon): projection head, loss and the kNN monitor."""

from nenya.options.base import CONTRASTIVE, Option

OPTIONS = [
    Option("feat_dim", "int", 128, "dimension of the projection head's (L2-normalised) output", CONTRASTIVE,
           section="method", minimum=1),
    Option("head", "str", "mlp", "projection head: two-layer MLP or a single linear layer", CONTRASTIVE,
           choices=("mlp", "linear"), section="method"),
    Option("temp", "float", 0.07, "temperature of the contrastive loss", CONTRASTIVE,
           section="method", minimum=0, exclusive_minimum=True),
    Option("base_temp", "float", 0.07, "base temperature: the loss is scaled by temp/base_temp", CONTRASTIVE,
           section="method", minimum=0, exclusive_minimum=True),
    Option("contrast_mode", "str", "all", "anchors of the contrastive loss: every view, or the first view only",
           CONTRASTIVE, choices=("all", "one"), section="method"),
    Option("gather_negatives", "bool", True, "under torch.distributed, contrast every process's embeddings (the "
           "negatives span the global batch, gradients flow back to each process)", CONTRASTIVE, section="method"),
    Option("knn_k", "int", 20, "neighbours of the kNN-accuracy monitor", CONTRASTIVE, section="monitoring", minimum=1),
    Option("knn_bank_size", "int", 10000, "most training images in the kNN memory bank", CONTRASTIVE,
           section="monitoring", minimum=1),
]
