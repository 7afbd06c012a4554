"""THE loop, hand-written once for every method: schedules, model, optimizer and loaders, one training epoch,
one evaluation pass (validation, ``nenya.evaluate`` and ``nenya.latents``), and the epoch driver.

The original Nenya's names work as its documentation shows them: ``set_model(opt)`` returns the model
and criterion, ``nenya_loader(opt, valid=...)`` the method's loader, and ``train_model(train_loader,
model, criterion, optimizer, epoch, opt, cuda_use=...)`` trains one epoch and returns ``(loss,
losses_step, losses_avg)``; the command line runs the same functions.
"""

import math
import os
import random
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm import tqdm

from nenya import distributed
from nenya.data.hdf5 import collate
from nenya.errors import NenyaError, Terminated, WriteFailed
from nenya.io import curves
from nenya.gradients import optimizer_step
from nenya.io.checkpoints import checkpoint_state, restore_training_state, save_checkpoint
from nenya.io.tracking import Tracking
from nenya.io.run_folder import repair_checkpoints, write_metrics, write_options
from nenya.methods import get_method
from nenya.models import unwrap
from nenya.models.ema import ModelEMA
from nenya.schedules import make_plateau, plateau_epoch_rate, plateau_step
from nenya.stopping import EarlyStopping, is_better


class AverageMeter:
    """Running mean of a scalar, Nenya style: ``val``, ``avg``, ``sum``, ``count``."""

    def __init__(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        """Add ``val`` observed ``n`` times."""
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


# ---- learning-rate schedules ------------------------------------------------------------------------

def epoch_learning_rate(opt, epoch: int) -> float:
    """Nenya's per-epoch rate: cosine to learning_rate * lr_decay_rate**3, or step decay at lr_decay_epochs."""
    lr = opt.learning_rate
    if opt.cosine:
        eta_min = lr * opt.lr_decay_rate ** 3
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / opt.epochs)) / 2
    steps = int(np.sum(epoch > np.asarray(opt.lr_decay_epochs, dtype=np.int64)))
    return lr * opt.lr_decay_rate ** steps


def iteration_learning_rate(opt, epoch: int, batch_id: int, total_batches: int) -> float:
    """Per-iteration schedule: linear warm-up from 0 over warm_epochs, then half-cosine to lr_min."""
    progress = epoch - 1 + batch_id / total_batches
    if progress < opt.warm_epochs:
        return opt.learning_rate * progress / opt.warm_epochs
    span = max(opt.epochs - opt.warm_epochs, 1e-12)
    fraction = min((progress - opt.warm_epochs) / span, 1.0)
    return opt.lr_min + (opt.learning_rate - opt.lr_min) * 0.5 * (1 + math.cos(math.pi * fraction))


def set_learning_rate(optimizer, lr: float) -> None:
    """Set every parameter group's rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def adjust_learning_rate(opt, optimizer, epoch: int) -> float:
    """Apply the per-epoch schedule at the start of ``epoch`` (epochs count from 1) and return the rate.

    The plateau schedule keeps the rate its scheduler set, except at epoch 1 and right after the warm-up.
    """
    if opt.schedule == "plateau":
        lr = plateau_epoch_rate(opt, epoch)
        if lr is None:
            return optimizer.param_groups[0]["lr"]
    elif opt.schedule == "iter_cosine":
        lr = iteration_learning_rate(opt, epoch, 0, 1)
    else:
        lr = epoch_learning_rate(opt, epoch)
    set_learning_rate(optimizer, lr)
    return lr


def warmup_learning_rate(opt, epoch: int, batch_id: int, total_batches: int, optimizer) -> float | None:
    """Linear warm-up from warmup_from to warmup_to over warm_epochs (Nenya's formula); None when not warming."""
    if not opt.warm or epoch > opt.warm_epochs:
        return None
    progress = (batch_id + (epoch - 1) * total_batches) / (opt.warm_epochs * total_batches)
    lr = opt.warmup_from + progress * (opt.warmup_to - opt.warmup_from)
    set_learning_rate(optimizer, lr)
    return lr


def step_learning_rate(opt, epoch: int, batch_id: int, total_batches: int, optimizer) -> None:
    """Set the rate of this step: per-iteration schedule, or Nenya's warm-up on top of the per-epoch rate."""
    if opt.schedule == "iter_cosine":
        set_learning_rate(optimizer, iteration_learning_rate(opt, epoch, batch_id, total_batches))
    else:
        warmup_learning_rate(opt, epoch, batch_id, total_batches, optimizer)


# ---- model, optimizer, data -------------------------------------------------------------------------

def select_device(opt=None, cuda_use: bool | None = None) -> torch.device:
    """CUDA when it is there and cuda_use (the argument, else the option) is on, else the CPU.

    Under torchrun each process takes the GPU of its ``LOCAL_RANK``.
    """
    wanted = cuda_use if cuda_use is not None else (opt.cuda_use if opt is not None else True)
    if not (wanted and torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if distributed.launched() \
        else torch.device("cuda")


def synchronised_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm layer made a SyncBatchNorm (statistics over every process's batch)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def place_model(model: nn.Module, device: torch.device, opt=None) -> nn.Module:
    """Move the model to the device: DistributedDataParallel under torchrun (BatchNorm made synchronised
    with ``syncBN``), DataParallel over several local GPUs without it."""
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    if distributed.initialized():
        if opt is not None and opt.syncBN and device.type != "cuda":
            raise NenyaError("option 'syncBN' needs GPUs (torch's SyncBatchNorm runs only on CUDA); set syncBN "
                             "to false when training on CPUs")
        model = synchronised_batchnorm(model) if opt is not None and opt.syncBN else model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        model = nn.DataParallel(model)
    return model


def set_model(opt, cuda_use: bool | None = None, method=None) -> tuple[nn.Module, nn.Module]:
    """Nenya's set_model: (model, criterion) of the options' method, on the device (DataParallel on GPUs)."""
    method = method or get_method(opt)
    device = select_device(opt, cuda_use)
    return place_model(method.build_model(), device, opt), method.criterion.to(device)


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling; groups with ``lars_exclude=True`` get plain momentum SGD, no decay."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update: decay, trust-ratio scaling, momentum."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = param.norm(), update.norm()
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / (update_norm + group["eps"]),
                                        torch.ones_like(param_norm))
                    update = update.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def split_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups: weights with decay; biases, norms (1-D) and the model's ``no_weight_decay()`` without."""
    model = unwrap(model)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def set_optimizer(opt, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``opt.optimizer``: sgd (Nenya's), adam, adamw or lars."""
    lr, wd = opt.learning_rate, opt.weight_decay
    if opt.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=opt.momentum, weight_decay=wd)
    fused = {"fused": True}  # one kernel per step, on CUDA and on the CPU (2.3x faster there than the loop)
    if opt.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd, betas=tuple(opt.betas), **fused)
    groups = split_decay_groups(model, wd)
    if opt.optimizer == "adamw":
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt.betas), **fused)
    return LARS(groups, lr=lr, momentum=opt.momentum, weight_decay=wd)


class EpochSampler(Sampler):
    """The items of one epoch for this process: a permutation drawn from (seed, epoch) when shuffling.

    Under torch.distributed, process r takes items r, r + W, r + 2W, ... of the epoch's order (padded by
    repeating its first items to a multiple of the W processes unless ``drop_last``), so a batch of b
    on each of W processes holds the same items as one batch of W * b in one process. ``set_epoch``
    fixes the epoch (the loop calls it, so a resumed run draws the same order); without it every
    iteration takes the next epoch.
    """

    def __init__(self, length: int, shuffle: bool, seed: int = 0, drop_last: bool = False):
        self.length, self.shuffle, self.seed, self.drop_last = length, shuffle, seed, drop_last
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.epoch, self._fixed = 0, False

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order for the next iteration."""
        self.epoch, self._fixed = epoch, True

    def order(self) -> list[int]:
        """Every process's items of this epoch, in order, padded or cut to a multiple of the processes."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.drop_last:
            return order[:self.length - self.length % self.world]
        padding = -self.length % self.world
        return order + (order * (padding // max(len(order), 1) + 1))[:padding]

    def __iter__(self):
        if not self._fixed:
            self.epoch += 1
        self._fixed = False
        return iter(self.order()[self.rank::self.world])

    def __len__(self) -> int:
        total = self.length - self.length % self.world if self.drop_last else -(-self.length // self.world) * self.world
        return total // self.world


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, drop_last: bool = False,
                seed: int = 0) -> DataLoader:
    """A DataLoader over this process's share of ``dataset`` (:class:`EpochSampler`); worker seeds follow its
    own generator (reseeded every epoch by the loop)."""
    if drop_last and len(dataset) < batch_size * distributed.world_size():
        drop_last = False
    sampler = EpochSampler(len(dataset), shuffle, seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available(), collate_fn=collate,
                      persistent_workers=False, generator=torch.Generator().manual_seed(seed))


def data_name(dataset) -> str:
    """Where a data set comes from, for messages: ``file.h5:key`` or ``list.csv (split valid)``."""
    dataset = getattr(dataset, "dataset", dataset)  # a Subset: the data set it takes items from
    path = getattr(dataset, "path", None)
    if path is None:
        return type(dataset).__name__
    return f"{path} (split {dataset.split})" if hasattr(dataset, "split") else f"{path}:{dataset.key}"


def require_items(dataset, what: str, fix: str) -> None:
    """A NenyaError when ``dataset`` holds no items: ``what`` names its role, ``fix`` says what would help."""
    if dataset is not None and len(dataset) == 0:
        raise NenyaError(f"the {what} {data_name(dataset)} hold 0 images; {fix}")


def method_datasets(method) -> tuple:
    """(train, valid) of a method, built once; with overfit_batches both are the first training batches."""
    if getattr(method, "_datasets", None) is None:
        train, valid = method.build_datasets()
        require_items(train, "training data", "give a train_key (or train_split) that holds images")
        require_items(valid, "validation data", "give a valid_key (or valid_split) that holds images, or null "
                                                "for no validation")
        batches = method.opt.overfit_batches
        if batches:
            train = Subset(train, range(min(len(train), batches * method.opt.batch_size_train)))
            valid = train
        method._datasets = (train, valid)
    return method._datasets


def nenya_loader(opt, valid: bool = False, method=None) -> DataLoader | None:
    """Nenya's nenya_loader: the method's shuffled training loader, or its validation loader (None: none)."""
    method = method or get_method(opt)
    train, valid_set = method_datasets(method)
    if valid:
        if valid_set is None:
            return None
        return make_loader(valid_set, opt.batch_size_valid, False, opt.num_workers, seed=opt.seed)
    return make_loader(train, opt.batch_size_train, True, opt.num_workers, drop_last=True, seed=opt.seed)


# ---- one training epoch -----------------------------------------------------------------------------

def as_float(value) -> float:
    """A Python float of a number or a (possibly grad-tracking) one-element tensor."""
    return value.detach().item() if isinstance(value, torch.Tensor) else float(value)


def to_device(batch, device: torch.device):
    """Move every tensor in a (nested) tuple, list or dict to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def resolve_amp(amp: str, device_type: str, bf16_supported: bool) -> str:
    """The precision ``amp`` means on a device: 'none' off CUDA; 'auto' is bf16 where the GPU supports it."""
    if device_type != "cuda":
        return "none"
    if amp == "auto":
        return "bf16" if bf16_supported else "none"
    return amp


def autocast_dtype(opt, device: torch.device):
    """The autocast dtype of ``opt.amp`` on this device; None (full precision) on the CPU or when off."""
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_amp(opt.amp, device.type, supported))


def make_scaler(opt, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 autocast on CUDA."""
    return torch.amp.GradScaler("cuda", enabled=autocast_dtype(opt, device) == torch.float16)


class EpochResult(tuple):
    """``(loss, losses_step, losses_avg)`` as Nenya's train_model returned them; ``extras`` and ``steps`` too.

    ``per_step``: series with one value per batch (``lr_step``); ``per_update``: one value per optimizer
    step (``grad_norm``, the norm before clipping, when clip_grad_norm is set).
    """

    def __new__(cls, loss: float, losses_step: np.ndarray, losses_avg: np.ndarray, extras: dict,
                per_step: dict | None = None, per_update: dict | None = None):
        result = super().__new__(cls, (loss, losses_step, losses_avg))
        result.extras, result.steps = extras, int(losses_step.size)
        result.per_step, result.per_update = per_step or {}, per_update or {}
        return result

    @property
    def loss(self) -> float:
        """Mean training loss of the epoch."""
        return self[0]


def nonfinite_count(batch) -> int:
    """Number of NaN or infinite values in the floating-point tensors of a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return int((~torch.isfinite(batch)).sum()) if batch.is_floating_point() else 0
    if isinstance(batch, (list, tuple)):
        return sum(nonfinite_count(item) for item in batch)
    if isinstance(batch, dict):
        return sum(nonfinite_count(item) for item in batch.values())
    return 0


def data_option(opt) -> str:
    """The options naming the data, as written: ``images_file 'x.h5' in data_folder 'd'`` (or ``data_csv``)."""
    if getattr(opt, "data_csv", None):
        return f"data_csv '{opt.data_csv}' in data_folder '{opt.data_folder}'"
    return f"images_file '{opt.images_file}' in data_folder '{opt.data_folder}'"


def check_finite_loss(loss: torch.Tensor, batch, epoch: int, batch_id: int, total: int, opt, lr: float) -> None:
    """A NenyaError at a non-finite training loss, naming the epoch, the step and the likely cause.

    The check is on the loss itself, before backward, so the weights never take a non-finite step (an
    fp16 gradient scaler's skipped steps, from overflowing gradients, are not this).
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    value = loss.detach().float().cpu().flatten()[0].item()
    bad = nonfinite_count(batch)
    if bad:
        cause = (f"the batch holds {bad} non-finite values (NaN or inf): the training data ({data_option(opt)}) "
                 f"need cleaning or masking")
    else:
        cause = (f"the batch's values are finite, so the learning rate is likely too high (learning_rate "
                 f"{opt.learning_rate:g}, this step {lr:.3g}): lower it")
    raise NenyaError(f"the training loss is {value} at epoch {epoch}, step {batch_id + 1} of {total}: {cause}; "
                     f"training stopped before saving anything of this epoch")


def check_finite_validation(metrics: dict, loader, epoch: int, opt) -> None:
    """A NenyaError when the validation loss is not finite (the training weights are: their loss was checked)."""
    value = metrics.get("loss")
    if value is None or math.isfinite(value):
        return
    bad = sum(nonfinite_count(batch) for batch in loader)
    cause = (f"the validation data hold {bad} non-finite values (NaN or inf); clean or mask them" if bad else
             "the model's outputs overflow on the validation data; lower learning_rate")
    when = "at initialisation" if epoch == 0 else f"after epoch {epoch}"
    raise NenyaError(f"the validation loss is {value} {when} ({data_name(loader.dataset)}, from "
                     f"{data_option(opt)}): {cause}; training stopped before saving anything of this epoch")


def as_method(criterion, opt):
    """The Method that turns a batch into a loss: ``criterion`` itself, or the options' method using it."""
    if hasattr(criterion, "loss"):
        return criterion
    method = get_method(opt)
    method.criterion = criterion
    return method


def train_model(train_loader, model, criterion, optimizer, epoch: int, opt, cuda_use: bool | None = None,
                update_model: bool = True, *, device=None, scaler=None, log=None, writer=None,
                first_step: int = 0, ema: ModelEMA | None = None) -> EpochResult:
    """Train one epoch; return (mean loss, per-step losses, their running mean), Nenya's train_model.

    ``criterion`` is the method's loss (Nenya's SupConLoss for SimCLR / SupCon) or a Method. With
    ``update_model=False`` (Nenya's validation call) the epoch runs in eval mode under no_grad and
    the optimizer (which may be None) is not used. ``ema``: averaged after every optimizer step that
    the fp16 scaler did not skip.
    """
    method = as_method(criterion, opt)
    method.epoch = epoch  # per-sample draws of the method (MAE masks) are seeded by (seed, epoch, item)
    device = device or select_device(opt, cuda_use)
    if not update_model:
        return _loss_pass(train_loader, model, method, device, opt)
    model.train()
    scaler = scaler or make_scaler(opt, device)
    amp_dtype = autocast_dtype(opt, device)
    accumulate = opt.accumulate_grad_batches
    extras: dict[str, AverageMeter] = {}
    step_losses = []
    total = len(train_loader)
    start = time.time()
    skipped = 0  # optimizer steps the fp16 gradient scaler skipped (inf/NaN gradients; the loss was finite)
    rates, norms, norm = [], [], None  # the rate of every batch; the gradient norm of every optimizer step
    progress = tqdm(train_loader, desc=f"epoch {epoch}/{opt.epochs}", leave=False,
                    disable=None if distributed.is_main() else True)
    for batch_id, batch in enumerate(progress):
        batch = to_device(batch, device)
        step_learning_rate(opt, epoch, batch_id, total, optimizer)
        rates.append(optimizer.param_groups[0]["lr"])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, scalars = method.loss(model, batch)
        check_finite_loss(loss, batch, epoch, batch_id, total, opt, optimizer.param_groups[0]["lr"])
        scalars = dict(scalars)
        objective = loss + scalars.pop("aux_loss", 0.0)  # side heads (an online probe) train, unreported
        scaler.scale(objective / accumulate if accumulate > 1 else objective).backward()
        if (batch_id + 1) % accumulate == 0 or batch_id + 1 == total:
            norm, skip = optimizer_step(optimizer, scaler, opt.clip_grad_norm)
            skipped += int(skip)
            if norm is not None:
                norms.append(norm)
            if ema is not None and not skip:
                ema.update(unwrap(model))
        step_losses.append(loss.detach())
        for name, value in scalars.items():
            extras.setdefault(name, AverageMeter()).update(as_float(value))
        if (batch_id + 1) % opt.print_freq == 0 or batch_id + 1 == total:
            value = loss.item()
            progress.set_postfix(loss=f"{value:.4f}")
            norm_text = f" grad_norm {norm.item():.4g}" if norm is not None else ""
            if writer is not None:
                writer.add_scalar("loss_step/train", value, first_step + batch_id + 1)
                writer.add_scalar("lr_step", rates[-1], first_step + batch_id + 1)
                if norm is not None:
                    writer.add_scalar("grad_norm_step/train", norm.item(), first_step + batch_id + 1)
            if log is not None:
                log(f"train: [{epoch}][{batch_id + 1}/{total}] loss {value:.4f} "
                    f"lr {rates[-1]:.5g}{norm_text} time {time.time() - start:.1f}s")
    steps = torch.stack(step_losses).float().cpu().numpy().astype(np.float64) if step_losses else np.zeros(0)
    losses = AverageMeter()
    for value in steps:
        losses.update(float(value))
    running = np.cumsum(steps) / np.arange(1, steps.size + 1)
    means = {name: meter.avg for name, meter in extras.items()}
    if scaler.is_enabled():
        means["skipped_steps"] = float(skipped)
    per_update = {"grad_norm": torch.stack(norms).float().cpu().numpy().astype(np.float64)} if norms else {}
    return EpochResult(losses.avg, steps, running, means, {"lr_step": np.asarray(rates, dtype=np.float64)},
                       per_update)


def _loss_pass(loader, model, method, device, opt) -> EpochResult:
    """Nenya's train_model(update_model=False): per-batch losses through the one evaluation pass."""
    def step(model, batch, indices):
        return {"loss": method.loss(model, batch)[0].float()}

    outputs = evaluation_pass(loader, model, step, device, opt, desc="valid")
    steps = outputs["loss"].double().numpy() if "loss" in outputs else np.zeros(0)
    sizes = outputs["batch_size"].double().numpy()
    mean = float((steps * sizes).sum() / sizes.sum()) if steps.size else 0.0
    return EpochResult(mean, steps, np.cumsum(steps * sizes) / np.cumsum(sizes) if steps.size else steps, {})


# ---- the one evaluation pass ------------------------------------------------------------------------

def batch_size_of(batch) -> int:
    """Items in a batch (a tensor, or a tuple/list/dict whose first tensor leads with the batch axis)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch_size_of(first)


def _item_indices(loader, count: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dataset indices [count], padding flags [count]) of this process's items offset..offset+count-1."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        return torch.arange(offset, offset + count), torch.zeros(count, dtype=torch.bool)
    order = sampler.order()
    places = [sampler.rank + (offset + j) * sampler.world for j in range(count)]  # places in the epoch's order
    return torch.tensor([order[p] for p in places]), torch.tensor([p >= sampler.length for p in places])


def _merge(parts: list[dict], per_item: set) -> dict:
    """One dict of outputs from every process's: items in dataset order (padding dropped), batches in turn."""
    names = list(dict.fromkeys(name for part in parts for name in part))
    merged = {name: torch.cat([part[name] for part in parts if name in part]) for name in names}
    order = merged.pop("_index").argsort()
    for name in per_item:
        merged[name] = merged[name][order]
    return merged


@torch.no_grad()
def evaluation_pass(data, model, step, device, opt, desc: str = "eval", progress: bool | None = None) -> dict:
    """Run ``step(model, batch, indices)`` over every batch in eval mode, under no_grad and autocast.

    ``data``: a data set (read in order, batch_size_valid) or a DataLoader that does not shuffle;
    ``indices`` are the items' positions in the data set. ``step`` returns a dict of tensors: those with
    one row per item are concatenated over the pass in data-set order, 0-dim ones are stacked (one per
    batch) and come with ``batch_size``; others (a few rows, e.g. figure samples) are concatenated.
    Under torch.distributed every process gets every process's outputs (the padding the sampler adds
    left out), so the metrics are those of the whole set. Random draws inside the pass start from
    ``opt.seed`` every time, so passes are comparable between epochs, and the training RNG is left alone.
    """
    loader = data if isinstance(data, DataLoader) else make_loader(data, opt.batch_size_valid, False,
                                                                   opt.num_workers, seed=opt.seed)
    if loader.generator is not None:  # DataLoader workers draw their seeds from it: the same every pass
        loader.generator.manual_seed(opt.seed)
    amp_dtype = autocast_dtype(opt, device)
    outputs: dict[str, list] = {"batch_size": [], "_index": []}
    rows_per_item: dict[str, int] = {}  # batches in which an output had one row per item
    was_training = model.training
    model.eval()
    offset = 0
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    show = None if progress is not False and distributed.is_main() else True
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(opt.seed)
            for batch in tqdm(loader, desc=desc, leave=False, disable=show):
                count = batch_size_of(batch)
                indices, padding = _item_indices(loader, count, offset)
                offset += count
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    values = step(model, to_device(batch, device), indices)
                outputs["batch_size"].append(torch.tensor(int((~padding).sum())))
                outputs["_index"].append(indices[~padding])
                for name, value in values.items():
                    value = value.detach().cpu()
                    if value.dim() > 0 and value.shape[0] == count:
                        rows_per_item[name] = rows_per_item.get(name, 0) + 1
                        value = value[~padding]
                    outputs.setdefault(name, []).append(value)
    finally:
        model.train(was_training)
    local = {name: (torch.stack(parts) if parts[0].dim() == 0 else torch.cat(parts)) if parts else torch.zeros(0)
             for name, parts in outputs.items()}
    batches = len(outputs["batch_size"])
    return _merge(distributed.all_gather_objects(local),
                  {name for name, seen in rows_per_item.items() if seen == batches and len(outputs[name]) == batches})


def validate(valid_loader, model, method, device, opt) -> dict:
    """Validation: the method's metrics from evaluation passes, and the per-step losses for the curves."""
    def run(data, step, desc="valid"):
        return evaluation_pass(data, model, step, device, opt, desc)

    metrics, steps = method.validation(model, run, valid_loader)
    steps = np.asarray(steps, dtype=np.float64)
    return {"metrics": metrics, "loss_step": steps,
            "loss_avg": np.cumsum(steps) / np.arange(1, steps.size + 1) if steps.size else steps}


# ---- the epoch driver -------------------------------------------------------------------------------

def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every generator is reset to at the start of ``epoch`` (so a resumed run draws the same)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def monitor_of(opt, method) -> tuple[str, str]:
    """(metric that picks best.pth, 'min' or 'max'): the option or the method's default, direction declared."""
    name = opt.monitor or method.monitor
    return name, method.direction(name)


def across_processes(result: EpochResult) -> EpochResult:
    """The epoch's per-step losses and extras averaged over every process (itself alone)."""
    if not distributed.initialized():
        return result
    world = distributed.world_size()
    steps = (distributed.all_reduce_sum(torch.as_tensor(result[1], dtype=torch.float64)) / world).numpy()
    names = sorted(result.extras)
    extras = distributed.all_reduce_sum(torch.tensor([result.extras[n] for n in names], dtype=torch.float64)) / world
    running = np.cumsum(steps) / np.arange(1, steps.size + 1)
    return EpochResult(float(steps.mean()) if steps.size else 0.0, steps, running,
                       dict(zip(names, extras.tolist())), result.per_step, result.per_update)


class _NoWriter:
    """TensorBoard's SummaryWriter for the processes that write nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Run:
    """The pieces of one training run that the epoch driver works with."""

    def __init__(self, opt, method, model, optimizer, scaler, device, train_loader, valid_loader, folder, log,
                 ema: ModelEMA | None = None):
        self.opt, self.method, self.model, self.optimizer, self.scaler = opt, method, model, optimizer, scaler
        self.device, self.train_loader, self.valid_loader = device, train_loader, valid_loader
        self.folder, self.log = folder, log
        self.ema = ema if ema is not None else make_ema(opt, model)


def make_ema(opt, model: nn.Module) -> ModelEMA | None:
    """The EMA of the bare model's weights and buffers when ``ema_decay`` is set, else None."""
    if opt.ema_decay is None:
        return None
    return ModelEMA(unwrap(model), decay=opt.ema_decay, warmup=opt.ema_warmup)


def fit(run: Run, resume: bool = False, resume_hint: str = "") -> dict:
    """Train ``run`` from epoch 1 (or after its last.pth): checkpoints, curves, TensorBoard; return metrics.json.

    A file that cannot be written (full disk) stops the run with a WriteFailed that says how to continue.
    """
    again = f"{resume_hint or 'the same command'} --resume"
    try:
        return _fit(run, resume)
    except WriteFailed as err:
        raise WriteFailed(f"{err}; free some space, then continue with: {again}") from None
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM from a scheduler (Terminated)
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        kept = "last.pth is kept" if os.path.isfile(os.path.join(run.folder, "last.pth")) else \
            "no checkpoint written yet"
        run.log(f"{what} ({kept}); continue with: {again}")
        raise


def _fit(run: Run, resume: bool) -> dict:
    """The epoch driver behind :func:`fit`."""
    opt, method, model, optimizer, log, folder = run.opt, run.method, run.model, run.optimizer, run.log, run.folder
    main = distributed.is_main()  # only the first process writes files
    monitor = monitor_of(opt, method)
    train_h5, valid_h5 = os.path.join(folder, "losses_train.h5"), os.path.join(folder, "losses_valid.h5")
    start_epoch, step, best, init_metrics = 1, 0, {"metric": monitor[0], "value": None, "epoch": None}, {}
    watched = monitor if run.valid_loader is not None else ("loss_train", "min")  # plateau and early stopping
    scheduler, ema = make_plateau(opt, optimizer, watched[1]), run.ema
    stopping = EarlyStopping(opt.early_stopping_patience, opt.min_delta, watched[1])
    evaluated = ema.module if ema is not None else model  # validation and figures use the EMA weights when on
    if resume:
        path = os.path.join(folder, "last.pth")
        state = restore_training_state(path, model, optimizer, run.scaler, opt.optimizer,
                                       steps_per_epoch=len(run.train_loader), scheduler=scheduler, ema=ema,
                                       stopping=stopping)
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, init_metrics = state.get("best") or best, state.get("init_metrics") or {}
        if main:
            for curve in (train_h5, valid_h5):
                curves.truncate_after(curve, state["epoch"])
        log(f"resuming {folder} after epoch {state['epoch']}")
        for note in repair_checkpoints(folder, state, opt.save_freq) if main else ():
            log(note)
    if main:
        write_options(folder, opt.to_dict())
    writer = Tracking(opt, folder, resume, step) if main else _NoWriter()
    processes = f", {opt.world_size} processes, global batch {opt.global_batch_size}" if opt.world_size > 1 else ""
    log(f"training {opt.method} / {opt.model} on {run.device}{processes} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) into {folder}")
    last_epoch = start_epoch - 1
    if stopping.stopped_epoch is not None:
        log(f"this run ended by {stopping.reason(watched[0])}; nothing left to train")

    try:
        if start_epoch == 1 and run.valid_loader is not None:
            init_metrics = validate(run.valid_loader, evaluated, method, run.device, opt)["metrics"]
            check_finite_validation(init_metrics, run.valid_loader, 0, opt)
            if main:
                curves.append_epoch(valid_h5, 0, {f"{k}_valid": v for k, v in init_metrics.items()})
            log("at initialisation: " + ", ".join(f"{k} {v:.4f}" for k, v in init_metrics.items()))

        last_valid, last_train_loss = dict(init_metrics), None
        if resume:  # what metrics.json reports, also when the run had finished all its epochs
            last_valid, last_train_loss = state.get("final") or last_valid, state.get("train_loss")
        for epoch in range(start_epoch, opt.epochs + 1):
            if stopping.stopped_epoch is not None:
                break
            seed = epoch_seed(opt.seed, epoch)
            seed_everything(seed)
            run.train_loader.generator.manual_seed(seed)
            if isinstance(run.train_loader.sampler, EpochSampler):
                run.train_loader.sampler.set_epoch(epoch)
            adjust_learning_rate(opt, optimizer, epoch)
            result = across_processes(train_model(run.train_loader, model, method, optimizer, epoch, opt,
                                                  device=run.device, scaler=run.scaler, log=log,
                                                  writer=writer if main else None, first_step=step, ema=ema))
            step += result.steps
            lr = optimizer.param_groups[0]["lr"]
            last_train_loss = result.loss
            scalars = {"loss_train": result.loss, "lr": lr, **{f"{k}_train": v for k, v in result.extras.items()}}
            if main:
                curves.append_epoch(train_h5, epoch, scalars,
                                    {"loss_step_train": result[1], "loss_avg_train": result[2],
                                     **{f"{k}_train": v for k, v in result.per_step.items()}},
                                    {f"{k}_train": v for k, v in result.per_update.items()})
            writer.add_scalar("loss/train", result.loss, epoch)
            writer.add_scalar("lr", lr, epoch)
            summary = f"epoch {epoch}/{opt.epochs}: train loss {result.loss:.4f}, lr {lr:.5g}"
            if result.extras.get("skipped_steps"):
                summary += f", {result.extras['skipped_steps']:.0f} steps skipped by the fp16 gradient scaler"

            improved, watched_value = False, None
            if run.valid_loader is not None and (epoch % opt.valid_freq == 0 or epoch == opt.epochs):
                valid = validate(run.valid_loader, evaluated, method, run.device, opt)
                last_valid = valid["metrics"]
                check_finite_validation(last_valid, run.valid_loader, epoch, opt)
                if main:
                    curves.append_epoch(valid_h5, epoch, {f"{k}_valid": v for k, v in last_valid.items()},
                                        {"loss_step_valid": valid["loss_step"], "loss_avg_valid": valid["loss_avg"]})
                for name, value in last_valid.items():
                    writer.add_scalar(f"{name}/valid", value, epoch)
                summary += ", valid " + ", ".join(f"{k} {v:.4f}" for k, v in last_valid.items())
                value = watched_value = last_valid.get(monitor[0])
                if value is not None and is_better(value, best["value"], monitor[1]):
                    best, improved = {"metric": monitor[0], "value": value, "epoch": epoch}, True
                if main:
                    method.figures(evaluated, run.device, os.path.join(folder, "figures"), epoch)
            elif run.valid_loader is None:
                watched_value = result.loss
                if is_better(result.loss, best["value"], "min"):
                    best, improved = {"metric": "loss_train", "value": result.loss, "epoch": epoch}, True
            if watched_value is not None:
                plateau_step(scheduler, opt, epoch, watched_value)
                if stopping.update(watched_value, epoch):
                    summary += f"; {stopping.reason(watched[0])}"

            state = checkpoint_state(model, optimizer, run.scaler, epoch, step, opt, best, init_metrics, last_valid,
                                     last_train_loss, scheduler=scheduler, ema=ema, stopping=stopping)
            if main:
                save_checkpoint(os.path.join(folder, "last.pth"), state)
                if improved:
                    save_checkpoint(os.path.join(folder, "best.pth"), state)
                if epoch % opt.save_freq == 0:
                    save_checkpoint(os.path.join(folder, f"ckpt_epoch_{epoch}.pth"), state)
            log(summary)
            writer.flush()
            last_epoch = epoch
    finally:
        writer.close()
    if main and os.path.isfile(train_h5):
        from nenya.plots.curves import training_plots
        training_plots(folder, opt.dpi)
        writer.artifacts()
        writer.close(finished=True)
    stopped = stopping.reason(watched[0]) if stopping.stopped_epoch is not None else None
    metrics = write_metrics(folder, opt.method, monitor, best, init_metrics, last_valid, last_train_loss,
                            stopping.stopped_epoch or last_epoch,
                            method.describe(), write=main, stopped_early=stopped)
    distributed.barrier()
    log(f"done: best {best['metric']} {best['value']} at epoch {best['epoch']}; files in {folder}")
    return metrics
