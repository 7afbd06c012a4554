"""The option schema: every key nenya reads, with its type, default, allowed values, help and methods."""

from dataclasses import dataclass

ALL = ("all",)
SSL = ("simclr", "supcon")
MAE = ("mae",)

# Keys of the original Nenya opts files that training does not use: accepted with a warning.
LEGACY_KEYS = {
    "sensor": "the sensor name is metadata only",
    "s3_bucket": "nenya reads and writes local files only",
    "s3_outdir": "nenya reads and writes local files only",
    "eval_root": "evaluation paths are given to nenya.evaluate / nenya.latents",
    "latents_folder": "latents paths are given to nenya.latents",
    "modis_data": "data come from images_file",
    "nenya_data": "data come from images_file",
    "model_folder": "the run folder is model_root/model_name",
}


@dataclass(frozen=True)
class Option:
    """One option: its name, type, default, allowed values, one-line help and the methods that use it."""

    name: str
    type: str  # int, float, bool, str, int_list, float_list
    default: object
    help: str
    methods: tuple = ALL
    choices: tuple | None = None
    nullable: bool = False
    derived: bool = False  # filled in by option_preprocess; a value given by the user is recomputed
    section: str = "general"


def _o(*args, **kwargs):
    return Option(*args, **kwargs)


OPTIONS = [
    # what to train
    _o("ssl_method", "str", "simclr",
       "training method, a name from the method registry (Nenya's 'SimCLR' and 'SupCon' are accepted as written)",
       section="method"),
    _o("ssl_model", "str", "resnet18", "architecture name from the model registry", section="method"),
    _o("nchannels", "int", 1, "channels per input image; must match the data", section="method"),
    _o("feat_dim", "int", 128, "dimension of the projection head's (L2-normalised) output", SSL, section="method"),
    _o("head", "str", "mlp", "projection head: two-layer MLP or a single linear layer", SSL,
       choices=("mlp", "linear"), section="method"),
    _o("temp", "float", 0.07, "temperature of the contrastive loss", SSL, section="method"),
    _o("base_temp", "float", 0.07, "base temperature: the loss is scaled by temp/base_temp", SSL, section="method"),
    _o("contrast_mode", "str", "all", "anchors of the contrastive loss: every view, or the first view only", SSL,
       choices=("all", "one"), section="method"),
    # optimisation
    _o("optimizer", "str", "sgd", "optimizer; lars adapts per-layer rates for large-batch SimCLR",
       choices=("sgd", "adam", "adamw", "lars"), section="optimisation"),
    _o("learning_rate", "float", 0.05, "base learning rate (derived from blr when blr is set)",
       section="optimisation"),
    _o("momentum", "float", 0.9, "SGD/LARS momentum", section="optimisation"),
    _o("weight_decay", "float", 1e-4, "weight decay (not applied to biases and norms with lars)", section="optimisation"),
    _o("cosine", "bool", False, "cosine learning-rate decay per epoch down to learning_rate * lr_decay_rate**3",
       section="optimisation"),
    _o("lr_decay_rate", "float", 0.1, "factor of each step decay; also sets the cosine floor", section="optimisation"),
    _o("lr_decay_epochs", "int_list", [700, 800, 900],
       "epochs after which the step schedule multiplies the rate by lr_decay_rate (list or '700,800,900')",
       section="optimisation"),
    _o("warm", "bool", False, "linear warm-up from warmup_from over warm_epochs (forced on above batch 256)",
       section="optimisation"),
    _o("warm_epochs", "int", 10, "epochs of warm-up when warm is on", section="optimisation"),
    _o("warmup_from", "float", 0.01, "learning rate at the start of warm-up", section="optimisation"),
    _o("warmup_to", "float", None, "learning rate at the end of warm-up", nullable=True, derived=True,
       section="optimisation"),
    _o("lr_min", "float", None, "cosine floor, learning_rate * lr_decay_rate**3", nullable=True, derived=True,
       section="optimisation"),
    _o("schedule", "str", "epoch",
       "learning-rate schedule: Nenya's per-epoch cosine/step (+ warm), or per-iteration linear warm-up over "
       "warm_epochs then cosine to lr_min (MAE)", choices=("epoch", "iter_cosine"), section="optimisation"),
    _o("blr", "float", None, "base rate: when set, learning_rate = blr * effective batch / 256", nullable=True,
       section="optimisation"),
    _o("betas", "float_list", [0.9, 0.999], "Adam/AdamW betas", section="optimisation"),
    _o("accumulate_grad_batches", "int", 1, "batches whose gradients add up before each optimizer step",
       section="optimisation"),
    _o("amp", "str", "none", "mixed precision on CUDA: bf16 autocast, or fp16 autocast with a gradient scaler "
       "(ignored on the CPU)", choices=("none", "bf16", "fp16"), section="optimisation"),
    _o("epochs", "int", 100, "number of training epochs", section="optimisation"),
    _o("batch_size_train", "int", 64, "training batch size (per process)", section="optimisation"),
    _o("batch_size_valid", "int", 64, "validation batch size", section="optimisation"),
    # data
    _o("data_folder", "str", "./", "folder that holds images_file", section="data"),
    _o("images_file", "str", None, "HDF5 file in Nenya's layout, or builtin:digits", nullable=True, section="data"),
    _o("train_key", "str", "train", "HDF5 dataset of training images", section="data"),
    _o("valid_key", "str", "valid", "HDF5 dataset of validation images (null: no validation)", nullable=True,
       section="data"),
    _o("preload", "bool", False, "read the whole image datasets into memory at start", section="data"),
    _o("num_workers", "int", 0, "DataLoader worker processes", section="data"),
    _o("overfit_batches", "int", 0, "debug: train and validate on the first N training batches only (0 = off)",
       section="data"),
    _o("data_csv", "str", None, "CSV of per-cube HDF5 files (column path, optional split); replaces images_file",
       MAE, nullable=True, section="data"),
    _o("csv_key", "str", "cube", "HDF5 dataset holding the cube in each file of data_csv", MAE, section="data"),
    _o("train_split", "str", "train", "data_csv split value of training cubes (null: every row)", MAE,
       nullable=True, section="data"),
    _o("valid_split", "str", "valid", "data_csv split value of validation cubes (null: no validation)", MAE,
       nullable=True, section="data"),
    _o("normalize_bands", "bool", False, "per-band (x - mean) / std with statistics from band_stats", MAE,
       section="data"),
    _o("band_stats", "str", None, "JSON/NPZ file of per-band mean and std; computed once on the training data "
       "and cached there when absent (default: beside the data)", MAE, nullable=True, section="data"),
    _o("random_cropjitter", "int_list", None, "[crop, jitter]: random crop around the centre, resized back",
       nullable=True, section="augmentation"),
    _o("flip", "bool", False, "random horizontal and vertical flips", section="augmentation"),
    _o("rotate", "bool", False, "random rotation by any angle", section="augmentation"),
    _o("gauss_noise", "float", 0.0, "standard deviation of added Gaussian noise (0 = off)", section="augmentation"),
    _o("demean", "bool", False, "subtract each image's mean (also at validation and for latents)",
       section="augmentation"),
    _o("cube_flip", "bool", False, "random horizontal and vertical flips of cubes", MAE, section="augmentation"),
    _o("cube_rot90", "bool", False, "random 90-degree rotations of cubes", MAE, section="augmentation"),
    _o("cube_crop", "int", None, "random square crop of this size (also the model's image size)", MAE,
       nullable=True, section="augmentation"),
    # masked autoencoding
    _o("img_size", "int", None, "image size the MAE is built for (default: the data's, or cube_crop)", MAE,
       nullable=True, section="mae"),
    _o("patch_size", "int_list", [25, 5], "[spatial, spectral] patch: pixels per side, bands per patch", MAE,
       section="mae"),
    _o("mask_ratio", "float", 0.8, "fraction of patches hidden from the encoder", MAE, section="mae"),
    _o("decoder_embed_dim", "int", None, "decoder width (default: the size's)", MAE, nullable=True, section="mae"),
    _o("decoder_depth", "int", None, "decoder layers (default: 8)", MAE, nullable=True, section="mae"),
    _o("decoder_num_heads", "int", None, "decoder heads (default: the size's)", MAE, nullable=True, section="mae"),
    _o("grad_checkpointing", "bool", False, "recompute transformer blocks in backward to save memory", MAE,
       section="mae"),
    _o("norm_pix_loss", "bool", False, "MSE against per-patch normalised targets", MAE, section="mae"),
    _o("loss_masked_only", "bool", True, "reconstruction loss on masked patches only (false: every patch)", MAE,
       section="mae"),
    _o("mse_weight", "float", 1.0, "weight of the reconstruction MSE", MAE, section="mae"),
    _o("sam_weight", "float", 0.1, "weight of the spectral angle mapper term", MAE, section="mae"),
    _o("variance_weight", "float", 0.01, "weight of the spectral-variance term", MAE, section="mae"),
    _o("range_weight", "float", 0.001, "weight of the out-of-range penalty", MAE, section="mae"),
    _o("valid_range", "float_list", [0.0, 1.0], "[low, high] valid values of reconstructions (null: no penalty)",
       MAE, nullable=True, section="mae"),
    _o("data_range", "float", 1.0, "data range of PSNR and SSIM", MAE, section="mae"),
    _o("rgb_bands", "int_list", None, "three band indices for RGB composites (default: evenly spaced)", MAE,
       nullable=True, section="mae"),
    _o("figure_samples", "int", 2, "validation cubes drawn in the figures", MAE, section="mae"),
    _o("dpi", "int", 100, "resolution of PNG figures", section="monitoring"),
    # monitoring
    _o("valid_freq", "int", 1, "validate every this many epochs (and after the last)", section="monitoring"),
    _o("save_freq", "int", 10, "write ckpt_epoch_N.pth every this many epochs", section="monitoring"),
    _o("print_freq", "int", 20, "log a line (and TensorBoard step scalars) every this many steps",
       section="monitoring"),
    _o("knn_k", "int", 20, "neighbours of the kNN-accuracy monitor", SSL, section="monitoring"),
    _o("knn_bank_size", "int", 10000, "most training images in the kNN memory bank", SSL, section="monitoring"),
    _o("monitor", "str", None, "validation metric that picks best.pth (default: the method's)", nullable=True,
       section="monitoring"),
    # run
    _o("model_root", "str", "models", "folder of run folders", section="run"),
    _o("model_name", "str", None, "run folder name (default: built from the options, Nenya style)",
       nullable=True, section="run"),
    _o("trial", "int", 0, "trial number, part of the default run name", section="run"),
    _o("seed", "int", 0, "random seed of weights, shuffling and augmentation", section="run"),
    _o("deterministic", "bool", False, "torch.use_deterministic_algorithms and no cuDNN benchmark", section="run"),
    _o("cuda_use", "bool", True, "use CUDA when it is available (several GPUs: DataParallel)", section="run"),
    _o("syncBN", "bool", False, "synchronised BatchNorm under torch.distributed", section="run"),
]

SCHEMA = {option.name: option for option in OPTIONS}
