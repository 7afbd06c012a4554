"""Options of classification (fine-tuning an encoder with a linear head), and the HViT model's geometry."""

from nenya.options.base import CONTRASTIVE, Option

CLASSIFY = ("classify",)
ENCODERS = CONTRASTIVE + CLASSIFY  # methods that build a registered encoder (resnet*, hvit)

OPTIONS = [
    # data
    Option("valid_fraction", "float", 0.2, "image folders (images_file names a folder of class subfolders): "
           "fraction of each class held out for validation, drawn by seed", CLASSIFY, section="data",
           minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True),
    # fine-tuning
    Option("init_from", "str", None, "run folder (its best.pth, else last.pth) or .pth checkpoint whose encoder "
           "weights start the fine-tuning (not its projection head); null: from scratch", CLASSIFY, nullable=True,
           section="classify"),
    Option("freeze_encoder_epochs", "int", 0, "train only the linear head for the first N epochs (encoder "
           "weights and BatchNorm statistics not updated)", CLASSIFY, section="classify", minimum=0),
    Option("loss", "str", "ce", "loss: ce (cross-entropy with label_smoothing), focal (focal_gamma), or combined "
           "(0.5 focal + 0.5 label-smoothed CE); all take soft MixUp/CutMix targets", CLASSIFY,
           choices=("ce", "focal", "combined"), section="classify"),
    Option("focal_gamma", "float", 2.0, "focusing parameter gamma of the focal loss (0: cross-entropy)", CLASSIFY,
           section="classify", minimum=0),
    Option("label_smoothing", "float", 0.0, "label smoothing eps of the cross-entropy (targets (1 - eps) t + "
           "eps / K)", CLASSIFY, section="classify", minimum=0, maximum=1, exclusive_maximum=True),
    Option("class_weights", "auto_or_float_list", None, "per-class loss weights: a list of num_classes numbers, "
           "or \"auto\" (N / (K * count_k) from the training labels); null: none", CLASSIFY, nullable=True,
           section="classify", minimum=0, exclusive_minimum=True),
    Option("mixup_alpha", "float", 0.0, "MixUp: lam ~ Beta(alpha, alpha), a Beta parameter (0: off)", CLASSIFY,
           section="classify", minimum=0),
    Option("cutmix_alpha", "float", 0.0, "CutMix: box area 1 - lam, lam ~ Beta(alpha, alpha) (0: off)", CLASSIFY,
           section="classify", minimum=0),
    Option("mixup_prob", "float", 1.0, "probability that a batch is mixed (when an alpha is > 0)", CLASSIFY,
           section="classify", minimum=0, maximum=1),
    Option("mixup_switch_prob", "float", 0.5, "probability of CutMix rather than MixUp when both alphas are > 0",
           CLASSIFY, section="classify", minimum=0, maximum=1),
    Option("tta", "bool", False, "test-time augmentation in validation and nenya.evaluate: softmax averaged over "
           "the image and its horizontal and vertical flips", CLASSIFY, section="classify"),
    Option("augment_preset", "str", "light", "training augmentation on the device (kornia, batched): none, light, "
           "moderate or aggressive (see the classification page)", CLASSIFY,
           choices=("none", "light", "moderate", "aggressive"), section="augmentation"),
    # the HViT encoder's geometry (model "hvit"; other encoders ignore these)
    Option("hvit_patch_size", "int", 16, "hvit: pixels per side of a patch (16 at 256 px, 4 for small inputs)",
           ENCODERS, section="hvit", minimum=1),
    Option("embed_dim", "int", 96, "hvit: width of the first stage (doubled at each patch merging)", ENCODERS,
           section="hvit", minimum=1),
    Option("depths", "int_list", [2, 2, 6, 2], "hvit: blocks per stage", ENCODERS, section="hvit", minimum=1),
    Option("num_heads", "int_list", [3, 6, 12, 24], "hvit: attention heads per stage", ENCODERS, section="hvit",
           minimum=1),
    Option("window_size", "int", 8, "hvit: attention window (clipped to the grid where the grid is smaller)",
           ENCODERS, section="hvit", minimum=1),
    Option("attention", "str", "window", "hvit: shifted-window or global attention in every stage", ENCODERS,
           choices=("window", "global"), section="hvit"),
    Option("drop_path_rate", "float", 0.1, "hvit: stochastic depth, linear from 0 to this over the blocks",
           ENCODERS, section="hvit", minimum=0, maximum=1, exclusive_maximum=True),
    Option("spectral_channels", "int", 0, "hvit: the last this-many input channels form the spectral stream "
           "(own patch embedding, fused by cross-attention)", ENCODERS, section="hvit", minimum=0),
]
