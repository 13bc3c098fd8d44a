"""Inference on several devices at once: one model replica per device, fed by
one DataLoader.

:func:`evaluate_on_devices` is what :meth:`skast._base.ASTBase._forward_batches`
runs when ``device`` is a list. The calling thread reads the batches (the one
:func:`skast._batches.load_batches`, whose workers decode files for every
device) and deals them out in turn: batch ``i`` goes to device ``i mod N``,
through a short queue per device. One thread per device computes its
batches' features and runs :func:`skast._runtime.evaluate` with its replica
and its own out-of-memory halving, on its device's current stream (a device
listed twice shares it), writing into one shared :class:`skast._runtime.Rows`:
the output is in input order, and which device computes which clip does not
depend on timing. torch releases the GIL in its kernels, so the threads'
devices run at the same time.

:func:`replicas` makes the replicas: the model itself for the first device
(where it is), copies for the others, kept (in a table keyed weakly by the
model, never pickled with the estimator) until the model's weights change.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
from collections.abc import Callable

import numpy as np
import torch

from skast._derived import Derived
from skast._runtime import Rows, evaluate

__all__ = ["evaluate_on_devices", "replicas"]

# model -> its copies on the other devices, kept while its weights and the
# devices are the same
_COPIES = Derived()
# seconds between checks, while waiting on a queue, of whether to stop
_POLL = 0.05


def replicas(model: torch.nn.Module, devices: list[torch.device]) -> list:
    """``model`` (for ``devices[0]``, where it is) and a copy of it on each
    other device, in eval mode.

    The copies hold the model's weights (sharing their memory where a copy
    is on the model's own device) and share the model's hooks: a forward
    hook registered on ``model`` or one of its submodules, before or after
    the copies were made, runs for the copies too, with the copy's module as
    its first argument. The copies are made once and kept while the model's
    parameters and buffers are the same tensors, unchanged in place.

    Parameters
    ----------
    model : torch.nn.Module
        On ``devices[0]``.
    devices : list of torch.device
        One per replica; devices may repeat.

    Returns
    -------
    list of torch.nn.Module
        One per device, ``model`` first.

    Examples
    --------
    >>> import torch
    >>> from skast._replicas import replicas
    >>> model = torch.nn.Linear(3, 2)
    >>> first, second = replicas(model, [torch.device("cpu")] * 2)
    >>> first is model, second is model, torch.equal(second.weight, model.weight)
    (True, False, True)
    >>> replicas(model, [torch.device("cpu")] * 2)[1] is second  # kept
    True
    """
    others = tuple(map(str, devices[1:]))

    def make():
        return [_copy(model, device) for device in devices[1:]]

    return [model, *_COPIES.get(model, "replicas", make, extra=others)]


def _copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A deep copy of ``model`` on ``device`` that shares its hooks: its
    tensors made on ``device`` directly (never a second copy on the model's
    device), its hook tables the model's own."""
    memo = {}
    for module in model.modules():
        for name, value in vars(module).items():
            if "hooks" in name and isinstance(value, dict):
                memo[id(value)] = value
    for param in model.parameters():
        memo[id(param)] = torch.nn.Parameter(
            param.detach().to(device), requires_grad=param.requires_grad
        )
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.detach().to(device)
    return copy.deepcopy(model, memo).to(device).eval()


def evaluate_on_devices(
    models: list,
    fn: Callable,
    batches,
    n: int,
    *,
    devices: list[torch.device],
    dtype: torch.dtype | None,
    featurize: Callable,
    depth: int = 2,
) -> np.ndarray:
    """:func:`skast._runtime.evaluate` on several devices: float32 ``(n, k)``.

    Batch ``i`` of ``batches`` runs on ``devices[i % len(devices)]``: in that
    device's thread, ``featurize(batch, device)`` gives its ``(indices, x)``
    on the device and ``fn(models[i % len(devices)], x)`` its ``(B, k)``
    outputs. The calling thread reads ``batches`` and hands them out; at most
    ``depth`` wait for each device. The first error, in any thread, stops
    every thread and is raised here with its own type once they have all
    ended; ``batches`` is closed (its DataLoader workers end) in any case.

    Parameters
    ----------
    models : list of torch.nn.Module
        One per device, on it (see :func:`replicas`).
    fn : callable
        ``(model, x) -> (B, k)`` outputs.
    batches : iterable
        The batches, as ``featurize`` takes them.
    n : int
        Number of output rows.
    devices : list of torch.device
        Where each model is.
    dtype : torch.dtype or None
        The autocast dtype (``None``: float32 without autocast).
    featurize : callable
        ``(batch, device) -> (indices, x)``, ``x`` on ``device``; called in
        the device's thread.
    depth : int, default=2
        Batches read ahead for each device.

    Returns
    -------
    ndarray of shape (n, k), dtype float32
        Row ``j`` is the output of input position ``j``.

    Examples
    --------
    >>> import torch
    >>> from skast._replicas import evaluate_on_devices, replicas
    >>> devices = [torch.device("cpu")] * 2
    >>> models = replicas(torch.nn.Linear(3, 2), devices)
    >>> batches = [([0, 1], torch.ones(2, 3)), ([2], torch.zeros(1, 3))]
    >>> out = evaluate_on_devices(
    ...     models, lambda model, x: model(x), batches, 3, devices=devices,
    ...     dtype=None, featurize=lambda batch, device: batch)
    >>> out.shape
    (3, 2)
    """
    rows = Rows(n)
    stop = threading.Event()
    errors: list[BaseException] = []
    inboxes = [queue.Queue(maxsize=depth) for _ in devices]

    def run(k: int) -> None:
        device, model = devices[k], models[k]

        def mine():
            while not stop.is_set():
                batch = inboxes[k].get()
                if batch is None or stop.is_set():
                    return
                yield featurize(batch, device)

        try:
            with _on(device):
                evaluate(
                    model,
                    lambda x: fn(model, x),
                    mine(),
                    n,
                    device=device,
                    dtype=dtype,
                    rows=rows,
                )
        except BaseException as err:  # raised in the calling thread
            errors.append(err)
            stop.set()

    threads = [
        threading.Thread(target=run, args=(k,), name=f"skast-{device}-{k}", daemon=True)
        for k, device in enumerate(devices)
    ]
    for thread in threads:
        thread.start()
    try:
        for i, batch in enumerate(batches):
            k = i % len(devices)
            if not _hand(inboxes[k], batch, threads[k], stop):
                break  # a thread failed
        for inbox, thread in zip(inboxes, threads):
            _hand(inbox, None, thread, stop)  # no more batches
    except BaseException:  # reading a batch failed, or an interrupt
        stop.set()
        raise
    finally:
        for inbox in inboxes:  # wake any thread still waiting for a batch
            with contextlib.suppress(queue.Full):
                inbox.put_nowait(None)
        for thread in threads:
            thread.join()
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if errors:
        raise errors[0]
    return rows.array


def _hand(inbox: queue.Queue, item, thread: threading.Thread, stop) -> bool:
    """Put ``item`` in ``inbox`` once it has room; ``False`` (not put) if
    ``stop`` is set or the thread that reads it has ended first."""
    while not stop.is_set() and thread.is_alive():
        try:
            inbox.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _on(device: torch.device):
    """The thread's current CUDA device set to ``device`` (a no-op elsewhere)."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()
