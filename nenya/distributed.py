"""torch.distributed for the loop: the process group from torchrun's environment, rank-0 rules, reductions.

Without a launcher (no ``WORLD_SIZE`` > 1 in the environment) every function here is the single-process
identity: rank 0 of a world of 1, no communication.
"""

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by torchrun as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialized() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(use_cuda: bool) -> torch.device:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); return this process's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = use_cuda and torch.cuda.is_available()
    if launched() and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        return torch.device("cuda", local_rank if launched() else torch.cuda.current_device())
    return torch.device("cpu")


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Whether this process writes files, logs and progress bars (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op alone)."""
    if initialized():
        dist.barrier()


def all_gather_objects(value) -> list:
    """Every process's ``value`` (picklable; tensors are moved to the CPU first), in rank order."""
    if not initialized():
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over every process (a new tensor)."""
    total = tensor.clone()
    if initialized():
        dist.all_reduce(total)
    return total


def broadcast_object(value):
    """Rank 0's ``value`` on every process."""
    if not initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of each piece and returns this process's piece."""

    @staticmethod
    def forward(ctx, tensor):
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # gloo has no reduce_scatter; an all-reduce then a slice is the same sum
        size = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * size:(dist.get_rank() + 1) * size]


def gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` [B, ...] concatenated in rank order [W * B, ...], gradient flowing back to each."""
    return _GatherWithGradient.apply(tensor) if initialized() else tensor


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` [B, ...] (same shape everywhere) concatenated in rank order, no gradient."""
    if not initialized():
        return tensor
    pieces = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(pieces, tensor.contiguous())
    return torch.cat(pieces)
