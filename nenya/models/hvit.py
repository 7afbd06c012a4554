"""HViT: a hierarchical vision transformer (Swin-style) encoder with shifted-window or global attention.

Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
(arXiv:2103.14030). Tokens keep their grid layout [B, H, W, C] through the model:

    conv patch embedding (patch_size) + LayerNorm              grid H/p x W/p, width embed_dim
    [optional] spectral fusion: cross-attention to the spectral channels' own patch tokens
    stage 1 .. stage S, each `depths[i]` blocks, then a 2x2 patch merging (not after the last)
    mean over the tokens, LayerNorm                             features [B, embed_dim * 2**(S-1)]

Geometry. The total stride is patch_size * 2**(S-1) (128 for patch 16 and four stages): the input's
height and width must be multiples of it, so that every patch merging halves an even grid. In a
window stage the window is `window_size`, clipped to min(grid) when the grid is not larger (as Swin
does); the grid must then be a multiple of the window. Blocks 2, 4, ... of a stage shift the windows
by window // 2 along each axis that holds more than one window (no shift where one window covers the
axis). A global stage attends over its whole grid, which is the window stage whose window is the
grid. Both keep Swin's relative position bias, so tokens know where they are. The bias tables are
sized by the effective windows, which depend on `img_size`: a model runs on other input sizes only
where they keep the same windows (window attention); otherwise it raises a NenyaError saying why.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nenya.errors import NenyaError
from nenya.models.heads import ProjectedEncoder
from nenya.models.mae_spectral import sincos_2d
from nenya.registry import register_model

ATTENTION_KINDS = ("window", "global")


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Grid [B, H, W, C] -> windows [B, nW, wh * ww, C]; windows row-major, tokens row-major inside."""
    batch, height, width, dim = x.shape
    wh, ww = window
    x = x.view(batch, height // wh, wh, width // ww, ww, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, (height // wh) * (width // ww), wh * ww, dim)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Windows [B, nW, wh * ww, C] -> grid [B, H, W, C]; the inverse of window_partition."""
    batch, dim = windows.shape[0], windows.shape[-1]
    wh, ww = window
    x = windows.view(batch, height // wh, width // ww, wh, ww, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, dim)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """[N, N] index into the (2wh-1)(2ww-1) bias table of the offset (query - key) of two window tokens."""
    wh, ww = window
    rows, cols = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # [2, N]
    offset = coords[:, :, None] - coords[:, None, :]  # [2, N, N], each in [-(w-1), w-1]
    return (offset[0] + wh - 1) * (2 * ww - 1) + (offset[1] + ww - 1)


def shift_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int],
               device=None) -> torch.Tensor:
    """Additive mask [nW, N, N] (0 or -inf) for windows of a grid rolled by -shift (Swin, section 3.2).

    After the cyclic roll a window can hold tokens from opposite edges of the image; tokens may only
    attend to tokens of the same region, the regions being cut at H - wh and H - sh (and likewise for
    the columns), so that every window sees only pixels that were neighbours before the roll.
    """
    (height, width), (wh, ww), (sh, sw) = grid, window, shift
    labels = torch.zeros(height, width, device=device)
    region = 0
    for rows in (slice(0, height - wh), slice(height - wh, height - sh), slice(height - sh, None)):
        for cols in (slice(0, width - ww), slice(width - ww, width - sw), slice(width - sw, None)):
            labels[rows, cols] = region
            region += 1
    windows = window_partition(labels[None, :, :, None], window)[0, :, :, 0]  # [nW, N]
    same = windows[:, :, None] == windows[:, None, :]  # [nW, N, N]
    return torch.zeros(same.shape, device=device).masked_fill(~same, float("-inf"))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias (Swin, eq. 4).

    Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V, with B [heads, N, N] gathered from a learned
    [(2wh - 1)(2ww - 1), heads] table; the bias (plus the shift mask) is scaled_dot_product_attention's
    additive attn_mask. The windows of a batch are folded into the head dimension, so the mask is
    broadcast over the batch and never copied per sample.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int]):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """Relative position bias [heads, N, N]."""
        tokens = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]  # [N * N, heads]
        return bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Windows [B, nW, N, C] (and a shift mask [nW, N, N]) -> attended windows [B, nW, N, C]."""
        batch, nwin, tokens, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        qkv = self.qkv(x).view(batch, nwin, tokens, 3, heads, head_dim).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.reshape(3, batch, nwin * heads, tokens, head_dim)
        attn_mask = self.position_bias()[None]  # [1, heads, N, N]
        if mask is not None:
            attn_mask = attn_mask + mask[:, None]  # [nW, heads, N, N]
        attn_mask = attn_mask.expand(nwin, heads, tokens, tokens).reshape(1, nwin * heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))  # [B, nW*heads, N, hd]
        out = out.view(batch, nwin, heads, tokens, head_dim).transpose(2, 3).reshape(batch, nwin, tokens, dim)
        return self.proj(out)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a sample's residual branch with probability p, scale by 1/(1-p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # [B, 1, ...]
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


def mlp(dim: int, ratio: float) -> nn.Sequential:
    """Linear(dim, ratio * dim), GELU, Linear back to dim."""
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class HViTBlock(nn.Module):
    """Pre-norm transformer block on a grid [B, H, W, C]: x + attn(norm(x)), then x + mlp(norm(x)) (Swin eq. 3)."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], shifted: bool,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.window, self.shifted = window, shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio)

    def shift(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Roll of this block on `grid`: window // 2 along each axis with more than one window, else 0."""
        if not self.shifted:
            return (0, 0)
        return tuple(w // 2 if g > w else 0 for g, w in zip(grid, self.window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Grid [B, H, W, C] -> grid [B, H, W, C]."""
        height, width = x.shape[1:3]
        sh, sw = self.shift((height, width))
        y = self.norm1(x)
        mask = None
        if sh or sw:
            y = torch.roll(y, shifts=(-sh, -sw), dims=(1, 2))
            mask = shift_mask((height, width), self.window, (sh, sw), device=x.device)
        y = window_reverse(self.attn(window_partition(y, self.window), mask), self.window, height, width)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token (Swin, section 3.1): [B, H, W, C] -> [B, H/2, W/2, 2C].

    Concatenates, in this order, the tokens at (2i, 2j), (2i+1, 2j), (2i, 2j+1), (2i+1, 2j+1),
    then LayerNorm(4C) and a bias-free Linear(4C, 2C).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))  # [B, H/2, W/2, 2C]


class PatchEmbed(nn.Module):
    """Non-overlapping conv patch embedding + LayerNorm: [B, C, H, W] -> grid [B, H/p, W/p, D]."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SpectralFusion(nn.Module):
    """Cross-attention of image tokens (queries) to spectral tokens (keys, values), residual, then MLP.

    x = x + Wo Attn(Wq (LN(x) + P), Wk (LN(s) + P), Wv LN(s));  x = x + MLP(LN(x)), with P the fixed
    2-D sin-cos position of each token, so an image token can find the spectral tokens of its place.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, spectral: torch.Tensor) -> torch.Tensor:
        """Image grid [B, H, W, D] fused with spectral grid [B, H, W, D] -> [B, H, W, D]."""
        batch, height, width, dim = x.shape
        heads = self.num_heads
        pos = sincos_2d(dim, height, width).to(x.device, x.dtype)  # [L, D]
        queries, memory = self.norm_q(x).flatten(1, 2), self.norm_kv(spectral).flatten(1, 2)  # [B, L, D]

        def split(t):
            return t.view(batch, -1, heads, dim // heads).transpose(1, 2)  # [B, heads, L, hd]

        out = F.scaled_dot_product_attention(split(self.q(queries + pos)), split(self.k(memory + pos)),
                                             split(self.v(memory)))
        x = x + self.proj(out.transpose(1, 2).reshape(batch, height, width, dim))
        return x + self.mlp(self.norm2(x))


class HViTStage(nn.Module):
    """`depth` blocks at one resolution (every second one shifted), then an optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: tuple[int, int], mlp_ratio: float,
                 drop_paths: list[float], downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(HViTBlock(dim, num_heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio,
                                              drop_path=drop_paths[i]) for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor, use_checkpoint: bool = False) -> torch.Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        return self.downsample(x)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def stage_windows(img_size, patch_size: int, window_size: int, attention: str,
                  stages: int) -> list[tuple[int, int]] | str:
    """Effective window of each stage for this geometry, or the reason (a string) it does not work."""
    height, width = _pair(img_size)
    stride = patch_size * 2 ** (stages - 1)
    if height % stride or width % stride:
        return f"is not divisible by the total stride {stride} (patch_size {patch_size} x 2^{stages - 1})"
    windows = []
    for stage in range(stages):
        grid = (height // stride * 2 ** (stages - 1 - stage), width // stride * 2 ** (stages - 1 - stage))
        if attention == "global":
            windows.append(grid)
            continue
        window = min(window_size, *grid)
        if grid[0] % window or grid[1] % window:
            clipped = f" (window_size {window_size} clipped to the grid)" if window != window_size else ""
            return (f"gives stage {stage + 1} a {grid[0]}x{grid[1]} token grid, which is not a multiple of "
                    f"the window {window}{clipped}")
        windows.append((window, window))
    return windows


def geometry_error(img_size, patch_size: int, window_size: int, attention: str, stages: int,
                   reason: str) -> NenyaError:
    """A NenyaError saying why this geometry fails and which patch sizes, image sizes and windows work."""
    height, width = _pair(img_size)
    stride = patch_size * 2 ** (stages - 1)

    def works(size, patch=patch_size, window=window_size):
        return not isinstance(stage_windows(size, patch, window, attention, stages), str)

    def good_windows(size):
        grid = size[0] // patch_size
        return [w for w in range(2, grid + 1) if works(size, window=w)][:4] if attention == "window" else []

    def grids(patch):
        return " -> ".join(f"{height / patch / 2 ** s:g}" for s in range(stages))

    hints = []
    patches = sorted((p for p in range(2, 33) if works((height, width), patch=p)), key=lambda p: abs(p - patch_size))
    if patches:
        hints.append(f"at {height}x{width} use patch_size {patches[0]} (token grids {grids(patches[0])})"
                     + "".join(f" or {p}" for p in sorted(patches[1:3])))
    if height % stride == 0 and width % stride == 0:
        windows = good_windows((height, width))
        if windows:
            hints.append(f"{'or' if hints else 'use'} window_size {', '.join(map(str, windows))}")
    else:
        sizes = []
        for size in sorted({max(stride, height // stride * stride), (height // stride + 1) * stride}):
            windows = good_windows((size, size))
            if attention == "global" or windows:
                sizes.append(f"{size}" + (f" (window_size {', '.join(map(str, windows))})" if windows else ""))
        if sizes:
            hints.append(f"with patch_size {patch_size} use img_size {' or '.join(sizes)}")
    return NenyaError(
        f"hvit: img_size {height}x{width} {reason}: the token grid goes {grids(patch_size)} through the "
        f"{stages} stages (each 2x2 patch merging halves it, so it must be even before each merging"
        f"{', and each grid a multiple of the window' if attention == 'window' else ''}); " + "; ".join(hints))


class HViT(nn.Module):
    """The hierarchical ViT encoder: images [B, C, H, W] -> features [B, embed_dim * 2**(stages-1)].

    The last `spectral_channels` input channels, when > 0, form the spectral stream: their own patch
    embedding, fused into the image tokens by SpectralFusion right after the image patch embedding.
    """

    def __init__(self, img_size=256, in_chans: int = 3, spectral_channels: int = 0, patch_size: int = 16,
                 embed_dim: int = 96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size: int = 8,
                 attention: str = "window", mlp_ratio: float = 4.0, drop_path_rate: float = 0.1,
                 grad_checkpointing: bool = False):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise NenyaError(f"hvit: unknown attention {attention!r}; choose from: {', '.join(ATTENTION_KINDS)}")
        if len(depths) != len(num_heads):
            raise NenyaError(f"hvit: depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        for dim, heads in zip(dims, num_heads):
            if dim % heads:
                raise NenyaError(f"hvit: stage width {dim} (embed_dim {embed_dim} doubled per stage) "
                                 f"is not divisible by its num_heads {heads}")
        if spectral_channels and embed_dim % 4:
            raise NenyaError(f"hvit: embed_dim {embed_dim} must be a multiple of 4 with spectral_channels "
                             "(the fusion's 2-D sin-cos positions)")
        self.img_size, self.patch_size, self.window_size = _pair(img_size), patch_size, window_size
        self.attention, self.stages_count = attention, len(depths)
        windows = stage_windows(self.img_size, patch_size, window_size, attention, len(depths))
        if isinstance(windows, str):
            raise geometry_error(self.img_size, patch_size, window_size, attention, len(depths), windows)
        self.windows = windows
        self.in_chans, self.spectral_channels = in_chans, spectral_channels
        self.grad_checkpointing = grad_checkpointing

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        if spectral_channels:
            self.spectral_embed = PatchEmbed(spectral_channels, embed_dim, patch_size)
            self.fusion = SpectralFusion(embed_dim, num_heads[0], mlp_ratio)
        blocks = sum(depths)
        rates = [drop_path_rate * i / max(blocks - 1, 1) for i in range(blocks)]  # linear 0 .. drop_path_rate
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stages = nn.ModuleList(
            HViTStage(dims[i], depths[i], num_heads[i], windows[i], mlp_ratio,
                      rates[starts[i]:starts[i] + depths[i]], downsample=i < len(depths) - 1)
            for i in range(len(depths)))
        self.norm = nn.LayerNorm(dims[-1])
        self.dim_out = dims[-1]
        self.apply(init_weights)

    def no_weight_decay(self) -> set[str]:
        """The relative position bias tables (norms and biases are excluded by the optimizer already)."""
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise NenyaError when `x` has the wrong channels or a size whose windows differ from the built ones."""
        channels = self.in_chans + self.spectral_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise NenyaError(f"hvit expects images [B, {channels}, H, W] ({self.in_chans} image + "
                             f"{self.spectral_channels} spectral channels), got {list(x.shape)}")
        size = tuple(x.shape[2:])
        if size == self.img_size:
            return
        windows = stage_windows(size, self.patch_size, self.window_size, self.attention, self.stages_count)
        if isinstance(windows, str):
            raise geometry_error(size, self.patch_size, self.window_size, self.attention, self.stages_count, windows)
        if windows != self.windows:
            raise NenyaError(f"hvit was built for img_size {self.img_size[0]}x{self.img_size[1]} (windows "
                             f"{self.windows}); {size[0]}x{size[1]} needs windows {windows}, so build it with "
                             f"img_size {size[0]}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, in_chans + spectral_channels, H, W] -> mean-pooled, normed features [B, dim_out]."""
        self.check_input(x)
        tokens = self.patch_embed(x[:, :self.in_chans])  # [B, H/p, W/p, D]
        if self.spectral_channels:
            tokens = self.fusion(tokens, self.spectral_embed(x[:, self.in_chans:]))
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages:
            tokens = stage(tokens, use_checkpoint)
        return self.norm(tokens.mean(dim=(1, 2)))  # [B, dim_out]


def init_weights(module: nn.Module) -> None:
    """Swin's initialisation: truncated-normal (std 0.02) linear weights and bias tables, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)


class SupConHViT(ProjectedEncoder):
    """HViT encoder + projection head, with SupConResNet's interface (forward, encode, dim_in)."""

    def __init__(self, nchannels: int = 3, head: str = "mlp", feat_dim: int = 128, spectral_channels: int = 0,
                 **geometry):
        if not 0 <= spectral_channels < nchannels:
            raise NenyaError(f"hvit: spectral_channels {spectral_channels} must be in [0, nchannels {nchannels}): "
                             "they are the last channels of the input, after at least one image channel")
        encoder = HViT(in_chans=nchannels - spectral_channels, spectral_channels=spectral_channels, **geometry)
        super().__init__(encoder, head, feat_dim)

    def no_weight_decay(self) -> set[str]:
        """The encoder's relative position bias tables, by their names in this model."""
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}


HVIT_OPTIONS = ("img_size", "patch_size", "window_size", "attention", "drop_path_rate", "grad_checkpointing",
                "spectral_channels", "embed_dim", "depths", "num_heads", "mlp_ratio")


@register_model("hvit")
def hvit(nchannels: int = 3, head: str = "mlp", feat_dim: int = 128, **options) -> SupConHViT:
    """HViT (Swin-T widths and depths by default; 256 px, patch 16, window 8) with a projection head."""
    unknown = sorted(set(options) - set(HVIT_OPTIONS))
    if unknown:
        raise NenyaError(f"unknown option(s) for hvit: {', '.join(unknown)} "
                         f"(choose from: nchannels, head, feat_dim, {', '.join(HVIT_OPTIONS)})")
    return SupConHViT(nchannels=nchannels, head=head, feat_dim=feat_dim, **options)
