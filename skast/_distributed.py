"""Data-parallel fine-tuning on torch.distributed.

Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) or in a process
whose default process group is initialised, :func:`skast._training.train`
runs on every rank with a :class:`Group`: every rank draws the same order of
the epoch's items, takes its share of each batch (:meth:`Group.share`, items
``rank::world``), decodes and featurises only that share, and the gradients
are summed over the ranks so that each optimizer step is the one-process step
on the whole batch (each rank's loss is weighted by its share of the global
batch). Every rank ends with the same weights, history and fitted attributes.
gloo carries the collectives of CPU ranks, NCCL those of CUDA ranks.

The gradients are all-reduced explicitly, in buckets, after each rank's
backward (:meth:`Group.reduce_step`), not by ``DistributedDataParallel``.
DDP launches its bucket all-reduces from autograd hooks during the backward
of the synchronised piece of a step: an out-of-memory error in that backward
would leave this rank with some buckets' collectives launched and the others
not, while its peers wait in theirs, and the retry with smaller pieces could
not rejoin them. Here the backward is local (the out-of-memory retry, and the
size of the pieces, are each rank's own), and every step ends with the same
collectives on every rank: one small all-reduce (the loss, the Ctrl-C flag,
which parameters have gradients) and the gradient buckets. A rank whose share
of a short last batch is empty runs no forward at all and adds zeros. The
price is that communication does not overlap the backward.

A Ctrl-C only sets a flag (:class:`AgreedInterrupt`) that the ranks agree on
at each step and each epoch's end, so that all stop after the same batch; a
rank that dies, or does not answer within the timeout
(:data:`TIMEOUT_ENV`), makes the others raise :class:`PeerLost`.
:func:`fit_on_devices` runs a fit on a list of devices, one spawned worker
per device.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import math
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from skast._recipes import DISTRIBUTED_TIMEOUT
from skast._stopping import Interrupt

__all__ = [
    "TIMEOUT_ENV",
    "AgreedInterrupt",
    "Group",
    "PeerLost",
    "backend_of",
    "current_group",
    "grouped",
    "leader",
    "timeout",
    "training_device",
]

#: Seconds a rank waits for its peers at a collective (default
#: :data:`skast._recipes.DISTRIBUTED_TIMEOUT`), for the process groups skast
#: initialises itself (under torchrun, and for a list of devices).
TIMEOUT_ENV = "SKAST_DISTRIBUTED_TIMEOUT"
#: The gradients are all-reduced in buckets of about this many bytes.
BUCKET_BYTES = 32 * 2**20


class PeerLost(RuntimeError):
    """A collective of a data-parallel fit failed: a peer rank died, was
    killed, or did not answer within the timeout."""


def timeout() -> datetime.timedelta:
    """The collectives' timeout: :data:`TIMEOUT_ENV` seconds if set.

    Examples
    --------
    >>> from skast._distributed import timeout
    >>> timeout().total_seconds() > 0
    True
    """
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return datetime.timedelta(seconds=DISTRIBUTED_TIMEOUT)
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(
            f"{TIMEOUT_ENV}={value!r} must be a positive number of seconds"
        )
    return datetime.timedelta(seconds=seconds)


def _launched(environ=os.environ) -> bool:
    """Whether a launcher (torchrun) made this process one of several ranks."""
    try:
        return int(environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def training_device(device: torch.device, environ=os.environ) -> torch.device:
    """``device`` (resolved), or this rank's GPU under torchrun.

    Under a launcher, an unindexed CUDA device is ``cuda:LOCAL_RANK``, which
    becomes the current CUDA device (so that ``"cuda"`` means it everywhere).
    ``environ``: the launcher's variables (``WORLD_SIZE``, ``LOCAL_RANK``).

    Examples
    --------
    >>> import torch
    >>> from skast._distributed import training_device
    >>> training_device(torch.device("cpu"))
    device(type='cpu')
    """
    if device.type == "cuda" and device.index is None and _launched(environ):
        local = int(environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def current_group(device: torch.device) -> Group | None:
    """This process's data-parallel :class:`Group` for training on
    ``device``; None in a single process.

    An initialised default process group of several ranks is used as it is;
    under a launcher (``WORLD_SIZE > 1``) without one, the group is
    initialised from the launcher's environment (``env://``): NCCL for a
    CUDA device, gloo otherwise, with :func:`timeout`. It stays up for later
    fits of the process and is destroyed at exit.

    Examples
    --------
    >>> import torch
    >>> from skast._distributed import current_group
    >>> current_group(torch.device("cpu")) is None  # one process
    True
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not _launched():
            return None
        with _collective(None, "the rendezvous of the ranks"):
            dist.init_process_group(timeout=timeout(), **backend_of(device))
        atexit.register(_destroy)
    if dist.get_world_size() == 1:
        return None
    nccl = dist.get_backend() == "nccl"
    return Group(dist.get_rank(), dist.get_world_size(), device if nccl else None)


def grouped() -> bool:
    """Whether this process is one rank of an initialised process group.

    Examples
    --------
    >>> from skast._distributed import grouped
    >>> grouped()
    False
    """
    return dist.is_available() and dist.is_initialized()


def leader() -> bool:
    """Whether this process reports a fit's results: rank 0 of a process
    group, or the one process.

    Examples
    --------
    >>> from skast._distributed import leader
    >>> leader()
    True
    """
    return not grouped() or dist.get_rank() == 0


def backend_of(device: torch.device) -> dict:
    """``init_process_group``'s backend (and device) for ranks on ``device``:
    NCCL bound to the rank's GPU, else gloo.

    Examples
    --------
    >>> import torch
    >>> from skast._distributed import backend_of
    >>> backend_of(torch.device("cpu"))
    {'backend': 'gloo'}
    """
    if device.type == "cuda":
        return {"backend": "nccl", "device_id": device}
    return {"backend": "gloo"}


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def _collective(group: Group | None, what: str) -> Iterator[None]:
    """Turn the error of a collective into a :class:`PeerLost` that says
    which rank saw it, what it was doing and which peer it lost."""
    try:
        yield
    except PeerLost:
        raise
    except (RuntimeError, ValueError) as err:  # DistError is a RuntimeError
        if group is None:
            who, peers = "this rank", "its peers"
        else:
            who = f"rank {group.rank} of {group.world}"
            others = [r for r in range(group.world) if r != group.rank]
            peers = f"rank {others[0]}" if len(others) == 1 else "a peer rank"
        raise PeerLost(
            f"{who}: {what} failed: {peers} died, was killed or did not answer "
            f"within the timeout ({timeout().total_seconds():g} s, "
            f"{TIMEOUT_ENV}); see that rank's own error. "
            f"{type(err).__name__}: {err}"
        ) from err


class AgreedInterrupt(Interrupt):
    """The Ctrl-C of one rank of several: :attr:`requested` is the flag the
    ranks agreed on last (:meth:`Group.reduce_step`, :meth:`Group.end_epoch`),
    so that every rank stops after the same batch. A Ctrl-C (or a
    :class:`KeyboardInterrupt` within :meth:`caught`) only marks it
    :attr:`pending`: a rank never leaves a collective half-way.

    Examples
    --------
    >>> from skast._distributed import AgreedInterrupt
    >>> interrupt = AgreedInterrupt()
    >>> with interrupt.caught():
    ...     raise KeyboardInterrupt
    >>> interrupt.pending, interrupt.requested
    (True, False)
    """

    def __init__(self):
        self.pending = False
        self.agreed = False
        super().__init__()

    @property
    def requested(self) -> bool:
        return self.agreed

    @requested.setter
    def requested(self, value: bool) -> None:
        self.pending = self.pending or bool(value)

    def _handler(self, signum, frame) -> None:
        self.pending = True


@dataclasses.dataclass
class Group:
    """One rank's view of a data-parallel fit: its rank, the number of
    ranks, and the device of the collectives' tensors (None: the CPU, for
    gloo)."""

    rank: int
    world: int
    device: torch.device | None = None
    interrupt: AgreedInterrupt = dataclasses.field(default_factory=AgreedInterrupt)

    @property
    def leader(self) -> bool:
        """Whether this is rank 0, the one that reports."""
        return self.rank == 0

    def share(self, batch: Sequence[int]) -> list[int]:
        """This rank's items of a batch (possibly none).

        Examples
        --------
        >>> from skast._distributed import Group
        >>> Group(rank=1, world=2).share([7, 3, 5])
        [3]
        """
        return list(batch[self.rank :: self.world])

    def own_seed(self, seed: int) -> int:
        """The seed of this rank's dropout and augmentation of an epoch
        whose shared seed (the order's) is ``seed``: rank 0's is ``seed``
        itself, as in one process; the others' are independent of it."""
        from skast._training import derive_seed

        return seed if self.rank == 0 else derive_seed(seed, self.rank)

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def _all_reduce(self, values, op, what: str) -> list[float]:
        tensor = self._tensor(values)
        with _collective(self, what):
            dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""
        tensors = [*module.parameters(), *module.buffers()]
        with torch.no_grad(), _collective(self, "the broadcast of the weights"):
            for bucket in _buckets(tensors):
                flat = self._flat(bucket)
                dist.broadcast(flat, src=0)
                self._unflatten(flat, bucket, bucket)

    def reduce_step(self, parameters: Sequence[torch.Tensor], loss: float) -> float:
        """Sum the gradients of ``parameters`` over the ranks, in place (a
        parameter without a gradient on any rank keeps none); agree on
        Ctrl-C; the batch loss (the sum of the ranks' weighted losses)."""
        interrupt = self.interrupt
        present = [float(p.grad is not None) for p in parameters]
        stats = self._all_reduce(
            [loss, float(interrupt.pending), *present],
            dist.ReduceOp.SUM,
            "the all-reduce of a step's loss",
        )
        interrupt.agreed = interrupt.agreed or stats[1] > 0
        reduced = [p for p, n in zip(parameters, stats[2:]) if n > 0]
        for p in reduced:
            if p.grad is None:  # an empty share, or an unused parameter here
                p.grad = torch.zeros_like(p)
        with torch.no_grad(), _collective(self, "the all-reduce of the gradients"):
            pending = []
            for bucket in _buckets(reduced):
                grads = [p.grad for p in bucket]
                flat = self._flat(grads)
                pending.append((dist.all_reduce(flat, async_op=True), flat, grads))
            for work, flat, grads in pending:
                work.wait()
                self._unflatten(flat, grads, grads)
        return stats[0]

    def end_epoch(self, seconds: float) -> float:
        """Agree on Ctrl-C at the end of an epoch; its longest duration."""
        interrupt = self.interrupt
        longest, pending = self._all_reduce(
            [seconds, float(interrupt.pending)],
            dist.ReduceOp.MAX,
            "the agreement at the end of an epoch",
        )
        interrupt.agreed = interrupt.agreed or pending > 0
        return longest

    def sum(self, values: Sequence[float], what: str) -> list[float]:
        """Each of ``values`` summed over the ranks (in float64); ``what``
        names the collective in a lost peer's error."""
        return self._all_reduce(list(values), dist.ReduceOp.SUM, what)

    def agree(self, flag: bool) -> bool:
        """Whether any rank's ``flag`` is set (early stopping's decision)."""
        return self._all_reduce([float(flag)], dist.ReduceOp.MAX, "an agreement")[0] > 0

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` rows of a whole set from each rank's rows of its share
        (item ``i`` of the set is row ``i // world`` of rank ``i % world``),
        on the CPU, the same on every rank."""
        m = -(-n // self.world)
        padded = rows.new_zeros((m, *rows.shape[1:]), device=self.device)
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        with _collective(self, "the gathering of the validation outputs"):
            dist.all_gather(parts, padded)
        stacked = torch.stack(parts, 1)  # (m, world, ...)
        return stacked.reshape(m * self.world, *rows.shape[1:])[:n].cpu()

    def _flat(self, tensors) -> torch.Tensor:
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        return flat if self.device is None else flat.to(self.device)

    @staticmethod
    def _unflatten(flat, like, into) -> None:
        start = 0
        for t, out in zip(like, into):
            out.copy_(flat[start : start + t.numel()].view_as(t))
            start += t.numel()


def _buckets(tensors) -> Iterator[list[torch.Tensor]]:
    """``tensors`` in order, in runs of one dtype of about
    :data:`BUCKET_BYTES` each."""
    bucket, size = [], 0
    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or size >= BUCKET_BYTES):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket
