"""Checkpoints: tensors and plain values only, written atomically, read with weights_only=True; resume state."""

import os
import pickle
import random
import re

import numpy as np
import torch

from nenya.io.atomic import atomic_path
from nenya.errors import NenyaError


def rng_state() -> dict:
    """Every random generator's state, as tensors and plain values."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: temp file, fsync, rename."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _reason(err: Exception) -> str:
    """A short reason from torch's load error, without its advice to load with weights_only=False."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines if "weights_only" not in line and "Weights only" not in line
              and "WeightsUnpickler error" not in line and not line.startswith(("Check the documentation",
                                                                                "Please file an issue"))]
    return detail[0].split(". ")[0].rstrip(".") if detail else type(err).__name__


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint with weights_only=True; a missing, corrupt or code-carrying file is a NenyaError."""
    if not os.path.isfile(path):
        raise NenyaError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused:  # the file names Python code to run: say so, never suggest weights_only=False
            raise NenyaError(f"checkpoint {path} is not a nenya checkpoint: it holds pickled Python objects "
                             f"({refused.group(0)}), which nenya does not run; nenya checkpoints hold only tensors "
                             f"and plain values") from None
        raise NenyaError(f"checkpoint {path} is corrupt or not a nenya checkpoint ({_reason(err)})") from None
    except Exception as err:  # torch raises many types for a damaged file
        raise NenyaError(f"checkpoint {path} is corrupt or not a nenya checkpoint ({_reason(err)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise NenyaError(f"checkpoint {path} is not a nenya checkpoint (no 'model' entry)")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Load weights strictly; a mismatch is a NenyaError that says which tensors do not fit."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    wrong_shape = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
                   for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise NenyaError(f"checkpoint {path} does not fit the model {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state_dict)


def checkpoint_state(model, optimizer, scaler, epoch: int, step: int, opt, best: dict, init_metrics: dict,
                     final: dict | None = None, train_loss: float | None = None, *, scheduler=None, ema=None,
                     stopping=None) -> dict:
    """Everything a resumed run needs, as tensors and plain values (the bare model, not its wrapper).

    ``final`` and ``train_loss``: the latest validation metrics and training loss, for metrics.json;
    ``scheduler`` (plateau), ``ema`` (a ModelEMA) and ``stopping`` (EarlyStopping): their state_dicts.
    """
    bare = getattr(model, "module", model)
    return {"model": bare.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "ema": ema.state_dict() if ema is not None else None,
            "early_stopping": stopping.state_dict() if stopping is not None else None,
            "epoch": epoch, "step": step, "best": best, "init_metrics": init_metrics, "rng": rng_state(),
            "opts": opt.to_dict(), "final": final, "train_loss": train_loss}


def inference_weights(state: dict) -> dict:
    """The weights a checkpoint is evaluated with: the EMA's when it holds one, else ``model``."""
    ema = state.get("ema")
    if not ema:
        return state["model"]
    return {key.removeprefix("module."): value for key, value in ema.items() if key.startswith("module.")}


def restore_training_state(path: str, model, optimizer, scaler, optimizer_name: str,
                           steps_per_epoch: int, *, scheduler=None, ema=None, stopping=None) -> dict:
    """Load model, optimizer, scaler and RNG states from the checkpoint at ``path``; return the checkpoint.

    A checkpoint written by ``nenya.util.save_model`` (model, optimizer, epoch) resumes too: its step
    count is taken as epoch x steps_per_epoch; without saved RNG states the run still draws what it
    would have, since the loop reseeds every generator from (seed, epoch) at the start of each epoch.
    """
    state = load_checkpoint(path)
    missing = [key for key in ("optimizer", "epoch") if key not in state]
    if missing:
        raise NenyaError(f"checkpoint {path} cannot be resumed: it lacks {', '.join(missing)}")
    load_model_state(getattr(model, "module", model), state["model"], path)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise NenyaError(f"checkpoint {path}: its optimizer state does not fit optimizer "
                         f"'{optimizer_name}' ({err})") from None
    if state.get("scaler") and scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        if not state.get("ema"):
            raise NenyaError(f"checkpoint {path} holds no EMA of the weights but ema_decay is set; resume it with "
                             f"the options it was trained with")
        load_model_state(ema, state["ema"], path)
    if stopping is not None and state.get("early_stopping"):
        stopping.load_state_dict(state["early_stopping"])
    if state.get("rng") is not None:
        set_rng_state(state["rng"])
    state.setdefault("step", state["epoch"] * steps_per_epoch)
    return state
