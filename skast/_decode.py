"""Audio files -> mono float32 waveforms, and resampling: the one decoder.

Files are read with soundfile as float32 (integer PCM scaled to [-1, 1]: wav,
flac, ogg/vorbis, mp3, and whatever the bundled libsndfile reads) and their
channels averaged to mono. Files soundfile cannot read are decoded by
torchcodec where it is installed (``pip install 'skast[codecs]'``, with FFmpeg's
shared libraries): m4a/AAC, Opus, WebM, the audio of MP4 and MKV files.
:func:`probe` checks a file's header without decoding it. Waveforms are resampled with
:func:`torchaudio.functional.resample` (default arguments). The estimators'
input contract (:mod:`skast._audio`) and :func:`skast.datasets.load_esc50`
both decode through this module, which imports torch only to resample.
"""

from __future__ import annotations

import io
import numbers
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_rate",
    "clip_prefix",
    "load_audio",
    "mono",
    "probe",
    "read",
    "resample",
    "resample_clips",
]


def clip_prefix(index) -> str:
    """How errors name clip ``index`` of ``X``: ``"clip 3: "``; ``""`` for ``None``."""
    return "" if index is None else f"clip {index}: "


def check_rate(sample_rate) -> int:
    """A positive integral sample rate, as an int.

    Parameters
    ----------
    sample_rate : int
        A rate in Hz. A float with an integral value is accepted (resampling
        would truncate any other), booleans are not.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        Not a real number, or a boolean.
    ValueError
        Not integral, or not positive.

    Examples
    --------
    >>> from skast._decode import check_rate
    >>> check_rate(16000.0)
    16000
    >>> check_rate(0)
    Traceback (most recent call last):
    ...
    ValueError: sample_rate must be a positive integer, got 0
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise TypeError(f"sample_rate must be an integer, got {sample_rate!r}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def resample(waves: torch.Tensor, rate: int, new_rate: int) -> torch.Tensor:
    """Resample waveforms along their last dimension.

    Parameters
    ----------
    waves : torch.Tensor of shape (..., n_samples), dtype float32
        One waveform, or a stack of waveforms at the same rate.
    rate, new_rate : int
        Their rate and the rate wanted, in Hz.

    Returns
    -------
    torch.Tensor of shape (..., ceil(n_samples * new_rate / rate))
        :func:`torchaudio.functional.resample` with its default arguments;
        ``waves`` itself when the rates are equal.

    Examples
    --------
    >>> import torch
    >>> from skast._decode import resample
    >>> resample(torch.zeros(2, 8000), 8000, 16000).shape
    torch.Size([2, 16000])
    """
    if rate == new_rate:
        return waves
    return _torchaudio_functional().resample(waves, rate, new_rate)


def _torchaudio_functional():
    """``torchaudio.functional``, imported on first use, or an ImportError
    that says which pair to install when torchaudio's library cannot load
    with this torch (``import torchaudio`` loads its compiled library)."""
    try:
        import torchaudio.functional
    except (ImportError, OSError) as err:
        from importlib.metadata import PackageNotFoundError, version

        def installed(name):
            try:
                return f"{name} {version(name)}"
            except PackageNotFoundError:
                return f"{name} (not installed)"

        raise ImportError(
            f"resampling needs torchaudio, and {installed('torchaudio')} does not "
            f"load with {installed('torch')}: {err}. Install a pair that loads, such as "
            "pip install 'torch>=2.13' 'torchaudio>=2.11.1' (torchaudio 2.4-2.10 "
            "need the torch release of their own version)"
        ) from err
    return torchaudio.functional


def resample_clips(clips, new_rate: int) -> list[np.ndarray]:
    """Resample clips of various rates, one call per rate and length.

    Clips of the same rate and length are stacked and resampled together;
    those already at ``new_rate`` are returned as they are.

    Parameters
    ----------
    clips : sequence of (ndarray of shape (n_samples,), int)
        Float32 waveforms and their rates, as :func:`read` returns them.
    new_rate : int
        The rate wanted, in Hz.

    Returns
    -------
    list of ndarray, dtype float32
        The waveforms at ``new_rate``, in the order of ``clips``.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._decode import resample_clips
    >>> clips = [(np.zeros(800, np.float32), 8000), (np.ones(3, np.float32), 16000)]
    >>> [w.shape for w in resample_clips(clips, 16000)]
    [(1600,), (3,)]
    """
    import torch

    out = [wave for wave, _ in clips]
    groups = {}
    for i, (wave, rate) in enumerate(clips):
        if rate != new_rate:
            groups.setdefault((rate, wave.size), []).append(i)
    for (rate, _), idx in groups.items():
        stack = torch.from_numpy(np.stack([out[i] for i in idx]))
        new = resample(stack, rate, new_rate).numpy()
        for i, wave in zip(idx, new):
            out[i] = np.ascontiguousarray(wave, dtype=np.float32)
    return out


def _torchcodec():
    """torchcodec's ``AudioDecoder``, or ``(None, why)`` where it cannot be used.

    Imported on first use: torchcodec is optional (``pip install
    'skast[codecs]'``) and needs FFmpeg's shared libraries.
    """
    global _TORCHCODEC
    if _TORCHCODEC is None:
        try:
            from torchcodec.decoders import AudioDecoder
        except ModuleNotFoundError:
            _TORCHCODEC = None, "torchcodec is not installed"
        except Exception as err:  # no FFmpeg, or a torch it was not built for
            _TORCHCODEC = None, f"torchcodec is installed but does not load ({err})"
        else:
            _TORCHCODEC = AudioDecoder, None
    return _TORCHCODEC


_TORCHCODEC = None
_CODECS = (
    "soundfile reads WAV, FLAC, Ogg/Vorbis, MP3 and AIFF; for m4a/AAC, Opus, WebM "
    "and the audio of MP4 or MKV files, install torchcodec and FFmpeg's libraries: "
    "pip install 'skast[codecs]'"
)


def _cannot_read(name, index, cause, codec_error=None) -> ValueError:
    """The error for a file that no decoder reads, ``cause`` chained by the caller."""
    message = f"{clip_prefix(index)}cannot read audio file {name!r}: {cause}"
    if not isinstance(cause, OSError):  # a file there, in no format soundfile reads
        decoder, why = _torchcodec()
        if decoder is None:
            message += f" ({why}; {_CODECS})"
        elif codec_error is not None:
            message += f"; torchcodec: {codec_error}"
    return ValueError(message)


def _source(path, name):
    """What soundfile opens, and how errors name it: a path, or bytes."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        data = bytes(path)
        return io.BytesIO(data), data, name or f"<{len(data)} bytes>"
    path = os.fspath(path)
    return path, path, name or path


def _missing(source):
    """An OSError for a path that cannot be opened (soundfile says "System
    error." for a missing file); ``None`` for bytes and for files that open."""
    if isinstance(source, str):
        try:
            with open(source, "rb"):
                pass
        except OSError as err:
            return err
    return None


def read(path, *, index=None, name=None) -> tuple[np.ndarray, int]:
    """Decode an audio file to a mono float32 waveform at the file's rate.

    What :func:`load_audio` does before its checks: a file with no frames
    gives an empty waveform, NaN samples are kept. soundfile decodes first;
    a file it cannot read is decoded by torchcodec, when that is installed
    (``pip install 'skast[codecs]'``: m4a/AAC, Opus, WebM, the audio track of
    MP4 and MKV files, whatever FFmpeg reads).

    Parameters
    ----------
    path : str, os.PathLike or bytes
        A file, or the bytes of one (as a Hugging Face ``Audio`` column
        holds them undecoded).
    index : int, default=None
        The clip's index in ``X``, to name it in error messages.
    name : str, default=None
        How error messages name the file; default: the path.

    Returns
    -------
    waveform : ndarray of shape (n_samples,), dtype float32
        A new, C-contiguous array: the file's only channel, or the mean of
        its channels.
    sample_rate : int
        The file's rate.

    Raises
    ------
    ValueError
        A missing, unreadable, corrupt or non-audio file; the error of
        soundfile (or of ``open`` for a missing file) is chained. Where no
        decoder reads the file, the message says what to install.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, soundfile as sf
    >>> from skast._decode import load_audio, read
    >>> folder = tempfile.mkdtemp()
    >>> empty = os.path.join(folder, "empty.wav")
    >>> sf.write(empty, np.zeros((0, 2)), 8000)
    >>> read(empty)
    (array([], dtype=float32), 8000)
    >>> load_audio(empty)
    Traceback (most recent call last):
    ...
    ValueError: the audio file '...empty.wav' is empty (0 frames)
    >>> with open(empty, "rb") as f:
    ...     read(f.read(), name="empty.wav")
    (array([], dtype=float32), 8000)
    """
    import soundfile

    source, raw, name = _source(path, name)
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except MemoryError:
        raise
    except Exception as err:  # LibsndfileError, RuntimeError, TypeError...
        cause = _missing(raw) or err
        codec_error = None
        decoder, _ = _torchcodec()
        if decoder is not None and cause is err:
            try:
                samples = decoder(raw).get_all_samples()
            except Exception as tc_err:
                codec_error = tc_err
            else:
                return mono(samples.data.numpy()), int(samples.sample_rate)
        raise _cannot_read(name, index, cause, codec_error) from cause
    return mono(data.T), int(rate)


def mono(data) -> np.ndarray:
    """The mean of ``(n_channels, n_samples)`` samples, as new float32 samples.

    Parameters
    ----------
    data : ndarray of shape (n_channels, n_samples)

    Returns
    -------
    ndarray of shape (n_samples,), dtype float32
        C-contiguous: the only channel (a view of it where it is contiguous
        float32), or the channels' mean.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._decode import mono
    >>> mono(np.array([[0.5, 1.0], [-0.25, 0.0]]))
    array([0.125, 0.5  ], dtype=float32)
    """
    if data.shape[0] == 1:
        return np.ascontiguousarray(data[0], dtype=np.float32)
    return data.mean(axis=0, dtype=np.float32)


def probe(path, *, index=None, name=None) -> None:
    """Check that a file exists and has a readable audio header, decoding nothing.

    What :func:`load_audio` would raise for a missing, unreadable or non-audio
    file, or for one whose header says it has 0 frames, is raised here, with
    the same message; the samples are not read (a file corrupt past its header
    is reported when it is decoded). soundfile reads the header; torchcodec,
    when installed, the headers soundfile does not read.

    Parameters
    ----------
    path : str, os.PathLike or bytes
        A file, or the bytes of one.
    index : int, default=None
        The clip's index in ``X``, to name it in error messages.
    name : str, default=None
        How error messages name the file; default: the path.

    Raises
    ------
    ValueError
        As :func:`load_audio`, for what a header shows.

    Examples
    --------
    >>> import io
    >>> import numpy as np, soundfile as sf
    >>> from skast._decode import probe
    >>> buffer = io.BytesIO()
    >>> sf.write(buffer, np.zeros(400), 16000, format="WAV")
    >>> probe(buffer.getvalue(), name="tone.wav")
    >>> probe(b"not audio", index=3, name="notes.wav")
    Traceback (most recent call last):
    ...
    ValueError: clip 3: cannot read audio file 'notes.wav': Error opening ...
    """
    import soundfile

    source, raw, name = _source(path, name)
    try:
        frames = soundfile.info(source).frames
    except MemoryError:
        raise
    except Exception as err:
        cause = _missing(raw) or err
        codec_error = None
        decoder, _ = _torchcodec()
        if decoder is not None and cause is err:
            try:
                decoder(raw).metadata  # noqa: B018 - opening reads the header
            except Exception as tc_err:
                codec_error = tc_err
            else:
                return
        raise _cannot_read(name, index, cause, codec_error) from cause
    if frames == 0:
        raise ValueError(f"{clip_prefix(index)}{_empty(name)}")


def _empty(name) -> str:
    return f"the audio file {name!r} is empty (0 frames)"


def load_audio(
    path, *, sample_rate=None, index=None, name=None
) -> tuple[np.ndarray, int]:
    """Decode an audio file to a mono float32 waveform.

    The file is read with soundfile as float32 (integer PCM scaled to [-1, 1]),
    and its channels are averaged to mono. The original AST recipe keeps
    channel 0 instead (``torchaudio.load`` then ``waveform[0]``); averaging
    keeps what is only in the other channels and is the same for mono files.

    Parameters
    ----------
    path : str, os.PathLike or bytes
        A file (or its bytes) that :func:`read` decodes: wav, flac,
        ogg/vorbis, mp3, aiff...; with torchcodec, whatever FFmpeg reads.
    sample_rate : int, default=None
        Resample to this rate (:func:`torchaudio.functional.resample`); ``None``
        keeps the file's own rate.
    index, name : int and str, default=None
        As for :func:`read`: the clip's index in ``X`` and the file's name,
        for error messages.

    Returns
    -------
    waveform : ndarray of shape (n_samples,), dtype float32
        A new, writable array.
    sample_rate : int
        The waveform's rate: the file's, or ``sample_rate`` when given.

    Raises
    ------
    ValueError
        A missing, unreadable, corrupt, non-audio or empty (0 frames) file, or
        one holding NaN or infinite samples. The original error is chained.

    See Also
    --------
    skast._audio.to_waveform : A path or an array -> a 16 kHz tensor.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, soundfile as sf
    >>> from skast._decode import load_audio
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "stereo.wav")
    ...     sf.write(path, np.full((800, 2), [0.5, -0.25]), 8000)
    ...     wave, rate = load_audio(path)
    ...     wave16k, rate16k = load_audio(path, sample_rate=16000)
    >>> wave.shape, wave.dtype, rate, float(wave[0])
    ((800,), dtype('float32'), 8000, 0.125)
    >>> wave16k.shape, rate16k
    ((1600,), 16000)
    """
    wave, rate = read(path, index=index, name=name)
    name = _source(path, name)[2]
    if wave.size == 0:
        raise ValueError(f"{clip_prefix(index)}{_empty(name)}")
    if not np.isfinite(wave).all():
        raise ValueError(
            f"{clip_prefix(index)}the audio file {name!r} contains NaN or infinite values"
        )
    if sample_rate is not None:
        sample_rate = check_rate(sample_rate)
        if sample_rate != rate:
            import torch

            wave = resample(torch.from_numpy(wave), rate, sample_rate).numpy()
            rate = sample_rate
    return wave, rate
