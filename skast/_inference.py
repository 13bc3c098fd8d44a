"""Low-precision copies of the weights for inference, made once per device.

Under autocast, every forward pass casts the float32 weights of the layers that
run in the lower precision (the Linear layers and the patch embedding's
kernel, with their biases) to bfloat16 or float16: on a GPU about 5% of the
time of a batch (docs/performance.rst). A fitted model's weights do not change
from one call to the next, so :func:`low_precision_weights` keeps one cast
copy of them per model, on the model's device, and puts it in place of those
weights while an inference runs under autocast: autocast then has nothing left
to cast, and every kernel sees the values its own cast would have given (a
cast rounds each float32 value to the nearest lower-precision one whoever
makes it), so the outputs are autocast's.

The float32 weights stay the model's parameters, the ones that are trained,
pickled and saved; the copy lives in a table beside the model (held weakly,
never in the model's or the estimator's ``__dict__``), so it is never pickled
and goes when the model goes. It is made again when the weights change, as
:class:`skast._derived.WeightsStamp` tells (each weight's identity, storage
and version counter), so ``fit``, ``partial_fit``, a warm start,
``load_state_dict`` or moving the model to another device all invalidate it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from skast._derived import WeightsStamp

__all__ = ["low_precision_weights", "CAST_LAYERS"]

# the layers whose weights and bias autocast casts to the lower precision
# (linear and conv2d are on its lower-precision list on CUDA and the CPU)
CAST_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class _Copy:
    """A model's weights in ``dtype``: the float32 masters (module, name,
    parameter), their stamp (:class:`skast._derived.WeightsStamp`), and the
    copies."""

    dtype: torch.dtype
    masters: list
    stamp: WeightsStamp
    copies: list


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    copy: _Copy | None = None  # kept between calls
    active: _Copy | None = None  # in place while depth > 0
    depth: int = 0  # inferences running with the copy in place


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _masters(model: nn.Module) -> list:
    return [
        (module, name, p)
        for module in model.modules()
        if isinstance(module, CAST_LAYERS)
        for name, p in module.named_parameters(recurse=False)
        if p.dtype == torch.float32
    ]


def _make(masters: list, dtype: torch.dtype) -> _Copy:
    # outside inference mode: normal tensors, usable in any mode later
    with torch.inference_mode(False), torch.no_grad():
        copies = [p.detach().to(dtype) for _, _, p in masters]
    return _Copy(dtype, masters, WeightsStamp(p for _, _, p in masters), copies)


def _swap(pairs) -> None:
    # as torch.func.functional_call does: the tensor in the module's table
    for (module, name, _), tensor in pairs:
        module._parameters[name] = tensor


@contextlib.contextmanager
def low_precision_weights(model: nn.Module, dtype: torch.dtype | None, *, keep=True):
    """Run the block with ``model``'s cast weights in ``dtype`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        Its :data:`CAST_LAYERS`' float32 weights and biases are replaced,
        for the duration of the block, by copies in ``dtype``.
    dtype : torch.dtype or None
        The autocast dtype the block runs under; ``None`` (float32, no
        autocast) changes nothing.
    keep : bool, default=True
        Keep the copy for the next call (while the weights are unchanged).
        ``False`` (a model that is being trained, whose weights change
        between calls) makes a copy for this call only and drops a kept one.

    Notes
    -----
    Only for inference (no gradients reach the copies). Calls from several
    threads on one model share the copy; the masters are put back when the
    last one ends.

    Examples
    --------
    >>> import torch
    >>> from skast._inference import low_precision_weights
    >>> model = torch.nn.Linear(4, 2)
    >>> with torch.autocast("cpu", torch.bfloat16), low_precision_weights(
    ...         model, torch.bfloat16):
    ...     inside = model.weight.dtype
    ...     y = model(torch.ones(1, 4))
    >>> inside, model.weight.dtype, y.dtype
    (torch.bfloat16, torch.float32, torch.bfloat16)
    """
    if dtype is None:
        yield
        return
    with _STATES_LOCK:
        state = _STATES.setdefault(model, _State())
    with state.lock:
        if state.depth == 0:
            masters = _masters(model)
            copy = state.copy
            if (
                copy is None
                or copy.dtype != dtype
                or not copy.stamp.matches(p for _, _, p in masters)
            ):
                copy = _make(masters, dtype)
            state.copy = copy if keep else None
            _swap(zip(copy.masters, copy.copies))
            state.active = copy
        state.depth += 1
    try:
        yield
    finally:
        with state.lock:
            state.depth -= 1
            if state.depth == 0:
                active, state.active = state.active, None
                _swap((m, m[2]) for m in active.masters)
