"""Options that segmentation and classification share: the loss, class weights, focal gamma, test-time flips."""

from nenya.options.base import Option

SUPERVISED = ("segment", "classify")
LOSSES = {"segment": ("ce", "bce", "dice", "dice_ce", "focal"), "classify": ("ce", "focal", "combined")}
DEFAULT_LOSS = {"segment": "dice_ce", "classify": "ce"}

OPTIONS = [
    Option("loss", "str", None, "segment: ce (K >= 2), bce (num_classes 1), dice, dice_ce (Dice + CE/BCE) or focal "
           "(default dice_ce); classify: ce (with label_smoothing), focal or combined (0.5 focal + 0.5 "
           "label-smoothed CE), all on soft MixUp/CutMix targets (default ce)", SUPERVISED, nullable=True,
           choices=tuple(dict.fromkeys(LOSSES["segment"] + LOSSES["classify"])), section="loss"),
    Option("class_weights", "float_list_or_auto", None, "cross-entropy / focal class weights: a list of "
           "num_classes numbers (JSON list or '1,5,10') or 'auto' (N / (K n_c) from the training labels or masks)",
           SUPERVISED, nullable=True, section="loss", minimum=0, exclusive_minimum=True),
    Option("focal_gamma", "float", 2.0, "focusing parameter gamma of the focal loss (0: cross-entropy)",
           SUPERVISED, section="loss", minimum=0),
    Option("tta", "bool", False, "test-time augmentation in validation and nenya.evaluate: probabilities averaged "
           "over the input and its flips (classify: horizontal and vertical; segment: each spatial axis)",
           SUPERVISED, section="inference"),
]
