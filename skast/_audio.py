"""The input contract: what a user passes as ``X`` -> mono float32 16 kHz clips.

Accepted ``X``:

* a 2-D numeric array-like ``(n_clips, n_samples)`` of equal-length waveforms
  (numpy arrays, read-only memmaps, pandas DataFrames, anything numpy converts);
* a sequence (list, tuple, 1-D object array, pandas Series) whose items are all
  1-D numeric arrays of any lengths (lists of numbers too), or all audio file
  paths (``str`` / ``os.PathLike``).

:func:`check_audio_input` checks the container and, in place, the in-memory
clips (files are not opened); :meth:`AudioInput.load` converts and validates
one clip at a time, so that estimators stream ``X`` in batches
(:func:`skast._batches.load_batches`) with bounded memory. Every error about a clip names its
index in ``X``.

Samples are converted to float32 as follows (the user's arrays are never
modified: conversions work on a copy, and only the estimators' batching reads
float32 clips in place, ``copy=False``):

========================  ===============================================
dtype                     conversion
========================  ===============================================
float16/32/64             cast to float32, not rescaled
int8                      ``x / 128``
uint8                     ``(x - 128) / 128``
int16                     ``x / 32768``
uint16                    ``(x - 32768) / 32768``
int32                     ``x / 2**31``
uint32                    ``(x - 2**31) / 2**31``
int64 / uint64            as int32 / uint32 when the values fit, else error
bool, complex, others     :class:`SampleTypeError` (a TypeError)
========================  ===============================================

Clips at another rate than 16 kHz are resampled with
:func:`torchaudio.functional.resample` (default arguments). Files are decoded
by :func:`skast._decode.load_audio` (soundfile: wav, flac, ogg/vorbis, and
whatever the bundled libsndfile reads), their channels averaged to mono.
"""

from __future__ import annotations

import collections.abc
import numbers
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from skast import _cache
from skast._decode import check_rate, clip_prefix, load_audio, resample
from skast._recipes import SAMPLE_RATE

__all__ = [
    "AudioInput",
    "SampleTypeError",
    "check_audio_input",
    "to_waveform",
]


# dtype -> (offset, scale): float32 sample = (x - offset) / scale
_INT_PCM = {
    np.dtype(np.int8): (0, 128),
    np.dtype(np.uint8): (128, 128),
    np.dtype(np.int16): (0, 2**15),
    np.dtype(np.uint16): (2**15, 2**15),
    np.dtype(np.int32): (0, 2**31),
    np.dtype(np.uint32): (2**31, 2**31),
}
_KINDS = ("array2d", "arrays", "paths")
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


class SampleTypeError(TypeError, ValueError):
    """Samples that are not real numbers: bool, complex, strings, objects.

    A :class:`TypeError`, and a :class:`ValueError` too, which is what
    scikit-learn raises for complex data (``except ValueError`` catches it).
    """


def _check_dtype(dtype: np.dtype, index) -> None:
    if dtype.kind == "c":
        raise SampleTypeError(
            f"{clip_prefix(index)}Complex data not supported: waveforms must be real, "
            f"got dtype {dtype}"
        )
    if dtype.kind not in "iuf":
        raise SampleTypeError(
            f"{clip_prefix(index)}waveforms must hold real numbers (floats or integer "
            f"PCM), got dtype {dtype}"
        )


_F32_MAX = float(np.finfo(np.float32).max)


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


_RAGGED_WARNING = getattr(np, "exceptions", np).VisibleDeprecationWarning


def _validated(item, index) -> np.ndarray:
    """A clip as a valid 1-D numeric array, not copied when it is one already.

    Valid: 1-D, not empty, integer or float samples, finite, within float32's
    range, and 64-bit integers within 32-bit PCM.
    """
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
    a = _numeric(a, index)
    if a.ndim != 1:
        raise ValueError(
            f"{clip_prefix(index)}a waveform must be 1-D, got shape {a.shape}; mix "
            "multichannel audio to mono first"
        )
    if a.size == 0:
        raise ValueError(f"{clip_prefix(index)}the clip is empty (0 samples)")
    _check_dtype(a.dtype, index)
    kind, size = a.dtype.kind, a.dtype.itemsize
    if kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(
                f"{clip_prefix(index)}the clip contains NaN or infinite values"
            )
        if size > 4 and (a.max() > _F32_MAX or a.min() < -_F32_MAX):
            raise ValueError(
                f"{clip_prefix(index)}the clip holds values beyond the float32 range"
            )
    elif size > 4:  # 64-bit integers: 32-bit PCM held in a wider type
        lo, hi = (-(2**31), 2**31 - 1) if kind == "i" else (0, 2**32 - 1)
        a_min, a_max = int(a.min()), int(a.max())
        if a_min < lo or a_max > hi:
            raise ValueError(
                f"{clip_prefix(index)}{a.dtype} samples are read as 32-bit PCM and "
                f"must lie in [{lo}, {hi}]; got values in [{a_min}, {a_max}]. "
                "Pass floats in [-1, 1] instead"
            )
    return a


def _to_float32(a: np.ndarray, copy: bool = True) -> np.ndarray:
    """A float32 array from a :func:`_validated` one, integer PCM scaled: new,
    or with ``copy=False`` a writeable float32 input itself."""
    if a.dtype.kind == "f":
        # a read-only array is copied all the same: torch.from_numpy warns on it
        return a.astype(np.float32, copy=copy or not a.flags.writeable)
    offset, scale = _INT_PCM[np.dtype(f"{a.dtype.kind}{min(a.dtype.itemsize, 4)}")]
    if offset:  # exact in int64, then one rounding to float32
        out = (a.astype(np.int64) - offset).astype(np.float32)
    else:
        out = a.astype(np.float32)
    out *= np.float32(1.0 / scale)  # a power of two: exact
    return out


def to_waveform(
    item, *, sample_rate=SAMPLE_RATE, index=None, copy=True
) -> torch.Tensor:
    """Turn one raw clip into a 1-D float32 tensor at 16 kHz.

    Parameters
    ----------
    item : array-like of shape (n_samples,), str or os.PathLike
        A waveform at ``sample_rate`` (integer PCM is scaled to [-1, 1], see
        the module's table), or an audio file path (decoded with
        :func:`skast._decode.load_audio`; the file's own rate is used, not ``sample_rate``).
    sample_rate : int, default=16000
        The rate of an array ``item``, in Hz.
    index : int, default=None
        The clip's index in ``X``, to name it in error messages.
    copy : bool, default=True
        ``False`` skips the copy of a writeable float32 array at 16 kHz: the
        result then shares its memory, and the caller must not write to it
        (the estimators' batching reads each clip once, into a padded batch).

    Returns
    -------
    waveform : torch.Tensor of shape (n_samples_16k,), dtype float32
        A new tensor that shares no memory with ``item`` (unless
        ``copy=False``). After resampling,
        ``n_samples_16k = ceil(n_samples * 16000 / rate)``.

    Raises
    ------
    ValueError
        Empty clips, clips that are not 1-D, NaN or infinite samples, 64-bit
        integers beyond 32-bit PCM, unreadable files.
    SampleTypeError
        Boolean, complex or non-numeric samples (a TypeError and a ValueError).
    TypeError
        A clip that numpy cannot make an array of.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import to_waveform
    >>> to_waveform(np.array([16384, -32768], dtype=np.int16))
    tensor([ 0.5000, -1.0000])
    >>> to_waveform(np.zeros(8000), sample_rate=8000).shape
    torch.Size([16000])
    """
    if _is_path(item):
        wave, rate = load_audio(item, index=index)
    else:
        wave = _to_float32(_validated(item, index), copy=copy)
        rate = check_rate(sample_rate)
    return resample(torch.from_numpy(wave), rate, SAMPLE_RATE)


# --------------------------------------------------------------------------- X


class AudioInput(collections.abc.Sequence):
    """A validated ``X``: indexable raw clips that are converted one at a time.

    Build it with :func:`check_audio_input`.

    Parameters
    ----------
    items : ndarray or sequence
        The clips: a 2-D array (``kind="array2d"``), a sequence of 1-D
        array-likes (``"arrays"``) or a list of paths (``"paths"``).
    kind : {"array2d", "arrays", "paths"}
        What ``items`` holds.

    Attributes
    ----------
    kind : {"array2d", "arrays", "paths"}
        What the clips are.

    See Also
    --------
    check_audio_input : Validate ``X`` and build an AudioInput.
    skast._batches.load_batches : Stream the loaded clips in padded batches.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> audio = check_audio_input(np.zeros((3, 8000), dtype=np.int16))
    >>> len(audio), audio.kind, audio[0].shape
    (3, 'array2d', (8000,))
    >>> audio.load(0, sample_rate=8000).shape
    torch.Size([16000])
    """

    def __init__(self, items, kind: str):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self._items = items
        self.kind = kind
        self._indices = None  # a subset: positions in items, named in errors

    def _source(self, i) -> int:
        """The index in the original ``X`` of clip ``i`` (IndexError if none)."""
        if self._indices is None:
            return range(len(self._items))[i]
        return self._indices[i]

    def __len__(self) -> int:
        return len(self._items) if self._indices is None else len(self._indices)

    def __getitem__(self, i):
        """The raw item ``i``: a row of the 2-D array, an array-like or a path."""
        if self._indices is None:
            return self._items[i]
        if isinstance(i, slice):
            return [self._items[j] for j in self._indices[i]]
        return self._items[self._indices[i]]

    def __repr__(self) -> str:
        return f"AudioInput(kind={self.kind!r}, n_clips={len(self)})"

    def subset(self, indices) -> AudioInput:
        """The clips at ``indices``, numbered from 0 but named as in ``X``.

        Nothing is copied. Errors from the subset's ``load`` and
        ``fingerprint`` name each clip by its index in the original ``X``, as
        the user numbers it.

        Parameters
        ----------
        indices : sequence of int
            Positions in this input.

        Returns
        -------
        AudioInput
            Of the same kind.

        Examples
        --------
        >>> import numpy as np
        >>> from skast._audio import check_audio_input
        >>> audio = check_audio_input([np.zeros(3), np.zeros(0)], check_clips=False)
        >>> sub = audio.subset([1])
        >>> len(sub), sub[0].shape
        (1, (0,))
        >>> sub.load(0)
        Traceback (most recent call last):
        ...
        ValueError: clip 1: the clip is empty (0 samples)
        """
        sub = AudioInput(self._items, self.kind)
        sub._indices = [self._source(int(i)) for i in indices]
        return sub

    def load(self, i: int, sample_rate=SAMPLE_RATE, copy=True) -> torch.Tensor:
        """Clip ``i`` as a validated 1-D float32 tensor at 16 kHz.

        Parameters
        ----------
        i : int
            The clip's position (errors name its index in the original ``X``).
        sample_rate : int, default=16000
            The rate of in-memory waveforms; files use their own.
        copy : bool, default=True
            ``False``: a float32 clip may be shared, not copied; see
            :func:`to_waveform`.

        Returns
        -------
        torch.Tensor of shape (n_samples,), dtype float32
            See :func:`to_waveform`.
        """
        j = self._source(i)
        return to_waveform(self._items[j], sample_rate=sample_rate, index=j, copy=copy)

    def fingerprint(self, i: int) -> str:
        """A content hash of clip ``i`` (hex sha256), for caching embeddings.

        Arrays hash their dtype, shape and bytes (a list of numbers hashes as
        the array numpy makes of it); files hash their bytes, not their path,
        so a moved or copied file keeps its fingerprint. The sample rate is not
        included: callers add it to their own key.

        Parameters
        ----------
        i : int
            The clip's position (errors name its index in the original ``X``).

        Returns
        -------
        str
            64 hexadecimal digits.
        """
        j = self._source(i)
        if self.kind == "paths":
            return _cache.file_fingerprint(self._items[j], index=j)
        return _cache.array_fingerprint(_numeric(np.asarray(self._items[j]), j))


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


def _check_2d(X: np.ndarray, check_clips: bool) -> AudioInput:
    if X.shape[0] == 0:
        raise ValueError(f"X holds 0 clips (shape {X.shape}); at least one is needed")
    if X.shape[1] == 0:
        raise ValueError(
            "clip 0: the clip is empty (0 samples). Found array with 0 feature(s) "
            f"(shape={X.shape}) while a minimum of 1 is required."
        )
    if X.dtype != object:
        _check_dtype(X.dtype, None)
    if check_clips and (
        X.dtype == object or X.dtype.itemsize > 4 or X.dtype.kind == "f"
    ):
        _validate_clips(X)
    return AudioInput(X, "array2d")


# below this many samples in all, a thread pool costs more than it saves
_PARALLEL_SAMPLES = 1 << 22


def _validate_clips(clips) -> None:
    """:func:`_validated` of every clip, raising the error of the first bad one.

    The checks read every sample once, which bounds how fast a GPU can be fed;
    large inputs are read by several threads (numpy's reductions release the
    GIL), each over a contiguous run of clips and stopping at its first bad
    one, so the error raised is still the first bad clip's. One clip's
    temporaries at a time per thread.
    """

    def check_run(lo: int, hi: int):
        for i in range(lo, hi):
            try:
                _validated(clips[i], i)
            except Exception as err:
                return err
        return None

    n = len(clips)
    workers = min(n, os.cpu_count() or 1, 8)
    if workers < 2 or _total_samples(clips) < _PARALLEL_SAMPLES:
        errors = [check_run(0, n)]
    else:
        bounds = np.linspace(0, n, workers + 1).astype(int).tolist()
        with ThreadPoolExecutor(workers, thread_name_prefix="skast-check") as pool:
            errors = list(pool.map(check_run, bounds[:-1], bounds[1:]))
    for err in errors:
        if err is not None:
            raise err


def check_audio_input(X, *, check_clips=True) -> AudioInput:
    """Validate ``X`` and wrap it, without decoding files or copying waveforms.

    The container is checked first. Then, unless ``check_clips=False``, each
    in-memory waveform is checked in place (1-D, not empty, real numbers,
    finite...), so that bad clips fail before any model work; temporaries stay
    within one clip. Files are only checked when :meth:`AudioInput.load`
    decodes them. ``load`` validates every clip again, whatever
    ``check_clips``.

    Parameters
    ----------
    X : array-like of shape (n_clips, n_samples) or sequence of n_clips items
        A 2-D numeric array-like of equal-length waveforms (numpy array,
        memmap, pandas DataFrame, torch tensor...), or a sequence (list, tuple,
        1-D object array, pandas Series) of 1-D numeric array-likes of any
        lengths, or of audio file paths (``str`` / ``os.PathLike``). A
        DataFrame with one column of paths or of arrays is read as that column.
    check_clips : bool, default=True
        Validate the in-memory waveforms now (a pass over their samples), not
        only as they load.

    Returns
    -------
    AudioInput
        With ``kind`` ``"array2d"``, ``"arrays"`` or ``"paths"``.

    Raises
    ------
    ValueError
        Empty ``X``; a single 1-D waveform (pass ``[clip]`` or
        ``clip[None, :]``); arrays of 3 or more dimensions or clips that are
        not 1-D; paths and waveforms mixed, naming the first odd index; with
        ``check_clips``, empty clips, NaN or infinite samples, 64-bit integers
        beyond 32-bit PCM, naming the clip.
    TypeError
        ``None``, scalars, strings, dicts, sets, iterators, sparse matrices,
        items that are neither waveforms nor paths.
    SampleTypeError
        Samples that are not real numbers: bool, complex (both a TypeError and
        a ValueError).

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> check_audio_input(np.zeros((2, 400))).kind
    'array2d'
    >>> check_audio_input([[0.0, 0.1], np.zeros(5)]).kind
    'arrays'
    >>> check_audio_input(["a.wav", "b.flac"]).kind
    'paths'
    >>> check_audio_input([np.zeros(4), np.array([0.0, np.nan])])
    Traceback (most recent call last):
    ...
    ValueError: clip 1: the clip contains NaN or infinite values
    >>> check_audio_input(np.zeros(400))
    Traceback (most recent call last):
    ...
    ValueError: X is a single waveform (400 samples), not a batch of clips. ...
    """
    X = _as_container(X)
    if isinstance(X, np.ndarray):
        X = _check_array(X)
        if X.ndim == 2:
            return _check_2d(X, check_clips)
        if X.dtype.kind == "U":
            X = X.tolist()
    return _from_sequence(X, check_clips)


def _as_container(X):
    """``X`` as an ndarray or a sequence; a TypeError for any other container."""
    if _is_sparse(X):  # before dict: scipy's dok_array is one
        raise TypeError(
            f"sparse input is not supported: {_X_TYPES}; got {type(X).__name__}"
        )
    if X is None or isinstance(X, (str, bytes, os.PathLike, dict, set)):
        raise TypeError(f"{_X_TYPES}; got {type(X).__name__}")
    if _is_scalar(X):
        raise TypeError(f"{_X_TYPES}; got the scalar {X!r}")
    if hasattr(X, "to_numpy") and hasattr(X, "ndim"):  # pandas DataFrame / Series
        return X.to_numpy()
    if not isinstance(X, (np.ndarray, collections.abc.Sequence)):
        if not hasattr(X, "__array__") and not hasattr(X, "__array_interface__"):
            raise TypeError(f"{_X_TYPES}; got {type(X).__name__}")
        return np.asarray(X)  # torch tensors, xarray...: no copy when avoidable
    return X


def _check_array(X: np.ndarray) -> np.ndarray:
    """An array that is one of: a 2-D array of waveforms, a 1-D object array of
    clips (a DataFrame's column of clips too), a 1-D array of file names."""
    if X.ndim == 0:
        raise TypeError(f"{_X_TYPES}; got a 0-d array")
    if X.ndim > 2:
        raise ValueError(
            f"X must be 2-D (n_clips, n_samples), got an array of shape "
            f"{X.shape}; mix multichannel audio to mono first"
        )
    if X.ndim == 2 and X.dtype == object and X.shape[1] == 1 and len(X):
        first = X[0, 0]
        if _is_path(first) or not _is_scalar(first):  # a column of clips
            X = X[:, 0]
    if X.ndim == 2 or X.dtype == object or X.dtype.kind == "U":
        return X
    if X.dtype.kind == "S":
        raise TypeError("X holds bytes: pass file paths as str or os.PathLike")
    if X.size == 0:
        raise ValueError("X holds 0 clips; at least one is needed")
    raise _single_clip_error(X.shape[0])


def _from_sequence(X, check_clips: bool) -> AudioInput:
    """A sequence of file paths, or of 1-D waveforms, as an AudioInput."""
    n = len(X)
    if n == 0:
        raise ValueError("X holds 0 clips; at least one is needed")
    is_path = [_is_path(item) for item in X]
    if all(is_path):
        return AudioInput(list(X), "paths")
    if any(is_path):
        odd = is_path.index(not is_path[0])
        raise ValueError(
            "X mixes file paths and waveforms: clip 0 is a "
            f"{'path' if is_path[0] else 'waveform'}, clip {odd} is "
            f"{'not' if is_path[0] else 'a path'}"
        )
    scalars = [_is_scalar(item) for item in X]
    if all(scalars):
        raise _single_clip_error(n)
    for i, item in enumerate(X):
        _check_item(item, i, scalars[i])
    if check_clips:
        _validate_clips(X)
    return AudioInput(X, "arrays")


def _check_item(item, i: int, scalar: bool) -> None:
    """An item of a sequence of waveforms that can be a 1-D clip (its samples
    are checked later)."""
    if scalar or item is None or isinstance(item, (bytes, dict, set)):
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


def _total_samples(clips) -> int:
    """The samples of all clips: of a 2-D array, or of a sequence of 1-D clips."""
    if isinstance(clips, np.ndarray) and clips.dtype != object:
        return clips.size

    def n_samples(item) -> int:
        size = getattr(item, "size", None)
        return size if isinstance(size, numbers.Integral) else len(item)

    return sum(n_samples(item) for item in clips)
