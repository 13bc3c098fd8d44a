"""What is made from a model's weights and kept beside the model while they
stay the same.

Three things are derived from a fitted model's weights, kept for the next
call and made again when the weights change: the model's copies on the other
devices of a device list (:mod:`skast._replicas`), its low-precision weight
copy for autocast (:mod:`skast._inference`) and its ONNX Runtime session
(:mod:`skast._onnx`). :class:`WeightsStamp` says whether weights are the ones
something was made from; :class:`Derived` keeps such things in a table keyed
weakly by the model (never in the model's or the estimator's ``__dict__``, so
never pickled, and gone with the model).

The weights are the same when every tensor is the same object, at the same
storage, with the same version counter (``Tensor._version``, which every
in-place write bumps: an optimizer step, ``load_state_dict``, ``copy_``). So
``fit``, ``partial_fit``, a warm start, ``load_state_dict``, parameters
replaced by new tensors, or moving the model to another device all count as a
change. The stamp holds the tensors weakly: it keeps no old weights alive, and
a tensor that is gone never compares equal to a new one at its address.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["WeightsStamp", "Derived", "model_tensors"]


def model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """``model``'s parameters and buffers, in order.

    Examples
    --------
    >>> import torch
    >>> from skast._derived import model_tensors
    >>> len(model_tensors(torch.nn.Linear(3, 2)))
    2
    """
    return [*model.parameters(), *model.buffers()]


class WeightsStamp:
    """The identity, storage and version of each of ``tensors``, to tell later
    whether they are still the same weights, unchanged.

    Parameters
    ----------
    tensors : iterable of torch.Tensor

    Examples
    --------
    >>> import torch
    >>> from skast._derived import WeightsStamp
    >>> model = torch.nn.Linear(3, 2)
    >>> stamp = WeightsStamp(model.parameters())
    >>> stamp.matches(model.parameters())
    True
    >>> with torch.no_grad():
    ...     _ = model.weight.mul_(2.0)  # in place, as a training step
    >>> stamp.matches(model.parameters())
    False
    """

    def __init__(self, tensors: Iterable[torch.Tensor]):
        self._marks = [(weakref.ref(t), self._mark(t)) for t in tensors]

    @staticmethod
    def _mark(t: torch.Tensor) -> tuple:
        return t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)

    def matches(self, tensors: Iterable[torch.Tensor]) -> bool:
        """Whether ``tensors`` are the stamped ones, in order, unchanged."""
        tensors = list(tensors)
        return len(tensors) == len(self._marks) and all(
            ref() is t and mark == self._mark(t)
            for (ref, mark), t in zip(self._marks, tensors)
        )


class Derived:
    """A table of things made from a model's weights: one per model and name,
    made again when the weights or ``extra`` change.

    Examples
    --------
    >>> import torch
    >>> from skast._derived import Derived
    >>> table = Derived()
    >>> model = torch.nn.Linear(3, 2)
    >>> first = table.get(model, "copy", lambda: torch.nn.Linear(3, 2))
    >>> table.get(model, "copy", lambda: torch.nn.Linear(3, 2)) is first
    True
    >>> with torch.no_grad():
    ...     _ = model.bias.zero_()
    >>> table.get(model, "copy", lambda: torch.nn.Linear(3, 2)) is first
    False
    """

    def __init__(self):
        self._table: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(
        self,
        model: torch.nn.Module,
        name: Any,
        make: Callable[[], Any],
        *,
        extra: Any = None,
        tensors: Callable[[torch.nn.Module], list] = model_tensors,
    ) -> Any:
        """What ``make()`` gave for ``model`` and ``name`` while ``tensors(model)``
        (default: its parameters and buffers) were unchanged and ``extra``
        equal; else ``make()`` again, kept in its place.

        Calls for one model are serialised (one ``make`` at a time), so that
        threads asking for the same thing make it once; other models' calls
        do not wait for them.
        """
        with self._lock:  # only to find, or add, the model's own slot
            slot = self._table.get(model)
            if slot is None:
                slot = self._table[model] = (threading.Lock(), {})
        lock, entries = slot
        with lock:
            entry = entries.get(name)
            weights = tensors(model)
            if entry is None or entry[1] != extra or not entry[0].matches(weights):
                value = make()  # stamped after: what it reads, it leaves as is
                entry = (WeightsStamp(tensors(model)), extra, value)
                entries[name] = entry
            return entry[2]
