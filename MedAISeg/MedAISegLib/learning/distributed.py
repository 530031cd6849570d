"""Data-parallel training across processes with PyTorch's own engine (``torch.distributed``, DDP).

A process belongs to a run when the launcher set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment: ``torchrun`` (one or several nodes) or ``medai train --nproc-per-node N``, which starts the
same elastic agent ``torchrun`` uses (:mod:`.distributed_launch`). Each process then joins the process
group: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when the run is on CUDA, Gloo on the CPU
otherwise. Every rank trains on its own shard of the training cases (``DistributedSampler``, reshuffled
each epoch with ``set_epoch``); gradients are averaged by ``DistributedDataParallel``, so all ranks hold
the same weights after each step. Validation cases are shared out between the ranks and their Dice
averaged over all of them; the epoch's loss is averaged the same way, so every rank sees the same
history. Rank 0 decides early stopping and broadcasts it, so all ranks stop together, and only rank 0
writes the checkpoint, the curves and the bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GLOO, NCCL = "gloo", "nccl"


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a run: global ``rank``, ``world_size``, ``local_rank`` on its node and the
    process-group ``backend`` (None for a single process). ``owns_group``: the group was created here
    (and is destroyed here) rather than by the caller."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints, curves, bundles and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


SINGLE = DistributedContext()


def launched_ranks() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local world size) from the launcher's environment variables, or None
    when this process is not part of a multi-process run (no ``WORLD_SIZE``, or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), local_world


def current_rank() -> int:
    """This process's global rank (0 outside a multi-process run)."""
    ranks = launched_ranks()
    return 0 if ranks is None else ranks[0]


def process_device(device: torch.device, local_rank: int, local_world: int) -> tuple[torch.device, str]:
    """(device, backend) of one process: ``cuda:LOCAL_RANK`` with NCCL when ``device`` is CUDA (one GPU per
    process, so the node needs ``local_world`` GPUs), else the CPU with Gloo."""
    if device.type != "cuda":
        return torch.device("cpu"), GLOO
    available = torch.cuda.device_count()
    if available < local_world:
        raise ValueError(
            f"{local_world} training processes on this node but {available} CUDA GPU(s): give "
            f"--nproc-per-node {max(1, available)} or less (one GPU per process), or --device cpu."
        )
    return torch.device("cuda", local_rank), NCCL


def join_process_group(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """(context, device of this process): joins the launcher's process group, or :data:`SINGLE` and
    ``device`` unchanged outside a multi-process run. An existing default group (a script that initialised
    it itself) is used as it is."""
    import torch.distributed as dist

    ranks = launched_ranks()
    if ranks is None:
        return SINGLE, device
    rank, world, local_rank, local_world = ranks
    device, backend = process_device(device, local_rank, local_world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    else:
        backend = str(dist.get_backend())
    return DistributedContext(rank, world, local_rank, backend, owns), device


def leave_process_group(context: DistributedContext) -> None:
    """Destroy the process group if :func:`join_process_group` created it."""
    import torch.distributed as dist

    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def check_shards(n_training_cases: int, world_size: int) -> None:
    """Raise ValueError when there are fewer training cases than processes (a rank would have no case of its own)."""
    if world_size > n_training_cases:
        raise ValueError(
            f"{world_size} training processes but only {n_training_cases} training case(s) after "
            "the validation split: give at least one training case per process (more cases, a "
            "smaller --val-fraction or a smaller --nproc-per-node)."
        )


def wrap_model(network: torch.nn.Module, context: DistributedContext, device: torch.device) -> torch.nn.Module:
    """``network`` inside ``DistributedDataParallel`` (gradients averaged over the ranks), or itself for one
    process. The weights stay those of ``network``: keep using it for state dicts and validation."""
    if not context.distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def shard_sampler(dataset, context: DistributedContext, seed: int):
    """A ``DistributedSampler`` giving this rank its shard of ``dataset`` (shuffled with ``seed``), or None for
    one process."""
    if not context.distributed:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed)


def mean_over_ranks(values: list[float], context: DistributedContext) -> float | None:
    """Mean of ``values`` pooled over every rank (each rank passes its own, possibly none); None when no rank
    had any. Every rank gets the same number."""
    total = torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64)
    if context.distributed:
        import torch.distributed as dist

        on_device = total.to(_collective_device(context))
        dist.all_reduce(on_device)
        total = on_device.cpu()
    return None if total[1] == 0 else float(total[0] / total[1])


def decision_of_rank0(flag: bool, context: DistributedContext) -> bool:
    """Rank 0's ``flag``, on every rank (early stop, cancel): all ranks act on the same decision."""
    if not context.distributed:
        return bool(flag)
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device(context))
    dist.broadcast(value, src=0)
    return bool(value.item())


def _collective_device(context: DistributedContext) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if context.backend == NCCL else torch.device("cpu")
