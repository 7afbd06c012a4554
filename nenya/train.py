"""Train a model from a JSON opts file: ``python -m nenya.train OPTS [key=value ...] [--dry-run] [--resume]``.

Flags and ``key=value`` overrides may come in any order. From Python, ``main`` is Nenya's ``train_main``.
"""

import json
import sys

import torch

from nenya import distributed
from nenya.errors import NenyaError, run_cli
from nenya.io.run_folder import check_run_folder, clear_unfinished_run, make_run_folder, open_log
from nenya.methods import get_method
from nenya.params import get_options, parse_overrides, run_dir
from nenya.train_util import (Run, fit, make_scaler, monitor_of, nenya_loader, nonfinite_count, seed_everything,
                              select_device, set_model, set_optimizer)


def describe_batch(batch) -> str:
    """Shapes and dtypes of a batch, e.g. ``[64, 2, 1, 8, 8] float32, [64] int64``."""
    items = batch if isinstance(batch, (list, tuple)) else [batch]
    return ", ".join(f"{list(item.shape)} {str(item.dtype).removeprefix('torch.')}"
                     for item in items if isinstance(item, torch.Tensor))


def command_line(opts_path: str, overrides: dict) -> str:
    """The ``python -m nenya.train`` command of these options and overrides (for the ``--resume`` hint)."""
    items = [f"{key}={value if isinstance(value, str) and ' ' not in value else json.dumps(value)}"
             for key, value in overrides.items()]
    return " ".join(["python -m nenya.train", opts_path, *items])


def dry_run(opt, model, train_loader, log) -> dict:
    """Print the resolved options, the parameter count and one batch's shapes; train nothing."""
    log(json.dumps(opt.to_dict(), indent=2, sort_keys=True))
    parameters = sum(p.numel() for p in model.parameters())
    log(f"model {opt.model}: {parameters:,} parameters")
    batch = next(iter(train_loader))
    bad = nonfinite_count(batch)
    log(f"one training batch: {describe_batch(batch)}" + (f" with {bad} non-finite values (NaN or inf): training "
                                                           f"on them would stop at a non-finite loss" if bad else ""))
    log(f"run folder would be {run_dir(opt)}")
    return {"parameters": parameters}


def main(opts_path: str, overrides: dict | None = None, debug: bool = False, resume: bool = False,
         dry: bool = False, verbose: bool = True) -> dict:
    """Train (or resume, or dry-run) the run an opts file describes; return its metrics."""
    overrides = dict(overrides or {})
    given = dict(overrides)
    if debug:
        overrides.setdefault("num_workers", 0)
        overrides.setdefault("print_freq", 1)
        overrides.setdefault("debug", True)
    distributed.init(use_cuda=overrides.get("cuda_use", True) is not False)  # under torchrun: join the group
    opt = get_options(opts_path, overrides)
    if opt.experiments is not None:
        raise NenyaError(f"{opts_path}: option 'experiments' lists the experiments of a sweep, which nenya.train "
                         f"does not run; run them with: python -m nenya.sweep {opts_path} (--only NAME for one)")
    seed_everything(opt.seed)
    if opt.deterministic:
        torch.use_deterministic_algorithms(True)
    method = get_method(opt)
    monitor_of(opt, method)  # an unknown monitor is an error before anything is built or written
    train_loader = nenya_loader(opt, valid=False, method=method)
    valid_loader = nenya_loader(opt, valid=True, method=method)
    model, _ = set_model(opt, method=method)
    optimizer = set_optimizer(opt, model)
    device = select_device(opt)
    main_process = distributed.is_main()
    if dry:
        log = open_log(None, verbose and main_process)
        for note in getattr(method, "notes", ()):
            log(note)
        return dry_run(opt, model, train_loader, log)

    folder = run_dir(opt)
    restart = check_run_folder(folder, opt.to_dict(), resume)  # every process checks before any writes
    distributed.barrier()
    if main_process:
        make_run_folder(folder)
    log = open_log(folder if main_process else None, verbose and main_process)
    if restart:  # --resume of a run stopped before its first checkpoint: nothing to lose, start it again
        if main_process:
            clear_unfinished_run(folder)
        log(f"nothing to resume in {folder} (no checkpoint yet): starting the run from the beginning")
        resume = False
    for note in getattr(method, "notes", ()):  # what the method did before the log existed (init_from)
        log(note)
    distributed.barrier()
    run = Run(opt, method, model, optimizer, make_scaler(opt, device), device, train_loader, valid_loader, folder,
              log)
    return fit(run, resume=resume, resume_hint=command_line(opts_path, given))


def cli(argv=None) -> int:
    """Command-line entry point of nenya.train."""
    def add_arguments(parser):
        parser.add_argument("opts", help="JSON opts file (a run folder's opts.json works too)")
        parser.add_argument("overrides", nargs="*", help="key=value overrides, values as JSON (epochs=3)")
        parser.add_argument("--dry-run", action="store_true", help="print options, build model and data, exit")
        parser.add_argument("--resume", action="store_true", help="continue the run from its last.pth")
        parser.add_argument("--debug", action="store_true", help="no workers, a log line every step, debug=true "
                                                                    "(first batch, output shape, loss parts)")

    def run(args):
        main(args.opts, parse_overrides(args.overrides), debug=args.debug, resume=args.resume, dry=args.dry_run)

    return run_cli("nenya.train", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
