"""The run folder: refusing to overwrite another run, opts.json with versions, and the training log."""

import json
import logging
import os
import platform
import shutil
import subprocess

from nenya.errors import NenyaError
from nenya.io.atomic import atomic_path, remove_temporaries, write_json
from nenya.io.checkpoints import load_checkpoint

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


def checkpoint_files(folder: str) -> list[str]:
    """Names of the checkpoints (``*.pth``) in a run folder, sorted."""
    return sorted(name for name in os.listdir(folder) if name.endswith(".pth")) if os.path.isdir(folder) else []


def check_run_folder(folder: str, options: dict, resume: bool) -> bool:
    """Refuse to start over a folder that holds a run (or to resume a different or absent one).

    Returns True when ``resume`` is asked for a folder that holds no checkpoint yet (a run stopped
    before its first last.pth): that run starts again from the beginning.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NenyaError(f"run folder {folder} is a file, not a folder; set model_root or model_name to a folder")
    checkpoints = checkpoint_files(folder)
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(folder, name))]
    present += [name for name in checkpoints if name not in present]
    if not resume:
        if present and not checkpoints:
            raise NenyaError(f"run folder {folder} holds a run that stopped before its first checkpoint "
                             f"({', '.join(present)}); pass --resume to start it again from the beginning, or set "
                             f"model_name, trial or model_root to start a new one; nothing was changed")
        if present:
            saved = read_run_options(folder)
            what = "this run" if saved == options else "a different run"
            raise NenyaError(f"run folder {folder} already holds {what} ({', '.join(present)}); pass --resume to "
                             f"continue it, or set model_name, trial or model_root to start a new one; "
                             f"nothing was changed")
        return False
    if not os.path.isdir(folder):
        raise NenyaError(f"nothing to resume: {folder} does not exist (it has no last.pth); check model_root, "
                         f"model_name and trial, or start the run without --resume")
    if "last.pth" not in checkpoints:
        if checkpoints:
            raise NenyaError(f"cannot resume {folder}: it has no last.pth but holds {', '.join(checkpoints)}; "
                             f"move them away to start the run again, or copy the one to continue from to last.pth")
        return True
    saved = read_run_options(folder)
    if saved is not None:
        differing = sorted(key for key in set(saved) | set(options)
                           if key not in RESUME_SAFE_KEYS and saved.get(key) != options.get(key))
        if differing:
            shown = ", ".join(f"{key}={json.dumps(options.get(key))} (run has {json.dumps(saved.get(key))})"
                              for key in differing[:4])
            raise NenyaError(f"--resume: options differ from the run in {folder}: {shown}")
    return False


def clear_unfinished_run(folder: str) -> list[str]:
    """Before a run with no checkpoint starts again: remove its curves, TensorBoard events and temporary files."""
    removed = remove_temporaries(folder)
    for name in ("losses_train.h5", "losses_valid.h5", "metrics.json", "tb"):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path):
            os.remove(path)
        else:
            continue
        removed.append(path)
    return removed


def make_run_folder(folder: str) -> None:
    """Create the run folder; a read-only or non-folder model_root is a NenyaError naming it."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, "nenya_write_test.tmp")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise NenyaError(f"cannot create or write the run folder {folder} ({reason}); set model_root to a "
                         f"writable folder") from None


def _epoch_of(path: str) -> int | None:
    """The epoch stored in a checkpoint, or None when it is missing or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        return load_checkpoint(path).get("epoch")
    except NenyaError:
        return None


def _copy_checkpoint(source: str, target: str) -> None:
    """Copy a checkpoint atomically (temp file, fsync, rename)."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())


def repair_checkpoints(folder: str, state: dict, save_freq: int) -> list[str]:
    """After a kill: remove temporary files; restore best.pth and ckpt_epoch_N.pth when they are last.pth.

    ``state`` is the checkpoint in last.pth. Returns one line per thing done or found, for the log.
    """
    notes = [f"removed {os.path.relpath(path, folder)} (left by an interrupted write)"
             for path in remove_temporaries(folder)]
    last, epoch = os.path.join(folder, "last.pth"), state["epoch"]
    best_epoch = (state.get("best") or {}).get("epoch")
    best = os.path.join(folder, "best.pth")
    if best_epoch is not None and _epoch_of(best) != best_epoch:
        if best_epoch == epoch:
            _copy_checkpoint(last, best)
            notes.append(f"best.pth restored from last.pth (epoch {epoch} is the best epoch)")
        else:
            held = _epoch_of(best)
            notes.append(f"warning: best.pth {'is missing' if held is None else f'holds epoch {held}'} but the best "
                         f"epoch was {best_epoch}; it cannot be restored, and --checkpoint best will use "
                         f"{'last.pth' if held is None else 'it'} until a better epoch is saved")
    numbered = os.path.join(folder, f"ckpt_epoch_{epoch}.pth")
    if epoch % save_freq == 0 and not os.path.isfile(numbered):
        _copy_checkpoint(last, numbered)
        notes.append(f"ckpt_epoch_{epoch}.pth restored from last.pth")
    return notes


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
        file_handler = logging.FileHandler(os.path.join(folder, "training.log"), delay=True)  # no empty log
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file_handler)
    return logger.info


def write_metrics(folder, method_name, monitor, best, init_metrics, last_valid, last_train_loss, epoch,
                  about: dict | None = None, write: bool = True, stopped_early: str | None = None) -> dict:
    """metrics.json (written unless ``write`` is off): metrics at initialisation, at the last validation, and
    the best by the monitored metric; ``stopped_early``: why early stopping ended the run (absent when it ran
    all its epochs)."""
    metrics = {"method": method_name, "epochs_completed": epoch, "monitor": monitor[0], "mode": monitor[1],
               "best": best, "init": init_metrics, "final": last_valid, "train_loss_final": last_train_loss}
    if stopped_early:
        metrics["stopped_early"] = stopped_early
    if about:
        metrics["about"] = about
    if write:
        write_json(os.path.join(folder, "metrics.json"), metrics, indent=2)
    return metrics
