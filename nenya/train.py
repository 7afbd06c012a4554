"""Train a model from a JSON opts file: ``python -m nenya.train OPTS [key=value ...] [--dry-run] [--resume]``."""

import json
import os
import random
import sys

import numpy as np
import torch

from nenya import curves
from nenya.atomic import write_json
from nenya.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from nenya.cli import run_cli
from nenya.errors import NenyaError
from nenya.methods import get_method
from nenya.model_utils import unwrap
from nenya.params import get_options, run_dir
from nenya.plots import training_plots
from nenya.run_folder import check_run_folder, open_log, write_options
from nenya.train_util import (adjust_learning_rate, make_scaler, nenya_loader, select_device, set_model,
                              set_optimizer, train_model, validate)

HIGHER_IS_BETTER = ("acc", "dice", "iou", "psnr", "ssim", "f1", "auc")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every generator is reset to at the start of ``epoch`` (so a resumed run draws the same)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def monitor_of(opt, method) -> tuple[str, str]:
    """(metric that picks best.pth, 'min' or 'max')."""
    name = opt.monitor or method.monitor[0]
    if name == method.monitor[0]:
        return name, method.monitor[1]
    return name, "max" if any(part in name for part in HIGHER_IS_BETTER) else "min"


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` under ``mode``."""
    return best is None or (value > best if mode == "max" else value < best)


def describe_batch(batch) -> str:
    """Shapes and dtypes of a batch, e.g. ``[64, 2, 1, 8, 8] float32, [64] int64``."""
    items = batch if isinstance(batch, (list, tuple)) else [batch]
    return ", ".join(f"{list(item.shape)} {str(item.dtype).removeprefix('torch.')}"
                     for item in items if isinstance(item, torch.Tensor))


def dry_run(opt, model, train_loader, log) -> dict:
    """Print the resolved options, the parameter count and one batch's shapes; train nothing."""
    log(json.dumps(opt.to_dict(), indent=2, sort_keys=True))
    parameters = sum(p.numel() for p in model.parameters())
    log(f"model {opt.ssl_model}: {parameters:,} parameters")
    log(f"one training batch: {describe_batch(next(iter(train_loader)))}")
    log(f"run folder would be {run_dir(opt)}")
    return {"parameters": parameters}


def checkpoint_state(model, optimizer, scaler, epoch, step, opt, best, init_metrics) -> dict:
    """Everything a resumed run needs, as tensors and plain values."""
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": {},
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "ema": None, "epoch": epoch,
            "step": step, "best": best,
            "init_metrics": init_metrics, "rng": rng_state(), "opts": opt.to_dict()}


def write_metrics(folder, method_name, monitor, best, init_metrics, last_valid, last_train_loss, epoch) -> dict:
    """metrics.json: metrics at initialisation, at the last validation, and the best by the monitored metric."""
    metrics = {"method": method_name, "epochs_completed": epoch, "monitor": monitor[0], "mode": monitor[1],
               "best": best, "init": init_metrics, "final": last_valid, "train_loss_final": last_train_loss}
    write_json(os.path.join(folder, "metrics.json"), metrics, indent=2)
    return metrics


def main(opts_path: str, overrides: dict | None = None, debug: bool = False, resume: bool = False,
         dry: bool = False, verbose: bool = True) -> dict:
    """Train (or resume, or dry-run) the run an opts file describes; return its metrics."""
    overrides = dict(overrides or {})
    if debug:
        overrides.setdefault("num_workers", 0)
        overrides.setdefault("print_freq", 1)
    opt = get_options(opts_path, overrides)
    seed_everything(opt.seed)
    if opt.deterministic:
        torch.use_deterministic_algorithms(True)
    method = get_method(opt)
    train_set, valid_set = method.build_datasets()
    if opt.overfit_batches:
        train_set = torch.utils.data.Subset(train_set, range(min(len(train_set),
                                                                 opt.overfit_batches * opt.batch_size_train)))
        valid_set = train_set
    model = method.build_model()
    device = select_device(opt)
    model = set_model(model, device)
    optimizer = set_optimizer(opt, model)
    scaler = make_scaler(opt, device)
    train_loader = nenya_loader(train_set, opt.batch_size_train, True, opt.num_workers, drop_last=True)
    valid_loader = nenya_loader(valid_set, opt.batch_size_valid, False, opt.num_workers) if valid_set else None
    if dry:
        return dry_run(opt, model, train_loader, open_log(None, verbose))

    folder = run_dir(opt)
    check_run_folder(folder, opt.to_dict(), resume)
    os.makedirs(folder, exist_ok=True)
    log = open_log(folder, verbose)
    monitor = monitor_of(opt, method)
    train_h5, valid_h5 = os.path.join(folder, "losses_train.h5"), os.path.join(folder, "losses_valid.h5")
    start_epoch, step, best, init_metrics = 1, 0, {"metric": monitor[0], "value": None, "epoch": None}, {}
    if resume:
        path = os.path.join(folder, "last.pth")
        state = load_checkpoint(path)
        missing = [key for key in ("optimizer", "epoch", "step", "best", "init_metrics", "rng") if key not in state]
        if missing:
            raise NenyaError(f"checkpoint {path} cannot be resumed: it lacks {', '.join(missing)}")
        load_model_state(unwrap(model), state["model"], path)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise NenyaError(f"checkpoint {path}: its optimizer state does not fit optimizer "
                             f"'{opt.optimizer}' ({err})") from None
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, step, best, init_metrics = state["epoch"] + 1, state["step"], state["best"], state["init_metrics"]
        for path in (train_h5, valid_h5):
            curves.truncate_after(path, state["epoch"])
        log(f"resuming {folder} after epoch {state['epoch']}")
    write_options(folder, opt.to_dict())
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(os.path.join(folder, "tb"), purge_step=step if resume else None)
    log(f"training {opt.ssl_method} / {opt.ssl_model} on {device} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) into {folder}")

    if start_epoch == 1 and valid_loader is not None:
        init_metrics = validate(valid_loader, model, method, device, opt)["metrics"]
        curves.append_epoch(valid_h5, 0, {f"{k}_valid": v for k, v in init_metrics.items()})
        log("at initialisation: " + ", ".join(f"{k} {v:.4f}" for k, v in init_metrics.items()))

    last_valid, last_train_loss = dict(init_metrics), None
    try:
        for epoch in range(start_epoch, opt.epochs + 1):
            seed = epoch_seed(opt.seed, epoch)
            seed_everything(seed)
            train_loader.generator.manual_seed(seed)
            adjust_learning_rate(opt, optimizer, epoch)
            result = train_model(train_loader, model, method, optimizer, epoch, opt, device, log, writer, step,
                                 scaler)
            step += result["steps"]
            lr = optimizer.param_groups[0]["lr"]
            last_train_loss = result["loss"]
            scalars = {"loss_train": result["loss"], "lr": lr,
                       **{f"{k}_train": v for k, v in result["extras"].items()}}
            curves.append_epoch(train_h5, epoch, scalars,
                                {"loss_step_train": result["loss_step"], "loss_avg_train": result["loss_avg"]})
            writer.add_scalar("loss/train", result["loss"], epoch)
            writer.add_scalar("lr", lr, epoch)
            summary = f"epoch {epoch}/{opt.epochs}: train loss {result['loss']:.4f}, lr {lr:.5g}"

            improved = False
            if valid_loader is not None and (epoch % opt.valid_freq == 0 or epoch == opt.epochs):
                valid = validate(valid_loader, model, method, device, opt)
                last_valid = valid["metrics"]
                curves.append_epoch(valid_h5, epoch, {f"{k}_valid": v for k, v in last_valid.items()},
                                    {"loss_step_valid": valid["loss_step"], "loss_avg_valid": valid["loss_avg"]})
                for name, value in last_valid.items():
                    writer.add_scalar(f"{name}/valid", value, epoch)
                summary += ", valid " + ", ".join(f"{k} {v:.4f}" for k, v in last_valid.items())
                value = last_valid.get(monitor[0])
                if value is not None and is_better(value, best["value"], monitor[1]):
                    best, improved = {"metric": monitor[0], "value": value, "epoch": epoch}, True
                method.figures(model, device, os.path.join(folder, "figures"), epoch)
            elif valid_loader is None and is_better(result["loss"], best["value"], "min"):
                best, improved = {"metric": "loss_train", "value": result["loss"], "epoch": epoch}, True

            state = checkpoint_state(model, optimizer, scaler, epoch, step, opt, best, init_metrics)
            save_checkpoint(os.path.join(folder, "last.pth"), state)
            if improved:
                save_checkpoint(os.path.join(folder, "best.pth"), state)
            if epoch % opt.save_freq == 0:
                save_checkpoint(os.path.join(folder, f"ckpt_epoch_{epoch}.pth"), state)
            log(summary)
            writer.flush()
    except KeyboardInterrupt:
        log(f"interrupted; continue with: python -m nenya.train {opts_path} --resume")
        raise
    finally:
        writer.close()
    if os.path.isfile(train_h5):
        training_plots(folder)
    metrics = write_metrics(folder, opt.ssl_method, monitor, best, init_metrics, last_valid, last_train_loss,
                            opt.epochs)
    log(f"done: best {best['metric']} {best['value']} at epoch {best['epoch']}; files in {folder}")
    return metrics


def cli(argv=None) -> int:
    """Command-line entry point of nenya.train."""
    def add_arguments(parser):
        parser.add_argument("opts", help="JSON opts file (a run folder's opts.json works too)")
        parser.add_argument("overrides", nargs="*", help="key=value overrides, values as JSON (epochs=3)")
        parser.add_argument("--dry-run", action="store_true", help="print options, build model and data, exit")
        parser.add_argument("--resume", action="store_true", help="continue the run from its last.pth")
        parser.add_argument("--debug", action="store_true", help="no workers, a log line every step")

    def run(args):
        from nenya.params import parse_overrides
        main(args.opts, parse_overrides(args.overrides), debug=args.debug, resume=args.resume, dry=args.dry_run)

    return run_cli("nenya.train", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
