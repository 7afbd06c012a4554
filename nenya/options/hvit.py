"""Options of the hierarchical ViT encoder (``model: "hvit"``) that contrastive and classification runs train.

``img_size``, ``patch_size`` and ``grad_checkpointing`` are shared with MAE (declared in mae.py).
"""

from nenya.options.base import ENCODERS, Option

OPTIONS = [
    Option("embed_dim", "int", 96, "hvit: token width of stage 1 (doubled at each patch merging)", ENCODERS,
           section="hvit", minimum=1),
    Option("depths", "int_list", [2, 2, 6, 2], "hvit: blocks per stage (Swin-T's by default)", ENCODERS,
           section="hvit", minimum=1),
    Option("num_heads", "int_list", [3, 6, 12, 24], "hvit: attention heads per stage (one per depths entry)",
           ENCODERS, section="hvit", minimum=1),
    Option("window_size", "int", 8, "hvit: side of the attention windows (clipped to each stage's token grid, "
           "which must be a multiple of it)", ENCODERS, section="hvit", minimum=1),
    Option("attention", "str", "window", "hvit: shifted-window attention with relative position bias, or global "
           "attention over each stage's whole grid", ENCODERS, choices=("window", "global"), section="hvit"),
    Option("drop_path_rate", "float", 0.1, "hvit: stochastic depth of the last block (linear from 0 over the "
           "blocks)", ENCODERS, section="hvit", minimum=0, maximum=1, exclusive_maximum=True),
    Option("spectral_channels", "int", 0, "hvit: the last this many input channels form the spectral stream "
           "(own patch embedding, fused into the image tokens by cross-attention); 0: none", ENCODERS,
           section="hvit", minimum=0),
]
