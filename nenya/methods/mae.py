"""Masked autoencoding of hyperspectral cubes: data, model geometry, the spectral loss, reconstruction metrics, figures.

Data: the cubes listed in ``data_csv`` (rows of ``train_split`` / ``valid_split``, dataset ``csv_key`` in
each file) when it is set, else ``train_key`` / ``valid_key`` of ``images_file`` (Nenya's HDF5 layout).
Relative ``data_csv`` and ``band_stats`` paths are under ``data_folder``, like ``images_file``.

Geometry: the model is built for square ``img_size`` x ``img_size`` inputs, where ``img_size`` is the
option, else ``cube_crop``, else the height (= width) of the training cubes; ``patch_size`` is
[spatial, spectral]. Training cubes are randomly cropped (``cube_crop``), rotated and flipped;
validation and evaluation cubes are only centre-cropped to ``cube_crop``.

Validation metrics (``validation_metrics`` and ``evaluate``) use masks drawn from a generator seeded
with ``seed`` every time (the global RNG state is saved and restored around them), so they are
comparable from epoch to epoch and do not disturb training. Each batch's
:func:`nenya.metrics_spectral.reconstruction_metrics` of the reconstruction against the cube, whole
and over the masked voxels, is averaged over the data set weighted by the batch's cube count (values
that are NaN for a batch, such as ``sam_masked`` when no pixel has every band hidden, are left out).
``baseline_mse_masked`` is the masked MSE of filling each masked patch with the mean of the visible
patches of the same cube and the same spectral group (:func:`visible_mean_baseline`).
"""

import os
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

from nenya import plots_mae
from nenya.data.augment import Compose
from nenya.data.cube_augment import build_cube_augmentation
from nenya.data.hdf5 import HDF5Images, check_channels
from nenya.data.hyperspectral import BandNormalize, CubeCSV, load_or_compute_band_stats
from nenya.data.paths import images_path
from nenya.errors import NenyaError
from nenya.losses_mae import NORM_PIX_EPS, MAESpectralLoss
from nenya.methods.base import Method
from nenya.model_utils import unwrap
from nenya.metrics_spectral import SSIM_WINDOW, mse, patch_mask_to_pixels, psnr, reconstruction_metrics, sam
from nenya.models import build_model
from nenya.models.mae_spectral import MAE_SIZES

SPECTRA_PIXELS = 4  # pixels drawn in the spectra figure
FIGURES = ("mae_reconstruction", "mae_band_mse", "mae_spectra")


class CubeCenterCrop:
    """Cut the central size x size window out of the H, W axes (the validation counterpart of CubeRandomCrop)."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, cube):
        height, width = cube.shape[-2:]
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return cube[..., top:top + self.size, left:left + self.size]

    def __repr__(self):
        return f"CubeCenterCrop(size={self.size})"


def visible_mean_baseline(patches: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """Patches [B, L, P] with every masked patch (mask [B, L], 1 = masked) replaced by a mean of visible ones.

    The fill of a masked patch is the element-wise mean of the visible patches of the same cube and
    the same spectral group (tokens are ordered spectral group first, so group g holds tokens
    ``g * L / groups ... (g + 1) * L / groups - 1``); a group with no visible patch takes the mean of
    every visible patch of the cube. Visible patches are returned unchanged.
    """
    batch, length, values = patches.shape
    x = patches.reshape(batch, groups, length // groups, values)
    hidden = mask.reshape(batch, groups, length // groups, 1).to(x.dtype)
    visible = 1 - hidden
    group_count = visible.sum(dim=2, keepdim=True)
    group_mean = (x * visible).sum(dim=2, keepdim=True) / group_count.clamp_min(1)
    cube_count = visible.sum(dim=(1, 2), keepdim=True)
    cube_mean = (x * visible).sum(dim=(1, 2), keepdim=True) / cube_count.clamp_min(1)
    fill = torch.where(group_count > 0, group_mean, cube_mean)
    return torch.where(hidden.bool(), fill.expand_as(x), x).reshape(batch, length, values)


def spectra_pixels(voxel_masks: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """(cube, row, column) of up to ``count`` pixels with the most hidden bands, spread over the candidates."""
    fraction = voxel_masks.mean(axis=1)  # [N, H, W]
    order = np.argsort(-fraction.reshape(-1), kind="stable")
    if order.size == 0:
        return []
    threshold = fraction.reshape(-1)[order[min(count, order.size) - 1]]
    candidates = order[fraction.reshape(-1)[order] >= threshold]
    picks = candidates[np.unique(np.linspace(0, candidates.size - 1, min(count, candidates.size)).round().astype(int))]
    return [tuple(int(i) for i in np.unravel_index(index, fraction.shape)) for index in picks]


class _WeightedMeans:
    """Running means of named scalars weighted by item counts; NaN values are left out."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, values: dict, count: int) -> None:
        for name, value in values.items():
            value = float(value)
            self.sums.setdefault(name, 0.0)
            self.counts.setdefault(name, 0)
            if not np.isnan(value):
                self.sums[name] += value * count
                self.counts[name] += count

    def means(self) -> dict:
        return {name: self.sums[name] / self.counts[name] if self.counts[name] else float("nan")
                for name in self.sums}


class MAE(Method):
    """Masked autoencoder (MAE-ViT spectral, ``mae_tiny`` ... ``mae_huge``) on hyperspectral cubes."""

    name = "mae"
    monitor = ("mse_masked", "min")

    def __init__(self, opt):
        super().__init__(opt)
        if opt.ssl_model not in MAE_SIZES:
            raise NenyaError(f"ssl_model '{opt.ssl_model}' is not a masked autoencoder; ssl_method 'mae' needs "
                             f"one of: {', '.join(MAE_SIZES)}")
        if not opt.data_range > 0:
            raise NenyaError(f"data_range={opt.data_range} must be positive (the span of the data for PSNR/SSIM)")
        if any(size < 1 for size in opt.patch_size):
            raise NenyaError(f"patch_size={opt.patch_size} must be two positive numbers [spatial, spectral]")
        try:
            self.criterion = MAESpectralLoss(
                mse_weight=opt.mse_weight, sam_weight=opt.sam_weight, variance_weight=opt.variance_weight,
                range_weight=opt.range_weight, masked_only=opt.loss_masked_only, norm_pix_loss=opt.norm_pix_loss,
                valid_range=tuple(opt.valid_range) if opt.valid_range is not None else None,
                band_patch=opt.patch_size[1])
        except ValueError as err:
            raise NenyaError(f"MAE loss options (mse_weight, sam_weight, variance_weight, range_weight, "
                             f"valid_range): {err}") from None
        self._plain = {}
        self._geometry = None
        self._normalize = None
        self._valid = None
        self._valid_built = False
        self._figure_data = None

    # ---- data ---------------------------------------------------------------------------------------

    def _csv_path(self) -> str:
        return os.path.join(self.opt.data_folder, self.opt.data_csv)

    def _open(self, part: str):
        """The un-normalised, un-augmented 'train' or 'valid' cubes of the options' data (None: no such part)."""
        opt = self.opt
        if opt.data_csv:
            if part == "train":
                return CubeCSV(self._csv_path(), split=opt.train_split, key=opt.csv_key)
            split = opt.valid_split
            return None if split is None else CubeCSV(self._csv_path(), split=split, key=opt.csv_key)
        key = opt.train_key if part == "train" else opt.valid_key
        if key is None:
            return None
        return HDF5Images(images_path(opt), key, preload=opt.preload, key_option=f"{part}_key")

    def _plain_part(self, part: str):
        if part not in self._plain:
            dataset = self._open(part)
            if dataset is not None:
                self._check_cubes(dataset)
            self._plain[part] = dataset
        return self._plain[part]

    def _check_cubes(self, dataset) -> None:
        """Cubes (C, H, W) with nchannels bands, or a NenyaError naming the data."""
        shape = dataset.image_shape
        if len(shape) != 3:
            raise NenyaError(f"{_where(dataset)} holds images of shape {tuple(shape)}; the MAE needs cubes "
                             f"(C, H, W), stored as (N, C, H, W)")
        check_channels(dataset, self.opt.nchannels)

    def geometry(self) -> dict:
        """The model's bands, img_size, patch_size and band_patch, checked against the training cubes."""
        if self._geometry is None:
            opt = self.opt
            train = self._plain_part("train")
            bands, height, width = train.image_shape
            where = _where(train)
            crop = opt.cube_crop or None
            if crop is not None:
                if crop > min(height, width):
                    raise NenyaError(f"cube_crop={crop} is larger than the {height}x{width} cubes of {where}; "
                                     f"use a crop of at most {min(height, width)}")
                if opt.img_size is not None and opt.img_size != crop:
                    raise NenyaError(f"img_size={opt.img_size} but cube_crop={crop}: the model sees the "
                                     f"{crop}x{crop} crops; set img_size to {crop} or null")
                size, source = crop, f"cube_crop={crop}"
            else:
                if height != width:
                    raise NenyaError(f"the cubes of {where} are {height}x{width} but the MAE needs square inputs "
                                     f"(img_size); set cube_crop to a square crop of at most {min(height, width)}")
                if opt.img_size is not None and opt.img_size != height:
                    raise NenyaError(f"img_size={opt.img_size} but the cubes of {where} are {height}x{width}; "
                                     f"set img_size to {height} (or null), or cube_crop={opt.img_size} to crop them")
                size, source = height, f"the {height}x{width} cubes of {where}"
            spatial, spectral = opt.patch_size
            if size % spatial:
                divisors = [d for d in range(1, size + 1) if size % d == 0]
                raise NenyaError(f"patch_size={opt.patch_size}: the spatial patch {spatial} does not divide "
                                 f"img_size {size} ({source}); use one of {divisors}")
            if bands % spectral:
                divisors = [d for d in range(1, bands + 1) if bands % d == 0]
                raise NenyaError(f"patch_size={opt.patch_size}: the spectral patch {spectral} does not divide the "
                                 f"{bands} bands of {where}; use one of {divisors}")
            self._geometry = {"bands": bands, "img_size": size, "patch_size": spatial, "band_patch": spectral}
        return self._geometry

    def _stats_path(self) -> str:
        opt = self.opt
        if opt.band_stats:
            return os.path.join(opt.data_folder, opt.band_stats)
        if opt.data_csv:
            return f"{self._csv_path()}.{opt.train_split}.bandstats.json"
        return f"{images_path(opt)}.{opt.train_key}.bandstats.json"

    def normalizer(self, like=None):
        """BandNormalize with the training data's statistics (read, or computed once and cached), or None.

        ``like``: a data set whose band count the statistics file is checked against when it exists
        (so evaluation does not need the training data); otherwise the training cubes are used.
        """
        if not self.opt.normalize_bands:
            return None
        if self._normalize is None:
            path = self._stats_path()
            source = like if like is not None and os.path.exists(path) else self._plain_part("train")
            mean, std = load_or_compute_band_stats(path, source)
            self._normalize = BandNormalize(mean, std)
        return self._normalize

    def _prepared(self, dataset, augment, normalize):
        """``dataset`` returning normalised, then augmented cubes."""
        if isinstance(dataset, CubeCSV):
            dataset.normalize, dataset.transform = normalize, augment
        else:
            steps = [step for step in (normalize, augment) if step is not None]
            dataset.transform = Compose(steps) if steps else None
        return dataset

    def _eval_transform(self):
        return CubeCenterCrop(self.opt.cube_crop) if self.opt.cube_crop else None

    def _check_eval_size(self, dataset) -> None:
        """Cubes the validation transform turns into img_size x img_size, or a NenyaError."""
        _, height, width = dataset.image_shape
        geometry = self.geometry()
        size, crop = geometry["img_size"], self.opt.cube_crop
        if crop:
            if min(height, width) < crop:
                raise NenyaError(f"{_where(dataset)} holds {height}x{width} cubes, smaller than cube_crop={crop} "
                                 f"(the model's img_size)")
        elif (height, width) != (size, size):
            raise NenyaError(f"{_where(dataset)} holds {height}x{width} cubes but the model takes {size}x{size} "
                             f"(img_size); set cube_crop to crop them")

    def _check_rgb_bands(self) -> None:
        bands = self.opt.nchannels
        if self.opt.rgb_bands is not None and not all(0 <= band < bands for band in self.opt.rgb_bands):
            raise NenyaError(f"rgb_bands={self.opt.rgb_bands} must be band indices from 0 to {bands - 1} "
                             f"(nchannels={bands})")

    def build_datasets(self):
        """(train, valid): training cubes augmented (crop, rot90, flip), validation cubes centre-cropped only."""
        opt = self.opt
        self.geometry()
        self._check_rgb_bands()
        normalize = self.normalizer()
        if normalize is not None and opt.valid_range is not None:
            warnings.warn("normalize_bands is on, so the reconstructions are in normalised units: valid_range "
                          f"{opt.valid_range} (range penalty) and data_range {opt.data_range} (PSNR/SSIM) apply "
                          "to normalised values; set valid_range to null and data_range to their span")
        train = self._prepared(self._open("train"), build_cube_augmentation(opt.cube_flip, opt.cube_rot90,
                                                                            opt.cube_crop), normalize)
        return train, self._validation_set()

    def _validation_set(self):
        """The validation cubes as validation and the metrics see them (None when there are none)."""
        if not self._valid_built:
            valid = self._open("valid")
            if valid is not None:
                self._check_cubes(valid)
                self._check_eval_size(valid)
                valid = self._prepared(valid, self._eval_transform(), self.normalizer())
            self._valid, self._valid_built = valid, True
        return self._valid

    def eval_dataset(self, path=None, key=None):
        """Cubes to evaluate on, prepared like the validation cubes (normalised with the run's statistics).

        ``path``: an HDF5 file in Nenya's layout (default: the run's own data); ``key``: its dataset
        (default: valid_key), or with the run's own data_csv the split (default: valid_split).
        """
        opt = self.opt
        if path is None and key is None:
            valid = self._validation_set()
            if valid is None:
                raise NenyaError("the run has no validation data (valid_split / valid_key is null); pass --key")
            return valid
        if path is None and opt.data_csv:
            dataset = CubeCSV(self._csv_path(), split=key, key=opt.csv_key)
        else:
            key = key if key is not None else opt.valid_key
            if key is None:
                raise NenyaError("the run has no valid_key; pass --key to name the dataset to evaluate")
            if path is not None and not os.path.isfile(path):
                raise NenyaError(f"data file {path} does not exist (--data)")
            dataset = HDF5Images(path if path is not None else images_path(opt), key, key_option="--key")
        self._check_cubes(dataset)
        self._check_eval_size(dataset)
        return self._prepared(dataset, self._eval_transform(), self.normalizer(like=dataset))

    # ---- model and loss -----------------------------------------------------------------------------

    def build_model(self):
        """The MAE size ``ssl_model`` built for the data's geometry and the MAE options."""
        opt = self.opt
        if opt.img_size is None or self._geometry is not None:
            geometry = self.geometry()
            opt.img_size = geometry["img_size"]  # recorded in opts.json, so a run loads without its data
        else:
            geometry = {"img_size": opt.img_size, "patch_size": opt.patch_size[0], "band_patch": opt.patch_size[1]}
        decoder = {name: getattr(opt, name) for name in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
                   if getattr(opt, name) is not None}
        return build_model(opt.ssl_model, nchannels=opt.nchannels, img_size=geometry["img_size"],
                           patch_size=geometry["patch_size"], band_patch=geometry["band_patch"],
                           mask_ratio=opt.mask_ratio, grad_checkpointing=opt.grad_checkpointing,
                           norm_pix_loss=opt.norm_pix_loss, **decoder)

    def loss(self, model, batch):
        """MAESpectralLoss of the predicted patches, and its unweighted parts as extras.

        The parts are named ``loss_mse``, ``loss_sam``, ``loss_variance`` and ``loss_range`` (logged as
        ``loss_mse_train`` / ``loss_mse_valid`` ...), apart from the reconstruction metrics ``mse``, ``sam``, ...
        """
        cubes = batch[0] if isinstance(batch, (list, tuple)) else batch
        pred, mask, _ = model(cubes)
        target = unwrap(model).patchify(cubes)
        total, parts = self.criterion(pred, target, mask)
        return total, {f"loss_{name}": float(value) for name, value in parts.items()}

    def _raw_prediction(self, pred, target):
        """Predicted patches in data units: with norm_pix_loss mapped back with the target patches' statistics."""
        if not self.opt.norm_pix_loss:
            return pred
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
        return pred * std + mean

    # ---- metrics and figures ------------------------------------------------------------------------

    def _batch_metrics(self, reconstruction, cubes, voxels) -> dict:
        data_range = self.opt.data_range
        if min(cubes.shape[-2:]) >= SSIM_WINDOW:
            return reconstruction_metrics(reconstruction, cubes, voxels, data_range)
        with torch.no_grad():  # SSIM needs 11 x 11 images: the other metrics only
            values = {"mse": mse(reconstruction, cubes), "sam": sam(reconstruction, cubes),
                      "psnr": psnr(reconstruction, cubes, data_range),
                      "mse_masked": mse(reconstruction, cubes, voxels),
                      "sam_masked": sam(reconstruction, cubes, voxels),
                      "psnr_masked": psnr(reconstruction, cubes, data_range, voxels)}
        return {name: value.item() for name, value in values.items()}

    @torch.no_grad()
    def reconstruction_pass(self, model, dataset, device) -> tuple[dict, dict]:
        """(metrics, figure data) of one pass over ``dataset`` in eval mode with the fixed masking seed.

        Metrics: the reconstruction metrics, ``baseline_mse_masked``, and the loss and its parts
        (``loss``, ``loss_mse``, ...) under the same masks.
        """
        opt = self.opt
        bare = unwrap(model)
        bands, (height, width) = bare.bands, bare.img_size
        groups = bare.grid[0]
        was_training = model.training
        model.eval()
        means, losses = _WeightedMeans(), _WeightedMeans()
        band_sums = {name: torch.zeros(bands, dtype=torch.float64) for name in
                     ("whole", "masked", "baseline", "whole_count", "masked_count")}
        samples = {"original": [], "mask": [], "reconstruction": []}
        loader = DataLoader(dataset, batch_size=opt.batch_size_valid, shuffle=False, num_workers=opt.num_workers)
        # every GPU's generator is saved and restored (DataParallel replicas draw masks on theirs)
        devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(opt.seed)
                for batch in loader:
                    cubes = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device).float()
                    pred, mask, _ = model(cubes)
                    target = bare.patchify(cubes)
                    loss, parts = self.criterion(pred, target, mask)
                    count = cubes.shape[0]
                    losses.update({"loss": loss, **{f"loss_{k}": v for k, v in parts.items()}}, count)
                    reconstruction = bare.reconstruct(self._raw_prediction(pred, target)).float()
                    voxels = patch_mask_to_pixels(mask, bands, height, width, bare.patch_size, bare.band_patch)
                    baseline = bare.unpatchify(visible_mean_baseline(target, mask, groups))
                    metrics = self._batch_metrics(reconstruction, cubes, voxels)
                    metrics["baseline_mse_masked"] = mse(baseline, cubes, voxels).item()
                    means.update(metrics, count)
                    squared = (reconstruction - cubes).double().pow(2)
                    hidden = voxels.double()
                    band_sums["whole"] += squared.sum(dim=(0, 2, 3)).cpu()
                    band_sums["whole_count"] += count * height * width
                    band_sums["masked"] += (squared * hidden).sum(dim=(0, 2, 3)).cpu()
                    band_sums["masked_count"] += hidden.sum(dim=(0, 2, 3)).cpu()
                    band_sums["baseline"] += ((baseline - cubes).double().pow(2) * hidden).sum(dim=(0, 2, 3)).cpu()
                    wanted = opt.figure_samples - len(samples["original"])
                    if wanted > 0:
                        for name, value in (("original", cubes), ("mask", voxels), ("reconstruction", reconstruction)):
                            samples[name].extend(value[:wanted].cpu().numpy())
        finally:
            model.train(was_training)
        masked_count = band_sums["masked_count"].clamp_min(1)
        figure_data = {
            "band_mse": (band_sums["whole"] / band_sums["whole_count"].clamp_min(1)).numpy(),
            "band_mse_masked": torch.where(band_sums["masked_count"] > 0, band_sums["masked"] / masked_count,
                                           torch.nan).numpy(),
            "band_mse_baseline": torch.where(band_sums["masked_count"] > 0, band_sums["baseline"] / masked_count,
                                             torch.nan).numpy(),
            **samples,
        }
        return {**means.means(), **losses.means()}, figure_data

    def validation_metrics(self, model, device):
        """Reconstruction metrics (whole and ``_masked``) and ``baseline_mse_masked`` on the validation cubes."""
        valid = self._validation_set()
        if valid is None:
            return {}
        metrics, self._figure_data = self.reconstruction_pass(model, valid, device)
        return {name: value for name, value in metrics.items() if not name.startswith("loss")}

    def evaluate(self, model, dataset, device, folder):
        """Loss, reconstruction metrics and baseline on ``dataset``; the three figures into ``folder``."""
        metrics, figure_data = self.reconstruction_pass(model, dataset, device)
        self.write_figures(figure_data, folder, "", "evaluation")
        return metrics

    def figures(self, model, device, folder, epoch):
        """mae_reconstruction_epoch{N}.png, mae_band_mse_epoch{N}.png and mae_spectra_epoch{N}.png."""
        if self._figure_data is None:
            valid = self._validation_set()
            if valid is None:
                return
            self._figure_data = self.reconstruction_pass(model, valid, device)[1]
        self.write_figures(self._figure_data, folder, f"_epoch{epoch}", f"validation, epoch {epoch}")

    def write_figures(self, data: dict, folder: str, suffix: str, title: str) -> list[str]:
        """Draw the reconstruction, per-band MSE and spectra figures of ``reconstruction_pass`` figure data."""
        os.makedirs(folder, exist_ok=True)
        dpi = self.opt.dpi
        paths = [os.path.join(folder, f"{name}{suffix}.png") for name in FIGURES]
        if data["original"]:
            rgb = self.opt.rgb_bands or plots_mae.default_rgb_bands(data["original"][0].shape[0])
            plots_mae.reconstruction_grid(data["original"], data["mask"], data["reconstruction"], rgb, paths[0],
                                          f"MAE reconstructions ({title})", dpi)
        plots_mae.band_mse_plot(data["band_mse"], data["band_mse_masked"], paths[1],
                                f"MSE per band ({title})", data["band_mse_baseline"], dpi)
        if data["original"]:
            masks = np.stack(data["mask"])
            picks = spectra_pixels(masks, SPECTRA_PIXELS)
            plots_mae.spectra_plot([data["original"][n][:, y, x] for n, y, x in picks],
                                   [data["reconstruction"][n][:, y, x] for n, y, x in picks],
                                   [masks[n][:, y, x] for n, y, x in picks],
                                   [f"cube {n}, pixel ({y}, {x})" for n, y, x in picks], paths[2],
                                   f"spectra ({title})", dpi)
        return [path for path in paths if os.path.exists(path)]


def _where(dataset) -> str:
    """'file:key' or 'cubes of split S in file.csv' for error messages."""
    if isinstance(dataset, CubeCSV):
        return f"{dataset.path} (split {dataset.split}, dataset '{dataset.key}')"
    return f"{dataset.path}:{dataset.key}"
