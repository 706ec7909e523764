"""Data parallelism for `train` and `compare` under `torchrun` or `accelerate launch` (DDP; NCCL on GPUs, gloo on CPU).

Both launchers start one process per device and set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; the standard
torchrun rendezvous flags (`--nnodes`, `--node-rank`, `--rdzv-endpoint`) make the same run span machines.
The process group and `DistributedDataParallel` are torch's own; Accelerate's `prepare()` is not used because
it shards a DataLoader, while batches here come from the token-budget sampler and must stay identical to a
single-process run: every step draws one *global* batch (budget x processes) from (seed, epoch), each process
takes every N-th of its rows, and the loss is normalised by the global batch's class weights, so N processes
take exactly the optimizer steps of one process with N times the budget.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lorabench.core.errors import LorabenchError, first_line


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This process's share of a batch: every size-th row, so long and short rows spread evenly."""
        return rows[self.rank :: self.size]


def world() -> World:
    """The launch this process belongs to, joining its process group on first use (a no-op when run alone)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    current = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # torch._dynamo (which the optimizer loads) holds references to every process group that exists when it
        # is imported, so `_leave_process_group` could not free one created earlier: import it first.
        import torch._dynamo  # noqa: F401

        if torch.cuda.is_available():
            torch.cuda.set_device(current.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_process_group)
    return current


def _leave_process_group() -> None:
    """Free the process group, and so stop its worker threads, while Python is still whole. A group alive at
    interpreter shutdown can have a worker thread release a finished collective's tensors then: it needs the GIL,
    is stopped mid-release, and the process aborts after its work is done (SIGABRT, 'terminate called without an
    active exception'; a 2-process probe of compare's collectives ended that way in 10 of 40 launches)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model, current: World):
    """DistributedDataParallel over the trainable (LoRA + head) parameters; the model itself when run alone."""
    if not current.distributed:
        return model
    # the buffers (position ids) never change: no need to sync them before every forward
    return DistributedDataParallel(
        model, device_ids=[current.local_rank] if torch.cuda.is_available() else None, forward_sync_buffers=False
    )


def sum_all(value: float, current: World) -> float:
    """The sum of `value` over all processes."""
    if not current.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    if torch.cuda.is_available():
        total = total.to(current.device())
    dist.all_reduce(total)
    return float(total.item())


def gather_all(value, current: World) -> list:
    """Every process's `value`, in rank order, on every process."""
    if not current.distributed:
        return [value]
    parts: list = [None] * current.size
    dist.all_gather_object(parts, value)
    return parts


def gather_rows(values: np.ndarray, rows: np.ndarray, total: int, current: World) -> np.ndarray:
    """Reassemble per-process results (`values[i]` belongs to row `rows[i]`) into one array of `total` rows."""
    if not current.distributed:
        return values
    merged = np.zeros((total, *values.shape[1:]), dtype=values.dtype)
    for part_rows, part_values in gather_all((rows, values), current):
        merged[part_rows] = part_values
    return merged


def broadcast(value, current: World):
    """Rank 0's `value`, on every process."""
    if not current.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(function, current: World):
    """Run `function` on rank 0 only (a write, a check of the output) and return its result on every process,
    or raise its error on every process, so all of them stay in step whatever happens."""
    if not current.distributed:
        return function()
    if current.is_main:
        try:
            result = function()
        except Exception as err:
            broadcast(("error", first_line(err)), current)
            raise
        return broadcast(("ok", result), current)[1]
    status, value = broadcast(None, current)
    if status == "error":
        raise LorabenchError(value)
    return value
