"""Metrics of a trained run on a data set: ``python -m nenya.evaluate RUN_DIR [--data FILE] [--key KEY] [key=value]``.

``key=value`` overrides change the run's options for this evaluation only (e.g. ``roi_size=[64,64]``);
``--save-masks``, ``--tta``, ``--roi-size`` and ``--overlap`` are segmentation's (save_masks, tta,
roi_size, sw_overlap).

Writes ``eval_metrics.json`` (the metrics, and which run, data, key and checkpoint) and the method's
figures into ``--out`` (default ``RUN_DIR/eval``); an existing ``eval_metrics.json`` is kept unless
``--overwrite`` is given.
"""

import os
import sys
import warnings

import torch

from nenya.errors import NenyaError, run_cli
from nenya.io.atomic import write_json
from nenya.io.checkpoints import inference_weights, load_checkpoint, load_model_state
from nenya.io.run_folder import read_run_options
from nenya.methods import get_method
from nenya.params import Params, option_preprocess, parse_overrides
from nenya.train_util import data_name, evaluation_pass, seed_everything, select_device

METRICS_FILE = "eval_metrics.json"


def checkpoint_file(folder: str, checkpoint: str, warn: bool = False) -> str:
    """The checkpoint file ``load_run`` reads for ``checkpoint`` ('best' falls back to last.pth, with a warning)."""
    name = checkpoint if checkpoint.endswith(".pth") else f"{checkpoint}.pth"
    path = os.path.join(folder, name)
    if checkpoint == "best" and not os.path.isfile(path):
        path = os.path.join(folder, "last.pth")
        if warn and os.path.isfile(path):
            warnings.warn(f"{folder} has no best.pth (no validation improved yet, or it was lost); using last.pth "
                          f"instead (--checkpoint best)")
    return path


def load_run(folder: str, checkpoint: str = "best", overrides: dict | None = None):
    """(options, method, model in eval mode on the CPU) of a run; checkpoint is 'best', 'last' or a file name.

    ``overrides`` replace options of the run (those evaluation reads, such as sliding-window inference).
    """
    options = read_run_options(folder)
    if options is None:
        raise NenyaError(f"{folder} is not a nenya run folder (it has no opts.json)")
    options.update(overrides or {})
    opt = option_preprocess(Params(options, source_name=os.path.join(folder, "opts.json"), warn_unused=False))
    path = checkpoint_file(folder, checkpoint, warn=True)
    method = get_method(opt)
    method.load_init = False  # init_from only starts training; the run's own checkpoint is loaded next
    model = method.build_model()
    load_model_state(model, inference_weights(load_checkpoint(path)), path)
    return opt, method, model.eval()


def _describe(dataset, data, key):
    """(data file, key or split) of the data set that was evaluated, for the record."""
    path = getattr(dataset, "path", data)
    if hasattr(dataset, "split"):  # cubes listed in a CSV: the split names them
        return path, dataset.split
    return path, getattr(dataset, "key", key)


def evaluate_run(folder: str, data: str | None = None, key: str | None = None, checkpoint: str = "best",
                 out: str | None = None, overwrite: bool = False, overrides: dict | None = None) -> dict:
    """Evaluate a run's checkpoint on ``data``/``key`` (default: its own validation data); return the record."""
    out = out if out is not None else os.path.join(folder, "eval")
    if os.path.exists(out) and not os.path.isdir(out):
        raise NenyaError(f"--out {out} is a file; give a folder for {METRICS_FILE} and the figures")
    metrics_path = os.path.join(out, METRICS_FILE)
    if os.path.exists(metrics_path) and not overwrite:
        raise NenyaError(f"{metrics_path} already exists; choose another --out folder or pass --overwrite")
    if data is not None and not os.path.isfile(data):
        raise NenyaError(f"data file {data} does not exist (--data)")
    opt, method, model = load_run(folder, checkpoint, overrides)
    device = select_device(opt)
    model = model.to(device)
    dataset = method.eval_dataset(data, key)
    if len(dataset) == 0:
        raise NenyaError(f"{data_name(dataset)} holds 0 images; nothing to evaluate (choose another --data or --key)")
    seed_everything(opt.seed)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise NenyaError(f"cannot create the --out folder {out} ({err.strerror or err})") from None

    def run(data, step, desc="evaluate"):
        return evaluation_pass(data, model, step, device, opt, desc)

    metrics = method.evaluation(model, run, dataset, out)
    data_path, data_key = _describe(dataset, data, key)
    record = {"metrics": metrics, "run": os.path.abspath(folder), "method": opt.method,
              "data": os.path.abspath(data_path) if data_path else None, "key": data_key,
              "checkpoint": checkpoint, "checkpoint_file": os.path.abspath(checkpoint_file(folder, checkpoint)),
              "items": len(dataset), **({"overrides": overrides} if overrides else {}),
              **({"about": method.describe()} if method.describe() else {})}
    write_json(metrics_path, record, indent=2)
    return record


def cli(argv=None) -> int:
    """Command-line entry point of nenya.evaluate."""
    def add_arguments(parser):
        parser.add_argument("run", help="run folder (model_root/model_name)")
        parser.add_argument("--data", help="HDF5 file in Nenya's layout (default: the run's own data)")
        parser.add_argument("--key", help="dataset in the data file (default: the run's valid_key; with the "
                                          "run's own data_csv, the split, default valid_split)")
        parser.add_argument("--checkpoint", default="best", help="best, last or a .pth file in the run folder")
        parser.add_argument("--out", help="folder for eval_metrics.json and figures (default: RUN_DIR/eval)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing eval_metrics.json")
        parser.add_argument("overrides", nargs="*", help="key=value option overrides for this evaluation")
        parser.add_argument("--save-masks", action="store_true", help="segment: predicted masks to OUT/masks.h5")
        parser.add_argument("--tta", action="store_true", help="segment: flip test-time augmentation")
        parser.add_argument("--roi-size", type=int, nargs="+", help="segment: sliding-window size (one or per axis)")
        parser.add_argument("--overlap", type=float, help="segment: sliding-window overlap (default 0.25)")

    def run(args):
        overrides = parse_overrides(args.overrides)
        flags = {"save_masks": args.save_masks or None, "tta": args.tta or None, "roi_size": args.roi_size,
                 "sw_overlap": args.overlap}
        overrides.update({key: value for key, value in flags.items() if value is not None})
        with torch.no_grad():
            record = evaluate_run(args.run, args.data, args.key, args.checkpoint, args.out, args.overwrite, overrides)
        for name, value in record["metrics"].items():
            print(f"{name} {value:.6g}")
        out = args.out if args.out is not None else os.path.join(args.run, "eval")
        print(f"wrote {os.path.join(out, METRICS_FILE)}")

    return run_cli("nenya.evaluate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
