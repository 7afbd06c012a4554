"""Training-step speed of the spectral MAE: masking against encoding every token (CPU), and GPU throughput.

Run: python benchmarks/mae.py [--model mae_tiny] [--img-size 64] [--bands 30] [--patch 8 5] [--batch 4]
                              [--steps 2] [--repeats 5]
     python benchmarks/mae.py --gpu [--gpu-models mae_base mae_medium] [--gpu-batch 8] [--gpu-steps 10]
The CPU part alternates steps at mask ratio 0.8 and 0.0 on the same model in one run and prints the
median ms/step of each, their ratio (target: >= 3x faster at 0.8) and the ideal ratio, that of the
counted forward + backward FLOPs. --gpu prints images/s and peak memory of fp32 eager, bf16 autocast
+ fused AdamW, and the same + torch.compile, as a Markdown table for benchmarks/RESULTS.md; without
CUDA it says so and exits 0.
"""

import argparse
import datetime
import gc
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nenya.losses.reconstruction import MAESpectralLoss
from nenya.models import build_model
from nenya.params import Params, option_preprocess
from nenya.train_util import set_optimizer

GPU_CONFIGS = ("fp32 eager, AdamW foreach", "bf16 autocast + SDPA, AdamW fused",
               "bf16 autocast + SDPA, AdamW fused + torch.compile")


def make_model(args, name: str, img_size: int, patch: list[int], mask_ratio: float):
    """The registered MAE `name` for `args.bands`-band cubes of `img_size` px with patch [spatial, bands]."""
    return build_model(name, nchannels=args.bands, img_size=img_size, patch_size=patch[0],
                       band_patch=patch[1], mask_ratio=mask_ratio,
                       grad_checkpointing=args.grad_checkpointing)


def train_step(model, criterion, optimizer, imgs, mask_ratio: float, autocast=nullcontext) -> None:
    """One step: forward at `mask_ratio`, MAESpectralLoss on the patches, backward, optimizer step."""
    with autocast():
        pred, mask, _ = model(imgs, mask_ratio=mask_ratio)
        loss, _ = criterion(pred, model.patchify(imgs), mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_flops(model, criterion, imgs, mask_ratio: float) -> int:
    """Forward plus backward FLOPs of one step, attention included (counted through the math SDPA path)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        pred, mask, _ = model(imgs, mask_ratio=mask_ratio)
        criterion(pred, model.patchify(imgs), mask)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def run_cpu(args) -> None:
    """Alternate timed steps at `args.mask_ratio` and 0.0 on one model; print medians, ratio and FLOP ratio."""
    torch.manual_seed(0)
    model = make_model(args, args.model, args.img_size, args.patch, args.mask_ratio).train()
    criterion = MAESpectralLoss(band_patch=args.patch[1])
    opt = option_preprocess(Params({"ssl_method": "mae", "optimizer": "adamw", "learning_rate": 1.5e-4,
                                      "weight_decay": 0.05, "betas": [0.9, 0.95]}))
    optimizer = set_optimizer(opt, model)  # as training builds it: no decay on biases/norms, fused
    imgs = torch.rand(args.batch, args.bands, args.img_size, args.img_size)
    ratios = {"masked": args.mask_ratio, "full": 0.0}

    flops = {key: step_flops(model, criterion, imgs[:1], ratio) for key, ratio in ratios.items()}
    for _ in range(args.warmup):
        for ratio in ratios.values():
            train_step(model, criterion, optimizer, imgs, ratio)
    times = {key: [] for key in ratios}
    for _ in range(args.repeats):
        for key, ratio in ratios.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(model, criterion, optimizer, imgs, ratio)
            times[key].append((time.perf_counter() - start) / args.steps)
    masked, full = statistics.median(times["masked"]), statistics.median(times["full"])
    visible = max(1, int(round(model.num_patches * (1 - args.mask_ratio), 6)))
    print(f"model {args.model}, {args.bands}x{args.img_size}x{args.img_size} cubes, patch {args.patch} -> "
          f"{' x '.join(map(str, model.grid))} = {model.num_patches} tokens, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} repeats after {args.warmup} warm-up, "
          f"{torch.get_num_threads()} threads")
    print(f"mask {args.mask_ratio:.2f} ({visible:4d} tokens encoded): {masked * 1e3:8.1f} ms/step")
    print(f"mask 0.00 ({model.num_patches:4d} tokens encoded): {full * 1e3:8.1f} ms/step")
    print(f"speed-up mask {args.mask_ratio:.2f} vs 0.00: {full / masked:.2f}x (target >= 3x); "
          f"FLOP ratio {flops['full'] / flops['masked']:.2f}x "
          f"({flops['full'] / 1e9:.1f} vs {flops['masked'] / 1e9:.1f} GFLOP/image fwd+bwd)")


def git_commit() -> str:
    """`git rev-parse HEAD` of the working tree, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gpu_config(args, name: str, config: int) -> dict:
    """Images/s, ms/step, peak GiB and warm-up seconds of model `name` under GPU configuration `config`."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = make_model(args, name, args.gpu_img_size, args.gpu_patch, args.gpu_mask_ratio).to(device).train()
    criterion = MAESpectralLoss(band_patch=args.gpu_patch[1])
    if config == 0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, weight_decay=0.05, foreach=True)
        autocast = nullcontext
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, weight_decay=0.05, fused=True)

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    if config == 2:
        # Compiling the loss too fuses its float32 elementwise chain over every predicted value.
        # model.patchify still works: the compiled wrapper forwards attributes to the original module.
        model, criterion = torch.compile(model), torch.compile(criterion)
    imgs = torch.rand(args.gpu_batch, args.bands, args.gpu_img_size, args.gpu_img_size, device=device)
    ratio = args.gpu_mask_ratio

    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.gpu_warmup):  # includes compilation under torch.compile
        train_step(model, criterion, optimizer, imgs, ratio, autocast)
    torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    step_times = []
    for _ in range(args.gpu_repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.gpu_steps):
            train_step(model, criterion, optimizer, imgs, ratio, autocast)
        torch.cuda.synchronize()
        step_times.append((time.perf_counter() - start) / args.gpu_steps)
    step = statistics.median(step_times)
    return {"images_s": args.gpu_batch / step, "ms": step * 1e3,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "warmup_s": warmup}


def free_gpu() -> None:
    """Drop compiled graphs and cached blocks so the next configuration starts from an empty GPU."""
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def run_gpu(args) -> None:
    """Measure every model under every GPU configuration; print a Markdown table for RESULTS.md."""
    if not torch.cuda.is_available():
        print("--gpu: CUDA is not available on this machine; skipping the GPU benchmark.")
        return
    rows = []
    for name in args.gpu_models:
        for config, label in enumerate(GPU_CONFIGS):
            print(f"measuring {name}: {label} ...", file=sys.stderr, flush=True)
            try:
                result = gpu_config(args, name, config)
            except torch.cuda.OutOfMemoryError:
                result = None
            free_gpu()
            if result is None:
                rows.append(f"| {name} | {label} | {args.gpu_batch} | OOM | | | |")
            else:
                rows.append(f"| {name} | {label} | {args.gpu_batch} | {result['images_s']:.1f} | "
                            f"{result['ms']:.1f} | {result['peak_gib']:.2f} | {result['warmup_s']:.1f} |")
    size, (patch, band_patch) = args.gpu_img_size, args.gpu_patch
    tokens = (args.bands // band_patch) * (size // patch) ** 2
    print(f"### MAE training step, {torch.cuda.get_device_name()}\n")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {datetime.date.today().isoformat()}, "
          f"commit {git_commit()}  ")
    tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
    print(f"{args.bands}x{size}x{size} cubes, patch [{patch}, {band_patch}] -> {tokens} tokens, "
          f"mask {args.gpu_mask_ratio}, TF32 matmul {tf32}, "
          f"median of {args.gpu_repeats} x {args.gpu_steps} steps after {args.gpu_warmup} warm-up steps; "
          f"peak memory = torch.cuda.max_memory_allocated over the timed steps\n")
    print("| model | configuration | batch | images/s | ms/step | peak memory (GiB) | warm-up (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


def main() -> None:
    """Parse the flags; run the CPU comparison, or the GPU table with --gpu."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mae_medium", help="registered MAE size of the CPU part (users start from medium)")
    parser.add_argument("--img-size", type=int, default=64, help="CPU image size (px)")
    parser.add_argument("--bands", type=int, default=30, help="spectral bands (both parts)")
    parser.add_argument("--patch", type=int, nargs=2, default=[8, 5], metavar=("SPATIAL", "BANDS"),
                        help="CPU patch: pixels per side and bands per patch")
    parser.add_argument("--batch", type=int, default=2, help="CPU batch size")
    parser.add_argument("--mask-ratio", type=float, default=0.8, help="CPU mask ratio compared with 0.0")
    parser.add_argument("--steps", type=int, default=2, help="CPU steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="CPU timed repeats of each mask ratio")
    parser.add_argument("--warmup", type=int, default=1, help="CPU warm-up steps of each mask ratio")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="activation checkpointing (both parts)")
    parser.add_argument("--gpu", action="store_true", help="run the GPU table instead of the CPU comparison")
    parser.add_argument("--gpu-models", nargs="+", default=["mae_base", "mae_medium"],
                        help="registered MAE sizes of the GPU table")
    parser.add_argument("--gpu-img-size", type=int, default=500, help="GPU image size (px)")
    parser.add_argument("--gpu-patch", type=int, nargs=2, default=[25, 5], metavar=("SPATIAL", "BANDS"),
                        help="GPU patch: pixels per side and bands per patch")
    parser.add_argument("--gpu-batch", type=int, default=8, help="GPU batch size")
    parser.add_argument("--gpu-mask-ratio", type=float, default=0.8, help="GPU mask ratio")
    parser.add_argument("--gpu-steps", type=int, default=10, help="GPU steps per timed repeat")
    parser.add_argument("--gpu-repeats", type=int, default=3, help="GPU timed repeats (median reported)")
    parser.add_argument("--gpu-warmup", type=int, default=3, help="GPU warm-up steps (compilation included)")
    args = parser.parse_args()
    if args.gpu:
        run_gpu(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
