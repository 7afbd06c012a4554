"""Training-step speed of nenya's segmentation models against MONAI's at the same sizes, side by side.

Run: python benchmarks/segment.py [--size 256] [--batch 4] [--channels 2] [--widths 32 64 128 256 512]
                                  [--volume 64] [--volume-batch 1] [--repeats 5] [--steps 1] [--warmup 1]
                                  [--skip-2d] [--skip-3d] [--quick] [--figure segment_benchmark.png]
A step is forward, loss, backward and an Adam step. Part 1: nenya's attention_unet against MONAI's
AttentionUnet (same widths, strides 2), 2-D, `--channels` channels, one class (BCE with logits),
`--batch` x `--size`^2; MONAI is timed as built and, for the record, with channels-last weights and
input too. Part 2: nenya's dformer3d (defaults, 3 classes) against MONAI's SwinUNETR (feature_size 24)
on `--volume-batch` x 1 x `--volume`^3 (cross-entropy). The models alternate step by step after
warm-up; each prints its median wall-clock and process-CPU ms/step over the repeats (on a shared
machine the CPU time is the steadier measure of single-threaded work), the ratios nenya / MONAI
(target for the Attention U-Net: <= 1.0) and the parameter counts. `--quick` shrinks the images to 128^2 and the
repeats to 3 for a short CPU run (SwinUNETR needs volumes of 64^3 or more, multiples of 32).
`--figure PATH` also draws the comparisons as bars (CPU ms per step and parameters) into a PNG.
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from nenya.models import build_model, count_parameters


def train_step(model, optimizer, x, target, loss_fn) -> None:
    """One step: forward, loss, backward, optimizer step."""
    loss = loss_fn(model(x), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def compare(entries: dict, target, loss_fn, args) -> dict:
    """Median (wall, process CPU) seconds per step of each {name: (model, input)}, timed in turn after warm-up."""
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-4) for name, (model, _) in entries.items()}
    for _ in range(args.warmup):
        for name, (model, x) in entries.items():
            train_step(model, optimizers[name], x, target, loss_fn)
    times = {name: [] for name in entries}
    for _ in range(args.repeats):
        for name, (model, x) in entries.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                train_step(model, optimizers[name], x, target, loss_fn)
            times[name].append(((time.perf_counter() - start) / args.steps,
                                (time.process_time() - start_cpu) / args.steps))
    return {name: tuple(statistics.median(t[i] for t in values) for i in (0, 1)) for name, values in times.items()}


def report(title: str, medians: dict, params: dict, ours: str, theirs: str, target: str) -> None:
    """Print one comparison: wall and CPU ms/step and parameters of each model, and the ratios."""
    print(f"\n{title}")
    print(f"  {'model':<38} {'wall ms/step':>12} {'CPU ms/step':>12} {'parameters':>12}")
    for name, (wall, cpu) in medians.items():
        print(f"  {name:<38} {wall * 1000:12.1f} {cpu * 1000:12.1f} {params[name]:>12,}")
    print(f"  ratio {ours} / {theirs}: wall {medians[ours][0] / medians[theirs][0]:.3f}, "
          f"CPU {medians[ours][1] / medians[theirs][1]:.3f}   ({target})")


def draw(results: list, path: str) -> None:
    """Bars of CPU ms/step and millions of parameters, one row per comparison of ``results`` [(title, medians, params)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(11, 2.2 + 1.6 * len(results)), squeeze=False)
    for row, (title, medians, params) in enumerate(results):
        names = list(medians)
        colours = ["tab:blue" if name.startswith("nenya") else "tab:grey" for name in names]
        for column, (values, label) in enumerate((([medians[n][1] * 1000 for n in names], "CPU ms per training step"),
                                                  ([params[n] / 1e6 for n in names], "parameters (millions)"))):
            axis = axes[row, column]
            bars = axis.barh(names, values, color=colours)
            axis.bar_label(bars, fmt="%.1f", padding=3)
            axis.invert_yaxis()
            axis.set_xlabel(label)
            axis.set_xlim(0, max(values) * 1.25)
            if column == 0:
                axis.set_title(title, loc="left", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def attention_unet_part(args) -> tuple:
    """nenya attention_unet against MONAI AttentionUnet, 2-D."""
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    target = (torch.rand(args.batch, 1, args.size, args.size) > 0.5).float()
    strides = [2] * (len(args.widths) - 1)
    ours = build_model("attention_unet", nchannels=args.channels, num_classes=1, widths=args.widths)
    monai = AttentionUnet(2, args.channels, 1, args.widths, strides)
    monai_cl = AttentionUnet(2, args.channels, 1, args.widths, strides).to(memory_format=torch.channels_last)
    entries = {"nenya attention_unet": (ours, x), "MONAI AttentionUnet": (monai, x),
               "MONAI AttentionUnet, channels-last": (monai_cl, x.contiguous(memory_format=torch.channels_last))}
    medians = compare(entries, target, F.binary_cross_entropy_with_logits, args)
    params = {name: count_parameters(model) for name, (model, _) in entries.items()}
    report(f"Attention U-Net, 2-D, batch {args.batch} x {args.channels} x {args.size}^2, widths {args.widths}",
           medians, params, "nenya attention_unet", "MONAI AttentionUnet", "target <= 1.0")
    ours, cl = medians["nenya attention_unet"], medians["MONAI AttentionUnet, channels-last"]
    print(f"  ratio nenya / MONAI channels-last: wall {ours[0] / cl[0]:.3f}, CPU {ours[1] / cl[1]:.3f}")
    return f"Attention U-Net, 2-D, {args.batch} x {args.channels} x {args.size}^2", medians, params


def dformer_part(args) -> tuple:
    """nenya dformer3d against MONAI SwinUNETR (feature_size 24), 3-D."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    size = args.volume
    x = torch.randn(args.volume_batch, 1, size, size, size)
    target = torch.randint(0, 3, (args.volume_batch, size, size, size))
    entries = {"nenya dformer3d": (build_model("dformer3d", nchannels=1, num_classes=3), x),
               "MONAI SwinUNETR (feature_size 24)": (SwinUNETR(in_channels=1, out_channels=3, feature_size=24), x)}
    medians = compare(entries, target, F.cross_entropy, args)
    params = {name: count_parameters(model) for name, (model, _) in entries.items()}
    report(f"3-D transformers, batch {args.volume_batch} x 1 x {size}^3, 3 classes", medians, params,
           "nenya dformer3d", "MONAI SwinUNETR (feature_size 24)", "for the record")
    return f"3-D transformers, {args.volume_batch} x 1 x {size}^3", medians, params


def main(argv=None) -> None:
    """Parse the flags, print the machine's thread counts, run the comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--volume", type=int, default=64)
    parser.add_argument("--volume-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-2d", action="store_true")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--quick", action="store_true", help="128^2 images and 3 repeats")
    parser.add_argument("--figure", help="also draw the comparisons into this PNG")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 128, 3
    if not args.skip_3d and (args.volume < 64 or args.volume % 32):
        parser.error(f"--volume {args.volume}: SwinUNETR needs a multiple of 32 of at least 64")
    print(f"torch {torch.__version__}, CPU threads: torch.get_num_threads() = {torch.get_num_threads()}, "
          f"os.cpu_count() = {os.cpu_count()}, OMP_NUM_THREADS = {os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{args.warmup} warm-up step(s), then {args.repeats} repeats x {args.steps} step(s), models alternating")
    results = ([attention_unet_part(args)] if not args.skip_2d else []) + ([dformer_part(args)] if not args.skip_3d else [])
    if args.figure and results:
        draw(results, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
