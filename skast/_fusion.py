"""``torch.compile`` of the transformer blocks: the ``torch_compile`` parameter.

On a GPU, a third of the encoder's time under autocast goes to memory-bound
element-wise work kept in float32 (LayerNorm, GELU, the residual adds:
docs/performance.rst). :func:`compile_blocks` compiles each transformer
block with :meth:`torch.nn.Module.compile`, so that its element-wise
operations are fused into a few kernels; the matrix products and attention
stay the library kernels they were. The blocks all have the same code and
shapes, so one compiled graph serves all of them (per mode: inference,
training; per precision and device), and :mod:`torch._dynamo` keeps it for
the process: later calls, other estimators with the same architecture and
models loaded later reuse it. A batch of a new size compiles once more, after
which the batch dimension is dynamic (a batch of one clip is compiled on its
own). The compiled code is never pickled: :meth:`torch.nn.Module.__getstate__`
drops it, and skast pickles the weights only.

Where ``torch.compile`` cannot run (no C compiler for the CPU backend, no
Triton for CUDA, a platform or device its backend does not support),
:func:`compile_blocks` finds out by compiling a tiny function on the device
first, warns, and leaves the model eager.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref

import sklearn
import torch
from torch import nn

from skast._runtime import _loader_paths, _stacklevel_outside

__all__ = ["compile_blocks", "compile_options", "COMPILE_OPTIONS"]

# the keyword arguments of torch.compile that torch_compile may set
COMPILE_OPTIONS = ("backend", "mode", "dynamic", "fullgraph", "options")

_PROBES: dict = {}  # (device type, options) -> None (works) or why not
_PROBES_LOCK = threading.Lock()
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> options


def compile_options(value) -> dict | None:
    """The ``torch.compile`` keyword arguments of a ``torch_compile`` value.

    Parameters
    ----------
    value : bool or dict
        ``False``: none (the model runs eagerly); ``True``: torch's defaults;
        a dict: keyword arguments of :func:`torch.compile` among
        :data:`COMPILE_OPTIONS`.

    Returns
    -------
    dict or None
        ``None`` for ``False``.

    Raises
    ------
    ValueError
        A dict with another key.

    Examples
    --------
    >>> from skast._fusion import compile_options
    >>> compile_options(False) is None, compile_options(True)
    (True, {})
    >>> compile_options({"mode": "max-autotune"})
    {'mode': 'max-autotune'}
    >>> compile_options({"backnd": "eager"})
    Traceback (most recent call last):
    ...
    ValueError: torch_compile={'backnd': 'eager'}: unknown keyword 'backnd' of torch.compile; expected some of ('backend', 'mode', 'dynamic', 'fullgraph', 'options')
    """
    if value is False:
        return None
    if value is True:
        return {}
    for key in value:
        if key not in COMPILE_OPTIONS:
            raise ValueError(
                f"torch_compile={value!r}: unknown keyword {key!r} of "
                f"torch.compile; expected some of {COMPILE_OPTIONS}"
            )
    return dict(value)


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x) * 2 + 1


def unavailable(device: torch.device, options: dict) -> str | None:
    """Why ``torch.compile(**options)`` cannot run on ``device`` (``None``:
    it can), from compiling and running a tiny function there once per
    process; an unknown backend or mode raises ``ValueError``."""
    key = (device.type, repr(sorted(options.items())))
    with _PROBES_LOCK:
        if key in _PROBES:
            return _PROBES[key]
        try:
            compiled = torch.compile(_probe, **options)
        except Exception as err:  # an unknown backend or mode: the user's
            raise ValueError(
                f"torch_compile={options!r}: torch.compile refuses it: {err}"
            ) from err
        try:
            x = torch.ones(8, device=device)
            ok = torch.allclose(compiled(x), _probe(x))
            reason = None if ok else "a compiled function gave wrong results"
        except Exception as err:  # noqa: BLE001 - any failure means "not here"
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
        _PROBES[key] = reason
        return reason


def compile_blocks(model: nn.Module, value, device: torch.device) -> bool:
    """Compile ``model.blocks`` as ``torch_compile=value`` asks; whether they are.

    ``False`` leaves (or makes) the blocks eager. Otherwise each block is
    compiled with :meth:`torch.nn.Module.compile` (once: a block compiled
    with the same options is left as it is), unless ``torch.compile`` does
    not run on ``device`` (see :func:`unavailable`): then a ``UserWarning``
    says why and the blocks stay eager.

    Examples
    --------
    >>> import torch
    >>> from skast._fusion import compile_blocks
    >>> from skast._model import AST, ASTConfig
    >>> model = AST(ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...                       num_attention_heads=2, intermediate_size=64))
    >>> compile_blocks(model, False, torch.device("cpu"))
    False
    """
    options = compile_options(value)
    blocks = list(model.blocks)
    if options is not None:
        reason = unavailable(device, options)
        if reason is not None:
            warnings.warn(
                f"torch_compile={value!r}, but torch.compile does not run on "
                f"{device.type} here ({reason}); the model runs without it",
                UserWarning,
                # the user's fit, from_pretrained or load
                stacklevel=_stacklevel_outside(
                    (*_loader_paths(), os.path.dirname(sklearn.__file__) + os.sep)
                ),
            )
            options = None
    for block in blocks:
        if _COMPILED.get(block) == options:
            continue
        if options is None:
            if block in _COMPILED:
                # the attribute Module.compile sets; None is eager again
                block._compiled_call_impl = None
                del _COMPILED[block]
            continue
        block.compile(**options)
        _COMPILED[block] = options
    return options is not None
