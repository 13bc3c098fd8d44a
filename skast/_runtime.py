"""Devices (one or a list), precision, the evaluation loop with its
out-of-memory fallback, progress bars and :class:`DeviceWarning`.

Small functions the estimators share; nothing here knows of scikit-learn.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from sklearn.utils._param_validation import InvalidParameterError

from skast._inference import low_precision_weights

T = TypeVar("T")

__all__ = [
    "DeviceWarning",
    "resolve_device",
    "resolve_devices",
    "device_names",
    "resolve_autocast",
    "autocast",
    "device_on_load",
    "is_out_of_memory",
    "retry_halving_on_oom",
    "map_in_pieces",
    "evaluate",
    "Rows",
    "HostCopy",
    "progress_bar",
]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: ``None`` means CUDA when available, else the CPU.

    Parameters
    ----------
    device : str, torch.device or None
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        An unknown device string, or a device that is not available here.

    Examples
    --------
    >>> from skast._runtime import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a valid torch device") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here")
    return dev


def resolve_devices(spec) -> list[torch.device]:
    """The devices to run on: one for a single ``device``, one per entry of a list.

    The one place a ``device`` parameter is read: :func:`resolve_device` of a
    single spec, or of each entry of a list or tuple (entries may repeat, as
    in ``["cpu", "cpu"]``). A list's devices must all be of one type, so that
    one precision holds on every device.

    Parameters
    ----------
    spec : str, torch.device, None, or list or tuple of str or torch.device
        ``None``/``"auto"``, ``"cpu"``, ``"cuda:1"``..., or a non-empty list
        of them.

    Returns
    -------
    list of torch.device
        One device for a single spec, else one per entry, in order.

    Raises
    ------
    ValueError
        An empty list, a device that is not available here, or a list mixing
        device types.
    sklearn.utils._param_validation.InvalidParameterError
        An entry that is not a device name or a :class:`torch.device` (naming
        its position); a ``ValueError`` and a ``TypeError``.

    Examples
    --------
    >>> from skast._runtime import resolve_devices
    >>> resolve_devices("cpu")
    [device(type='cpu')]
    >>> resolve_devices(["cpu", "cpu"])
    [device(type='cpu'), device(type='cpu')]
    """
    if not isinstance(spec, (list, tuple)):
        return [resolve_device(spec)]
    if not spec:
        raise ValueError(
            f"device={spec!r}: a list of devices must hold at least one device"
        )
    devices = []
    for i, entry in enumerate(spec):
        if entry is None or not isinstance(entry, (str, torch.device)):
            # a ValueError and a TypeError, as scikit-learn's parameter checks
            raise InvalidParameterError(
                f"device[{i}]={entry!r}: each entry of a device list must be a "
                "device name such as 'cuda:0' or a torch.device"
            )
        try:
            devices.append(resolve_device(entry))
        except ValueError as err:
            raise ValueError(f"device[{i}]: {err}") from err
    types = sorted({d.type for d in devices})
    if len(types) > 1:
        raise ValueError(
            f"device={list(map(str, spec))!r} mixes device types {types}; the "
            "devices of a list must all be of one type"
        )
    return devices


def device_names(spec, devices: list[torch.device]) -> str | list[str]:
    """The fitted ``device_`` of :func:`resolve_devices`: a name for a
    single spec, the list of names for a list.

    Examples
    --------
    >>> import torch
    >>> from skast._runtime import device_names
    >>> device_names("cpu", [torch.device("cpu")])
    'cpu'
    >>> device_names(("cpu",), [torch.device("cpu")])
    ['cpu']
    """
    names = [str(d) for d in devices]
    return names if isinstance(spec, (list, tuple)) else names[0]


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain fp32).

    ``"auto"`` is bfloat16 on CUDA devices that support it, float16 on older
    CUDA devices and float32 elsewhere.

    Examples
    --------
    >>> import torch
    >>> from skast._runtime import resolve_autocast
    >>> resolve_autocast("auto", torch.device("cpu")) is None
    True
    >>> resolve_autocast("bfloat16", torch.device("cpu"))
    torch.bfloat16
    """
    if precision == "float32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision in ("bfloat16", "float16"):
        return getattr(torch, precision)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class DeviceWarning(UserWarning):
    """A fitted estimator runs on another device than the one it was fitted on.

    Warned when an estimator is loaded (``joblib.load``, ``pickle.load``)
    where the device it was fitted on is missing: it runs on the CPU.

    Examples
    --------
    >>> import warnings
    >>> from skast import DeviceWarning
    >>> issubclass(DeviceWarning, UserWarning)
    True
    >>> with warnings.catch_warnings():  # load on the CPU without a word
    ...     warnings.simplefilter("ignore", DeviceWarning)
    """


def device_on_load(device: str | list[str]) -> str | list[str]:
    """The device a fitted estimator restored from a pickle runs on.

    The device it was fitted on when that exists here; otherwise the CPU,
    with a :class:`DeviceWarning` that points at the code that loaded the
    estimator (the first frame outside skast, joblib and pickle). For a list
    of devices (see :func:`resolve_devices`), those of its devices that
    exist here, with the warning naming the missing ones; the CPU, with the
    warning, when none does.

    Examples
    --------
    >>> from skast._runtime import device_on_load
    >>> device_on_load("cpu")
    'cpu'
    >>> device_on_load(["cpu", "cpu"])
    ['cpu', 'cpu']
    """
    if isinstance(device, str):
        if _usable(device):
            return device
        kept, what = "cpu", f"device '{device}', which is not available here"
    else:
        missing = [d for d in device if not _usable(d)]
        if not missing:
            return list(device)
        kept = [d for d in device if _usable(d)] or "cpu"
        what = f"devices {list(device)!r}, of which {missing!r} are not available here"
    where = "the CPU" if kept == "cpu" else repr(kept)
    warnings.warn(
        f"this estimator was fitted on {what}; it will run on {where}. Use "
        "set_params(device=...) and refit to choose another device.",
        DeviceWarning,
        stacklevel=_stacklevel_outside(_loader_paths()),
    )
    return kept


def _usable(device: str) -> bool:
    """Whether the device named ``device`` exists here."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return (
            torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
        )
    if dev.type == "mps":
        return torch.backends.mps.is_available()
    return dev.type == "cpu"


def _loader_paths() -> tuple[str, ...]:
    """Where the frames between a user's ``load`` call and ours come from:
    skast itself, the pickle module and joblib (when imported)."""
    paths = [os.path.dirname(__file__) + os.sep, pickle.__file__]
    joblib = sys.modules.get("joblib")
    if joblib is not None:
        paths.append(os.path.dirname(joblib.__file__) + os.sep)
    return tuple(paths)


def _stacklevel_outside(paths: tuple[str, ...]) -> int:
    """The ``stacklevel`` of the first frame, from the caller of this
    function's caller outwards, whose file is not under ``paths``."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(paths):
        frame, level = frame.f_back, level + 1
    return level


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device out-of-memory error."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def retry_halving_on_oom(attempt: Callable[[int], T], size: int, device):
    """``(attempt(size), size)`` for the first ``size`` that runs.

    A device out-of-memory error halves ``size`` (rounding up) and calls
    ``attempt`` again; out of memory at size 1, and any other error, is raised.
    """
    while True:
        try:
            return attempt(size), size
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not is_out_of_memory(err) or size == 1:
                raise
        # outside the except clause, whose traceback holds the failed tensors
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        size = (size + 1) // 2


def map_in_pieces(fn: Callable, x, device, limit: int | None = None):
    """``([fn(piece), ...], limit)`` over ``x`` in pieces of at most ``limit``
    rows (``None``: all of ``x`` at once).

    A device out-of-memory error halves the pieces and goes on from the piece
    that failed. The returned ``limit`` is the one to start the next call
    from: the size that ran after an out-of-memory error, else ``limit``.
    """
    n = len(x)
    outputs = []
    size = min(n, limit or n)
    halved = False
    start = 0
    while start < n:
        piece = min(size, n - start)
        output, ran = retry_halving_on_oom(
            lambda k, start=start: fn(x[start : start + k]), piece, device
        )
        outputs.append(output)
        start += ran
        if ran < piece:
            size, halved = ran, True
    return outputs, (size if halved else limit)


def evaluate(
    model: torch.nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    batches,
    n: int,
    *,
    device,
    dtype: torch.dtype | None,
    rows: Rows | None = None,
) -> np.ndarray:
    """The one evaluation loop: ``fn`` over every batch; float32 ``(n, k)``.

    ``model`` is in eval mode while the loop runs (its mode is restored
    after), there are no gradients, and ``fn`` runs under autocast to
    ``dtype``, with ``model``'s copy of its weights in ``dtype``
    (:func:`skast._inference.low_precision_weights`: made once and kept, for
    a model in eval mode; for one in training, made for this call).
    ``batches`` yields ``(indices, x)``: positions in the output and the
    inputs, already on ``device``. A device out-of-memory error halves
    the pieces a batch is run in (:func:`map_in_pieces`) and later batches
    start from the size that fitted. On CUDA each batch's outputs are copied
    back asynchronously (:class:`HostCopy`) and collected after the next batch
    is queued, so the device never waits for the host.

    Parameters
    ----------
    model : torch.nn.Module
        The module ``fn`` runs (for its eval mode).
    fn : callable
        ``x -> (B, k)`` outputs.
    batches : iterable of (sequence of int, torch.Tensor)
        Output positions and inputs of each batch.
    n : int
        Number of output rows.
    device : str or torch.device
        Where the inputs are.
    dtype : torch.dtype or None
        The autocast dtype (``None``: float32 without autocast).
    rows : Rows, default=None
        Where the batches' rows go; several loops may share one, each
        running its own batches (one per device, :mod:`skast._replicas`).
        ``None``: a new one.

    Returns
    -------
    ndarray of shape (n, k), dtype float32
        ``rows.array``.

    Examples
    --------
    >>> import torch
    >>> from skast._runtime import evaluate
    >>> model = torch.nn.Linear(3, 2)
    >>> batches = [([0, 1], torch.ones(2, 3)), ([2], torch.zeros(1, 3))]
    >>> evaluate(model, model, batches, 3, device="cpu", dtype=None).shape
    (3, 2)
    """
    device = torch.device(device)

    def run(piece):
        with autocast(device, dtype):
            return HostCopy(fn(piece).float())

    rows = Rows(n) if rows is None else rows
    limit = None  # after an out-of-memory error: the largest piece that ran
    in_flight = None  # the last batch's (indices, host copies), still copying
    was_training = model.training
    model.eval()
    weights = low_precision_weights(model, dtype, keep=not was_training)
    try:
        with torch.inference_mode(), weights:
            for indices, x in batches:
                parts, limit = map_in_pieces(run, x, device, limit)
                if in_flight is not None:
                    rows.put(*in_flight)
                in_flight = (indices, parts)
            if in_flight is not None:
                rows.put(*in_flight)
    finally:
        model.train(was_training)
    return rows.array


class Rows:
    """The float32 ``(n, k)`` output of :func:`evaluate`, filled batch by
    batch; ``k`` is that of the first batch. Safe to fill from several threads.

    Parameters
    ----------
    n : int
        Number of rows.

    Attributes
    ----------
    array : ndarray of shape (n, k) or None
        The rows stored so far; ``None`` before the first batch.

    Examples
    --------
    >>> import torch
    >>> from skast._runtime import HostCopy, Rows
    >>> rows = Rows(3)
    >>> rows.put([2, 0], [HostCopy(torch.tensor([[2.0], [0.0]]))])
    >>> rows.array[[0, 2]].ravel().tolist()
    [0.0, 2.0]
    """

    def __init__(self, n: int):
        self.n = n
        self.array = None
        self._lock = threading.Lock()

    def put(self, indices, parts) -> None:
        """Store one batch's rows at ``indices``: the :class:`HostCopy` of
        each of its pieces, once their copies to the host are done."""
        rows = np.concatenate([part.wait() for part in parts])
        with self._lock:
            if self.array is None:
                self.array = np.empty((self.n, rows.shape[1]), dtype=np.float32)
            self.array[indices] = rows


class HostCopy:
    """A tensor's copy to host memory, started without waiting for the device.

    On CUDA the copy goes to page-locked memory on the current stream and an
    event marks its end; :meth:`wait` blocks on that event only, not on work
    queued after it. Elsewhere the copy is made at once.

    Parameters
    ----------
    tensor : torch.Tensor
        On any device.

    Examples
    --------
    >>> import torch
    >>> from skast._runtime import HostCopy
    >>> HostCopy(torch.arange(3.0)).wait()
    array([0., 1., 2.], dtype=float32)
    """

    def __init__(self, tensor: torch.Tensor):
        self._event = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(tensor.device))
        else:
            self._host = tensor.detach().cpu()

    def wait(self) -> np.ndarray:
        """The copy as a numpy array, once the device has made it."""
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


def progress_bar(*, total: int, enabled: bool, desc: str, unit: str = "clip"):
    """A tqdm progress bar (a silent one when not ``enabled``); ``update(n)`` it."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)
