"""Options every method reads: what to train, optimisation, data loading, monitoring and the run."""

from nenya.options.base import CONTRASTIVE, MAE, Option

IMAGES = CONTRASTIVE  # methods that read 2-D images with Nenya's image augmentations

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

OPTIONS = [
    # what to train
    Option("method", "str", "simclr",
           "training method, a name from the method registry (Nenya's ssl_method, and its 'SimCLR' and "
           "'SupCon', are accepted as written)", section="method"),
    Option("model", "str", "resnet18", "architecture name from the model registry (Nenya's ssl_model is "
           "accepted as written)", section="method"),
    Option("nchannels", "int", 1, "channels per input image (bands of a cube); must match the data",
           section="method", minimum=1),
    Option("num_classes", "int", None, "classes of the labels (default: counted from the training labels and "
           "recorded in opts.json); contrastive runs train an online linear probe with it; segment: 1 = binary "
           "(one sigmoid logit), K >= 2 = softmax over label values 0 .. K-1", nullable=True,
           section="method", minimum=1),
    # optimisation
    Option("optimizer", "str", "sgd", "optimizer; lars adapts per-layer rates for large-batch SimCLR",
           choices=("sgd", "adam", "adamw", "lars"), section="optimisation"),
    Option("learning_rate", "float", 0.05, "base learning rate (derived from blr when blr is set)",
           section="optimisation", minimum=0, exclusive_minimum=True),
    Option("momentum", "float", 0.9, "SGD/LARS momentum", section="optimisation", minimum=0, maximum=1),
    Option("weight_decay", "float", 1e-4, "weight decay (not applied to biases and norms with lars and adamw)",
           section="optimisation", minimum=0),
    Option("cosine", "bool", False, "cosine learning-rate decay per epoch down to learning_rate * lr_decay_rate**3",
           section="optimisation"),
    Option("lr_decay_rate", "float", 0.1, "factor of each step decay; also sets the cosine floor",
           section="optimisation", minimum=0, maximum=1),
    Option("lr_decay_epochs", "int_list", [700, 800, 900],
           "epochs after which the step schedule multiplies the rate by lr_decay_rate (list or '700,800,900')",
           section="optimisation", minimum=0),
    Option("warm", "bool", False, "linear warm-up from warmup_from over warm_epochs (forced on above batch 256)",
           section="optimisation"),
    Option("warm_epochs", "int", 10, "epochs of warm-up when warm is on", section="optimisation", minimum=0),
    Option("warmup_from", "float", 0.01, "learning rate at the start of warm-up", section="optimisation", minimum=0),
    Option("warmup_to", "float", None, "learning rate at the end of warm-up", nullable=True, derived=True,
           section="optimisation", minimum=0),
    Option("lr_min", "float", None, "cosine floor, learning_rate * lr_decay_rate**3", nullable=True, derived=True,
           section="optimisation", minimum=0),
    Option("schedule", "str", "epoch",
           "learning-rate schedule: Nenya's per-epoch cosine/step (+ warm), or per-iteration linear warm-up over "
           "warm_epochs then cosine to lr_min (MAE), or plateau: learning_rate (after any warm-up) multiplied by "
           "plateau_factor whenever the monitored validation value stops improving (ReduceLROnPlateau)",
           choices=("epoch", "iter_cosine", "plateau"), section="optimisation"),
    Option("plateau_factor", "float", 0.1, "schedule plateau: factor of each reduction of the rate",
           section="optimisation", minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True),
    Option("plateau_patience", "int", 10, "schedule plateau: validations without improvement before the rate is "
           "reduced", section="optimisation", minimum=0),
    Option("plateau_min_lr", "float", 0.0, "schedule plateau: the rate is never reduced below this",
           section="optimisation", minimum=0),
    Option("clip_grad_norm", "float", None, "clip the global gradient norm to this before each optimizer step "
           "(after gradient accumulation, on the unscaled gradient under fp16); the norm before clipping is logged "
           "per step (null: off)", nullable=True, section="optimisation", minimum=0, exclusive_minimum=True),
    Option("ema_decay", "float", None, "exponential moving average of the weights and buffers, updated after every "
           "optimizer step, with this decay (warmed up as min(decay, (1 + n) / (10 + n)) at update n); validation, "
           "best.pth and nenya.evaluate use the averaged weights (null: off)", nullable=True,
           section="optimisation", minimum=0, maximum=1, exclusive_maximum=True),
    Option("ema_warmup", "bool", True, "warm the EMA decay up as min(ema_decay, (1 + n) / (10 + n)); false: "
           "ema_decay from the first update", section="optimisation"),
    Option("blr", "float", None, "base rate: when set, learning_rate = blr * global batch / 256 (batch_size_train "
           "x accumulate_grad_batches x processes)", nullable=True,
           section="optimisation", minimum=0, exclusive_minimum=True),
    Option("betas", "float_list", [0.9, 0.999], "Adam/AdamW betas",
           section="optimisation", minimum=0, maximum=1, exclusive_maximum=True),
    Option("accumulate_grad_batches", "int", 1, "batches whose gradients add up before each optimizer step",
           section="optimisation", minimum=1),
    Option("amp", "str", "auto", "mixed precision on CUDA: auto (bf16 autocast on GPUs that support it, else "
           "none), bf16, fp16 autocast with a gradient scaler, or none (the CPU always runs in float32)",
           choices=("auto", "none", "bf16", "fp16"), section="optimisation"),
    Option("epochs", "int", 100, "number of training epochs", section="optimisation", minimum=1),
    Option("batch_size_train", "int", 64, "training batch size of each process (under torchrun the global batch "
           "is this x the number of processes)", section="optimisation", minimum=1),
    Option("global_batch_size", "int", None, "batch_size_train x accumulate_grad_batches x world_size", nullable=True,
           derived=True, section="optimisation", minimum=1),
    Option("batch_size_valid", "int", 64, "validation batch size", section="optimisation", minimum=1),
    # data
    Option("data_folder", "str", "./", "folder that holds images_file", section="data"),
    Option("images_file", "str", None, "HDF5 file in Nenya's layout, or builtin:digits / builtin:hyperspectral",
           nullable=True, section="data"),
    Option("train_key", "str", "train", "HDF5 dataset of training images", section="data"),
    Option("valid_key", "str", "valid", "HDF5 dataset of validation images (null: no validation)", nullable=True,
           section="data"),
    Option("preload", "bool", False, "read the whole image datasets into memory at start", section="data"),
    Option("num_workers", "int", 0, "DataLoader worker processes", section="data", minimum=0),
    Option("overfit_batches", "int", 0, "debug: train and validate on the first N training batches only (0 = off)",
           section="data", minimum=0),
    # augmentation
    Option("random_cropjitter", "int_list", None, "[crop, jitter]: random crop around the centre, resized back",
           IMAGES, nullable=True, section="augmentation", minimum=0, rule="[crop, jitter]: crop at least 1"),
    Option("flip", "bool", False, "random horizontal and vertical flips (images and cubes)", IMAGES + MAE,
           section="augmentation"),
    Option("rotate", "bool", False, "random rotation by any angle", IMAGES, section="augmentation"),
    Option("gauss_noise", "float", 0.0, "standard deviation of added Gaussian noise (0 = off)", IMAGES,
           section="augmentation", minimum=0),
    Option("demean", "bool", False, "subtract each image's mean (also at validation and for latents)", IMAGES,
           section="augmentation"),
    Option("augment", "str", "nenya", "contrastive views: Nenya's vocabulary (flip, rotate, random_cropjitter, "
           "gauss_noise, demean; any channel count), SimCLR's RGB recipe with kornia (random resized crop 0.2-1, "
           "horizontal flip, colour jitter 0.8/0.8/0.8/0.2 with p 0.8, grayscale p 0.2, Gaussian blur p 0.5; 3 "
           "image channels) or its geometric part (crop, flip, blur; any channel count)", IMAGES,
           choices=("nenya", "simclr_rgb", "simclr_geometric"), section="augmentation"),
    Option("augment_on", "str", "workers", "where the random augmentation runs: per sample in the DataLoader "
           "workers, or per batch on the training device after the transfer (seeded from the seed, the epoch and "
           "the items' indices either way)", IMAGES + MAE, choices=("workers", "device"), section="augmentation"),
    # monitoring
    Option("valid_freq", "int", 1, "validate every this many epochs (and after the last)",
           section="monitoring", minimum=1),
    Option("save_freq", "int", 10, "write ckpt_epoch_N.pth every this many epochs", section="monitoring", minimum=1),
    Option("print_freq", "int", 20, "log a line (and TensorBoard step scalars) every this many steps",
           section="monitoring", minimum=1),
    Option("monitor", "str", None, "validation metric that picks best.pth (default: the method's); its "
           "direction (min or max) is the one the method declares", nullable=True, section="monitoring"),
    Option("debug", "bool", False, "print the first batch's shapes and value ranges, the model's output shape and "
           "the loss parts (--debug also sets num_workers 0 and print_freq 1)", section="monitoring"),
    Option("early_stopping_patience", "int", None, "stop when the monitored metric has not improved by more than "
           "min_delta for this many epochs (checked at each validation; null: off)", nullable=True,
           section="monitoring", minimum=1),
    Option("min_delta", "float", 0.0, "early stopping: the least change of the monitored metric that counts as an "
           "improvement", section="monitoring", minimum=0),
    Option("dpi", "int", 100, "resolution of PNG figures", section="monitoring", minimum=1, maximum=1000),
    # run
    Option("model_root", "str", "models", "folder of run folders", section="run"),
    Option("model_name", "str", None, "run folder name (default: built from the options, Nenya style)",
           nullable=True, section="run"),
    Option("trial", "int", 0, "trial number, part of the default run name", section="run", minimum=0),
    Option("seed", "int", 0, "random seed of weights, shuffling and augmentation",
           section="run", minimum=0, maximum=2**32 - 1),
    Option("deterministic", "bool", False, "torch.use_deterministic_algorithms and no cuDNN benchmark",
           section="run"),
    Option("cuda_use", "bool", True, "use CUDA when it is available (several GPUs without torchrun: "
           "DataParallel; under torchrun: one GPU per process)", section="run"),
    Option("syncBN", "bool", False, "synchronised BatchNorm under torch.distributed (BatchNorm statistics over the "
           "global batch)", section="run"),
    Option("world_size", "int", None, "processes training together (1 without torchrun)", nullable=True,
           derived=True, section="run", minimum=1),
    Option("tracking", "str_list", ["tensorboard"], "where curves go besides the HDF5 files: tensorboard, mlflow "
           "(pip install -e .[mlflow])", choices=("tensorboard", "mlflow"), section="run"),
    Option("mlflow_uri", "str", None, "MLflow tracking URI (default: a local mlruns/ folder beside model_root; "
           "sqlite:///mlflow.db works too)", nullable=True, section="run"),
    Option("experiments", "experiments", None, "a sweep's experiments: a list of objects, each with a name, a "
           "description and the options it changes; run by python -m nenya.sweep (nenya.train refuses a file "
           "that holds them)", nullable=True, section="run"),
    Option("experiment_name", "str", None, "MLflow experiment (default: the method's name)", nullable=True,
           section="run"),
]
