"""Options of classification (fine-tuning an encoder with a linear head); the HViT geometry is in hvit.py."""

from nenya.options.base import Option

CLASSIFY = ("classify",)

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
    Option("label_smoothing", "float", 0.0, "label smoothing eps of the cross-entropy (targets (1 - eps) t + "
           "eps / K)", CLASSIFY, section="classify", minimum=0, maximum=1, exclusive_maximum=True),
    Option("mixup_alpha", "float", 0.0, "MixUp: lam ~ Beta(alpha, alpha), a Beta parameter (0: off)", CLASSIFY,
           section="classify", minimum=0),
    Option("cutmix_alpha", "float", 0.0, "CutMix: box area 1 - lam, lam ~ Beta(alpha, alpha) (0: off)", CLASSIFY,
           section="classify", minimum=0),
    Option("mixup_prob", "float", 1.0, "probability that a batch is mixed (when an alpha is > 0)", CLASSIFY,
           section="classify", minimum=0, maximum=1),
    Option("mixup_switch_prob", "float", 0.5, "probability of CutMix rather than MixUp when both alphas are > 0",
           CLASSIFY, section="classify", minimum=0, maximum=1),
    Option("augment_preset", "str", "light", "training augmentation on the device (kornia, batched): none, light, "
           "moderate or aggressive (see the classification page)", CLASSIFY,
           choices=("none", "light", "moderate", "aggressive"), section="augmentation"),
]
