"""A U-shaped 3-D transformer in the manner of D-Former (Wu et al. 2022, "D-Former: a U-shaped Dilated
Transformer for 3D Medical Image Segmentation").

Volumes [B, C, D, H, W] become a grid of tokens by a (2, 4, 4) patch embedding (a strided
convolution) at width ``widths[0]`` (96). Four encoder stages of ``depths`` [2, 2, 6, 2] blocks
with ``num_heads`` [3, 6, 12, 24] at ``widths`` [96, 192, 384, 768] follow, a patch merging
(2x2x2 neighbours concatenated, 8 C_s -> C_s+1) between stages; the decoder mirrors them with
patch expanding (C_s+1 -> 8 C_s, rearranged to 2x2x2 tokens of C_s), the encoder's tokens of the
same grid concatenated as skips (2 C_s -> C_s), and a final expanding back to voxels, a LayerNorm
and a 1x1 convolution to ``num_classes`` logits.

Every stage starts with a dynamic position encoding, x + DWConv3x3x3(x), then alternates blocks
of self-attention within **local** groups and within **dilated** groups. With a token grid
(D, H, W) cut into groups of (g_d, g_h, g_w) tokens, n_d = D / g_d groups along depth (alike for
H and W):

- local: token d belongs to group d // g_d (g_d neighbouring tokens attend together);
- dilated: token d belongs to group d % n_d (g_d tokens strided n_d apart, spanning the volume).

Each block is pre-norm: x + Attn(LN(x)) then x + MLP(LN(x)), with
Attn = softmax(Q K^T / sqrt(d_head)) V per group and head, computed by
``scaled_dot_product_attention``. A stage's group is ``group_size`` clamped to its grid.

Input sizes: an input is zero-padded at the far end of each axis to the smallest size whose
token grids divide into the merges and groups of every stage (:func:`padded_size`), and the
logits cropped back; e.g. with the defaults, 64^3 and 16 x 32 x 32 need no padding.

Deep supervision (``deep_supervision=True``): in training mode ``forward`` returns a tuple
(logits [B, K, D, H, W], aux) where aux[j] ``[B, K, *S_j]`` is a linear head on the tokens of decoder
stage j + 1, finest first: S_j = ceil(input size / (patch * 2**(j + 1))) per axis (e.g. 4^3 and
2^3 for a 16 x 32 x 32 input); resize the masks to each S_j (nearest) for their loss terms. In
eval mode, or without deep supervision, ``forward`` returns the logits tensor alone.

Parameter count (1 input channel, 3 classes, defaults): 44,647,011.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from nenya.errors import NenyaError
from nenya.models.blocks import check_classes, check_spatial_dims, check_widths, crop_to
from nenya.registry import register_model

DEFAULT_WIDTHS = (96, 192, 384, 768)


def stage_groups(grid, group_size) -> tuple[int, int, int]:
    """A stage's group size: ``group_size`` clamped to the token ``grid`` axis by axis."""
    return tuple(min(g, n) for g, n in zip(group_size, grid))


def padded_size(size: int, patch: int, stages: int, group: int) -> int:
    """The smallest size >= ``size`` whose token grids (size / patch / 2**s) divide into their groups."""
    step = patch * 2 ** (stages - 1)
    padded = max(math.ceil(size / step), 1) * step
    while any((padded // patch // 2 ** s) % min(group, padded // patch // 2 ** s) for s in range(stages)):
        padded += step
    return padded


def group_tokens(x: torch.Tensor, groups, dilated: bool) -> torch.Tensor:
    """Tokens x [B, D, H, W, C] as ``[B * n_groups, g_d * g_h * g_w, C]``, local or dilated groups."""
    batch, depth, height, width, channels = x.shape
    (gd, gh, gw), (nd, nh, nw) = groups, (depth // groups[0], height // groups[1], width // groups[2])
    if dilated:  # d = i_in_group * n_d + group: tokens n_d apart attend together
        x = x.view(batch, gd, nd, gh, nh, gw, nw, channels).permute(0, 2, 4, 6, 1, 3, 5, 7)
    else:  # d = group * g_d + i_in_group: neighbouring tokens attend together
        x = x.view(batch, nd, gd, nh, gh, nw, gw, channels).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(batch * nd * nh * nw, gd * gh * gw, channels)


def ungroup_tokens(x: torch.Tensor, grid, groups, dilated: bool) -> torch.Tensor:
    """Inverse of :func:`group_tokens`: ``[B * n_groups, g_d * g_h * g_w, C]`` -> [B, D, H, W, C]."""
    (gd, gh, gw), (nd, nh, nw) = groups, (grid[0] // groups[0], grid[1] // groups[1], grid[2] // groups[2])
    channels = x.shape[-1]
    x = x.view(-1, nd, nh, nw, gd, gh, gw, channels)
    order = (0, 4, 1, 5, 2, 6, 3, 7) if dilated else (0, 1, 4, 2, 5, 3, 6, 7)
    return x.permute(*order).reshape(-1, *grid, channels)


class GroupAttention(nn.Module):
    """Multi-head self-attention within (local or dilated) groups of a token grid [B, D, H, W, C]."""

    def __init__(self, dim: int, num_heads: int, dilated: bool):
        super().__init__()
        self.num_heads, self.dilated = num_heads, dilated
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, groups) -> torch.Tensor:
        grid, dim = x.shape[1:4], x.shape[-1]
        qkv = group_tokens(self.qkv(x), groups, self.dilated)  # [B * G, T, 3C]
        qkv = qkv.view(qkv.shape[0], qkv.shape[1], 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B * G, heads, T, C / heads]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, qkv.shape[1], dim)
        return self.proj(ungroup_tokens(out, grid, groups, self.dilated))  # [B, D, H, W, C]


class Block(nn.Module):
    """Pre-norm transformer block over a token grid: grouped attention, then a GELU MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, dilated: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GroupAttention(dim, num_heads, dilated)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor, groups) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), groups)
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    """Dynamic position encoding x + DWConv3x3x3(x), then ``depth`` blocks: local, dilated, local, ..."""

    def __init__(self, dim: int, depth: int, num_heads: int, group_size, mlp_ratio: float):
        super().__init__()
        self.group_size = tuple(group_size)
        self.pos = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.blocks = nn.ModuleList(Block(dim, num_heads, i % 2 == 1, mlp_ratio) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [B, D, H, W, C]; permuted to [B, C, D, H, W] as a channels-last view, no copy
        x = x + self.pos(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        groups = stage_groups(x.shape[1:4], self.group_size)
        for block in self.blocks:
            x = block(x, groups)
        return x


class PatchMerging(nn.Module):
    """[B, D, H, W, C] -> [B, D/2, H/2, W/2, C_out]: each 2x2x2 neighbourhood concatenated (8C), norm, linear."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduce = nn.Linear(8 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, depth, height, width, channels = x.shape
        x = x.view(batch, depth // 2, 2, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return self.reduce(self.norm(x.reshape(batch, depth // 2, height // 2, width // 2, 8 * channels)))


class PatchExpanding(nn.Module):
    """[B, D, H, W, C] -> [B, f_d D, f_h H, f_w W, C_out]: a linear to f_d f_h f_w C_out, rearranged, norm."""

    def __init__(self, dim: int, out_dim: int, factor=(2, 2, 2)):
        super().__init__()
        self.factor, self.out_dim = tuple(factor), out_dim
        self.expand = nn.Linear(dim, math.prod(factor) * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, depth, height, width, _ = x.shape
        fd, fh, fw = self.factor
        x = self.expand(x).view(batch, depth, height, width, fd, fh, fw, self.out_dim)
        x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, depth * fd, height * fh, width * fw, self.out_dim)
        return self.norm(x)


class DFormer3D(nn.Module):
    """U-shaped dilated transformer: logits [B, num_classes, D, H, W] of volumes [B, nchannels, D, H, W]."""

    def __init__(self, nchannels: int = 1, num_classes: int = 3, patch_size=(2, 4, 4), widths=DEFAULT_WIDTHS,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), group_size=(4, 4, 4), mlp_ratio: float = 4.0,
                 deep_supervision: bool = False):
        super().__init__()
        check_classes(num_classes, nchannels)
        dims, depths, num_heads = check_widths(widths), list(depths), list(num_heads)
        self.patch_size, self.group_size = _triple(patch_size, "patch_size"), _triple(group_size, "group_size")
        if not len(dims) == len(depths) == len(num_heads) or min(depths) < 1:
            raise NenyaError(f"widths={dims}, depths={depths} and num_heads={num_heads} must be lists of the "
                             f"same length (one entry per stage) with at least one block per stage")
        for dim, heads in zip(dims, num_heads):
            if heads < 1 or dim % heads:
                raise NenyaError(f"stage width {dim} is not divisible by num_heads {heads} "
                                 f"(widths={dims}, num_heads={num_heads})")
        embed_dim = dims[0]
        self.num_classes, self.deep_supervision = num_classes, deep_supervision
        self.embed = nn.Conv3d(nchannels, embed_dim, self.patch_size, stride=self.patch_size)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.encoder = nn.ModuleList(
            Stage(dims[s], depths[s], num_heads[s], self.group_size, mlp_ratio) for s in range(len(dims)))
        self.merges = nn.ModuleList(PatchMerging(dims[s], dims[s + 1]) for s in range(len(dims) - 1))
        decoder_stages = range(len(dims) - 2, -1, -1)  # coarse to fine
        self.expands = nn.ModuleList(PatchExpanding(dims[s + 1], dims[s]) for s in decoder_stages)
        self.fuse = nn.ModuleList(nn.Linear(2 * dims[s], dims[s]) for s in decoder_stages)
        self.decoder = nn.ModuleList(
            Stage(dims[s], depths[s], num_heads[s], self.group_size, mlp_ratio) for s in decoder_stages)
        self.aux_heads = nn.ModuleList(
            nn.Linear(dims[s], num_classes) for s in decoder_stages if s > 0) if deep_supervision else None
        self.final_expand = PatchExpanding(embed_dim, embed_dim, self.patch_size)
        self.head = nn.Conv3d(embed_dim, num_classes, 1)
        self.apply(_init_weights)

    def padded_sizes(self, sizes) -> tuple[int, int, int]:
        """The input sizes the volume is padded to (equal to ``sizes`` when they already fit)."""
        return tuple(padded_size(n, p, len(self.encoder), g) for n, p, g in zip(sizes, self.patch_size,
                                                                                 self.group_size))

    def forward(self, x: torch.Tensor):
        """Logits [B, K, D, H, W]; with deep supervision in training mode, (logits, [aux logits, ...])."""
        if x.dim() != 5:
            raise NenyaError(f"dformer3d takes volumes [B, C, D, H, W]; got a tensor of shape {list(x.shape)}")
        sizes = x.shape[2:]
        padded = self.padded_sizes(sizes)
        if padded != tuple(sizes):
            x = F.pad(x, [0, padded[2] - sizes[2], 0, padded[1] - sizes[1], 0, padded[0] - sizes[0]])
        x = self.embed_norm(self.embed(x).permute(0, 2, 3, 4, 1))  # [B, D/2, H/4, W/4, C]
        skips = []
        for s, stage in enumerate(self.encoder):
            x = stage(x if s == 0 else self.merges[s - 1](x))  # [B, *grid_s, C * 2**s]
            skips.append(x)
        skips.pop()
        aux = []
        for i, (expand, fuse, stage) in enumerate(zip(self.expands, self.fuse, self.decoder)):
            x = stage(fuse(torch.cat([expand(x), skips.pop()], dim=-1)))  # [B, *grid_s, C * 2**s]
            if self.aux_heads is not None and i < len(self.aux_heads):
                stride = [p * 2 ** (len(self.decoder) - 1 - i) for p in self.patch_size]
                aux.append(crop_to(self.aux_heads[i](x).permute(0, 4, 1, 2, 3),
                                   [math.ceil(n / f) for n, f in zip(sizes, stride)]))
        x = self.final_expand(x).permute(0, 4, 1, 2, 3)  # [B, C, D, H, W], channels-last in memory
        logits = crop_to(self.head(x), sizes)
        if self.deep_supervision and self.training:
            return logits, aux[::-1]
        return logits


def _triple(value, name: str) -> tuple[int, int, int]:
    """Three positive ints from one int or a list of three, else a NenyaError naming ``name``."""
    values = [value] * 3 if isinstance(value, int) else list(value)
    if len(values) != 3 or any(int(v) != v or v < 1 for v in values):
        raise NenyaError(f"{name}={value} is invalid; use one positive integer or three (depth, height, width)")
    return tuple(int(v) for v in values)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights, zero biases; unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_model("dformer3d")
def dformer3d(*, nchannels: int = 1, num_classes: int = 3, spatial_dims: int = 3, patch_size=(2, 4, 4),
              widths=DEFAULT_WIDTHS, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), group_size=(4, 4, 4),
              mlp_ratio: float = 4.0, deep_supervision: bool = False) -> DFormer3D:
    """D-Former-style 3-D transformer (``spatial_dims`` is accepted for uniform builders and must be 3)."""
    check_spatial_dims(spatial_dims, allowed=(3,))
    return DFormer3D(nchannels, num_classes, patch_size, widths, depths, num_heads, group_size, mlp_ratio,
                     deep_supervision)
