"""Masked-autoencoder loss on hyperspectral patches: MSE, spectral angle, variance and range terms."""

import torch
import torch.nn.functional as F
from torch import nn

NORM_PIX_EPS = 1e-6


class MAESpectralLoss(nn.Module):
    """Weighted sum of four reconstruction terms over per-patch predictions of a spectral MAE.

    Inputs are ``pred`` and ``target`` of shape ``[B, L, P]`` and ``mask`` of shape ``[B, L]``
    (1 = masked, hidden patch; 0 = visible). A patch holds ``band_patch`` bands by ``n``
    pixels, flattened band-major, so ``x.reshape(B, L, band_patch, n)[b, l, :, k]`` is the
    ``band_patch``-long piece of the spectrum of pixel ``k`` of patch ``l``.

    Included patches: with ``masked_only`` the masked patches (the mask values are the patch
    weights), otherwise all patches; when ``masked_only`` is on and a cube has no masked
    patch at all, all its patches are included, so the loss is never NaN. Every term is a mean
    over each cube's included patches, then over the cubes of the batch, so a batch's loss is
    the mean of its cubes' losses whatever the batching (and processes under torch.distributed
    average to the single-process value); within a patch it is a mean over its pixels or values,
    and every patch has the same number of both, so it is equally a mean over included pixels or
    values.

    ``mse``
        ``mean_p (pred - t)**2`` per patch, averaged over included patches. ``t`` is the
        target, or with ``norm_pix_loss`` the target patch normalised by its own mean and
        standard deviation, ``(target - mean) / sqrt(var + 1e-6)``, where ``var`` is the
        unbiased (N - 1) variance of the patch's P values, as in the reference MAE.
    ``sam``
        Spectral angle mapper. With ``sam_scope="spectrum"`` (the default) the angle is taken
        between whole spectra over all ``spectral_groups * band_patch`` bands: for each pixel
        whose spectrum has at least one hidden piece, the reconstructed spectrum (hidden pieces
        predicted, visible pieces the target's, so only hidden pieces get a gradient; without
        ``masked_only`` every piece predicted) against the target spectrum, averaged over those
        pixels of each cube, then over the cubes. With ``sam_scope="patch"`` it is taken within each patch: for each pixel of each
        included patch, with ``p`` and ``t`` the predicted and target spectrum pieces, ``arccos(clamp(cos, -1 + eps, 1 - eps))``
        in radians, where ``cos = <p, t> / max(|p| |t|, eps)`` and ``eps = sam_eps``;
        averaged over those pixels. The clamp keeps the gradient of arccos finite, so the
        term is about ``sqrt(2 eps)``, not 0, when ``pred == target``; a zero spectrum
        piece has cosine 0, an angle of pi/2.
    ``variance``
        Guards against spectra collapsing to their mean: for each pixel, ``var(t)`` and
        ``var(p)`` are the population (N) variances of its ``band_patch`` target and
        predicted values; the term is the mean over included pixels of
        ``relu(var(t) - var(p))``, so only a loss of spectral variation is penalised.
        It is 0 when ``band_patch`` is 1.
    ``range``
        Mean over every predicted value of included patches of
        ``(relu(pred - hi) + relu(lo - pred))**2``, ``(lo, hi) = valid_range``; 0 inside
        the range, and always 0 when ``valid_range`` is None.

    With ``norm_pix_loss`` the model predicts normalised patches, so ``sam``, ``variance``
    and ``range`` use the prediction mapped back to raw values with the target patch's
    statistics, ``pred * sqrt(var + 1e-6) + mean``, against the raw target.

    ``forward`` returns ``(total, parts)``: ``total = mse_weight * mse + sam_weight * sam +
    variance_weight * variance + range_weight * range``, and ``parts`` maps ``"mse"``,
    ``"sam"``, ``"variance"`` and ``"range"`` to the unweighted terms, detached. Inputs in
    half precision are computed in float32.
    """

    def __init__(self, mse_weight: float = 1.0, sam_weight: float = 0.1, variance_weight: float = 0.01,
                 range_weight: float = 0.001, masked_only: bool = True, norm_pix_loss: bool = False,
                 valid_range: tuple[float, float] | None = (0.0, 1.0), band_patch: int = 5,
                 sam_eps: float = 1e-7, sam_scope: str = "spectrum", spectral_groups: int = 1):
        super().__init__()
        weights = (mse_weight, sam_weight, variance_weight, range_weight)
        if any(weight < 0 for weight in weights):
            raise ValueError(f"loss weights must be non-negative, got {weights}")
        if band_patch < 1:
            raise ValueError(f"band_patch must be at least 1, got {band_patch}")
        if sam_scope not in ("spectrum", "patch"):
            raise ValueError(f"sam_scope must be 'spectrum' or 'patch', got {sam_scope!r}")
        if spectral_groups < 1:
            raise ValueError(f"spectral_groups must be at least 1, got {spectral_groups}")
        if not 0 < sam_eps < 1:
            raise ValueError(f"sam_eps must be in (0, 1), got {sam_eps}")
        if valid_range is not None:
            if len(valid_range) != 2 or valid_range[0] > valid_range[1]:
                raise ValueError(f"valid_range must be (lo, hi) with lo <= hi, got {valid_range}")
            valid_range = (float(valid_range[0]), float(valid_range[1]))
        self.mse_weight = mse_weight
        self.sam_weight = sam_weight
        self.variance_weight = variance_weight
        self.range_weight = range_weight
        self.masked_only = masked_only
        self.norm_pix_loss = norm_pix_loss
        self.valid_range = valid_range
        self.band_patch = band_patch
        self.sam_eps = sam_eps
        self.sam_scope = sam_scope
        self.spectral_groups = spectral_groups

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total, unweighted detached terms) for pred, target [B, L, P] and mask [B, L]."""
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(f"pred and target must both be [B, L, P], got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        if mask.shape != pred.shape[:2]:
            raise ValueError(f"mask must be [B, L] = {list(pred.shape[:2])}, got {tuple(mask.shape)}")
        if pred.shape[2] % self.band_patch:
            raise ValueError(f"patch length {pred.shape[2]} is not a multiple of "
                             f"band_patch {self.band_patch}")
        if pred.dtype not in (torch.float32, torch.float64):
            pred, target = pred.float(), target.float()
        target = target.to(pred.dtype)

        weights = mask.to(pred.dtype) if self.masked_only else torch.ones_like(mask, dtype=pred.dtype)  # [B, L]
        # No sync with the device: a cube with no hidden patch switches to all its patches inside the graph.
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))

        def patch_mean(per_patch: torch.Tensor) -> torch.Tensor:  # [B, L] -> mean per cube, then over cubes
            return ((per_patch * weights).sum(dim=1) / weights.sum(dim=1)).mean()

        raw_pred = pred
        mse_target = target
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
            mse_target = (target - mean) / std
            raw_pred = pred * std + mean

        mse = patch_mean((pred - mse_target).pow(2).mean(dim=-1))

        batch, length, values = pred.shape
        spectra_pred = raw_pred.reshape(batch, length, self.band_patch, values // self.band_patch)
        spectra_target = target.reshape(batch, length, self.band_patch, values // self.band_patch)
        if self.sam_scope == "patch":
            sam = patch_mean(self._angle(spectra_pred, spectra_target, dim=2).mean(dim=-1))
        else:
            sam = self._spectrum_sam(raw_pred, target, mask)

        lost_variance = spectra_target.var(dim=2, correction=0) - spectra_pred.var(dim=2, correction=0)
        variance = patch_mean(F.relu(lost_variance).mean(dim=-1))

        if self.valid_range is None:
            out_of_range = raw_pred.new_zeros(())
        else:
            low, high = self.valid_range
            excess = F.relu(raw_pred - high) + F.relu(low - raw_pred)
            out_of_range = patch_mean(excess.pow(2).mean(dim=-1))

        total = (self.mse_weight * mse + self.sam_weight * sam + self.variance_weight * variance
                 + self.range_weight * out_of_range)
        parts = {"mse": mse.detach(), "sam": sam.detach(), "variance": variance.detach(),
                 "range": out_of_range.detach()}
        return total, parts

    def _angle(self, pred: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
        """arccos of the clamped cosine between vectors along ``dim``."""
        dot = (pred * target).sum(dim=dim)
        # sqrt(max(|p|^2 |t|^2, eps^2)) has a finite gradient where a norm is 0; |p| alone does not.
        squared_norms = pred.pow(2).sum(dim=dim) * target.pow(2).sum(dim=dim)
        norms = squared_norms.clamp_min(self.sam_eps ** 2).sqrt()
        return torch.arccos((dot / norms).clamp(-1 + self.sam_eps, 1 - self.sam_eps))

    def _spectrum_sam(self, raw_pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean whole-spectrum angle over the pixels with a hidden piece (every pixel without masked_only)."""
        batch, length, values = raw_pred.shape
        groups, bands = self.spectral_groups, self.band_patch
        if length % groups:
            raise ValueError(f"{length} tokens do not split into {groups} spectral groups")
        spatial, pixels = length // groups, values // bands
        hidden = mask.bool()
        predicted = hidden | ~hidden.any() if self.masked_only else torch.ones_like(hidden)  # no mask: all patches
        reconstructed = torch.where(predicted[..., None], raw_pred, target)

        def spectra(x):  # [B, L, P] -> [B, spatial patches, pixels, all bands], band order kept
            x = x.reshape(batch, groups, spatial, bands, pixels)
            return x.permute(0, 2, 4, 1, 3).reshape(batch, spatial, pixels, groups * bands)

        angle = self._angle(spectra(reconstructed), spectra(target), dim=-1).mean(dim=-1)  # [B, spatial]
        if not self.masked_only:
            return angle.mean()
        weights = hidden.reshape(batch, groups, spatial).any(dim=1).to(angle.dtype)  # [B, spatial]
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))
        return ((angle * weights).sum(dim=1) / weights.sum(dim=1)).mean()  # per cube, then over cubes
