"""The augmentations applied to whole batches on any device, from parameters drawn per item from its own seed.

Two steps: `draw_image_params` / `draw_cube_params` draw every random choice of every item on the CPU
from a torch generator seeded with that item's seed (so an item's augmentation does not depend on the
batch it is in, its position, the device or the process layout), and `apply_image_params` /
`apply_cube_params` apply them to a batch [B, C, H, W] (or [B, C, D, H, W], treated as a stack of planes)
wherever it lives. `two_views` does both for the V views of each item of a batch (view v of item i from
`derive_seed(seed_i, v)`); `cat_params` joins params drawn item by item (in DataLoader workers, say).

The per-sample path is the same functions on a batch of one (`ImageAugment(image, seed)`,
`CubeAugment(cube, seed)`, `nenya.data.views.SeededTwoViews`), and every kernel used gives each item the
same bits whatever the batch around it and the CPU thread count, so on one device both paths give
identical outputs. On a GPU the draws are the same and the outputs agree with the CPU's to float rounding.

Images follow Nenya's order: rotate (bilinear, zeros outside), flip, jitter-crop (resized back to
H x W, bilinear), noise, demean. Rotation, flip and the crop window are one `grid_sample` that samples
the rotated, flipped image only inside the window (without rotation the window is gathered exactly),
and the resize back is a second `grid_sample`. Cubes: crop, rot90, flip, as one exact gather.

Seeds: `derive_seed(seed, epoch, index, view)` mixes integers into one seed; the CPU generator uses
its low 32 bits, which `derive_seed` mixes well.
"""

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from nenya.data.transforms import _is_positive_int, _parse_cropjitter
from nenya.errors import NenyaError

_MASK64 = (1 << 64) - 1
_FIELDS = 5  # uniforms drawn per item, whatever is enabled, so switching one augmentation off keeps the others


def derive_seed(*values) -> int:
    """One seed in [0, 2**63) from integers (e.g. run seed, epoch, item index, view), by splitmix64 mixing."""
    state = 0x243F6A8885A308D3
    for value in values:
        state = _splitmix64(state ^ (int(value) & _MASK64))
    return state >> 1


@contextmanager
def batch_generator(seed: int, epoch: int, indices: torch.Tensor, device: torch.device):
    """Inside: torch's generators (CPU, and ``device``'s) seeded from (seed, epoch, the batch's item indices);
    after: restored, so the draws made inside (kornia's, say) leave the training generator alone."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, epoch, *indices.reshape(-1).tolist()))
        yield


def _splitmix64(x):
    """The splitmix64 finaliser of x + golden gamma (64-bit)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def view_seeds(seeds, views=2) -> list:
    """Seeds of `views` views of each item, item-major: view v of item i is derive_seed(seeds[i], v)."""
    return [derive_seed(seed, view) for seed in _seed_list(seeds) for view in range(views)]


def seeds_from(generator, count) -> list:
    """`count` item seeds drawn from a torch generator (when the caller has no per-item seeds)."""
    return torch.randint(0, 2**63 - 1, (count,), generator=generator).tolist()


def _seed_list(seeds) -> list:
    """Seeds as a list of Python ints (from a list, tuple or 1-D integer tensor)."""
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.reshape(-1).tolist()
    return [int(seed) for seed in seeds]


def _uniforms(generator, seed):
    """Re-seed `generator` with `seed` and draw the item's uniforms in [0, 1) (float64)."""
    generator.manual_seed(int(seed) & _MASK64)
    return torch.rand(_FIELDS, generator=generator, dtype=torch.float64).tolist()


def _pick(u, count):
    """An integer uniform in 0..count-1 from a uniform u in [0, 1)."""
    return min(int(u * count), count - 1)


# Images


@dataclass(frozen=True)
class ImageAugment:
    """Which image augmentations are on (Nenya's options); call it on one image with a seed for the per-sample path."""

    flip: bool = False
    rotate: bool = False
    max_degrees: float = 180.0
    crop: int = 0  # 0: no jitter-crop
    jitter: int = 0
    gauss_noise: float = 0.0
    demean: bool = False

    @classmethod
    def from_options(cls, flip, rotate, random_cropjitter, gauss_noise, demean):
        """The augmentation named by Nenya's options (as build_augmentation takes them), checked."""
        crop_jitter = _parse_cropjitter(random_cropjitter)
        crop, jitter = crop_jitter if crop_jitter is not None else (0, 0)
        if crop_jitter is not None and (crop < 1 or jitter < 0):
            raise NenyaError(
                f"random_cropjitter=[{crop}, {jitter}] is invalid; use [crop, jitter] with crop >= 1 and jitter >= 0"
            )
        if gauss_noise and gauss_noise < 0:
            raise NenyaError(f"gauss_noise={gauss_noise} is negative; use a noise sigma >= 0 (0 turns it off)")
        return cls(flip=bool(flip), rotate=bool(rotate), crop=crop, jitter=jitter,
                   gauss_noise=float(gauss_noise or 0.0), demean=bool(demean))

    def __call__(self, image, seed=None):
        """Augment one image [C, H, W] (or [C, D, H, W]) from `seed` (None: a seed from torch's global RNG)."""
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()))
        return augment_images(image[None], [seed], self)[0]


@dataclass
class ImageParams:
    """Every random choice for a batch of images: per item [B] tensors, and the noise shaped like the batch."""

    image_shape: tuple
    angle: torch.Tensor  # [B] float64, degrees counter-clockwise
    cos: torch.Tensor  # [B] float64
    sin: torch.Tensor  # [B] float64
    flip_h: torch.Tensor  # [B] bool, flips the W axis
    flip_v: torch.Tensor  # [B] bool, flips the H axis
    dy: torch.Tensor  # [B] int64, jitter of the window's top from the centred position
    dx: torch.Tensor  # [B] int64
    top: torch.Tensor  # [B] int64, the window's top row after clamping inside the image
    left: torch.Tensor  # [B] int64
    noise: torch.Tensor | None  # [B, *image_shape] float32: gauss_noise x standard normal; None when noise is off

    def to(self, device):
        """The same parameters on `device`."""
        return _params_to(self, device)


def draw_image_params(seeds, image_shape, aug: ImageAugment) -> ImageParams:
    """Draw each item's augmentation from a CPU generator seeded with its seed; image_shape is (C, [D,] H, W)."""
    seeds = _seed_list(seeds)
    image_shape = tuple(int(n) for n in image_shape)
    height, width = image_shape[-2:]
    crop, jitter = aug.crop, aug.jitter
    if crop and (crop > height or crop > width):
        raise NenyaError(
            f"random_cropjitter=[{crop}, {jitter}] crops {crop} pixels but the images are "
            f"{height}x{width}; use a crop of at most {min(height, width)}"
        )
    count = len(seeds)
    noise = torch.empty((count, *image_shape)) if aug.gauss_noise else None  # [B, *image_shape]
    rows = []
    generator = torch.Generator()
    for i, seed in enumerate(seeds):
        u = _uniforms(generator, seed)
        angle = (u[0] * 2.0 - 1.0) * aug.max_degrees if aug.rotate else 0.0
        flip_h, flip_v = (u[1] < 0.5 and aug.flip), (u[2] < 0.5 and aug.flip)
        dy, dx = (_pick(u[3], 2 * jitter + 1) - jitter, _pick(u[4], 2 * jitter + 1) - jitter) if crop else (0, 0)
        top = min(max((height - crop) // 2 + dy, 0), height - crop) if crop else 0
        left = min(max((width - crop) // 2 + dx, 0), width - crop) if crop else 0
        rad = math.radians(angle)
        rows.append((angle, math.cos(rad), math.sin(rad), flip_h, flip_v, dy, dx, top, left))
        if noise is not None:
            torch.randn(image_shape, generator=generator, out=noise[i])
    if noise is not None:
        noise.mul_(aug.gauss_noise)
    columns = list(zip(*rows)) if rows else [()] * 9
    as_tensor = [torch.float64] * 3 + [torch.bool] * 2 + [torch.int64] * 4
    return ImageParams(image_shape, *(torch.tensor(c, dtype=t) for c, t in zip(columns, as_tensor)), noise=noise)


def apply_image_params(batch, params: ImageParams, aug: ImageAugment, views=1):
    """Augment a batch [B, C, H, W] (or [B, C, D, H, W]) on its device; [B * views, ...] out, item-major.

    params hold `views` consecutive draws per item (B * views in all); each view is computed from the
    item directly, without copying the batch.
    """
    count, shape = batch.shape[0], tuple(batch.shape[1:])
    _check_shape((count * views, *shape), params.image_shape, len(params.top))
    height, width = shape[-2:]
    params = params.to(batch.device)
    planes = batch.reshape(count, -1, height, width)  # [B, P, H, W]
    depth = planes.shape[1]
    win_h, win_w = (aug.crop, aug.crop) if aug.crop else (height, width)
    if aug.rotate:
        grid = window_grid(params.cos, params.sin, params.top, params.left, params.flip_h, params.flip_v,
                           (height, width), (win_h, win_w), batch.dtype, views)  # [B, V * h, w, 2]
        out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    elif aug.flip or aug.crop:
        rows = _window_index(params.top, params.flip_v, height, win_h)  # [B * V, h]
        cols = _window_index(params.left, params.flip_h, width, win_w)  # [B * V, w]
        out = _gather_planes(planes, (rows[:, :, None] * width + cols[:, None, :]).reshape(count, -1, win_w))
    else:
        out = planes[:, :, None].expand(count, depth, views, height, width)
    # [B, P, V * h, w] -> [B * V, P, h, w] (a view when P is 1)
    out = out.reshape(count, depth, views, win_h, win_w).transpose(1, 2).reshape(count * views, depth, win_h, win_w)
    if (win_h, win_w) != (height, width):
        out = resize_planes(out, height, width)
    out = out.reshape(count * views, *shape)
    owned = bool(aug.rotate or aug.flip or aug.crop)  # out is a new tensor, not the caller's batch: work in place
    if aug.gauss_noise:
        noise = params.noise.to(batch.dtype)
        out, owned = (out.add_(noise) if owned else out + noise), True
    if aug.demean:
        means = batch_means(out).reshape(-1, *[1] * len(shape))
        out = out.sub_(means) if owned else out - means
    return out


def augment_images(batch, seeds, aug: ImageAugment):
    """Draw from the items' seeds and augment the batch [B, C, H, W] on its device (one seed per item)."""
    return apply_image_params(batch, draw_image_params(seeds, batch.shape[1:], aug), aug)


def two_views(batch, seeds, aug: ImageAugment, views=2):
    """Views [B, V, C, H, W] of a batch [B, C, H, W]: view v of item i drawn from derive_seed(seeds[i], v)."""
    params = draw_image_params(view_seeds(seeds, views), batch.shape[1:], aug)
    return apply_image_params(batch, params, aug, views).reshape(batch.shape[0], views, *batch.shape[1:])


def window_grid(cos, sin, top, left, flip_h, flip_v, image_size, window_size, dtype, views=1):
    """The grid [B, V * h, w, 2] (grid_sample units) sampling each rotated, flipped image inside its h x w windows.

    cos, sin [B * V] float64 of the counter-clockwise angle; top, left [B * V] int64 (the window in the
    rotated, flipped image); flip_h, flip_v [B * V] bool; image_size (H, W); window_size (h, w). The V views
    of an item (consecutive in the params) are stacked along the grid's height.
    """
    (height, width), (win_h, win_w) = image_size, window_size
    device, count = top.device, len(top) // views
    # centred pixel coordinates of the window in the flipped, rotated image; flipping negates them
    ys = (top[:, None] + torch.arange(win_h, device=device)).double() - (height - 1) / 2  # [B * V, h]
    xs = (left[:, None] + torch.arange(win_w, device=device)).double() - (width - 1) / 2  # [B * V, w]
    ys = torch.where(flip_v[:, None], -ys, ys)
    xs = torch.where(flip_h[:, None], -xs, xs)
    # the output pixel (x, y) reads the input at (cos x - sin y, sin x + cos y), normalised by 2/W and 2/H
    along_x = torch.stack([(cos * (2.0 / width))[:, None] * xs, (sin * (2.0 / height))[:, None] * xs], 1)
    along_y = torch.stack([(-sin * (2.0 / width))[:, None] * ys, (cos * (2.0 / height))[:, None] * ys], 1)
    along_x = along_x.to(dtype).reshape(count, views, 2, 1, win_w).transpose(1, 2)  # [B, 2, V, 1, w]
    along_y = along_y.to(dtype).reshape(count, views, 2, win_h, 1).transpose(1, 2)  # [B, 2, V, h, 1]
    grid = torch.empty(count, 2, views, win_h, win_w, dtype=dtype, device=device)
    torch.add(along_x, along_y, out=grid)
    # [B, V * h, w, 2], a view: adding with (x, y) last is several times slower
    return grid.reshape(count, 2, views * win_h, win_w).permute(0, 2, 3, 1)


def _window_index(start, flipped, size, window):
    """Source indices [B, window] along one axis: the window from `start` of the axis flipped where `flipped`."""
    index = start[:, None] + torch.arange(window, device=start.device)  # [B, window]
    return torch.where(flipped[:, None], size - 1 - index, index)


def _gather_planes(planes, flat_index):
    """out[b, p, i, j] = planes[b, p].flatten()[flat_index[b, i, j]]: [B, P, H, W] -> [B, P, h, w]."""
    count, depth = planes.shape[:2]
    height, width = flat_index.shape[1:]
    index = flat_index.reshape(count, 1, -1).expand(count, depth, height * width)
    return planes.reshape(count, depth, -1).gather(2, index).reshape(count, depth, height, width)


def resize_planes(planes, height, width):
    """Resize planes [B, P, h, w] to [B, P, height, width]: bilinear, align_corners=False, edges clamped, no antialias.

    The same map as F.interpolate(mode="bilinear", align_corners=False), computed by grid_sample on the pixel
    centres of the output (an identity grid), whose CPU kernel gives each item the same bits whatever the
    batch and the thread count (interpolate's does not with several threads).
    """
    grid = _identity_grid(height, width, planes.dtype, planes.device)  # [1, height, width, 2]
    grid = grid.expand(planes.shape[0], height, width, 2)
    return F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False)


@functools.lru_cache(maxsize=16)
def _identity_grid(height, width, dtype, device):
    """The grid [1, height, width, 2] of the pixel centres of a height x width image (grid_sample units)."""
    along_y = ((torch.arange(height, dtype=torch.float64) + 0.5) * (2.0 / height) - 1.0).to(dtype)  # [height]
    along_x = ((torch.arange(width, dtype=torch.float64) + 0.5) * (2.0 / width) - 1.0).to(dtype)  # [width]
    grid = torch.stack(torch.broadcast_tensors(along_x[None, :], along_y[:, None])).to(device)  # [2, H, W]
    return grid.permute(1, 2, 0)[None]


def batch_means(batch):
    """Mean [B] of each item over all its elements, summed pairwise by elementwise adds (batch-invariant)."""
    values = batch.reshape(batch.shape[0], -1)  # [B, N]
    count = length = values.shape[1]
    if length > 1:  # the first level writes a new buffer [B, ceil(N / 2)], the later ones add inside it
        half = length // 2
        summed = values[:, :half] + values[:, half:2 * half]
        values = torch.cat([summed, values[:, 2 * half:]], 1) if length % 2 else summed
        length = half + length % 2
    while length > 1:
        half = length // 2
        values[:, :half] += values[:, half:2 * half]
        if length % 2:
            values[:, half] = values[:, length - 1]
        length = half + length % 2
    return values[:, 0] / count


# Cubes


@dataclass(frozen=True)
class CubeAugment:
    """Which cube augmentations are on: random crop (0: off), rot90, flip; call it on one cube with a seed."""

    flip: bool = False
    rot90: bool = False
    crop: int = 0

    @classmethod
    def from_options(cls, flip, rot90, crop=None):
        """The augmentation named by the cube options (as build_cube_augmentation takes them), checked."""
        if crop and not _is_positive_int(crop):
            raise NenyaError(f"crop={crop!r} is invalid; use a positive whole number of pixels")
        if not crop and crop is not None and crop != 0:
            raise NenyaError(f"crop={crop!r} is invalid; use a positive whole number of pixels, 0 or null")
        return cls(flip=bool(flip), rot90=bool(rot90), crop=int(crop or 0))

    def __call__(self, cube, seed=None):
        """Augment one cube [C, H, W] from `seed` (None: a seed from torch's global RNG)."""
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()))
        return augment_cubes(cube[None], [seed], self)[0]


@dataclass
class CubeParams:
    """Every random choice for a batch of cubes, per item [B]."""

    cube_shape: tuple
    top: torch.Tensor  # [B] int64, the crop window's top row
    left: torch.Tensor  # [B] int64
    k: torch.Tensor  # [B] int64, quarter turns as torch.rot90(cube, k, dims=(-2, -1))
    flip_h: torch.Tensor  # [B] bool, flips the W axis
    flip_v: torch.Tensor  # [B] bool, flips the H axis

    def to(self, device):
        """The same parameters on `device`."""
        return _params_to(self, device)


def draw_cube_params(seeds, cube_shape, aug: CubeAugment) -> CubeParams:
    """Draw each item's crop, rot90 and flips from a CPU generator seeded with its seed; cube_shape is (C, H, W)."""
    seeds = _seed_list(seeds)
    cube_shape = tuple(int(n) for n in cube_shape)
    height, width = cube_shape[-2:]
    size = aug.crop
    if size and (size > height or size > width):
        raise NenyaError(f"crop={size} is larger than the {height}x{width} cube (shape {cube_shape}); "
                         f"use a crop of at most {min(height, width)}")
    square = bool(size) or height == width
    rows = []
    generator = torch.Generator()
    for seed in seeds:
        u = _uniforms(generator, seed)
        top, left = (_pick(u[0], height - size + 1), _pick(u[1], width - size + 1)) if size else (0, 0)
        k = (_pick(u[2], 4) if square else 2 * _pick(u[2], 2)) if aug.rot90 else 0
        rows.append((top, left, k, u[3] < 0.5 and aug.flip, u[4] < 0.5 and aug.flip))
    columns = list(zip(*rows)) if rows else [()] * 5
    as_tensor = [torch.int64] * 3 + [torch.bool] * 2
    return CubeParams(cube_shape, *(torch.tensor(c, dtype=t) for c, t in zip(columns, as_tensor)))


def apply_cube_params(batch, params: CubeParams, aug: CubeAugment):
    """Crop, rotate by quarter turns and flip a batch of cubes [B, C, H, W] on its device (exact: a gather)."""
    _check_shape(batch.shape, params.cube_shape, len(params.top))
    if not (aug.crop or aug.rot90 or aug.flip):
        return batch
    size, (height, width) = batch.shape, batch.shape[-2:]
    win_h, win_w = (aug.crop, aug.crop) if aug.crop else (height, width)
    if size[0] == 1:  # one cube: the same permutation by slicing, faster than a gather
        top, left, k, flip_h, flip_v = (int(v[0]) for v in (params.top, params.left, params.k, params.flip_h,
                                                             params.flip_v))
        out = torch.rot90(batch[..., top:top + win_h, left:left + win_w], k, dims=(-2, -1))
        dims = [d for d, on in ((-1, flip_h), (-2, flip_v)) if on]
        return out.flip(dims) if dims else out
    params = params.to(batch.device)
    device = batch.device
    # output (i, j) reads the rotated window at (i, j) flipped; the window at (a, b) is the cube at (top+a, left+b)
    i = torch.arange(win_h, device=device)[None, :, None]  # [1, h, 1]
    j = torch.arange(win_w, device=device)[None, None, :]  # [1, 1, w]
    i = torch.where(params.flip_v[:, None, None], win_h - 1 - i, i)  # [B, h, 1]
    j = torch.where(params.flip_h[:, None, None], win_w - 1 - j, j)  # [B, 1, w]
    k = params.k[:, None, None]  # [B, 1, 1]
    # torch.rot90(w, k)[i, j] = w[a, b] (quarter turns on square windows; k is 0 or 2 otherwise)
    a = torch.where(k == 0, i, torch.where(k == 1, j, torch.where(k == 2, win_h - 1 - i, win_w - 1 - j)))
    b = torch.where(k == 0, j, torch.where(k == 1, win_h - 1 - i, torch.where(k == 2, win_w - 1 - j, i)))
    flat = (params.top[:, None, None] + a) * width + params.left[:, None, None] + b  # [B, h, w]
    planes = batch.reshape(size[0], -1, height, width)  # [B, P, H, W]
    return _gather_planes(planes, flat).reshape(*size[:-2], win_h, win_w)


def augment_cubes(batch, seeds, aug: CubeAugment):
    """Draw from the items' seeds and augment the batch of cubes [B, C, H, W] on its device (one seed per item)."""
    return apply_cube_params(batch, draw_cube_params(seeds, batch.shape[1:], aug), aug)


# Shared helpers


def cat_params(parts):
    """One ImageParams or CubeParams for the items of several (e.g. drawn per item in DataLoader workers), in order."""
    first = parts[0]
    values = {}
    for field in fields(first):
        items = [getattr(part, field.name) for part in parts]
        if isinstance(items[0], torch.Tensor):
            values[field.name] = torch.cat(items)
        elif any(item != items[0] for item in items):
            raise ValueError(f"cannot join params with different {field.name}: {items[0]} and "
                             f"{next(item for item in items if item != items[0])}")
        else:
            values[field.name] = items[0]
    return type(first)(**values)


def _params_to(params, device):
    """A copy of a params dataclass with every tensor on `device`."""
    moved = {f.name: getattr(params, f.name) for f in fields(params)}
    return type(params)(**{name: value.to(device) if isinstance(value, torch.Tensor) else value
                           for name, value in moved.items()})


def _check_shape(shape, item_shape, count):
    """Raise ValueError unless shape is (count, *item_shape) (params drawn for another batch)."""
    if tuple(shape) != (count, *item_shape):
        raise ValueError(f"the params were drawn for {count} items of shape {item_shape} "
                         f"but the batch has shape {tuple(shape)}")
