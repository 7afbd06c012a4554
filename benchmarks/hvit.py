"""HViT parameter counts, and CPU forward + backward time of window against global attention.

Run: python benchmarks/hvit.py [--img-size 64] [--patch 4] [--window 4] [--batch 4] [--steps 2] [--repeats 3]
Prints the parameter counts of the full-size HViT (256 px, patch 16, window 8, 7 classes) and of
our blocks in Swin-T's configuration (224 px, patch 4, window 7, 1000 classes; the published Swin-T
has 28,288,354), then times a forward + backward pass of the same-width encoder with window and with
global attention at --img-size, alternating the two, and prints the median ms/step of each and
their ratio. For the record: there is no target.
"""

import argparse
import statistics
import time

import torch

from nenya.models import build_model
from nenya.models.heads import EncoderClassifier


def count(model) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def classifier_count(num_classes: int, **options) -> int:
    """Parameters of hvit + a linear classifier (no projection head), counted on the meta device."""
    with torch.device("meta"):
        return count(EncoderClassifier(build_model("hvit", **options), num_classes))


def time_step(model, x) -> float:
    """Seconds of one forward + backward pass."""
    start = time.perf_counter()
    model.encode(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    full = classifier_count(7, img_size=256, patch_size=16, window_size=8)
    swin_t = classifier_count(1000, img_size=224, patch_size=4, window_size=7)
    print(f"hvit full size (256 px, patch 16, window 8, 7 classes): {full:,} parameters "
          f"({full / 1e6:.2f} M; published HViT ~27.6 M)")
    print(f"hvit in Swin-T's configuration (224 px, patch 4, window 7, 1000 classes): {swin_t:,} "
          f"({swin_t / 1e6:.2f} M; published Swin-T 28,288,354)")

    torch.manual_seed(0)
    geometry = dict(img_size=args.img_size, patch_size=args.patch, window_size=args.window, drop_path_rate=0.1)
    models = {kind: build_model("hvit", attention=kind, **geometry).train() for kind in ("window", "global")}
    for kind, model in models.items():
        print(f"{kind:>6} attention at {args.img_size} px, patch {args.patch}: {count(model):,} parameters "
              f"(with the projection head), windows {model.encoder.windows}")
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    for model in models.values():
        time_step(model, x)  # warm-up
    times = {kind: [] for kind in models}
    for _ in range(args.repeats):
        for kind, model in models.items():
            times[kind].append(sum(time_step(model, x) for _ in range(args.steps)) / args.steps)
    ms = {kind: 1000 * statistics.median(values) for kind, values in times.items()}
    print(f"forward + backward, batch {args.batch}, {torch.get_num_threads()} threads: window {ms['window']:.1f} "
          f"ms/step, global {ms['global']:.1f} ms/step, global / window = {ms['global'] / ms['window']:.2f}")


if __name__ == "__main__":
    main()
