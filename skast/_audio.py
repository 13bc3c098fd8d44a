"""The input contract: what a user passes as ``X`` -> mono float32 16 kHz clips.

Accepted ``X``:

* a 2-D numeric array-like ``(n_clips, n_samples)`` of equal-length waveforms
  (numpy arrays, read-only memmaps, pandas DataFrames, torch tensors, anything
  numpy converts);
* a sequence (list, tuple, 1-D object array, pandas Series) whose items are all
  1-D numeric arrays or tensors of any lengths (lists of numbers too), all
  audio file paths (``str`` / ``os.PathLike``), or all audio records of Hugging
  Face ``datasets`` (:mod:`skast._records`: an ``Audio`` column), each record
  at its own rate.

:func:`check_audio_input` checks the container (:mod:`skast._containers`)
and, in place, the in-memory clips (:mod:`skast._samples`); files are opened
only by :meth:`AudioInput.probe` (their headers) and :meth:`AudioInput.load`,
which converts and validates one clip at a time, so that estimators stream
``X`` in batches (:func:`skast._batches.load_batches`) with bounded memory.
Torch tensors stay on their device throughout. Every error about a clip names
its index in ``X``.

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
by :func:`skast._decode.load_audio` (soundfile: wav, flac, ogg/vorbis, mp3,
and whatever the bundled libsndfile reads; torchcodec, where installed, for
the rest of what FFmpeg reads), their channels averaged to mono.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import torch

from skast import _cache
from skast._containers import _first_error, _is_path, classify, item_at
from skast._decode import check_rate, load_audio, probe, resample
from skast._recipes import SAMPLE_RATE
from skast._records import is_record, record_source
from skast._samples import SampleTypeError, _numeric, to_float32, validated

__all__ = [
    "AudioInput",
    "SampleTypeError",
    "check_audio_input",
    "to_waveform",
]


_KINDS = ("array2d", "arrays", "paths", "records")


def to_waveform(
    item, *, sample_rate=SAMPLE_RATE, index=None, copy=True
) -> torch.Tensor:
    """Turn one raw clip into a 1-D float32 tensor at 16 kHz.

    Parameters
    ----------
    item : array-like of shape (n_samples,), torch.Tensor, str, os.PathLike or record
        A waveform at ``sample_rate`` (integer PCM is scaled to [-1, 1], see
        the module's table), an audio file path (decoded with
        :func:`skast._decode.load_audio`; the file's own rate is used, not
        ``sample_rate``), or an audio record of Hugging Face ``datasets``
        (:mod:`skast._records`: a dict or a decoder object, at its own rate).
        A tensor stays on its device.
    sample_rate : int, default=16000
        The rate of an array or tensor ``item``, in Hz.
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
        ``copy=False``), on ``item``'s device for a tensor. After resampling,
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
    >>> to_waveform({"array": [0.0, 0.5], "sampling_rate": 8000}).shape
    torch.Size([4])
    """
    name = None
    if is_record(item):
        kind, item, value = record_source(item, index)
        if kind == "samples":
            sample_rate = value
        else:
            name = value
    if _is_path(item) or isinstance(item, (bytes, bytearray, memoryview)):
        wave, rate = load_audio(item, index=index, name=name)
        wave = torch.from_numpy(wave)
    else:
        wave = to_float32(validated(item, index), copy=copy)
        rate = check_rate(sample_rate)
    return resample(wave, rate, SAMPLE_RATE)


# --------------------------------------------------------------------------- X


class AudioInput(collections.abc.Sequence):
    """A validated ``X``: indexable raw clips that are converted one at a time.

    Build it with :func:`check_audio_input`.

    Parameters
    ----------
    items : ndarray, torch.Tensor or sequence
        The clips: a 2-D array or tensor (``kind="array2d"``), a sequence of
        1-D array-likes or tensors (``"arrays"``), a list of paths
        (``"paths"``) or a sequence of audio records of Hugging Face
        ``datasets`` (``"records"``: dicts, decoder objects).
    kind : {"array2d", "arrays", "paths", "records"}
        What ``items`` holds.

    Attributes
    ----------
    kind : {"array2d", "arrays", "paths", "records"}
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
        item = item_at(self._items, j)
        return to_waveform(item, sample_rate=sample_rate, index=j, copy=copy)

    def probe(self) -> AudioInput:
        """Check that every file exists and has a readable audio header.

        The check of ``fit`` before any model work: each path (and each
        record's path or bytes) is probed with :func:`skast._decode.probe`,
        which reads the header, not the samples, and raises the ValueError
        that :meth:`load` would raise for a missing, unreadable, non-audio or
        empty file, naming the first bad clip. Long lists are probed by
        several threads. In-memory clips are not checked here (see
        :func:`check_audio_input`).

        Returns
        -------
        AudioInput
            ``self``.

        Raises
        ------
        ValueError
            For the first file (in the order of ``X``) that ``load`` would
            not read.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np, soundfile as sf
        >>> from skast._audio import check_audio_input
        >>> folder = tempfile.mkdtemp()
        >>> good = os.path.join(folder, "good.wav")
        >>> sf.write(good, np.zeros(400), 16000)
        >>> check_audio_input([good]).probe().kind
        'paths'
        >>> check_audio_input([good, os.path.join(folder, "gone.wav")]).probe()
        Traceback (most recent call last):
        ...
        ValueError: clip 1: cannot read audio file '...gone.wav': [Errno 2] No such file or directory: '...gone.wav'
        """
        if self.kind in ("paths", "records"):
            _first_error(self._probe_one, len(self), parallel=len(self) >= 64)
        return self

    def _probe_one(self, i: int) -> None:
        j = self._source(i)
        item, name = item_at(self._items, j), None
        if self.kind == "records":
            kind, item, name = record_source(item, j, decode=False)
            if kind != "file":
                return
        probe(item, index=j, name=name)

    def fingerprint(self, i: int) -> str:
        """A content hash of clip ``i`` (hex sha256), for caching embeddings.

        Arrays and tensors hash their dtype, shape and bytes (a list of
        numbers hashes as the array numpy makes of it); files, and records
        holding a file's path or bytes, hash the file's bytes, not its path,
        so a moved or copied file keeps its fingerprint. The estimators'
        ``sample_rate`` is not included (callers add it to their own key); a
        record's own sampling rate is.

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
        item, rate = self._items[j], None
        if self.kind == "records":  # a clip at its own rate, or a file
            kind, item, rate = record_source(item, j)
            if kind == "file":
                if isinstance(item, (bytes, bytearray)):
                    return _cache.bytes_fingerprint(item)
                return _cache.file_fingerprint(item, index=j)
        elif self.kind == "paths":
            return _cache.file_fingerprint(item, index=j)
        if not isinstance(item, torch.Tensor):
            item = _numeric(np.asarray(item), j)
        return _cache.array_fingerprint(item, rate=rate)


def check_audio_input(X, *, check_clips=True, probe_files=False) -> AudioInput:
    """Validate ``X`` and wrap it, without decoding files or copying waveforms.

    The container is checked first. Then, unless ``check_clips=False``, each
    in-memory waveform is checked in place (1-D, not empty, real numbers,
    finite...), so that bad clips fail before any model work; temporaries stay
    within one clip. Files are checked when :meth:`AudioInput.load` decodes
    them, and before, with ``probe_files=True``, by :meth:`AudioInput.probe`
    (their headers: what ``fit`` checks before any model work). ``load``
    validates every clip again, whatever ``check_clips``.

    Torch tensors stay tensors, on their device: they are checked there with
    torch operations, and :meth:`AudioInput.load` converts them there.

    Parameters
    ----------
    X : array-like of shape (n_clips, n_samples) or sequence of n_clips items
        A 2-D numeric array-like of equal-length waveforms (numpy array,
        memmap, pandas DataFrame, torch tensor...), or a sequence (list, tuple,
        1-D object array, pandas Series) of 1-D numeric array-likes or tensors
        of any lengths, of audio file paths (``str`` / ``os.PathLike``), or of
        Hugging Face audio records (``{"array", "sampling_rate"}`` dicts, with
        or without ``"path"``; ``{"path"}`` or ``{"bytes"}`` dicts; decoder
        objects with ``get_all_samples()``: an ``Audio`` column of a
        ``datasets.Dataset``), each at its own rate. A DataFrame with one
        column of paths or of arrays is read as that column.
    check_clips : bool, default=True
        Validate the in-memory waveforms now (a pass over their samples), not
        only as they load.
    probe_files : bool, default=False
        Check now that every file exists and has a readable audio header
        (:meth:`AudioInput.probe`), decoding nothing.

    Returns
    -------
    AudioInput
        With ``kind`` ``"array2d"``, ``"arrays"``, ``"paths"`` or
        ``"records"``.

    Raises
    ------
    ValueError
        Empty ``X``; a single 1-D waveform (pass ``[clip]`` or
        ``clip[None, :]``); arrays of 3 or more dimensions or clips that are
        not 1-D; paths, waveforms and records mixed, naming the first odd
        index; audio dicts without the keys needed; with ``check_clips``,
        empty clips, NaN or infinite samples, 64-bit integers beyond 32-bit
        PCM, naming the clip; with ``probe_files``, files that ``load`` would
        not read.
    TypeError
        ``None``, scalars, strings, dicts, sets, iterators, sparse matrices,
        items that are neither waveforms, paths nor records.
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
    >>> check_audio_input([{"array": np.zeros(400), "sampling_rate": 8000}]).kind
    'records'
    >>> check_audio_input([np.zeros(4), np.array([0.0, np.nan])])
    Traceback (most recent call last):
    ...
    ValueError: clip 1: the clip contains NaN or infinite values
    >>> check_audio_input(np.zeros(400))
    Traceback (most recent call last):
    ...
    ValueError: X is a single waveform (400 samples), not a batch of clips. ...
    >>> check_audio_input(["a.wav"], probe_files=True)
    Traceback (most recent call last):
    ...
    ValueError: clip 0: cannot read audio file 'a.wav': [Errno 2] No such file or directory: 'a.wav'
    """
    audio = AudioInput(*classify(X, check_clips))
    return audio.probe() if probe_files else audio
