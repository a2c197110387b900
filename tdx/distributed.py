"""Data-parallel training over torch.distributed, for both engines.

`tdx train EXP distributed.world_size=N` starts N worker processes on this machine (or
`world_size / nnodes` on each of `nnodes` machines, each started with its
`distributed.node_rank` and the same `master_addr`), each one rank of one process group
(gloo on CPU, nccl on GPUs). Under `torchrun` tdx starts no processes: every process
torchrun made is a rank, taken from RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR.

The fairseq engine hands the ranks to fairseq's own data-parallel Trainer (which shards
the batches and all-reduces gradients); plain-PyTorch recipes use `wrap` (DDP) and
`shard` (this rank's slice of a batch every rank draws alike). Only rank 0 writes the run
folder. If a rank dies before its work is done, the launcher stops the others at once
and the run is `failed` (one dying as it exits, its work done, is only warned about); a
rank stuck in a collective gives up after `distributed.timeout_s`.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger("tdx")


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def master(self) -> bool:
        return self.rank == 0


WORLD = World()  # this process's place in the job (set by `init`)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def init(rank: int, size: int, local_rank: int, backend: str, init_method: str,
         timeout_s: float) -> None:
    """Join the process group as `rank` of `size` (no-op for a single process)."""
    # in place: modules that imported WORLD before this (an engine imported to check a
    # config) see this process's rank too
    WORLD.rank, WORLD.size, WORLD.local_rank = rank, size, local_rank
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank,
                                world_size=size,
                                timeout=datetime.timedelta(seconds=timeout_s))


def init_from_env(backend: str, timeout_s: float) -> None:
    init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
         int(os.environ.get("LOCAL_RANK", 0)), backend, "env://", timeout_s)


def shutdown() -> None:
    """Leave the process group (WORLD still says which rank this process was)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------- for recipes

def shard(batch: Tensor) -> Tensor:
    """This rank's rows of a batch that every rank built alike (first dimension)."""
    return batch[WORLD.rank::WORLD.size] if WORLD.size > 1 else batch


def wrap(module: nn.Module) -> nn.Module:
    """DistributedDataParallel over the process group (CPU or the rank's GPU)."""
    if WORLD.size == 1:
        return module
    return nn.parallel.DistributedDataParallel(module)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def mean(value: float) -> float:
    """The mean of a number over the ranks (every rank must call it)."""
    if WORLD.size == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / WORLD.size


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (e.g. a stop signal one rank received)."""
    if WORLD.size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def barrier() -> None:
    if WORLD.size > 1:
        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. prepares cached data), the others after it."""
    if WORLD.size > 1 and not WORLD.master:
        dist.barrier()
    yield
    if WORLD.size > 1 and WORLD.master:
        dist.barrier()


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if WORLD.size == 1:
        return [value]
    out: list[Any] = [None] * WORLD.size
    dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's `value`, on every rank."""
    if WORLD.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def checksum(module: nn.Module) -> str:
    """A short fingerprint of the parameters (equal on all ranks after a DDP update)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(unwrap(module).parameters()):
        total += (p.detach().double().flatten() * (1 + torch.arange(p.numel()) % 7)).sum() \
            * (i + 1)
    return f"{float(total):.10e}"


# ------------------------------------------------------------- launcher

def threads_per_rank(local_ranks: int) -> int:
    """CPU threads for each local rank: the cores split evenly (oversubscribed OpenMP
    threads on CPU run many times slower than fewer threads)."""
    return max(1, (os.cpu_count() or 1) // local_ranks)


def _rank_main(local_rank: int, worker: Any, done: Any, *args: Any) -> None:
    """A spawned rank: run worker(local_rank, *args), mark its work done, leave the group
    and exit at once. A rank's work is finished (and rank 0's run folder written) before
    it leaves, so the interpreter's teardown - where gloo's threads have been seen to abort
    a finished rank ('terminate called without an active exception') - is skipped."""
    try:
        worker(local_rank, *args)
        done[local_rank] = 1
    finally:
        shutdown()
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _why(ctx: Any, index: int) -> str:
    """How local rank `index` ended: a signal, an exception (its traceback is logged) or
    an exit code."""
    code = ctx.processes[index].exitcode
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    error_file = ctx.error_files[index]
    if os.access(error_file, os.R_OK):
        with open(error_file, "rb") as fh:
            trace = pickle.load(fh)
        log.error("local rank %d failed:\n%s", index, trace)
        return "raised: " + trace.strip().splitlines()[-1]
    return f"exited with code {code}"


def _stop(processes: list[Any], grace_s: float) -> None:
    """SIGTERM the live ranks (they save and stop), then SIGKILL any left after grace_s."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, end - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join()


def launch(worker: Any, args: tuple, nprocs: int, poll_s: float = 0.5,
           grace_s: float = 30.0) -> str | None:
    """Run worker(local_rank, *args) in `nprocs` spawned processes and wait. If a rank dies
    (non-zero exit or a signal) before its work is done, the others are stopped at once
    and the reason returned; None if all finished their work. A rank that dies while
    exiting after its work is done only earns a warning. SIGTERM/SIGINT here are passed
    on to the ranks."""
    import multiprocessing.connection

    import torch.multiprocessing as mp

    done = mp.get_context("spawn").RawArray("b", nprocs)  # set by each rank when finished
    ctx = mp.start_processes(_rank_main, args=(worker, done, *args), nprocs=nprocs,
                             join=False, start_method="spawn")
    processes = ctx.processes

    def forward(signum: int, _frame: Any) -> None:
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            live = [p.sentinel for p in processes if p.exitcode is None]
            if live:
                multiprocessing.connection.wait(live, timeout=poll_s)
            codes = [p.exitcode for p in processes]
            dead = [i for i, c in enumerate(codes) if c not in (None, 0) and not done[i]]
            if dead:
                why = _why(ctx, dead[0])
                _stop(processes, grace_s)
                return f"local rank {dead[0]} {why}; the other ranks were stopped"
            if all(c is not None for c in codes):
                for i, c in enumerate(codes):
                    if c:
                        log.warning("local rank %d %s while exiting, after its work was "
                                    "done; the run is complete", i, _why(ctx, i))
                return None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
