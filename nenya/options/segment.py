"""Options of segmentation (``method: "segment"``): classes, model, loss, augmentation, split, inference."""

from nenya.options.base import Option

SEGMENT = ("segment",)
AUGMENTATIONS = ("horizontal_flip", "vertical_flip", "depth_flip", "rotation", "elastic_transform",
                 "affine_transform", "coarse_dropout")


def _probability(name: str, what: str) -> Option:
    return Option(name, "float", 0.0, f"probability of {what} (0 = off)", SEGMENT, section="augmentation",
                  minimum=0, maximum=1)


OPTIONS = [
    # model and classes
    Option("spatial_dims", "int", None, "2 (images [N, C, H, W]) or 3 (volumes [N, C, D, H, W]); default: "
           "from the data", SEGMENT, nullable=True, section="segmentation", minimum=2, maximum=3),
    Option("widths", "int_list", None, "channels per level (U-Nets) or per stage (dformer3d); default: the "
           "model's (attention_unet 32..512, unet3d 32..256, dformer3d 96..768)", SEGMENT, nullable=True,
           section="segmentation", minimum=1),
    Option("deep_supervision", "bool", False, "dformer3d only: add the loss of each decoder stage's side head "
           "(weights 1/2, 1/4, ...) to the training loss", SEGMENT, section="segmentation"),
    Option("class_names", "str_list", None, "names of the scored classes in metrics and figures (default: the "
           "data file's class_names attribute, else the label values)", SEGMENT, nullable=True,
           section="segmentation"),
    Option("target_label", "int", None, "binary mode: train background vs this label of multi-class masks "
           "(num_classes 1 or 2); saved masks map predictions back to this value", SEGMENT, nullable=True,
           section="segmentation", minimum=1),
    # loss
    Option("pos_weight", "float_or_auto", None, "BCE foreground weight (num_classes 1): a number or 'auto' (background "
           "over foreground pixels of the training masks)", SEGMENT, nullable=True, section="segmentation",
           minimum=0, exclusive_minimum=True),
    # metrics
    Option("bf_tolerance", "int", 2, "boundary F1 tolerance: radius in pixels of the disk (ball) the boundaries "
           "are dilated by", SEGMENT, section="segmentation", minimum=0, maximum=100),
    # data
    Option("split_manifest", "str", None, "JSON manifest of nenya.split (train/valid indices of train_key, "
           "grouped); replaces valid_key. Relative paths are under data_folder", SEGMENT, nullable=True,
           section="data"),
    # augmentation (image and mask together; coarse dropout on the image only)
    _probability("horizontal_flip", "a left-right flip (the last axis)"),
    _probability("vertical_flip", "an up-down flip (the H axis)"),
    _probability("depth_flip", "a flip of the depth axis (volumes only)"),
    _probability("rotation", "a rotation in the H-W plane by up to rotation_degrees (mask: nearest)"),
    Option("rotation_degrees", "float", 30.0, "largest angle of the random rotation, either way", SEGMENT,
           section="augmentation", minimum=0, maximum=180),
    _probability("elastic_transform", "an elastic deformation (MONAI Rand2DElastic / Rand3DElastic)"),
    _probability("affine_transform", "a random affine map: rotation 10 degrees, scale 10 %, translation 10 %"),
    _probability("coarse_dropout", "blanking 1-8 boxes of 1/8 of the size in the image (never the mask)"),
    # inference
    Option("roi_size", "int_list", None, "sliding-window inference with windows of this size (one per spatial "
           "axis, or one for all) at validation and evaluation; null: whole images", SEGMENT, nullable=True,
           section="inference", minimum=1),
    Option("sw_overlap", "float", 0.25, "overlap of neighbouring sliding windows", SEGMENT, section="inference",
           minimum=0, maximum=1, exclusive_maximum=True),
    Option("sw_batch_size", "int", 4, "windows per forward pass of the sliding-window inference", SEGMENT,
           section="inference", minimum=1),
    Option("sw_mode", "str", "gaussian", "blending of overlapping windows", SEGMENT, choices=("gaussian", "constant"),
           section="inference"),
    Option("sw_stitch_cpu", "bool", True, "stitch the windows' outputs in CPU memory (the model still runs on the "
           "device), so a large volume does not fill the GPU", SEGMENT, section="inference"),
    Option("save_masks", "bool", False, "nenya.evaluate: write the predicted masks to masks.h5 in its out folder "
           "(--save-masks)", SEGMENT, section="inference"),
]
