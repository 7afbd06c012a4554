"""Options of masked autoencoding on hyperspectral cubes: cube data, geometry, loss terms, metrics."""

from nenya.options.base import ENCODERS, MAE, Option

OPTIONS = [
    # data
    Option("data_csv", "str", None, "CSV of per-cube HDF5 files (column path, optional split); replaces "
           "images_file", MAE, nullable=True, section="data"),
    Option("csv_key", "str", "cube", "HDF5 dataset holding the cube in each file of data_csv", MAE,
           section="data"),
    Option("train_split", "str", "train", "data_csv split value of training cubes (null: every row)", MAE,
           nullable=True, section="data"),
    Option("valid_split", "str", "valid", "data_csv split value of validation cubes (null: no validation)", MAE,
           nullable=True, section="data"),
    Option("normalize_bands", "bool", False, "per-band (x - mean) / std with statistics from band_stats", MAE,
           section="data"),
    Option("band_stats", "str", None, "JSON/NPZ file of per-band mean and std; computed once on the training "
           "data and cached there when absent (default: beside the data)", MAE, nullable=True, section="data"),
    # augmentation
    Option("cube_rot90", "bool", False, "random 90-degree rotations of cubes", MAE, section="augmentation"),
    Option("cube_crop", "int", None, "random square crop of this size (also the model's image size)", MAE,
           nullable=True, section="augmentation", minimum=1),
    # masked autoencoding
    Option("img_size", "int", None, "image size the model (MAE, hvit) is built for (default: the data's, or "
           "cube_crop)", MAE + ENCODERS, nullable=True, section="mae", minimum=1),
    Option("patch_size", "int_list", None, "MAE: [spatial, spectral] patch, pixels per side and bands per patch "
           "(default [25, 5]); hvit: [pixels per side] or one number (default 16)", MAE + ENCODERS,
           nullable=True, section="mae", minimum=1),
    Option("mask_ratio", "float", 0.8, "fraction of patches hidden from the encoder", MAE,
           section="mae", minimum=0, maximum=1, exclusive_maximum=True),
    Option("decoder_embed_dim", "int", None, "decoder width (default: the size's)", MAE, nullable=True,
           section="mae", minimum=1),
    Option("decoder_depth", "int", None, "decoder layers (default: 8)", MAE, nullable=True, section="mae", minimum=1),
    Option("decoder_num_heads", "int", None, "decoder heads (default: the size's)", MAE, nullable=True,
           section="mae", minimum=1),
    Option("grad_checkpointing", "bool", False, "recompute transformer blocks in backward to save memory (MAE, "
           "hvit)", MAE + ENCODERS, section="mae"),
    Option("norm_pix_loss", "bool", False, "MSE against per-patch normalised targets", MAE, section="mae"),
    Option("loss_masked_only", "bool", True, "reconstruction loss on masked patches only (false: every patch)",
           MAE, section="mae"),
    Option("mse_weight", "float", 1.0, "weight of the reconstruction MSE", MAE, section="mae", minimum=0),
    Option("sam_weight", "float", 0.1, "weight of the spectral angle mapper term", MAE, section="mae", minimum=0),
    Option("sam_scope", "str", "spectrum", "spectral angle of the loss over each pixel's whole spectrum "
           "(reconstructed: hidden pieces predicted, visible ones kept) or within each patch's band piece", MAE,
           choices=("spectrum", "patch"), section="mae"),
    Option("variance_weight", "float", 0.01, "weight of the spectral-variance term", MAE, section="mae", minimum=0),
    Option("range_weight", "float", 0.001, "weight of the out-of-range penalty", MAE, section="mae", minimum=0),
    Option("valid_range", "float_list", [0.0, 1.0], "[low, high] valid values of reconstructions (null: no "
           "penalty)", MAE, nullable=True, section="mae", rule="[low, high] with low < high"),
    Option("data_range", "float", 1.0, "data range of PSNR and SSIM", MAE,
           section="mae", minimum=0, exclusive_minimum=True),
    Option("rgb_bands", "int_list", None, "three band indices for RGB composites (default: evenly spaced)", MAE,
           nullable=True, section="mae", minimum=0, rule="each below nchannels"),
    Option("figure_samples", "int", 2, "validation cubes (images) drawn in the figures", MAE + ("segment",),
           section="monitoring", minimum=0),
]
