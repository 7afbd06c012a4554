"""Early stopping on the monitored metric: ``early_stopping_patience`` epochs without an improvement of
more than ``min_delta`` end the run."""


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) by more than ``min_delta`` under ``mode`` ('min'/'max')."""
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStopping:
    """Watches the monitored metric at each validation; ``update`` says when the run should stop.

    An improvement is a value below ``best - min_delta`` ('min') or above ``best + min_delta`` ('max');
    the run stops at the first validation at least ``patience`` epochs after the last improvement (so
    with ``valid_freq`` 1, after ``patience`` epochs in a row without one). The first value is always an
    improvement. ``patience`` None: never stops. The state is plain values, saved in the checkpoint.
    """

    def __init__(self, patience: int | None, min_delta: float, mode: str):
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None

    def update(self, value: float, epoch: int) -> bool:
        """Record the value validated after ``epoch``; True when the run should stop now."""
        if self.patience is None:
            return False
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = float(value), epoch
            return False
        if epoch - self.best_epoch >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def reason(self, metric: str) -> str:
        """Why the run stopped, for the log and metrics.json."""
        return (f"early stopping after epoch {self.stopped_epoch}: {metric} has not improved by more than "
                f"min_delta={self.min_delta:g} for {self.stopped_epoch - self.best_epoch} epochs "
                f"(early_stopping_patience {self.patience}; best {self.best:.6g} at epoch {self.best_epoch})")

    def state_dict(self) -> dict:
        """The counters, as plain values."""
        return {"best": self.best, "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s values."""
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self.stopped_epoch = state.get("stopped_epoch")
