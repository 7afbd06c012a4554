"""Augmentation throughput: today's per-sample path against the batched one, side by side in one run.

Run: python benchmarks/augment.py [--batch 256] [--size 64] [--channels 1] [--crop 56] [--jitter 4] [--noise 0.05]
                                  [--cube-batch 64] [--cube-bands 30] [--cube-size 64] [--cube-crop 32]
                                  [--rgb-batch 64] [--rgb-size 128] [--repeats 7] [--threads 1]
Images: two views of each of `--batch` images with Nenya's augmentations (rotate, flip, crop-jitter, noise,
demean) by (1) today's TwoViews(build_augmentation(...)) item by item, (2) the seeded per-sample path
(SeededTwoViews, what `augment_on: "workers"` runs) item by item, (3) the batched path (two_views on the
whole batch, what `augment_on: "device"` runs). The per-sample paths include the torch.stack a DataLoader's
collate would do. Cubes: crop, rot90 and flip of `--cube-batch` cubes, the same three ways. The paths
alternate after a warm-up; each prints the median wall-clock and process-CPU time over the repeats (on a
shared machine the CPU time is the steadier measure) and images/s, then the ratio batched / today against
the target (>= 2x for images; measured when the issue was written: ~9,100 vs ~4,100 images/s per core).
SimCLR's RGB recipe with kornia (`augment: "simclr_rgb"`): two views of each of `--rgb-batch` RGB images item by
item (what `augment_on: "workers"` runs) and as one kornia call on the batch (what `augment_on: "device"` runs),
with the ratio batched / per item.
On a machine with CUDA the batched paths are also timed on the GPU (draw on the CPU, apply on the GPU).
"""

import types

import argparse
import statistics
import time

import torch

from nenya.data.device_augment import ContrastiveViews
from nenya.data.batch_transforms import (
    CubeAugment,
    ImageAugment,
    apply_cube_params,
    apply_image_params,
    augment_cubes,
    draw_cube_params,
    draw_image_params,
    two_views,
    view_seeds,
)
from nenya.data.transforms import build_augmentation, build_cube_augmentation
from nenya.data.views import SeededTwoViews, TwoViews


def median_times(paths: dict, repeats: int, sync=None) -> dict:
    """Median (wall, process CPU) seconds of each {name: callable}, alternating the paths after one warm-up."""
    for run in paths.values():
        run()
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            if sync:
                sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            if sync:
                sync()
            times[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
    return {name: tuple(statistics.median(t[i] for t in values) for i in (0, 1)) for name, values in times.items()}


def report(title: str, medians: dict, count: int, ours: str, theirs: str, target: str) -> None:
    """Print ms and images/s (wall and CPU) of each path, and the ratio ours / theirs in images/s."""
    print(f"\n{title}")
    print(f"  {'path':<48} {'wall ms':>9} {'CPU ms':>9} {'images/s wall':>14} {'images/s CPU':>13}")
    for name, (wall, cpu) in medians.items():
        print(f"  {name:<48} {wall * 1000:9.1f} {cpu * 1000:9.1f} {count / wall:14,.0f} {count / cpu:13,.0f}")
    if theirs in medians:
        (wall, cpu), (wall_0, cpu_0) = medians[ours], medians[theirs]
        print(f"  speed-up {ours.split(':')[0]} / {theirs.split(':')[0]}: wall {wall_0 / wall:.2f}x, "
              f"CPU {cpu_0 / cpu:.2f}x   ({target})")


def image_part(args, device=None) -> None:
    """Two views of a batch of images: today's per-sample classes, the seeded per-sample path, the batched path."""
    options = dict(flip=True, rotate=True, random_cropjitter=[args.crop, args.jitter], gauss_noise=args.noise,
                   demean=True)
    batch = torch.randn(args.batch, args.channels, args.size, args.size, generator=torch.Generator().manual_seed(0))
    seeds = list(range(args.batch))
    aug = ImageAugment.from_options(**options)
    title = (f"Two views of {args.batch} x {args.channels} x {args.size} x {args.size} images: rotate, flip, "
             f"crop-jitter [{args.crop}, {args.jitter}], noise {args.noise}, demean")
    if device is None:
        today, seeded = TwoViews(build_augmentation(**options)), SeededTwoViews(aug)
        params = draw_image_params(view_seeds(seeds), batch.shape[1:], aug)
        paths = {
            "today: TwoViews(build_augmentation), per item": lambda: torch.stack([today(x) for x in batch]),
            "seeded per-sample (workers): SeededTwoViews": lambda: torch.stack(
                [seeded(x, s) for x, s in zip(batch, seeds)]),
            "batched (device): two_views": lambda: two_views(batch, seeds, aug),
            "  of which draw_image_params (CPU)": lambda: draw_image_params(view_seeds(seeds), batch.shape[1:], aug),
            "  of which apply_image_params": lambda: apply_image_params(batch, params, aug, views=2),
        }
        medians = median_times(paths, args.repeats)
        report(title, medians, args.batch, "batched (device): two_views",
               "today: TwoViews(build_augmentation), per item", "target >= 2x")
        return
    on_device = batch.to(device)
    params = draw_image_params(view_seeds(seeds), batch.shape[1:], aug).to(device)
    paths = {"batched on CUDA: two_views (draw on CPU)": lambda: two_views(on_device, seeds, aug),
             "  apply_image_params only (params on the GPU)": lambda: apply_image_params(on_device, params, aug,
                                                                                        views=2)}
    report(f"CUDA ({torch.cuda.get_device_name(device)}): {title}",
           median_times(paths, args.repeats, sync=torch.cuda.synchronize), args.batch, "", "", "")


def cube_part(args, device=None) -> None:
    """Crop, rot90 and flip of a batch of cubes: today's classes, the seeded per-sample path, the batched path."""
    cubes = torch.randn(args.cube_batch, args.cube_bands, args.cube_size, args.cube_size,
                        generator=torch.Generator().manual_seed(1))
    seeds = list(range(args.cube_batch))
    aug = CubeAugment.from_options(flip=True, rot90=True, crop=args.cube_crop)
    title = (f"Cubes {args.cube_batch} x {args.cube_bands} x {args.cube_size} x {args.cube_size}: "
             f"crop {args.cube_crop}, rot90, flip")
    if device is None:
        today = build_cube_augmentation(flip=True, rot90=True, crop=args.cube_crop)
        params = draw_cube_params(seeds, cubes.shape[1:], aug)
        paths = {
            "today: build_cube_augmentation, per item": lambda: torch.stack([today(c) for c in cubes]),
            "seeded per-sample (workers): CubeAugment": lambda: torch.stack([aug(c, s) for c, s in zip(cubes, seeds)]),
            "batched (device): augment_cubes": lambda: augment_cubes(cubes, seeds, aug),
            "  of which apply_cube_params": lambda: apply_cube_params(cubes, params, aug),
        }
        report(title, median_times(paths, args.repeats), args.cube_batch, "batched (device): augment_cubes",
               "today: build_cube_augmentation, per item", "for the record")
        return
    on_device = cubes.to(device)
    params = draw_cube_params(seeds, cubes.shape[1:], aug).to(device)
    paths = {"batched on CUDA: augment_cubes (draw on CPU)": lambda: augment_cubes(on_device, seeds, aug),
             "  apply_cube_params only (params on the GPU)": lambda: apply_cube_params(on_device, params, aug)}
    report(f"CUDA ({torch.cuda.get_device_name(device)}): {title}",
           median_times(paths, args.repeats, sync=torch.cuda.synchronize), args.cube_batch, "", "", "")


def simclr_part(args, device=None) -> None:
    """Two SimCLR RGB views (kornia) of a batch: item by item (workers) against one call on the batch (device)."""
    opt = types.SimpleNamespace(augment="simclr_rgb", augment_on="device", seed=0, demean=False, flip=False,
                                rotate=False, random_cropjitter=None, gauss_noise=0.0, nchannels=3, model="resnet18",
                                spectral_channels=0)
    views = ContrastiveViews(opt)
    images = torch.rand(args.rgb_batch, 3, args.rgb_size, args.rgb_size, generator=torch.Generator().manual_seed(2))
    title = (f"SimCLR RGB views (kornia) of {args.rgb_batch} x 3 x {args.rgb_size} x {args.rgb_size} images: "
             f"resized crop, flip, colour jitter, grayscale, blur")
    batch = (images, torch.zeros(args.rgb_batch), torch.arange(args.rgb_batch))
    if device is None:
        per_item = views.per_sample()
        paths = {"per item (workers): kornia on a batch of one": lambda: torch.stack([per_item(x) for x in images]),
                 "batched (device): kornia on the batch": lambda: views.of_batch(batch, 1)}
        report(title, median_times(paths, args.repeats), args.rgb_batch, "batched (device): kornia on the batch",
               "per item (workers): kornia on a batch of one", "for the record")
        return
    on_device = tuple(t.to(device) for t in batch)
    paths = {"batched on CUDA: kornia on the batch": lambda: views.of_batch(on_device, 1)}
    report(f"CUDA ({torch.cuda.get_device_name(device)}): {title}",
           median_times(paths, args.repeats, sync=torch.cuda.synchronize), args.rgb_batch, "", "", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--crop", type=int, default=56)
    parser.add_argument("--jitter", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--cube-batch", type=int, default=64)
    parser.add_argument("--cube-bands", type=int, default=30)
    parser.add_argument("--cube-size", type=int, default=64)
    parser.add_argument("--cube-crop", type=int, default=32)
    parser.add_argument("--rgb-batch", type=int, default=64)
    parser.add_argument("--rgb-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); median of {args.repeats} repeats, "
          f"paths alternating (the machine may be shared: compare within one run)")
    image_part(args)
    cube_part(args)
    simclr_part(args)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        image_part(args, device)
        cube_part(args, device)
        simclr_part(args, device)
    else:
        print("\nCUDA: no GPU here, skipped")


if __name__ == "__main__":
    main()
