"""Multi-process training with DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc-per-node N -m training.cli ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each. Every helper
here also works in a plain single process, where it is the identity (rank 0 of 1).

torchrun sends SIGTERM or SIGINT once to every worker when it is stopped itself, then
SIGKILL 30 s later (torch 2.13), so the trainer's stop-and-checkpoint has that long.

Contrastive losses call :func:`gather_with_grad` to see the embeddings of every rank as
negatives. Its backward pass sums the gradient of every rank's loss with respect to the
local rows. DistributedDataParallel then averages parameter gradients over ranks. When
each rank's loss is a mean over its local anchors, a step on W ranks with B samples each
therefore equals a step on one process with the W*B samples concatenated in rank order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Long enough for rank 0 to evaluate and export while the others wait in a collective.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistributedContext:
    """Position of this process in the job: its rank, the number of ranks and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs progress, checkpoints and exports."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Return True when the environment describes a job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str) -> DistributedContext:
    """Join the process group described by the environment and pick this rank's device.

    ``device_name`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. The backend is NCCL on
    CUDA and gloo on the CPU. On CUDA every rank uses ``cuda:LOCAL_RANK`` (an explicit
    ``cuda:N`` is only honoured in a single process). Without ``WORLD_SIZE > 1`` this
    joins nothing and returns rank 0 of 1 on the requested device.
    """
    device = resolve_device(device_name)
    if not launched_by_torchrun():
        return DistributedContext(rank=0, world_size=1, local_rank=0, device=device)

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    context = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    logger.info("joined process group: rank %d of %d, backend %s, device %s", context.rank, context.world_size, backend, device)
    return context


def wait_for_all_ranks() -> None:
    """Block until every rank of the process group reaches this call. Outside a process group, return at once."""
    if is_distributed():
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group, when this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``--device``: auto, cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"invalid device {name!r}; expected auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"invalid device {name!r}; expected auto, cpu, cuda or cuda:N")
    return device


def is_distributed() -> bool:
    """Return True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Return this process's rank, 0 outside a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Return the number of ranks, 1 outside a process group."""
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (B, ...) of every rank in rank order: (W * B, ...).

    Gradients flow back to every rank's input: the backward pass sums the incoming
    gradient over ranks and returns this rank's rows. The local rows of the result start
    at ``get_rank() * B``. Every rank must call this with the same shape (checked, with a
    ValueError raised on all ranks alike). Outside a process group it returns ``tensor``.
    """
    if not is_distributed():
        return tensor
    _check_same_shape(tensor)
    return _GatherWithGrad.apply(tensor)


def _check_same_shape(tensor: torch.Tensor) -> None:
    if tensor.ndim > 8:
        raise ValueError(f"gather_with_grad supports up to 8 dimensions, got {tensor.ndim}")
    # (ndim, size_0, ..., size_7), zero-padded, so that every rank sends the same length.
    padded = [tensor.ndim, *tensor.shape, *([0] * (8 - tensor.ndim))]
    shape = torch.tensor(padded, dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(other, shapes[0]) for other in shapes):
        readable = [tuple(other[1 : 1 + int(other[0])].tolist()) for other in shapes]
        raise ValueError(f"gather_with_grad needs the same shape on every rank, got {readable} by rank")


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces (sums) and keeps the local rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)  # W x (B, ...) -> (W * B, ...)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's rows, so the gradient of the local rows
        # is the sum over ranks. Gloo has no reduce-scatter, hence all-reduce and slice.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Return the element-wise maximum of ``values`` over ranks (a copy; identity alone)."""
    if not is_distributed():
        return values.clone()
    reduced = values.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return reduced


def all_gather_objects(value: object) -> list[object]:
    """Return ``value`` of every rank in rank order (a one-element list alone)."""
    if not is_distributed():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def rank_slice(global_batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Return rank ``rank``'s contiguous share of a global batch of indices.

    The global batch (W * b,) splits into W consecutive slices of b, so the ranks' slices
    are disjoint and, concatenated in rank order, give back the global batch: the batch
    that :func:`gather_with_grad` reassembles.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if len(global_batch) % world_size:
        raise ValueError(f"a global batch of {len(global_batch)} does not split evenly over {world_size} ranks")
    per_rank = len(global_batch) // world_size
    return global_batch[rank * per_rank : (rank + 1) * per_rank]
