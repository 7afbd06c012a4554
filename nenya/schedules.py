"""The plateau schedule: torch's ReduceLROnPlateau on the monitored validation value, and its place in the loop.

With ``schedule: "plateau"`` the rate starts at ``learning_rate`` (reached through Nenya's warm-up when
``warm`` is on) and is multiplied by ``plateau_factor`` (never below ``plateau_min_lr``) whenever the
monitored metric has not improved for more than ``plateau_patience`` validations (torch's default
relative threshold of 1e-4). The scheduler steps once per validation, after the warm-up epochs, on
the metric that picks best.pth (the training loss when there is no validation data); the rate it
sets lives in the optimizer's parameter groups and its counters in the checkpoint's ``scheduler``
entry, so a resumed run continues exactly.
"""

from torch.optim.lr_scheduler import ReduceLROnPlateau


def make_plateau(opt, optimizer, mode: str) -> ReduceLROnPlateau | None:
    """The plateau scheduler of ``optimizer`` (``mode`` 'min' or 'max'), or None for the other schedules."""
    if opt.schedule != "plateau":
        return None
    return ReduceLROnPlateau(optimizer, mode=mode, factor=opt.plateau_factor, patience=opt.plateau_patience,
                             min_lr=opt.plateau_min_lr)


def plateau_epoch_rate(opt, epoch: int) -> float | None:
    """The rate a plateau run sets at the start of ``epoch``: learning_rate at epoch 1 and right after the
    warm-up; None (keep the scheduler's rate) otherwise."""
    if epoch == 1 or (opt.warm and epoch == opt.warm_epochs + 1):
        return opt.learning_rate
    return None


def plateau_step(scheduler: ReduceLROnPlateau | None, opt, epoch: int, value: float | None) -> None:
    """Step the plateau scheduler on this epoch's monitored value (not during the warm-up epochs)."""
    if scheduler is None or value is None or (opt.warm and epoch <= opt.warm_epochs):
        return
    scheduler.step(float(value))
