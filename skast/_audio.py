"""The input contract: what a user passes as ``X`` -> mono float32 16 kHz clips.

Accepted ``X``:

* a 2-D numeric array ``(n_clips, n_samples)`` of equal-length waveforms;
* a sequence (list, tuple, 1-D object array, pandas Series) of 1-D numeric
  arrays of any lengths, or of audio file paths (``str`` / ``os.PathLike``).

Integer PCM is scaled to [-1, 1]; other sample rates are resampled with
:func:`torchaudio.functional.resample`; files are decoded with soundfile and
their channels averaged to mono. Clips are validated one at a time as they are
loaded, and errors name the clip's index. The user's arrays are never changed.
"""

from __future__ import annotations

import collections.abc
import hashlib
import os

import numpy as np
import torch

__all__ = [
    "SAMPLE_RATE",
    "AudioInput",
    "AudioDataset",
    "check_audio_input",
    "iter_batches",
    "load_audio",
    "to_waveform",
]

SAMPLE_RATE = 16000
_INT_SCALE = {
    np.dtype(np.int8): (0.0, 128.0),
    np.dtype(np.uint8): (128.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
    np.dtype(np.uint16): (32768.0, 32768.0),
}


def _where(index) -> str:
    return "" if index is None else f"clip {index}: "


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


def load_audio(path, *, index=None) -> tuple[np.ndarray, int]:
    """Decode an audio file to a mono float32 waveform and its sample rate.

    Channels are averaged (the original AST recipe takes channel 0; averaging
    keeps content that is only in the other channels).

    Parameters
    ----------
    path : str or os.PathLike
        A file soundfile reads: wav, flac, ogg/vorbis, aiff...
    index : int, default=None
        The clip's index in ``X``, for error messages.

    Returns
    -------
    waveform : ndarray of shape (n_samples,), float32
    sample_rate : int

    Raises
    ------
    ValueError
        A missing, unreadable, corrupt or empty file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, soundfile as sf
    >>> from skast._audio import load_audio
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, np.zeros((800, 2), dtype=np.float32), 8000)
    >>> wave, rate = load_audio(path)
    >>> wave.shape, wave.dtype, rate
    ((800,), dtype('float32'), 8000)
    """
    import soundfile

    try:
        data, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError...
        raise ValueError(
            f"{_where(index)}cannot read audio file '{os.fspath(path)}': {err}"
        ) from err
    if data.shape[0] == 0:
        raise ValueError(f"{_where(index)}audio file '{os.fspath(path)}' is empty")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def _as_float(array, index) -> np.ndarray:
    """A float32 copy of a 1-D numeric clip, integer PCM scaled to [-1, 1]."""
    try:
        a = np.asarray(array)
    except Exception as err:
        raise TypeError(f"{_where(index)}cannot convert to an array: {err}") from err
    if a.dtype == object:
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{_where(index)}is not a numeric waveform") from err
    if a.ndim != 1:
        raise ValueError(
            f"{_where(index)}a waveform must be 1-D, got shape {a.shape}; "
            "multichannel arrays must be mixed to mono first"
        )
    if a.size == 0:
        raise ValueError(f"{_where(index)}the clip is empty (0 samples)")
    kind = a.dtype.kind
    if kind == "b" or kind == "c" or kind not in "iuf":
        raise TypeError(
            f"{_where(index)}waveforms must be real numbers, got dtype {a.dtype}"
        )
    if kind in "iu":
        if a.dtype in _INT_SCALE:
            offset, scale = _INT_SCALE[a.dtype]
        else:  # int64 / uint32 / uint64: accept values that fit 32-bit PCM
            lo, hi = int(a.min()), int(a.max())
            if lo < -(2**31) or hi >= 2**31:
                raise ValueError(
                    f"{_where(index)}{a.dtype} samples outside the 32-bit PCM range"
                )
            offset, scale = 0.0, 2147483648.0
        return ((a.astype(np.float64) - offset) / scale).astype(np.float32)
    out = np.array(a, dtype=np.float32, copy=True)
    if not np.isfinite(out).all():
        raise ValueError(f"{_where(index)}the clip contains NaN or infinite values")
    return out


def to_waveform(item, *, sample_rate: int = SAMPLE_RATE, index=None) -> torch.Tensor:
    """One raw clip (a 1-D array at ``sample_rate`` or a file path) -> a 1-D
    float32 tensor at 16 kHz.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import to_waveform
    >>> to_waveform(np.zeros(8000, dtype=np.int16), sample_rate=8000).shape
    torch.Size([16000])
    """
    if _is_path(item):
        wave, rate = load_audio(item, index=index)
        if not np.isfinite(wave).all():
            raise ValueError(f"{_where(index)}the file contains NaN or infinite values")
    else:
        wave, rate = _as_float(item, index), sample_rate
    tensor = torch.from_numpy(wave)
    if rate != SAMPLE_RATE:
        import torchaudio.functional

        tensor = torchaudio.functional.resample(tensor, rate, SAMPLE_RATE)
    return tensor


class AudioInput(collections.abc.Sequence):
    """A validated ``X``: indexable raw clips that load one at a time.

    Build it with :func:`check_audio_input`.

    Attributes
    ----------
    kind : {"array2d", "arrays", "paths"}

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> audio = check_audio_input(np.zeros((3, 16000), dtype=np.float32))
    >>> len(audio), audio.kind, audio.load(0, 16000).shape
    (3, 'array2d', torch.Size([16000]))
    """

    def __init__(self, items, kind: str):
        self._items = items
        self.kind = kind

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def subset(self, indices) -> AudioInput:
        """The clips at ``indices``, as an AudioInput of the same kind."""
        if self.kind == "array2d":
            return AudioInput(self._items[np.asarray(indices, dtype=int)], self.kind)
        return AudioInput([self._items[i] for i in indices], self.kind)

    def load(self, i: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """Clip ``i`` as a 1-D float32 tensor at 16 kHz (validated)."""
        return to_waveform(self._items[i], sample_rate=sample_rate, index=i)

    def fingerprint(self, i: int) -> str:
        """A content hash of clip ``i``: the array's dtype, shape and bytes, or
        the file's bytes (so a moved or copied file has the same fingerprint)."""
        item = self._items[i]
        h = hashlib.sha256()
        if self.kind == "paths":
            h.update(b"file:")
            try:
                with open(item, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as err:
                raise ValueError(
                    f"clip {i}: cannot read '{os.fspath(item)}': {err}"
                ) from err
        else:
            a = np.ascontiguousarray(np.asarray(item))
            h.update(f"array:{a.dtype.str}:{a.shape}:".encode())
            h.update(a.tobytes())
        return h.hexdigest()


def check_audio_input(X) -> AudioInput:
    """Validate the container ``X`` (not the clips) and wrap it.

    Raises
    ------
    TypeError, ValueError
        ``None``, scalars, dicts, 1-D numeric arrays (one clip: pass ``[clip]``),
        3-D arrays, empty ``X``, and mixed kinds (arrays and paths), naming the
        first offending index.

    Examples
    --------
    >>> from skast._audio import check_audio_input
    >>> check_audio_input(["a.wav", "b.flac"]).kind
    'paths'
    >>> check_audio_input([[0.0, 0.1], [0.2]]).kind
    'arrays'
    """
    if X is None or isinstance(X, (str, bytes, os.PathLike, dict)) or np.isscalar(X):
        raise TypeError(
            "X must be a 2-D array (n_clips, n_samples) or a sequence of 1-D "
            f"waveforms or audio file paths, got {type(X).__name__}"
        )
    if hasattr(X, "to_numpy") and getattr(X, "ndim", 1) == 2:  # a DataFrame
        X = X.to_numpy()
    elif hasattr(X, "to_numpy"):  # a Series
        X = X.to_numpy(dtype=object)
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 2:
            if X.shape[0] == 0:
                raise ValueError("X holds 0 clips; at least one is required")
            if X.shape[1] == 0:
                raise ValueError("X has clips of 0 samples")
            return AudioInput(X, "array2d")
        if X.ndim == 1:
            raise ValueError(
                "X is a single 1-D array: pass one clip as [clip] or "
                "clip[np.newaxis, :], several as a 2-D array or a list of arrays"
            )
        raise ValueError(
            f"X must be 2-D (n_clips, n_samples), got an array of shape {X.shape}"
        )
    if isinstance(X, np.ndarray) and X.ndim != 1:
        raise ValueError(f"X must be a 1-D sequence of clips, got shape {X.shape}")
    if not isinstance(X, collections.abc.Sequence) and not isinstance(X, np.ndarray):
        raise TypeError(
            "X must be a 2-D array or a sequence of waveforms or paths, "
            f"got {type(X).__name__}"
        )
    if len(X) == 0:
        raise ValueError("X holds 0 clips; at least one is required")
    paths = [_is_path(item) for item in X]
    if all(paths):
        return AudioInput(list(X), "paths")
    if any(paths):
        first = paths.index(not paths[0])
        raise ValueError(
            f"X mixes file paths and waveforms (clip 0 is a "
            f"{'path' if paths[0] else 'waveform'}, clip {first} is not)"
        )
    for i, item in enumerate(X):
        if isinstance(item, (dict, set)) or item is None or np.isscalar(item):
            raise TypeError(
                f"clip {i}: expected a 1-D waveform or a file path, got "
                f"{type(item).__name__}"
            )
    if all(np.ndim(item) == 0 for item in X[:1]):  # pragma: no cover - guarded above
        raise ValueError("X is a single waveform: pass [clip]")
    return AudioInput(X, "arrays")


class AudioDataset(torch.utils.data.Dataset):
    """Item ``i`` is ``(i, waveform)`` for DataLoader workers (picklable).

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import AudioDataset, check_audio_input
    >>> ds = AudioDataset(check_audio_input(np.zeros((2, 400))), 16000)
    >>> i, wave = ds[1]
    >>> i, wave.shape
    (1, torch.Size([400]))
    """

    def __init__(self, audio: AudioInput, sample_rate: int = SAMPLE_RATE):
        self.audio = audio
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i):
        return i, self.audio.load(i, self.sample_rate)


def _collate(batch):
    return list(batch)


def iter_batches(
    audio: AudioInput, *, sample_rate: int, batch_size: int, num_workers: int = 0
):
    """Yield lists of ``(index, waveform)`` of up to ``batch_size`` clips, in order.

    Files are decoded by ``num_workers`` DataLoader processes when > 0; memory
    is bounded by the batch size, not by ``len(audio)``.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input, iter_batches
    >>> audio = check_audio_input(np.zeros((5, 400), dtype=np.float32))
    >>> [[i for i, _ in b] for b in iter_batches(audio, sample_rate=16000, batch_size=2)]
    [[0, 1], [2, 3], [4]]
    """
    dataset = AudioDataset(audio, sample_rate)
    if num_workers == 0:
        for start in range(0, len(dataset), batch_size):
            yield [
                dataset[i] for i in range(start, min(start + batch_size, len(dataset)))
            ]
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    try:
        yield from loader
    except (ValueError, TypeError) as err:
        # DataLoader re-raises a worker's error with the worker's traceback as
        # its message; its last line is "ValueError: clip 3: ...". Keep that.
        last = str(err).strip().splitlines()[-1]
        raise type(err)(last.split(": ", 1)[-1]) from err
