"""Masked autoencoding of hyperspectral cubes (MAE-ViT spectral, ``mae_tiny`` ... ``mae_huge``).

A batch of cubes [B, C, H, W] (:class:`nenya.data.cube_sets.CubeSets`) goes through the model, which
hides ``mask_ratio`` of the 3-D patches and predicts them (:mod:`nenya.models.mae_spectral`); the loss is
:class:`nenya.losses.reconstruction.MAESpectralLoss` of the predicted patches. Evaluation reports the
reconstruction metrics of :mod:`nenya.metrics.reconstruction` (whole cube and masked voxels), the
masked MSE of filling each masked patch with the mean of the visible ones (``baseline_mse_masked``),
and the loss under the same masks; every evaluation pass draws its masks from ``seed``, so the
numbers are comparable between epochs.
"""

import torch

from nenya.data.cube_sets import CubeSets
from nenya.data.device_augment import augment_cube_batch
from nenya.errors import NenyaError
from nenya.losses.reconstruction import NORM_PIX_EPS, MAESpectralLoss
from nenya.methods.base import Method
from nenya.metrics.reconstruction import (patch_mask_to_pixels, reconstruction_sums, summarize_reconstruction,
                                          visible_mean_baseline)
from nenya.models import build_model, unwrap
from nenya.models.mae_spectral import MAE_SIZES, seeded_noise
from nenya.plots.mae import write_mae_figures
from nenya.registry import register_method

RECONSTRUCTION = ("mse", "sam", "psnr", "ssim")


@register_method("mae")
class MAE(Method):
    """Masked autoencoder on hyperspectral cubes: reconstruct the hidden 3-D patches."""

    name = "mae"
    metrics = {**{name: "min" for name in ("loss", "loss_mse", "loss_sam", "loss_variance", "loss_range",
                                          "baseline_mse_masked")},
               **{f"{name}{part}": "max" if name in ("psnr", "ssim") else "min"
                  for name in RECONSTRUCTION for part in ("", "_masked")}}
    monitor = "mse_masked"

    def __init__(self, opt):
        if opt.model not in MAE_SIZES:
            raise NenyaError(f"model '{opt.model}' is not a masked autoencoder; method 'mae' needs one of: "
                             f"{', '.join(MAE_SIZES)}")
        if not opt.data_range > 0:
            raise NenyaError(f"data_range={opt.data_range} must be positive (the span of the data for PSNR/SSIM)")
        if any(size < 1 for size in opt.patch_size):
            raise NenyaError(f"patch_size={opt.patch_size} must be two positive numbers [spatial, spectral]")
        super().__init__(opt)
        self.cubes = CubeSets(opt)
        self._figure_data = None

    def build_criterion(self):
        """MAESpectralLoss with the options' weights, range and spectral patch."""
        opt = self.opt
        try:
            return MAESpectralLoss(
                mse_weight=opt.mse_weight, sam_weight=opt.sam_weight, variance_weight=opt.variance_weight,
                range_weight=opt.range_weight, masked_only=opt.loss_masked_only, norm_pix_loss=opt.norm_pix_loss,
                valid_range=tuple(opt.valid_range) if opt.valid_range is not None else None,
                band_patch=opt.patch_size[1], sam_scope=opt.sam_scope,
                spectral_groups=max(opt.nchannels // opt.patch_size[1], 1))
        except ValueError as err:
            raise NenyaError(f"MAE loss options (mse_weight, sam_weight, variance_weight, range_weight, "
                             f"valid_range): {err}") from None

    def build_datasets(self):
        """(train, valid): training cubes augmented (crop, rot90, flip), validation cubes centre-cropped only."""
        opt = self.opt
        if opt.rgb_bands is not None and not all(0 <= band < opt.nchannels for band in opt.rgb_bands):
            raise NenyaError(f"rgb_bands={opt.rgb_bands} must be band indices from 0 to {opt.nchannels - 1} "
                             f"(nchannels={opt.nchannels})")
        train = self.cubes.train_set()
        self.cubes.check_value_range(train)
        return train, self.cubes.valid_set()

    def describe(self):
        """The units and definitions of the metrics, recorded in metrics.json and eval_metrics.json."""
        opt = self.opt
        return {"units": "normalised bands, (x - mean) / std per band" if opt.normalize_bands else
                "data units, as stored", "data_range": opt.data_range, "sam": "radians, whole spectrum",
                "whole-cube metrics": "reconstruction with the visible voxels pasted back",
                "masked": "mse/psnr: hidden voxels; sam/ssim: pixels whose every band is hidden",
                "norm_pix_loss mapping": "visible patches' statistics" if opt.norm_pix_loss else None}

    def eval_dataset(self, path=None, key=None):
        """Cubes to evaluate or embed, prepared like the validation cubes (:meth:`CubeSets.eval_set`)."""
        return self.cubes.eval_set(path, key)

    def build_model(self):
        """The MAE size ``model`` built for the data's geometry and the MAE options."""
        opt = self.opt
        if opt.img_size is None:
            opt.img_size = self.cubes.geometry()["img_size"]  # recorded in opts.json: a run loads without its data
        decoder = {name: getattr(opt, name) for name in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
                   if getattr(opt, name) is not None}
        return build_model(opt.model, nchannels=opt.nchannels, img_size=opt.img_size, patch_size=opt.patch_size[0],
                           band_patch=opt.patch_size[1], mask_ratio=opt.mask_ratio,
                           grad_checkpointing=opt.grad_checkpointing, norm_pix_loss=opt.norm_pix_loss, **decoder)

    def loss(self, model, batch):
        """MAESpectralLoss of the predicted patches, and its unweighted parts (``loss_mse``, ...) as extras."""
        cubes = augment_cube_batch(self.opt, batch, getattr(self, "epoch", 1))  # [B, C, H, W], on the device
        noise = None
        if len(batch) > 2:  # items with their index: masks drawn per item from (seed, epoch, index)
            epoch = getattr(self, "epoch", 0)
            seeds = [(self.opt.seed, epoch, int(index)) for index in batch[2]]
            noise = seeded_noise(seeds, unwrap(model).num_patches).to(cubes.device)
        pred, mask, _ = model(cubes, noise=noise)  # [B, L, patch_dim], [B, L]
        total, parts = self.criterion(pred, unwrap(model).patchify(cubes), mask)
        return total, {f"loss_{name}": value for name, value in parts.items()}

    def _raw_prediction(self, pred, target, mask, groups):
        """Predicted patches in data units; with norm_pix_loss mapped back with statistics the model may know.

        A visible patch uses its own mean and standard deviation; a hidden patch the mean of those
        of the visible patches of the same cube and spectral group (of the cube, when its group has
        none): never the hidden patch's own statistics.
        """
        if not self.opt.norm_pix_loss:
            return pred
        stats = torch.cat([target.mean(dim=-1, keepdim=True),
                           (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()], dim=-1)  # [B, L, 2]
        known = visible_mean_baseline(stats, mask, groups)
        return pred * known[..., 1:] + known[..., :1]

    def eval_step(self, model, batch, indices):
        """Loss, per-cube reconstruction sums, baseline and per-band sums; the first cubes for the figures.

        Masks are fixed per cube (seed, index); the reconstruction has the visible voxels pasted
        back, which is what the whole-cube metrics score.
        """
        bare = unwrap(model)
        cubes = batch[0].float()  # [B, C, H, W]
        noise = seeded_noise([(self.opt.seed, int(i)) for i in indices], bare.num_patches).to(cubes.device)
        pred, mask, _ = model(cubes, noise=noise)  # the same masks at any batch size, on any device
        target = bare.patchify(cubes)  # [B, L, patch_dim]
        loss, parts = self.criterion(pred.float(), target, mask)
        predicted = bare.reconstruct(self._raw_prediction(pred.float(), target, mask, bare.grid[0])).float()
        voxels = patch_mask_to_pixels(mask, bare.bands, *bare.img_size, bare.patch_size, bare.band_patch)
        reconstruction = torch.where(voxels, predicted, cubes)  # [B, C, H, W], visible voxels pasted back
        baseline = bare.unpatchify(visible_mean_baseline(target, mask, bare.grid[0]))
        hidden = voxels.double()
        squared = (reconstruction - cubes).double().pow(2)
        baseline_squared = (baseline - cubes).double().pow(2) * hidden
        out = {"loss": loss.float(), **{f"loss_{k}": v.float() for k, v in parts.items()},
               **reconstruction_sums(reconstruction, cubes, voxels, self.opt.data_range),
               "baseline_mse_masked_sum": baseline_squared.flatten(1).sum(1),
               "band_sum": squared.sum(dim=(2, 3)), "band_masked_sum": (squared * hidden).sum(dim=(2, 3)),
               "band_masked_count": hidden.sum(dim=(2, 3)), "band_baseline_sum": baseline_squared.sum(dim=(2, 3))}
        keep = indices.to(cubes.device) < self.opt.figure_samples
        if keep.any():
            out.update(sample_original=cubes[keep], sample_mask=voxels[keep], sample_reconstruction=predicted[keep])
        return out

    def summarize(self, outputs):
        """Loss parts (batch-weighted), reconstruction metrics and baseline_mse_masked over the whole pass."""
        metrics = super().summarize({k: v for k, v in outputs.items() if k == "batch_size" or k.startswith("loss")})
        metrics.update(summarize_reconstruction(outputs, self.opt.data_range))
        count = outputs["mse_masked_count"].sum()
        metrics["baseline_mse_masked"] = float(outputs["baseline_mse_masked_sum"].sum() / count) if count > 0 \
            else float("nan")
        return metrics

    def _figure_inputs(self, outputs):
        """Per-band MSE curves and sample cubes for the figures, from an evaluation pass's outputs."""
        cubes, bands = outputs["band_sum"].shape
        pixels = float(outputs["mse_count"].sum()) / bands  # H * W summed over the cubes
        masked = outputs["band_masked_count"].sum(0)
        nan = torch.full_like(masked, float("nan"))
        samples = {name: list(outputs[f"sample_{name}"].numpy()) if f"sample_{name}" in outputs else []
                   for name in ("original", "mask", "reconstruction")}
        return {"band_mse": (outputs["band_sum"].sum(0) / max(pixels, 1)).numpy(),
                "band_mse_masked": torch.where(masked > 0, outputs["band_masked_sum"].sum(0) / masked, nan).numpy(),
                "band_mse_baseline": torch.where(masked > 0, outputs["band_baseline_sum"].sum(0) / masked,
                                                 nan).numpy(), **samples}

    def validation(self, model, run, valid_data):
        """Loss under the fixed masks, reconstruction metrics and baseline; keeps the figure data."""
        outputs = run(valid_data, self.eval_step)
        self._figure_data = self._figure_inputs(outputs)
        return self.summarize(outputs), outputs["loss"].tolist()

    def evaluation(self, model, run, dataset, folder):
        """Loss, reconstruction metrics and baseline on ``dataset``; the three figures into ``folder``."""
        outputs = run(dataset, self.eval_step)
        write_mae_figures(self._figure_inputs(outputs), folder, "", "evaluation", self.opt)
        return self.summarize(outputs)

    def figures(self, model, device, folder, epoch):
        """mae_reconstruction_epoch{N}.png, mae_band_mse_epoch{N}.png and mae_spectra_epoch{N}.png."""
        if self._figure_data is not None:
            write_mae_figures(self._figure_data, folder, f"_epoch{epoch}", f"validation, epoch {epoch}", self.opt)

    def embed_step(self, model, batch, indices, encoder=False):
        """Mean-pooled encoder features [B, D] of whole (unmasked) cubes."""
        return {"latents": unwrap(model).encode(batch[0].float()).float()}
