"""What ``X`` is: its container checked, its clips' kind found.

The container checks of :func:`skast._audio.check_audio_input`: a 2-D array
or tensor of waveforms, or a sequence of 1-D waveforms, of file paths or of
audio records (:mod:`skast._records`), with the errors that name the first odd
item. In-memory clips are validated in place by several threads when they are
large (:func:`skast._samples.validated`); a tensor stays on its device.
"""

from __future__ import annotations

import collections.abc
import numbers
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from skast._records import is_record, record_source
from skast._samples import check_dtype, validated

__all__ = ["classify", "item_at"]

_X_TYPES = (
    "X must be a 2-D array (n_clips, n_samples) of waveforms, or a sequence "
    "(list, tuple, 1-D object array, pandas Series) of 1-D waveforms or of "
    "audio file paths"
)
_ONE_CLIP = (
    "pass one clip as [clip] or clip[None, :], several as a 2-D array "
    "(n_clips, n_samples) or a list of 1-D arrays"
)


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


def _is_scalar(item) -> bool:
    """A number (or a 0-d array): what a sequence of samples, not of clips, holds."""
    return isinstance(item, (numbers.Number, np.generic)) or (
        getattr(item, "ndim", None) == 0
    )


def _single_clip_error(n) -> ValueError:
    return ValueError(
        f"X is a single waveform ({n} samples), not a batch of clips. Reshape "
        f"your data: {_ONE_CLIP}"
    )


def _is_sparse(X) -> bool:
    sparse = sys.modules.get("scipy.sparse")  # not imported: X is not one of its
    if sparse is not None and sparse.issparse(X):
        return True
    if getattr(X, "is_sparse", False) is True:  # torch sparse tensors
        return True
    return type(X).__module__.split(".")[0] == "sparse"  # pydata/sparse


def _check_2d(X, check_clips: bool) -> tuple:
    """A 2-D array or tensor of waveforms (a tensor stays on its device)."""
    shape = tuple(X.shape)
    if shape[0] == 0:
        raise ValueError(f"X holds 0 clips (shape {shape}); at least one is needed")
    if shape[1] == 0:
        raise ValueError(
            "clip 0: the clip is empty (0 samples). Found array with 0 feature(s) "
            f"(shape={shape}) while a minimum of 1 is required."
        )
    if X.dtype != object:
        check_dtype(X.dtype, None)
    if check_clips and (
        X.dtype == object or X.dtype.itemsize > 4 or X.dtype.is_floating_point
        if isinstance(X, torch.Tensor)
        else X.dtype == object or X.dtype.itemsize > 4 or X.dtype.kind == "f"
    ):
        _validate_clips(X)
    return (X, "array2d")


# below this many samples in all, a thread pool costs more than it saves
_PARALLEL_SAMPLES = 1 << 22


def _first_error(check, n: int, parallel: bool) -> None:
    """``check(i)`` for ``i`` in ``range(n)``, raising the first index's error.

    With ``parallel``, several threads each take a contiguous run of indices
    and stop at their first error, so the error raised is still the first
    index's.
    """

    def check_run(lo: int, hi: int):
        for i in range(lo, hi):
            try:
                check(i)
            except Exception as err:
                return err
        return None

    workers = min(n, os.cpu_count() or 1, 8)
    if workers < 2 or not parallel:
        errors = [check_run(0, n)]
    else:
        bounds = np.linspace(0, n, workers + 1).astype(int).tolist()
        with ThreadPoolExecutor(workers, thread_name_prefix="skast-check") as pool:
            errors = list(pool.map(check_run, bounds[:-1], bounds[1:]))
    for err in errors:
        if err is not None:
            raise err


def _validate_clips(clips, records: bool = False) -> None:
    """:func:`skast._samples.validated` of every clip (of every record's
    in-memory samples), raising the error of the first bad one.

    The checks read every sample once, which bounds how fast a GPU can be fed;
    large inputs are read by several threads (numpy's reductions and torch's
    operations release the GIL). One clip's temporaries at a time per thread.
    """

    def check(i: int) -> None:
        item = item_at(clips, i)
        if records:
            kind, item, _ = record_source(item, i, decode=False)
            if kind != "samples":
                return
        validated(item, i)

    n = len(clips)
    _first_error(check, n, parallel=_total_samples(clips, records) >= _PARALLEL_SAMPLES)


def classify(X, check_clips: bool = True) -> tuple:
    """Check ``X``'s container (and, with ``check_clips``, its in-memory clips).

    What :func:`skast._audio.check_audio_input` does before it wraps ``X``.

    Parameters
    ----------
    X : array-like, torch.Tensor or sequence
        As :func:`skast._audio.check_audio_input` takes it.
    check_clips : bool, default=True
        Validate the in-memory clips now.

    Returns
    -------
    items : ndarray, torch.Tensor or sequence
        The clips, to index.
    kind : {"array2d", "arrays", "paths", "records"}
        What they are.

    Examples
    --------
    >>> import torch
    >>> from skast._containers import classify
    >>> items, kind = classify(torch.zeros(2, 400))
    >>> kind, type(items).__name__
    ('array2d', 'Tensor')
    """
    X = _as_container(X)
    if isinstance(X, torch.Tensor):
        return _check_tensor(X, check_clips)
    else:
        if isinstance(X, np.ndarray):
            X = _check_array(X)
            if X.ndim == 2:
                return _check_2d(X, check_clips)
            if X.dtype.kind == "U":
                X = X.tolist()
        return _from_sequence(X, check_clips)


def _as_container(X):
    """``X`` as an ndarray, a tensor or a sequence; a TypeError for any other
    container."""
    if _is_sparse(X):  # before dict: scipy's dok_array is one
        raise TypeError(
            f"sparse input is not supported: {_X_TYPES}; got {type(X).__name__}"
        )
    if X is None or isinstance(X, (str, bytes, os.PathLike, dict, set)):
        raise TypeError(f"{_X_TYPES}; got {type(X).__name__}")
    if _is_scalar(X):
        raise TypeError(f"{_X_TYPES}; got the scalar {X!r}")
    if isinstance(X, torch.Tensor):
        return X.detach()
    if hasattr(X, "to_numpy") and hasattr(X, "ndim"):  # pandas DataFrame / Series
        return X.to_numpy()
    if not isinstance(X, (np.ndarray, collections.abc.Sequence)):
        if hasattr(X, "column_names") and hasattr(X, "features"):  # datasets.Dataset
            raise TypeError(
                f"{_X_TYPES}; got a {type(X).__name__}: pass its audio column, "
                "such as X=dataset['audio']"
            )
        if not hasattr(X, "__array__") and not hasattr(X, "__array_interface__"):
            raise TypeError(f"{_X_TYPES}; got {type(X).__name__}")
        return np.asarray(X)  # xarray...: no copy when avoidable
    return X


def _check_ndim(X) -> None:
    """An array or tensor ``X`` of at most 2 dimensions (0-d ones are scalars,
    refused by :func:`_as_container`)."""
    if X.ndim > 2:
        what = "a tensor" if isinstance(X, torch.Tensor) else "an array"
        raise ValueError(
            f"X must be 2-D (n_clips, n_samples), got {what} of shape "
            f"{tuple(X.shape)}; mix multichannel audio to mono first"
        )


def _one_dim_error(X) -> ValueError:
    """The error for a 1-D numeric ``X``: no clips, or a single waveform."""
    if X.shape[0] == 0:
        return ValueError("X holds 0 clips; at least one is needed")
    return _single_clip_error(X.shape[0])


def _check_tensor(X: torch.Tensor, check_clips: bool) -> tuple:
    """A tensor ``X``: 2-D waveforms (or a single clip, an error), on its device."""
    _check_ndim(X)
    if X.ndim == 1:
        raise _one_dim_error(X)
    return _check_2d(X, check_clips)


def _check_array(X: np.ndarray) -> np.ndarray:
    """An array that is one of: a 2-D array of waveforms, a 1-D object array of
    clips (a DataFrame's column of clips too), a 1-D array of file names."""
    _check_ndim(X)
    if X.ndim == 2 and X.dtype == object and X.shape[1] == 1 and len(X):
        first = X[0, 0]
        if _is_path(first) or not _is_scalar(first):  # a column of clips
            X = X[:, 0]
    if X.ndim == 2 or X.dtype == object or X.dtype.kind == "U":
        return X
    if X.dtype.kind == "S":
        raise TypeError("X holds bytes: pass file paths as str or os.PathLike")
    raise _one_dim_error(X)


def item_at(items, i: int):
    """``items[i]``; an error of the container itself (a ``datasets`` column
    that cannot open a clip's file) as a ValueError naming the clip.

    Examples
    --------
    >>> from skast._containers import item_at
    >>> class Column(list):
    ...     def __getitem__(self, i):
    ...         raise RuntimeError("Could not open input file: a.wav")
    >>> item_at(Column([0]), 0)
    Traceback (most recent call last):
    ...
    ValueError: clip 0: cannot read the clip: Could not open input file: a.wav
    """
    try:
        return items[i]
    except IndexError:
        raise
    except Exception as err:
        raise ValueError(f"clip {i}: cannot read the clip: {err}") from err


def _item_kind(item) -> str:
    if _is_path(item):
        return "path"
    if is_record(item):
        return "record"
    return "scalar" if _is_scalar(item) else "waveform"


def _from_sequence(X, check_clips: bool) -> tuple:
    """A sequence of file paths, of 1-D waveforms or of audio records, and its
    kind. Each item is read once here (a ``datasets`` column makes a
    decoder each time it is indexed), decoding nothing."""
    n = len(X)
    if n == 0:
        raise ValueError("X holds 0 clips; at least one is needed")
    kinds, key_error, in_memory = [], None, False
    for i in range(n):
        item = item_at(X, i)
        kinds.append(_item_kind(item))
        if kinds[-1] == "record" and key_error is None:
            try:  # the keys and the rate
                in_memory |= record_source(item, i, decode=False)[0] == "samples"
            except (TypeError, ValueError) as err:
                key_error = err
    first = kinds[0]
    if first == "path" or "path" in kinds:
        odd = next(
            (i for i, k in enumerate(kinds) if (k == "path") != (first == "path")), None
        )
        if odd is None:
            return (list(X), "paths")
        other = _PLURAL[kinds[odd] if first == "path" else first]
        raise ValueError(
            f"X mixes file paths and {other}: clip 0 is "
            f"{_A[first]}, clip {odd} is {'not' if first == 'path' else 'a path'}"
        )
    if first == "record":
        odd = next((i for i, k in enumerate(kinds) if k != "record"), None)
        if odd is not None:
            raise TypeError(
                f"clip {odd}: expected an audio record like clip 0 (a dict with "
                "'array' and 'sampling_rate', or 'path'; or a decoder object), "
                f"got {type(X[odd]).__name__}"
            )
        if key_error is not None:
            raise key_error
        if check_clips and in_memory:
            _validate_clips(X, records=True)
        return (X, "records")
    if all(k == "scalar" for k in kinds):
        raise _single_clip_error(n)
    for i, kind in enumerate(kinds):
        _check_item(X[i], i, kind != "waveform")
    if check_clips:
        _validate_clips(X)
    return (X, "arrays")


_PLURAL = {
    "path": "file paths",
    "waveform": "waveforms",
    "scalar": "waveforms",
    "record": "audio records",
}
_A = {
    "path": "a path",
    "waveform": "a waveform",
    "scalar": "a waveform",
    "record": "an audio record",
}


def _check_item(item, i: int, odd: bool) -> None:
    """An item of a sequence of waveforms that can be a 1-D clip (its samples
    are checked later); ``odd``: a scalar or a record, not a clip."""
    if odd or item is None or isinstance(item, (bytes, dict, set)):
        raise TypeError(
            f"clip {i}: expected a 1-D waveform or an audio file path, got "
            f"{type(item).__name__}"
        )
    ndim = getattr(item, "ndim", 1)
    if isinstance(item, (list, tuple)) and item and not _is_scalar(item[0]):
        ndim = 2  # nested lists: numpy would make a 2-D clip of it
    if ndim != 1:
        shape = getattr(item, "shape", None)
        raise ValueError(
            f"clip {i}: a waveform must be 1-D, got "
            f"{'nested lists' if shape is None else f'shape {tuple(shape)}'}; "
            "mix multichannel audio to mono first (X must not be 3-D)"
        )


def _total_samples(clips, records: bool = False) -> int:
    """The samples of all clips: of a 2-D array or tensor, or of a sequence of
    1-D clips (of records: of those in memory)."""
    if isinstance(clips, np.ndarray) and clips.dtype != object:
        return clips.size
    if isinstance(clips, torch.Tensor):
        return clips.numel()

    def n_samples(item) -> int:
        if records:
            item = (
                item.get("array") if isinstance(item, collections.abc.Mapping) else None
            )
            if item is None:
                return 0
        size = getattr(item, "size", None)
        return size if isinstance(size, numbers.Integral) else len(item)

    return sum(n_samples(item) for item in clips)
