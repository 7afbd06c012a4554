"""Time per step of nenya's train_model against a bare PyTorch loop over the same model, optimizer and data.

Run: python benchmarks/loop_overhead.py [--steps 30] [--repeats 5] [--size 8] [--batch 32]
Prints both times and their ratio (target: <= 1.05), measured side by side in one run.
"""

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from nenya.methods.contrastive import SimCLR
from nenya.params import Params, option_preprocess
from nenya.train_util import set_optimizer, train_model


def bare_epoch(loader, model, criterion, optimizer) -> None:
    """The loop a user would write by hand: forward, loss, backward, step."""
    model.train()
    for views, _ in loader:
        features = model(views.flatten(0, 1)).view(views.shape[0], views.shape[1], -1)
        loss = criterion(features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    """Alternate bare and nenya epochs; report the median time per step of each and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each loop")
    parser.add_argument("--size", type=int, default=8, help="image size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()

    torch.manual_seed(0)
    opt = option_preprocess(Params({"ssl_model": args.model, "nchannels": 1, "epochs": 1,
                                      "batch_size_train": args.batch, "print_freq": 10}))
    method = SimCLR(opt)
    model = method.build_model()
    optimizer = set_optimizer(opt, model)
    views = torch.rand(args.steps * args.batch, 2, 1, args.size, args.size)
    loader = DataLoader(TensorDataset(views, torch.zeros(len(views), dtype=torch.long)), batch_size=args.batch)
    device = torch.device("cpu")

    bare_epoch(loader, model, method.criterion, optimizer)  # warm-up of both paths
    train_model(loader, model, method, optimizer, 1, opt, device)
    times = {"bare": [], "nenya": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        bare_epoch(loader, model, method.criterion, optimizer)
        times["bare"].append((time.perf_counter() - start) / args.steps)
        start = time.perf_counter()
        train_model(loader, model, method, optimizer, 1, opt, device)
        times["nenya"].append((time.perf_counter() - start) / args.steps)
    bare, nenya = statistics.median(times["bare"]), statistics.median(times["nenya"])
    print(f"model {args.model}, {args.size}x{args.size} images, batch {args.batch} x 2 views, "
          f"{args.steps} steps x {args.repeats} repeats, {torch.get_num_threads()} threads")
    print(f"bare loop:   {bare * 1e3:8.2f} ms/step")
    print(f"train_model: {nenya * 1e3:8.2f} ms/step")
    print(f"ratio train_model / bare: {nenya / bare:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
