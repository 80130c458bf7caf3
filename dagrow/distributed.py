"""Growth under data-parallel training with ``torch.distributed`` (DDP); see docs/distributed.md.

Every rank holds the same model and takes its share of the same global minibatch. A growth step
under :class:`Ranks` (``Grower(..., distributed=True)``) runs in lockstep on every rank:

1. each rank measures the statistics of its share of the growth batch and :meth:`Ranks.all_reduce`
   sums them (one all-reduce of every sum and of the count n and the loss sum): the global statistics,
   identical on every rank;
2. every rank runs the strategy on them; each loss of the line search and of the rollback check is the
   global mean over the shares (:meth:`Ranks.global_loss`, one all-reduce of ``[sum, n]`` per loss);
3. rank 0's plan is broadcast (:meth:`Ranks.broadcast_plan`) and every rank replays it, so the models
   stay identical even where two machines would round differently;
4. the caller wraps the grown model in a new ``DistributedDataParallel`` (:func:`wrap`): DDP registers
   its gradient hooks on the parameters it wraps, so a parameter created by growth is synchronised
   only by a new wrapper. The optimizer is updated in place by :func:`dagrow.optim.adopt_parameters`.

Processes start with :func:`launch` (``dagrow grow --nproc N``) or ``torchrun``; :func:`init` reads
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` and sets a timeout on
every collective, so a rank that dies or hangs makes the others fail with :class:`RankError` (which
names the rank) instead of waiting forever.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .losses import LossFn, loss_function
from .plan import Plan
from .stats import Statistics

Batch = tuple[Tensor, Tensor]
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class RankError(RuntimeError):
    """A rank failed, or a collective failed because another rank stopped or did not answer."""


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (torchrun, ``dagrow grow --nproc``); 1 without it."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def init(timeout: float = 300.0, device: str | torch.device = "cpu") -> Ranks:
    """Join the process group described by the environment (gloo on CPU, NCCL on CUDA) with a
    ``timeout`` in seconds on every collective; returns this process's :class:`Ranks`. A process
    group already initialised (by the user) is used as it is."""
    if not dist.is_initialized():
        missing = [k for k in (*ENV, "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(
                f"distributed training needs the environment variables {', '.join(missing)} "
                "(start with torchrun or dagrow grow --nproc N)"
            )
        kind = torch.device(device).type
        if kind == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "nccl" if kind == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except Exception as exc:
            raise RankError(
                f"rank {os.environ['RANK']}: could not join the process group of {os.environ['WORLD_SIZE']} "
                f"at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({exc})"
            ) from None
    return Ranks(timeout=timeout)


def close() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Ranks:
    """This process's place in the default process group and the collectives of a growth step."""

    timeout: float = 300.0

    def __post_init__(self) -> None:
        if not dist.is_initialized():
            raise ValueError("no process group: call dagrow.distributed.init() (or init_process_group) first")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def device(self) -> torch.device:
        """Where the collectives' buffers live (NCCL: this rank's GPU)."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # -- data ---------------------------------------------------------------------------------------

    def shard(self, batch: Batch) -> Batch:
        """This rank's share of a global batch: contiguous slices in rank order (sizes differ by one at
        most when the batch does not divide)."""
        x, y = batch
        return torch.tensor_split(x, self.world_size)[self.rank], torch.tensor_split(y, self.world_size)[
            self.rank
        ]

    def gather(self, batch: Batch) -> Batch:
        """The global batch from every rank's share (in rank order)."""
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, (batch[0].cpu(), batch[1].cpu()))
        device = batch[0].device
        return torch.cat([p[0] for p in parts]).to(device), torch.cat([p[1] for p in parts]).to(device)

    # -- statistics and losses ----------------------------------------------------------------------

    def all_reduce(self, stats: Statistics) -> Statistics:
        """The statistics of every rank's samples: one all-reduce (SUM) of every sum, of n and of the
        loss sum. Keys are taken in sorted order (set and dict order differ between processes)."""
        stores: tuple[dict[Any, Tensor], ...] = (
            stats.pair_sums,
            stats.grad_sums,
            stats.g_sums,
            stats.g_sq_sums,
        )
        keyed = [(i, k) for i, store in enumerate(stores) for k in sorted(store, key=repr)]
        tensors = [stores[i][k] for i, k in keyed]
        device = self.device
        flat = torch.cat(
            [t.reshape(-1).to(device=device, dtype=torch.float64) for t in tensors]
            + [torch.tensor([float(stats.n), stats.loss_sum], dtype=torch.float64, device=device)]
        )
        dist.all_reduce(flat)
        out: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
        at = 0
        for (i, k), t in zip(keyed, tensors, strict=True):
            out[i][k] = flat[at : at + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype)
            at += t.numel()
        n, loss_sum = flat[at:].tolist()
        return Statistics(
            int(round(n)), out[0], out[1], out[2], dict(stats.widths), loss_sum, stats.spec, out[3]
        )

    def global_loss(self, loss: str | LossFn) -> LossFn:
        """``loss`` as the mean over every rank's samples: each call all-reduces ``[n mean, n]``, so
        every rank gets the same value (used for values, never for gradients)."""
        fn = loss_function(loss)

        def global_mean(output: Tensor, target: Tensor) -> Tensor:
            n = target.shape[0]
            local = (
                fn(output, target).detach().to(torch.float64) if n else torch.zeros((), dtype=torch.float64)
            )
            buf = torch.stack([local * n, torch.tensor(float(n), dtype=torch.float64)]).to(self.device)
            dist.all_reduce(buf)
            return (buf[0] / buf[1]).to(output.device)

        return global_mean

    def training_loss(self, loss: str | LossFn, global_n: Callable[[], int]) -> LossFn:
        """The loss whose DDP gradient (the mean of the ranks' gradients) is the gradient of the global
        batch's mean loss even when the shares differ in size: ``mean_r * world_size * n_r / n``."""
        fn = loss_function(loss)

        def scaled(output: Tensor, target: Tensor) -> Tensor:
            n = target.shape[0]
            if n == 0:
                return output.sum() * 0.0  # keeps every parameter in the graph (DDP waits for them)
            return fn(output, target) * (self.world_size * n / global_n())

        return scaled

    def mean(self, value: float) -> float:
        """The mean over ranks of a number."""
        buf = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(buf)
        return float(buf[0]) / self.world_size

    # -- plans --------------------------------------------------------------------------------------

    def broadcast_plan(self, plan: Plan) -> Plan:
        """Rank 0's plan on every rank (actions and report). Every rank made the same plan from the
        same global statistics and losses; taking rank 0's keeps the models identical even where
        ranks would round differently."""
        box: list[Any] = [plan if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()


def rank_error(exc: BaseException, timeout: float) -> RankError:
    """``exc`` as a :class:`RankError` naming this process's rank; a failed collective says that another
    rank stopped or did not answer within ``timeout`` seconds."""
    if isinstance(exc, RankError):
        return exc
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if dist.is_initialized():
        rank, world = str(dist.get_rank()), str(dist.get_world_size())
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _is_collective_error(exc):
        return RankError(
            f"rank {rank} of {world}: a collective operation failed: another rank stopped or did not "
            f"answer within the {timeout:g} s collective timeout ({text})"
        )
    return RankError(f"rank {rank} of {world}: {text}")


def _is_collective_error(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError | TimeoutError | ConnectionError):
        return True
    text = str(exc).lower()
    return any(w in text for w in ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket"))


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in a new ``DistributedDataParallel`` (rank 0's parameters are broadcast to every rank).
    Wrap again after every growth: DDP synchronises only the parameters it was built with."""
    from torch.nn.parallel import DistributedDataParallel

    ref = next(model.parameters())
    ids = [ref.device.index] if ref.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


# --------------------------------------------------------------------------------------------------
# launching N local processes (dagrow grow --nproc N)
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    argv: Sequence[str], nproc: int, *, grace: float = 10.0, log: Callable[[str], None] | None = None
) -> int:
    """Run ``python -m dagrow ARGV`` in ``nproc`` local processes with the environment torchrun gives
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); returns the exit
    status. When a rank fails, the others get ``grace`` seconds to fail by themselves (their collectives
    see the closed connection) and print their messages, then they are stopped."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "dagrow", *argv], env=env))
    failed: tuple[int, int] | None = None
    deadline: float | None = None
    try:
        while any(p.poll() is None for p in procs):
            if failed is None:
                for rank, p in enumerate(procs):
                    if p.returncode not in (None, 0):
                        failed, deadline = (rank, p.returncode), time.monotonic() + grace
                        break
            if deadline is not None and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                deadline = None
            time.sleep(0.05)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    if failed is None:
        codes = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode]
        failed = codes[0] if codes else None
    if failed is not None:
        if log is not None:
            log(f"rank {failed[0]} of {nproc} failed (exit status {failed[1]}); every rank has stopped")
        return 1
    return 0


class DataParallel:
    """The built-in loop's training under DDP: an iterator over this rank's shares of the global
    minibatches of ``stream`` (whose state stays the global one, so a checkpoint resumes the same data
    order), and :meth:`train`, which re-wraps the model in DDP whenever growth replaced it."""

    def __init__(self, ranks: Ranks, stream: Any) -> None:
        self.ranks, self.stream = ranks, stream
        self.global_n = 0  # samples in the global minibatch of the last share
        self.ddp: nn.Module | None = None

    def __iter__(self) -> DataParallel:
        return self

    def __next__(self) -> Batch:
        x, y = next(self.stream)
        self.global_n = int(y.shape[0])
        return self.ranks.shard((x, y))

    def train(
        self, model: nn.Module, opt: torch.optim.Optimizer | None, loss: str | LossFn, steps: int
    ) -> float:
        """``steps`` DDP steps of ``model``; returns the mean training loss over the global batches."""
        from .training import train_steps

        if self.ddp is None or self.ddp.module is not model:
            self.ddp = wrap(model)  # a grown model has new parameters: DDP must register them
        scaled = self.ranks.training_loss(loss, lambda: self.global_n)
        return self.ranks.mean(train_steps(self.ddp, opt, self, scaled, steps))
