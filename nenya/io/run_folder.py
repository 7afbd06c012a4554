"""The run folder: refusing to overwrite another run, opts.json with versions, and the training log."""

import json
import logging
import os
import platform
import subprocess

from nenya.io.atomic import write_json
from nenya.errors import NenyaError

RUN_FILES = ("opts.json", "last.pth", "best.pth", "losses_train.h5", "losses_valid.h5", "metrics.json")
# Options a resumed run may change without becoming a different run.
RESUME_SAFE_KEYS = {"epochs", "print_freq", "num_workers", "save_freq", "valid_freq", "cuda_use", "preload",
                    "data_folder"}


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict:
    """Versions of Python and the packages a run depends on, and nenya's git commit."""
    import h5py
    import numpy
    import torch

    import nenya
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "h5py": h5py.__version__, "nenya": nenya.__version__, "git_commit": _git_commit()}


def read_run_options(folder: str) -> dict | None:
    """The options saved in a run folder's opts.json (without the ``_`` metadata), or None."""
    path = os.path.join(folder, "opts.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            saved = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise NenyaError(f"{path} is not readable JSON ({err}); move it away or choose another run folder") from None
    return {key: value for key, value in saved.items() if not key.startswith("_")}


def check_run_folder(folder: str, options: dict, resume: bool) -> None:
    """Refuse to start over a folder that holds a run (or to resume a different or absent one)."""
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(folder, name))]
    if not resume:
        if present:
            saved = read_run_options(folder)
            what = "this run" if saved == options else "a different run"
            raise NenyaError(f"run folder {folder} already holds {what} ({', '.join(present)}); pass --resume to "
                             f"continue it, or set model_name, trial or model_root to start a new one; "
                             f"nothing was changed")
        return
    if not os.path.isfile(os.path.join(folder, "last.pth")):
        raise NenyaError(f"nothing to resume: {folder} has no last.pth")
    saved = read_run_options(folder)
    if saved is not None:
        differing = sorted(key for key in set(saved) | set(options)
                           if key not in RESUME_SAFE_KEYS and saved.get(key) != options.get(key))
        if differing:
            shown = ", ".join(f"{key}={json.dumps(options.get(key))} (run has {json.dumps(saved.get(key))})"
                              for key in differing[:4])
            raise NenyaError(f"--resume: options differ from the run in {folder}: {shown}")


def write_options(folder: str, options: dict) -> None:
    """Write the resolved options plus versions as opts.json (a file nenya.train accepts back)."""
    write_json(os.path.join(folder, "opts.json"), {**options, "_versions": versions()}, indent=2, sort_keys=True)


def open_log(folder: str | None, verbose: bool = True):
    """A function that prints a line and appends it to ``folder/training.log``."""
    logger = logging.getLogger(f"nenya.run.{folder}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if verbose:
        logger.addHandler(logging.StreamHandler())
    if folder is not None:
        file_handler = logging.FileHandler(os.path.join(folder, "training.log"))
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file_handler)
    return logger.info


def write_metrics(folder, method_name, monitor, best, init_metrics, last_valid, last_train_loss, epoch,
                  about: dict | None = None) -> dict:
    """metrics.json: metrics at initialisation, at the last validation, and the best by the monitored metric."""
    metrics = {"method": method_name, "epochs_completed": epoch, "monitor": monitor[0], "mode": monitor[1],
               "best": best, "init": init_metrics, "final": last_valid, "train_loss_final": last_train_loss}
    if about:
        metrics["about"] = about
    write_json(os.path.join(folder, "metrics.json"), metrics, indent=2)
    return metrics
