"""The original Nenya's ``nenya.util`` names, so its scripts and notebooks keep working.

``adjust_learning_rate(opt, optimizer, epoch)`` and ``warmup_learning_rate(opt, epoch, idx,
len(train_loader), optimizer)`` apply Nenya's schedules; ``save_model(model, optimizer, opt, epoch,
save_file)`` writes a weights-only checkpoint (tensors and plain values, atomically) that
``torch.load(..., weights_only=True)`` and ``python -m nenya.train ... --resume`` read;
``set_optimizer(opt, model)`` builds the options' optimizer; ``AverageMeter`` keeps a running mean.
"""

from nenya.io.checkpoints import rng_state, save_checkpoint
from nenya.models import unwrap
from nenya.train_util import AverageMeter, adjust_learning_rate, set_optimizer, warmup_learning_rate

__all__ = ["AverageMeter", "adjust_learning_rate", "warmup_learning_rate", "set_optimizer", "save_model"]


def save_model(model, optimizer, opt, epoch: int, save_file: str) -> None:
    """Nenya's save_model: model, optimizer, options and epoch (plus RNG states) to ``save_file``, weights only."""
    state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": int(epoch),
             "opts": opt.to_dict(), "rng": rng_state()}
    save_checkpoint(save_file, state)
