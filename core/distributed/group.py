"""The ranks of one engine and the collectives its layers use. Groups are made from a store of their
own (no default process group, no fixed port), so two engines in one process or on one host never meet."""
import contextlib
import contextvars
import datetime
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)  # a rank silent this long mid-step ends the engine
IDLE_TIMEOUT = datetime.timedelta(days=365)           # how long workers wait for the next step
RENDEZVOUS_TIMEOUT = datetime.timedelta(seconds=300)  # spawning and importing torch included


@dataclass(frozen=True, slots=True)
class TensorParallelGroup:
    """Rank `rank` of `size`. `device_group` (NCCL on CUDA, gloo on CPU) carries the layers'
    collectives; `cpu_group` (gloo) the step headers and memory planning. Size 1: every
    collective is the identity and none is issued."""

    rank: int = 0
    size: int = 1
    device_group: object = None
    cpu_group: object = None

    def shard(self, total: int) -> tuple[int, int]:
        """(start, length) of this rank's equal part of `total`, which size divides."""
        length = total // self.size
        return self.rank * length, length

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        self.device_group.allreduce([x]).wait()
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n] on every rank -> [..., size * n], rank order along the last dim."""
        x = x.contiguous()
        out = x.new_empty((self.size * x.shape[0], *x.shape[1:]))
        self.device_group._allgather_base(out, x).wait()
        return out.view(self.size, *x.shape).movedim(0, -2).reshape(*x.shape[:-1], self.size * x.shape[-1])

    def broadcast(self, x: torch.Tensor, on_cpu: bool = False) -> torch.Tensor:
        """Rank 0's `x` into every rank's `x`."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        (self.cpu_group if on_cpu else self.device_group).broadcast([x], options).wait()
        return x

    def min(self, value: int) -> int:
        """The smallest `value` over the ranks (memory planning: the tightest rank decides)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.MIN
        self.cpu_group.allreduce([t], options).wait()
        return int(t)


def kv_heads_per_rank(num_kv_heads: int, size: int) -> int:
    """KV heads each rank holds: an equal part, or one replicated head when there are fewer than ranks."""
    return max(1, num_kv_heads // size)


def tensor_parallel_problem(num_heads: int, num_kv_heads: int, intermediate_size: int, size: int) -> str | None:
    """Why a model with these sizes cannot be split over `size` ranks, or None."""
    def fits() -> list[int]:
        return [d for d in range(1, num_heads + 1) if num_heads % d == 0 and intermediate_size % d == 0
                and (num_kv_heads % d == 0 or d % num_kv_heads == 0)]
    if num_heads % size or intermediate_size % size or (num_kv_heads % size and size % num_kv_heads):
        return (f"tensor_parallel_size {size} does not divide this model: {num_heads} attention heads, "
                f"{num_kv_heads} KV heads, intermediate_size {intermediate_size}; "
                f"use one of {', '.join(map(str, fits()))}")
    return None


def connect(rank: int, size: int, store: dist.Store, device: torch.device) -> TensorParallelGroup:
    """Join the engine's groups through `store` (rank 0 hosts it); blocks until every rank has."""
    cpu_group = dist.ProcessGroupGloo(dist.PrefixStore("cpu", store), rank, size, IDLE_TIMEOUT)
    if device.type == "cuda":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = COLLECTIVE_TIMEOUT
        device_group = dist.ProcessGroupNCCL(dist.PrefixStore("nccl", store), rank, size, options)
    else:
        device_group = dist.ProcessGroupGloo(dist.PrefixStore("gloo", store), rank, size, COLLECTIVE_TIMEOUT)
    group = TensorParallelGroup(rank, size, device_group, cpu_group)
    group.min(0)  # every rank is connected past this point
    return group


def rank_device(device: str, rank: int) -> torch.device:
    """cuda -> cuda:rank, cuda:k -> cuda:k+rank; cpu stays cpu."""
    d = torch.device(device)
    if d.type != "cuda":
        return d
    return torch.device("cuda", (d.index or 0) + rank)


_building: contextvars.ContextVar[TensorParallelGroup] = contextvars.ContextVar("tensor_parallel_group",
                                                                                 default=TensorParallelGroup())


@contextlib.contextmanager
def building(group: TensorParallelGroup) -> Iterator[None]:
    """Layers made inside take their shard of `group`, as tensors made inside `torch.device(d)` land
    on d: read once, when a layer is built, so models never mention ranks."""
    token = _building.set(group)
    try:
        yield
    finally:
        _building.reset(token)


def building_group() -> TensorParallelGroup:
    return _building.get()
