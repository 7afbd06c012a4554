"""Masked autoencoder ViT for hyperspectral cubes (C bands x H x W) with 3-D spectral-spatial patches.

A patch is `band_patch` bands x `patch_size` x `patch_size` pixels, so a cube becomes a grid of
(C / band_patch) x (H / patch_size) x (W / patch_size) tokens, flattened spectral-major, then row,
then column. The encoder sees only the visible tokens; the decoder fills in mask tokens and
predicts every patch's values.
"""

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nenya.errors import NenyaError
from nenya.registry import MODELS, register_model


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Fixed sin-cos embedding [N, dim] of the 1-D `positions` [N] (dim must be even)."""
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = positions.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding [rows * cols, dim], row-major: half the dims per axis."""
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, row.flatten()), sincos_1d(dim // 2, col.flatten())], dim=1)


def separable_pos_embed(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Spectral 1-D plus spatial 2-D sin-cos embeddings, broadcast-added to [1, T * gh * gw, dim]."""
    depth, rows, cols = grid
    spectral = sincos_1d(dim, torch.arange(depth))
    spatial = sincos_2d(dim, rows, cols)
    return (spectral[:, None, :] + spatial[None, :, :]).reshape(1, depth * rows * cols, dim)


def random_masking(x: torch.Tensor, mask_ratio: float,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random floor(L * (1 - mask_ratio)) (at least 1) tokens of each sample of x [B, L, D].

    The kept tokens are those with the smallest ``noise`` [B, L] (drawn uniformly when not given).
    Returns (visible tokens [B, keep, D], mask [B, L] with 1 = masked, ids_restore [B, L]);
    gathering the shuffled sequence with ids_restore puts every token back in its place.
    """
    batch, length, dim = x.shape
    # Rounding first stops 2400 * (1 - 0.8) = 479.99999999999994 from flooring to 479.
    keep = max(1, math.floor(round(length * (1.0 - mask_ratio), 6)))
    if noise is None:
        noise = torch.rand(batch, length, device=x.device)
    elif noise.shape != (batch, length):
        raise ValueError(f"noise must be [B, L] = [{batch}, {length}], got {tuple(noise.shape)}")
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = x.gather(1, ids_keep[:, :, None].expand(-1, -1, dim))
    mask = torch.ones(batch, length, device=x.device)
    mask[:, :keep] = 0
    return visible, mask.gather(1, ids_restore), ids_restore


def seeded_noise(seeds: list, length: int) -> torch.Tensor:
    """Masking noise [B, L] on the CPU, row b drawn from its own seed (an int or a tuple of ints)."""
    rows = []
    for seed in seeds:
        entropy = list(seed) if isinstance(seed, (tuple, list)) else [seed]
        state = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        rows.append(torch.rand(length, generator=torch.Generator().manual_seed(state)))
    return torch.stack(rows)


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)) with a GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def check_mask_ratio(mask_ratio: float) -> float:
    """Return `mask_ratio` if it lies in [0, 1), else raise NenyaError."""
    if not 0.0 <= mask_ratio < 1.0:
        raise NenyaError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return mask_ratio


class MAESpectral(nn.Module):
    """Masked autoencoder ViT over 3-D (band_patch x patch x patch) patches of [B, C, H, W] cubes.

    No cls token: `encode` mean-pools the encoder's tokens. Position embeddings are fixed
    (not trained) and separable: a 1-D sin-cos over the spectral index plus a 2-D sin-cos over
    the spatial grid, broadcast-added, for the encoder and again at decoder width. They are
    non-persistent buffers (rebuilt from the geometry, not stored in checkpoints), so the only
    trained token-like parameter is the decoder's `mask_token`.
    """

    def __init__(self, img_size: int | tuple[int, int] = 500, bands: int = 30, patch_size: int = 25,
                 band_patch: int = 5, embed_dim: int = 512, depth: int = 16, num_heads: int = 16,
                 decoder_embed_dim: int = 256, decoder_depth: int = 8, decoder_num_heads: int = 8,
                 mlp_ratio: float = 4.0, mask_ratio: float = 0.8, norm_pix_loss: bool = False,
                 grad_checkpointing: bool = False):
        super().__init__()
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if height % patch_size or width % patch_size:
            raise NenyaError(f"img_size {height}x{width} is not divisible by patch_size {patch_size}")
        if bands % band_patch:
            raise NenyaError(f"bands {bands} is not divisible by band_patch {band_patch}")
        for prefix, dim, heads in (("", embed_dim, num_heads),
                                   ("decoder_", decoder_embed_dim, decoder_num_heads)):
            if dim % 4:
                raise NenyaError(f"{prefix}embed_dim {dim} must be a multiple of 4 (2-D sin-cos embedding)")
            if dim % heads:
                raise NenyaError(f"{prefix}embed_dim {dim} is not divisible by {prefix}num_heads {heads}")
        self.img_size = (height, width)
        self.bands, self.patch_size, self.band_patch = bands, patch_size, band_patch
        self.grid = (bands // band_patch, height // patch_size, width // patch_size)
        self.num_patches = math.prod(self.grid)
        self.patch_dim = band_patch * patch_size * patch_size
        self.embed_dim = self.dim_out = embed_dim
        self.mask_ratio = check_mask_ratio(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.grad_checkpointing = grad_checkpointing

        kernel = (band_patch, patch_size, patch_size)
        self.patch_embed = nn.Conv3d(1, embed_dim, kernel_size=kernel, stride=kernel)
        self.register_buffer("pos_embed", separable_pos_embed(embed_dim, self.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", separable_pos_embed(decoder_embed_dim, self.grid),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_dim)

        self.apply(init_linear)
        # The patch embedding is a linear map of each flattened patch, so initialise it like one.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(embed_dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that must not get weight decay (the position embeddings are buffers)."""
        return {"mask_token"}

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """Cubes [B, C, H, W] -> patches [B, L, band_patch * patch * patch] in patch-embedding order."""
        depth, rows, cols = self.grid
        bp, p = self.band_patch, self.patch_size
        x = imgs.reshape(imgs.shape[0], depth, bp, rows, p, cols, p)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(imgs.shape[0], self.num_patches, self.patch_dim)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches [B, L, band_patch * patch * patch] -> cubes [B, C, H, W]; the inverse of patchify."""
        depth, rows, cols = self.grid
        bp, p = self.band_patch, self.patch_size
        x = patches.reshape(patches.shape[0], depth, rows, cols, bp, p, p)
        return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(patches.shape[0], self.bands, *self.img_size)

    def reconstruct(self, pred: torch.Tensor) -> torch.Tensor:
        """Predicted cubes [B, C, H, W] from `pred` (per-patch normalised if norm_pix_loss)."""
        return self.unpatchify(pred)

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """Position-embedded tokens [B, L, D] of cubes [B, C, H, W]."""
        tokens = self.patch_embed(imgs.unsqueeze(1)).flatten(2).transpose(1, 2)
        return tokens + self.pos_embed

    def run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """Apply `blocks` in turn, each under activation checkpointing when training with it on."""
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        return x

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """(encoded visible tokens [B, keep, D], mask [B, L], ids_restore [B, L])."""
        visible, mask, ids_restore = random_masking(self.embed(imgs), mask_ratio, noise)
        return self.norm(self.run_blocks(self.blocks, visible)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predicted patches [B, L, patch_dim] from the encoded visible tokens."""
        x = self.decoder_embed(latent)
        batch, keep, dim = x.shape
        mask_tokens = self.mask_token.expand(batch, ids_restore.shape[1] - keep, dim)
        x = torch.cat([x, mask_tokens], dim=1)
        x = x.gather(1, ids_restore[:, :, None].expand(-1, -1, dim)) + self.decoder_pos_embed
        return self.decoder_pred(self.decoder_norm(self.run_blocks(self.decoder_blocks, x)))

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None):
        """(pred [B, L, patch_dim], mask [B, L] with 1 = masked, ids_restore [B, L]) of cubes [B, C, H, W].

        ``noise`` [B, L] fixes which tokens are hidden (the largest ones); by default it is drawn.
        """
        ratio = self.mask_ratio if mask_ratio is None else check_mask_ratio(mask_ratio)
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        return self.forward_decoder(latent, ids_restore), mask, ids_restore

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Plain MSE over the masked patches (target normalised per patch if norm_pix_loss).

        The same value as the mse term of nenya.losses_mae.MAESpectralLoss.
        """
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)

    def encode(self, imgs: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder features [B, D] of all tokens, with no masking."""
        return self.norm(self.run_blocks(self.blocks, self.embed(imgs))).mean(dim=1)


def init_linear(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for linear layers; other modules keep their defaults."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


# name: (depth, heads, width) of the encoder, and of the decoder below.
MAE_SIZES = {
    "mae_tiny": (12, 3, 192),
    "mae_small": (12, 6, 384),
    "mae_base": (12, 12, 768),
    "mae_medium": (16, 16, 512),
    "mae_large": (24, 16, 1024),
    "mae_huge": (32, 16, 1280),
}
MAE_DECODERS = {
    "mae_tiny": (8, 4, 128),
    "mae_small": (8, 8, 256),
    "mae_base": (8, 16, 512),
    "mae_medium": (8, 8, 256),
    "mae_large": (8, 16, 512),
    "mae_huge": (8, 16, 512),
}
MAE_OPTIONS = ("img_size", "bands", "patch_size", "band_patch", "mask_ratio", "grad_checkpointing",
               "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "norm_pix_loss", "mlp_ratio")


def mae_model(name: str, nchannels: int | None = None, **overrides) -> MAESpectral:
    """Build the MAE size `name` with keyword overrides of its geometry; `nchannels` means `bands`."""
    unknown = sorted(set(overrides) - set(MAE_OPTIONS))
    if unknown:
        raise NenyaError(f"unknown option(s) for {name}: {', '.join(unknown)} "
                         f"(choose from: nchannels, {', '.join(MAE_OPTIONS)})")
    if nchannels is not None:
        if overrides.setdefault("bands", nchannels) != nchannels:
            raise NenyaError(f"nchannels {nchannels} and bands {overrides['bands']} disagree")
    depth, heads, width = MAE_SIZES[name]
    decoder_depth, decoder_heads, decoder_width = MAE_DECODERS[name]
    config = dict(embed_dim=width, depth=depth, num_heads=heads, decoder_embed_dim=decoder_width,
                  decoder_depth=decoder_depth, decoder_num_heads=decoder_heads)
    return MAESpectral(**{**config, **overrides})


for _name in MAE_SIZES:
    register_model(_name)(partial(mae_model, _name))


def mae_parameter_count(name: str, **kwargs) -> int:
    """Number of parameters of model `name`, counted on the meta device without allocating it."""
    with torch.device("meta"):
        model = MODELS[name](**kwargs)
    return sum(p.numel() for p in model.parameters())
