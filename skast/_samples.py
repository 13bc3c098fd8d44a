"""One clip's samples: checked, then converted to float32.

The checks and conversions of :mod:`skast._audio`'s table, for NumPy arrays
(and what NumPy converts) and for torch tensors. A tensor stays a tensor on its
own device: it is checked with torch operations there (only scalars, such as
"all finite?", come back to the host) and converted there, so that a CUDA clip
is never copied to the host and back.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from skast._decode import clip_prefix

__all__ = ["SampleTypeError", "check_dtype", "to_float32", "validated"]


class SampleTypeError(TypeError, ValueError):
    """Samples that are not real numbers: bool, complex, strings, objects.

    A :class:`TypeError`, and a :class:`ValueError` too, which is what
    scikit-learn raises for complex data (``except ValueError`` catches it).
    """


# (kind, bytes) -> (offset, scale): float32 sample = (x - offset) / scale
_INT_PCM = {
    ("i", 1): (0, 128),
    ("u", 1): (128, 128),
    ("i", 2): (0, 2**15),
    ("u", 2): (2**15, 2**15),
    ("i", 4): (0, 2**31),
    ("u", 4): (2**31, 2**31),
}
_F32_MAX = float(np.finfo(np.float32).max)
_RAGGED_WARNING = getattr(np, "exceptions", np).VisibleDeprecationWarning


def _facts(dtype) -> tuple[str, int, str]:
    """A NumPy or torch dtype as NumPy's (kind, itemsize) and a plain name."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
        if dtype == torch.bool:
            return "b", 1, name
        if dtype.is_complex:
            return "c", dtype.itemsize, name
        if dtype.is_floating_point:
            return "f", dtype.itemsize, name
        return ("u" if name.startswith("uint") else "i"), dtype.itemsize, name
    return dtype.kind, dtype.itemsize, str(dtype)


def check_dtype(dtype, index=None) -> None:
    """Raise :class:`SampleTypeError` unless ``dtype`` holds real numbers.

    Parameters
    ----------
    dtype : numpy.dtype or torch.dtype
        The samples' type.
    index : int, default=None
        The clip's index in ``X``, to name it in error messages.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skast._samples import check_dtype
    >>> check_dtype(np.dtype(np.int16)), check_dtype(torch.bfloat16)
    (None, None)
    >>> check_dtype(torch.complex64, index=2)
    Traceback (most recent call last):
    ...
    skast._samples.SampleTypeError: clip 2: Complex data not supported: waveforms must be real, got dtype complex64
    """
    kind, _, name = _facts(dtype)
    if kind == "c":
        raise SampleTypeError(
            f"{clip_prefix(index)}Complex data not supported: waveforms must be real, "
            f"got dtype {name}"
        )
    if kind not in "iuf":
        raise SampleTypeError(
            f"{clip_prefix(index)}waveforms must hold real numbers (floats or integer "
            f"PCM), got dtype {name}"
        )


def _as_array(item, index):
    """A tensor as it is (detached); anything else as a numeric ndarray."""
    if isinstance(item, torch.Tensor):
        return item.detach()
    try:
        with warnings.catch_warnings():
            # NumPy < 1.24 makes an object array of ragged nested lists, with
            # this warning; later releases raise ValueError
            warnings.simplefilter("error", _RAGGED_WARNING)
            a = np.asarray(item)
    except Exception as err:  # ragged nested lists, odd objects
        raise TypeError(
            f"{clip_prefix(index)}cannot convert the clip to an array: {err}"
        ) from err
    return _numeric(a, index)


def _numeric(a: np.ndarray, index) -> np.ndarray:
    """An object array of numbers as float64; any other array as it is."""
    if a.dtype != object:
        return a
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise SampleTypeError(
            f"{clip_prefix(index)}the clip is not a numeric waveform: {err}"
        ) from err


def validated(item, index=None):
    """A clip as a valid 1-D numeric array or tensor, not copied when it is one.

    Valid: 1-D, not empty, integer or float samples, finite, within float32's
    range, and 64-bit integers within 32-bit PCM. A torch tensor is checked on
    its device and returned as a (detached) tensor.

    Parameters
    ----------
    item : array-like or torch.Tensor of shape (n_samples,)
        The clip.
    index : int, default=None
        The clip's index in ``X``, to name it in error messages.

    Returns
    -------
    ndarray or torch.Tensor
        ``item`` itself where it is an array or tensor.

    Raises
    ------
    ValueError, SampleTypeError, TypeError
        As :func:`skast._audio.to_waveform`.

    Examples
    --------
    >>> import torch
    >>> from skast._samples import validated
    >>> validated(torch.tensor([0.5, -1.0])).dtype
    torch.float32
    >>> validated(torch.tensor([0.5, float("nan")]), index=4)
    Traceback (most recent call last):
    ...
    ValueError: clip 4: the clip contains NaN or infinite values
    """
    a = _as_array(item, index)
    is_tensor = isinstance(a, torch.Tensor)
    if a.ndim != 1:
        raise ValueError(
            f"{clip_prefix(index)}a waveform must be 1-D, got shape {tuple(a.shape)}; "
            "mix multichannel audio to mono first"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{clip_prefix(index)}the clip is empty (0 samples)")
    check_dtype(a.dtype, index)
    kind, size, name = _facts(a.dtype)
    if kind == "f":
        finite = torch.isfinite(a) if is_tensor else np.isfinite(a)
        if not bool(finite.all()):
            raise ValueError(
                f"{clip_prefix(index)}the clip contains NaN or infinite values"
            )
        if size > 4 and float(abs(a).max()) > _F32_MAX:
            raise ValueError(
                f"{clip_prefix(index)}the clip holds values beyond the float32 range"
            )
    elif size > 4:  # 64-bit integers: 32-bit PCM held in a wider type
        lo, hi = (-(2**31), 2**31 - 1) if kind == "i" else (0, 2**32 - 1)
        # torch has no min/max of uint64: float64 orders the values alike
        w = a.to(torch.float64) if is_tensor and kind == "u" else a
        a_min, a_max = int(w.min()), int(w.max())
        if a_min < lo or a_max > hi:
            raise ValueError(
                f"{clip_prefix(index)}{name} samples are read as 32-bit PCM and "
                f"must lie in [{lo}, {hi}]; got values in [{a_min}, {a_max}]. "
                "Pass floats in [-1, 1] instead"
            )
    return a


def to_float32(a, copy: bool = True) -> torch.Tensor:
    """A float32 tensor from a :func:`validated` clip, integer PCM scaled.

    Parameters
    ----------
    a : ndarray or torch.Tensor of shape (n_samples,)
        What :func:`validated` returns.
    copy : bool, default=True
        ``False``: a float32 ``a`` (a writeable array, or a tensor) is shared,
        not copied.

    Returns
    -------
    torch.Tensor of shape (n_samples,), dtype float32
        On ``a``'s device (the CPU for an array).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skast._samples import to_float32
    >>> to_float32(np.array([0, 255], dtype=np.uint8))
    tensor([-1.0000,  0.9922])
    >>> to_float32(torch.tensor([16384, -32768], dtype=torch.int16))
    tensor([ 0.5000, -1.0000])
    """
    if isinstance(a, torch.Tensor):
        kind, size, _ = _facts(a.dtype)
        if kind == "f":
            return a.to(torch.float32, copy=copy)
        offset, scale = _INT_PCM[kind, min(size, 4)]
        if offset:  # exact in int64, then one rounding to float32
            out = (a.to(torch.int64) - offset).to(torch.float32)
        else:
            out = a.to(torch.float32)
        return out.mul_(1.0 / scale)  # a power of two: exact
    if a.dtype.kind == "f":
        # a read-only array is copied all the same: torch.from_numpy warns on it
        return torch.from_numpy(
            a.astype(np.float32, copy=copy or not a.flags.writeable)
        )
    offset, scale = _INT_PCM[a.dtype.kind, min(a.dtype.itemsize, 4)]
    if offset:  # exact in int64, then one rounding to float32
        out = (a.astype(np.int64) - offset).astype(np.float32)
    else:
        out = a.astype(np.float32)
    out *= np.float32(1.0 / scale)  # a power of two: exact
    return torch.from_numpy(out)
