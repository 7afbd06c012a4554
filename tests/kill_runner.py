"""Run ``python -m nenya.train`` and stop it for real at a chosen moment: ``kill_runner.py MOMENT N SIGNAL -- ARGS``.

MOMENT names a function of the training run; at its N-th call the process sends itself SIGNAL (KILL or TERM):

* ``validate``: entering a validation (the first is the one at initialisation, before any checkpoint);
* ``step``: a training step, after the loss and before backward;
* ``save:NAME``: writing checkpoint NAME (``last.pth``, ``best.pth``, ``ckpt_epoch_2.pth``), once its
  temporary file holds the data and before the rename;
* ``curves``: in the middle of appending an epoch to a curves file (its temporary copy half written);
* ``figure``: writing a PNG, once the temporary file holds the picture and before the rename.

Used by tests/test_kill_resume.py; everything else is the real command line (``nenya.train.cli``).
"""

import os
import signal
import sys

import matplotlib.figure
import torch

import nenya.io.curves
import nenya.train_util
from nenya.train import cli


def stop_at(count: int, signum: int):
    """A function that sends ``signum`` to this process at its ``count``-th call."""
    calls = {"n": 0}

    def maybe_stop():
        calls["n"] += 1
        if calls["n"] == count:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signum)

    return maybe_stop


def wrap(owner, name: str, before=None, after=None, when=lambda *args, **kwargs: True):
    """Replace ``owner.name`` by a call of the original with ``before()`` / ``after()`` around it (when ``when``)."""
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        hit = when(*args, **kwargs)
        if hit and before:
            before()
        result = real(*args, **kwargs)
        if hit and after:
            after()
        return result

    setattr(owner, name, wrapped)


def install(moment: str, count: int, signum: int) -> None:
    """Arrange for ``signum`` at the ``count``-th occurrence of ``moment``."""
    stop = stop_at(count, signum)
    if moment == "validate":
        wrap(nenya.train_util, "validate", before=stop)
    elif moment == "step":
        wrap(nenya.train_util, "check_finite_loss", after=stop)
    elif moment.startswith("save:"):
        name = moment.split(":", 1)[1]
        real_save = torch.save

        def save(state, handle, *args, **kwargs):  # save_checkpoint writes the temporary file with torch.save
            real_save(state, handle, *args, **kwargs)
            if os.path.basename(getattr(handle, "name", "")) == f"{name}.tmp":
                handle.flush()
                stop()

        torch.save = save
    elif moment == "curves":
        real_append = nenya.io.curves._append

        def append(handle, *args, **kwargs):
            real_append(handle, *args, **kwargs)
            handle.flush()
            stop()

        nenya.io.curves._append = append
    elif moment == "figure":
        wrap(matplotlib.figure.Figure, "savefig", after=stop)
    else:
        raise SystemExit(f"unknown moment {moment}")


if __name__ == "__main__":
    moment, count, signame, separator, *argv = sys.argv[1:]
    assert separator == "--", sys.argv
    install(moment, int(count), getattr(signal, f"SIG{signame}"))
    sys.exit(cli(argv))
