"""Start a model from another run's encoder (``init_from``): which checkpoint, which tensors, what fits."""

import os

from torch import nn

from nenya.errors import NenyaError
from nenya.io.checkpoints import load_checkpoint

ENCODER_PREFIXES = ("backbone.encoder.", "encoder.")  # a classify run's encoder, an SSL run's encoder


def checkpoint_of(source: str) -> str:
    """The checkpoint ``init_from`` names: a .pth file, or a run folder's best.pth (else its last.pth)."""
    if os.path.isdir(source):
        for name in ("best.pth", "last.pth"):
            if os.path.isfile(os.path.join(source, name)):
                return os.path.join(source, name)
        raise NenyaError(f"option 'init_from' is the folder {source}, which holds neither best.pth nor last.pth; "
                         f"give a nenya run folder or a .pth checkpoint")
    if not os.path.isfile(source):
        raise NenyaError(f"option 'init_from' is {source}, which does not exist; give a nenya run folder or a "
                         f".pth checkpoint")
    return source


def encoder_weights(state_dict: dict) -> dict:
    """The encoder's tensors of a nenya model state (``encoder.*`` of an SSL run, ``backbone.encoder.*`` of a
    classify run), named as inside the encoder; the projection head, probe and classifier are left out."""
    for prefix in ENCODER_PREFIXES:
        found = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        if found:
            return found
    return {}


def _first(names, count: int = 3) -> str:
    """Up to ``count`` names, and how many more."""
    names = list(names)
    return ", ".join(names[:count]) + (f" (+{len(names) - count} more)" if len(names) > count else "")


def load_encoder(encoder: nn.Module, source: str, model_name: str) -> list[str]:
    """Load the encoder weights of the run or checkpoint ``source`` into ``encoder``; return the log lines.

    A checkpoint of another model (its options name another one, or a tensor's shape differs, or it has
    no encoder tensor that this encoder has) is a NenyaError; missing and unexpected names are reported.
    """
    path = checkpoint_of(source)
    state = load_checkpoint(path)  # weights_only=True
    theirs = (state.get("opts") or {}).get("model")
    if theirs is not None and theirs != model_name:
        raise NenyaError(f"init_from {path} holds a '{theirs}' model but this run's model is '{model_name}'; "
                         f"fine-tune with model '{theirs}', or pre-train a '{model_name}'")
    weights = encoder_weights(state["model"])
    own = encoder.state_dict()
    wrong = [f"{key} {tuple(weights[key].shape)} vs {tuple(own[key].shape)}"
             for key in own if key in weights and weights[key].shape != own[key].shape]
    loaded = [key for key in own if key in weights and weights[key].shape == own[key].shape]
    if wrong or not loaded:
        detail = f"shapes differ: {_first(wrong)}" if wrong else \
            f"it has no encoder tensor this model has (expected names like {_first(own, 2)})"
        raise NenyaError(f"init_from {path} does not fit model '{model_name}' (another architecture or size): "
                         f"{detail}")
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    encoder.load_state_dict({key: weights[key] for key in loaded}, strict=False)
    notes = [f"init_from {path}: loaded {len(loaded)} encoder tensors (projection head, probe and classifier "
             f"not loaded)"]
    notes.append(f"init_from: missing {len(missing)}" + (f": {_first(missing)}" if missing else "") +
                 f"; unexpected {len(unexpected)}" + (f": {_first(unexpected)}" if unexpected else ""))
    return notes
