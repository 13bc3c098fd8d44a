"""A data-parallel fit on a list of devices, from one process.

``ASTClassifier(device=["cuda:0", "cuda:1"]).fit(X, y)`` starts one worker
process per device (``torch.multiprocessing``, spawn), which meet through a
file in a temporary directory (``init_method="file://..."``: no port to pick,
so no race for one) and train as the ranks of a torchrun job do
(:mod:`skast._distributed`); rank 0 writes the fitted estimator to a file,
which the caller's estimator takes over. ``["cpu", "cpu"]`` does the same on
gloo.

The job (the estimator, ``X``, ``y``) is pickled once to a file that every
worker reads. An error in a worker is raised in the caller: the first one
raised (a lost peer is the consequence, not the cause). A Ctrl-C in the
caller (a terminal's reaches the workers too; a notebook's only the caller)
is passed on to the workers, which stop after the same batch: the caller's
estimator is then fitted as after an interrupted ``fit``, with its warning.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["check_devices", "fit_on_devices"]


def check_devices(spec) -> list[torch.device]:
    """The devices of a ``device`` list to train on: those of
    :func:`skast._runtime.resolve_devices` (which reads every ``device``),
    where training adds that they are all CPUs (gloo) or distinct CUDA
    devices (NCCL).

    Examples
    --------
    >>> from skast._spawned import check_devices
    >>> check_devices(["cpu", "cpu"])
    [device(type='cpu'), device(type='cpu')]
    """
    from skast._runtime import resolve_devices

    devices = resolve_devices(spec)
    kind = devices[0].type  # resolve_devices refuses a mix of types
    if kind not in ("cpu", "cuda"):
        raise ValueError(
            f"device={list(map(str, spec))!r}: a list of devices trains on CPUs "
            "(gloo) or on CUDA devices (NCCL), not on other devices"
        )
    if kind == "cuda":
        devices = [torch.device("cuda", d.index or 0) for d in devices]
        if len(set(devices)) < len(devices):
            raise ValueError(
                f"device={list(map(str, spec))!r}: each GPU may appear only once"
            )
    return devices


def fit_on_devices(est, devices, method: str, X, y, **kwargs):
    """``est.<method>(X, y, **kwargs)`` on ``devices``, one worker each;
    ``est`` ends fitted as rank 0's copy (its ``device`` stays the list)."""
    import torch.multiprocessing as mp

    from skast._distributed import _launched, grouped
    from skast._runtime import device_names, resolve_devices

    if _launched() or grouped():
        raise ValueError(
            f"device={est.device!r}: a list of devices starts its own workers; "
            "under torchrun (or with a process group) give each rank one device"
        )
    with tempfile.TemporaryDirectory(prefix="skast-fit-") as tmp:
        tmp = Path(tmp)
        try:
            with open(tmp / "job.pkl", "wb") as fh:
                pickle.dump((est, method, X, y, kwargs), fh)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise TypeError(
                f"device={est.device!r}: the estimator, X and y go to the "
                f"workers pickled, and these do not pickle: {err}"
            ) from err
        context = mp.start_processes(
            _worker,
            args=(str(tmp), [str(d) for d in devices]),
            nprocs=len(devices),
            join=False,
            start_method="spawn",
        )
        try:
            with _passed_on(context.processes):
                while not context.join():
                    pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            first = _first_error(tmp)
            if first is not None:
                raise first from err
            raise RuntimeError(f"a training worker failed: {err}") from err
        with open(tmp / "fitted.pkl", "rb") as fh:
            fitted, caught = pickle.load(fh)
    device = est.device
    est.__dict__.clear()
    est.__dict__.update(fitted.__dict__)
    est.device = device
    # predicts on every device of the list, as a list's prediction does
    # (model_ is on the first: rank 0's)
    est.device_ = device_names(device, resolve_devices(device))
    for message, category in caught:  # as from the caller's fit
        warnings.warn(message, category, stacklevel=5)
    return est


def _worker(rank: int, tmp: str, devices: list[str]) -> None:
    """Rank ``rank`` of the fit in ``tmp``: join the group, fit, and (rank
    0) write the fitted estimator; an error goes to a file first."""
    import torch.distributed as dist

    from skast._distributed import _collective, backend_of, timeout

    tmp = Path(tmp)
    device = torch.device(devices[rank])
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        elif "OMP_NUM_THREADS" not in os.environ:  # the cores, shared
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(devices)))
        with open(tmp / "job.pkl", "rb") as fh:
            est, method, X, y, kwargs = pickle.load(fh)
        with _collective(None, "the rendezvous of the workers"):
            dist.init_process_group(
                init_method=(tmp / "rendezvous").as_uri(),
                rank=rank,
                world_size=len(devices),
                timeout=timeout(),
                **backend_of(device),
            )
        est.device = str(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            getattr(est, method)(X, y, **kwargs)
        if rank == 0:
            caught = [(str(w.message), w.category) for w in caught]
            part = tmp / "fitted.pkl.part"
            with open(part, "wb") as fh:
                pickle.dump((est, caught), fh)
            part.rename(tmp / "fitted.pkl")
        dist.barrier()  # rank 0's file is written before any rank exits
    except BaseException as err:
        _write_error(tmp, rank, err)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _write_error(tmp: Path, rank: int, err: BaseException) -> None:
    try:
        payload = pickle.dumps((time.time(), err))
        pickle.loads(payload)
    except Exception:  # an exception that does not pickle: its text
        payload = pickle.dumps((time.time(), RuntimeError(f"rank {rank}: {err!r}")))
    (tmp / f"error-{rank}.pkl").write_bytes(payload)


def _first_error(tmp: Path) -> BaseException | None:
    """The error a worker raised first, if any wrote one."""
    errors = []
    for path in tmp.glob("error-*.pkl"):
        with contextlib.suppress(Exception):
            errors.append(pickle.loads(path.read_bytes()))
    return min(errors, key=lambda e: e[0])[1] if errors else None


@contextlib.contextmanager
def _passed_on(processes) -> Iterator[None]:
    """While the workers run, a Ctrl-C in this process is sent on to them
    (they stop after the same batch) instead of stopping the wait."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for process in processes:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(process.pid, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
