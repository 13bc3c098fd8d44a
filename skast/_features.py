"""AST's log-mel features: batched kaldi fbank and normalisation.

:func:`fbank` equals, to float32 rounding,
``torchaudio.compliance.kaldi.fbank(w.unsqueeze(0), sample_frequency=16000,
window_type="hanning", num_mel_bins=128)`` -- the call of transformers'
``ASTFeatureExtractor`` and of the original AST repository -- computed for a
whole ragged batch at once, on the waveforms' device (CPU or CUDA). The
operations follow torchaudio's order, in float32:

1. frames of 400 samples every 160 (``snip_edges=True``), a strided view;
2. per-frame DC removal (subtract the frame mean);
3. preemphasis ``x[j] -= 0.97 * x[max(0, j - 1)]``;
4. ``torch.hann_window(400, periodic=False)``;
5. zero-padding to 512 samples and ``torch.fft.rfft``;
6. power spectrum ``hypot(re, im) ** 2``, which is what torchaudio's
   ``rfft(...).abs().pow(2)`` computes (bit for bit on the CPU), several times
   faster than complex ``abs`` there;
7. one matmul with the kaldi mel filter bank (20 Hz to Nyquist, mel scale
   ``1127 ln(1 + f / 700)``, a zero column for the Nyquist bin);
8. ``log(max(x, eps))`` with eps the float32 machine epsilon.

The mel filter bank is a faithful copy of torchaudio's ``get_mel_banks``
(tested through :func:`fbank` against torchaudio's) built once per ``(num_mel_bins, device)``
and cached, so this module does not import torchaudio at all (2.11 is
torchaudio's last release, and the copy is 20 lines); the tests compare
against torchaudio and transformers. On the CPU most clips come out bit for
bit equal to torchaudio's; the rest differ by a few float32 ulps.

Clips shorter than one frame (1 to 399 samples, under 25 ms), which kaldi
rejects with an ``AssertionError``, are zero-padded at the end to 400 samples
and give exactly one frame. Empty clips raise ``ValueError``.

Frame counts, padding and truncation follow the reference: a clip of ``n``
samples has :func:`num_frames` ``(n)`` frames; frames beyond a clip's own count
are 0.0 in log-mel units (before normalisation), and ``max_length`` keeps the
first frames. :func:`normalize` then maps ``x`` to ``(x - mean) / (2 * std)``.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from skast._recipes import NUM_MEL_BINS, SAMPLE_RATE

__all__ = [
    "FRAME_LENGTH",
    "FRAME_SHIFT",
    "PaddedBatch",
    "fbank",
    "normalize",
    "num_frames",
    "pad_waveforms",
]

FRAME_LENGTH = 400  # samples: 25 ms at 16 kHz
FRAME_SHIFT = 160  # samples: 10 ms at 16 kHz
FFT_SIZE = 512  # FRAME_LENGTH rounded up to a power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Hz; the high cut-off is the Nyquist frequency
EPSILON = torch.finfo(torch.float32).eps  # 1.1920928955078125e-07

# --------------------------------------------------------------------------- frames


def num_frames(n_samples: int) -> int:
    """Number of fbank frames of a clip of ``n_samples`` samples.

    Kaldi's ``snip_edges`` count ``1 + (n - 400) // 160``; a clip shorter than
    one frame is zero-padded to 400 samples and gives one frame.

    Parameters
    ----------
    n_samples : int
        Length of the clip in samples at 16 kHz, at least 1.

    Returns
    -------
    int
        ``1 + (max(n_samples, 400) - 400) // 160``.

    Raises
    ------
    ValueError
        If ``n_samples`` is smaller than 1.

    Examples
    --------
    >>> from skast._features import num_frames
    >>> num_frames(160000), num_frames(400), num_frames(559), num_frames(1)
    (998, 1, 1, 1)
    """
    n = operator.index(n_samples)
    if n < 1:
        raise ValueError(f"a clip needs at least one sample, got n_samples={n}")
    return 1 + (max(n, FRAME_LENGTH) - FRAME_LENGTH) // FRAME_SHIFT


_CPU_CHUNK_FRAMES = 4096  # frames per pass of _log_mel on the CPU
_CHUNK_FRAMES = 1 << 17  # elsewhere (about 1 GB of temporaries)


def _n_samples_for(n_frames: int) -> int:
    """Samples read by the first ``n_frames`` frames."""
    return (n_frames - 1) * FRAME_SHIFT + FRAME_LENGTH


def _cached_constant(maxsize: int):
    """``functools.lru_cache`` for functions that build constant tensors: they
    are built outside inference mode, so that a tensor first made under
    ``torch.inference_mode`` (as ``transform`` runs) can still enter autograd
    later (``fbank`` is differentiable)."""

    def decorate(fn):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args):
            with torch.inference_mode(False):
                return fn(*args)

        return cached

    return decorate


@_cached_constant(maxsize=32)
def _mel_matrix(num_mel_bins: int, device: str) -> torch.Tensor:
    """Kaldi mel filter bank, transposed and padded: ``(FFT_SIZE // 2 + 1, bins)``.

    A faithful float32 copy of ``torchaudio.compliance.kaldi.get_mel_banks``
    (no VTLN) with a zero row appended for the Nyquist bin, as ``fbank`` pads it.
    """
    if num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be at least 4, got {num_mel_bins}")
    nyquist = 0.5 * SAMPLE_RATE
    fft_bin_width = SAMPLE_RATE / FFT_SIZE
    mel_low = 1127.0 * math.log(1.0 + LOW_FREQ / 700.0)
    mel_high = 1127.0 * math.log(1.0 + nyquist / 700.0)
    mel_delta = (mel_high - mel_low) / (num_mel_bins + 1)

    # Explicit float32 where torchaudio relies on the default dtype.
    bins = torch.arange(num_mel_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + bins * mel_delta
    center = mel_low + (bins + 1.0) * mel_delta
    right = mel_low + (bins + 2.0) * mel_delta
    freqs = fft_bin_width * torch.arange(FFT_SIZE // 2, dtype=torch.float32)
    mel = (1127.0 * (1.0 + freqs / 700.0).log()).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))  # (bins, 256)
    banks = torch.nn.functional.pad(banks, (0, 1))  # Nyquist column, (bins, 257)
    return banks.T.contiguous().to(device)


@_cached_constant(maxsize=8)
def _window(device: str) -> torch.Tensor:
    return torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32).to(
        device
    )


def _log_mel(waves: torch.Tensor, num_mel_bins: int) -> torch.Tensor:
    """Kaldi log-mel of every full frame of ``waves`` (B, S) float32 -> (B, T, F)."""
    device = str(waves.device)
    frames = waves.unfold(-1, FRAME_LENGTH, FRAME_SHIFT)  # (B, T, 400) view
    # torchaudio: strided - strided.mean(1), then x - 0.97 * replicate-shifted x;
    # the in-place forms below do the same float32 arithmetic with fewer copies.
    frames = frames - frames.mean(dim=-1, keepdim=True)
    scaled = PREEMPHASIS * frames
    frames[..., 1:] -= scaled[..., :-1]
    frames[..., :1] -= scaled[..., :1]
    del scaled
    frames *= _window(device)
    spectrum = torch.view_as_real(torch.fft.rfft(frames, n=FFT_SIZE))  # pads to 512
    del frames
    # |X| as complex abs computes it (hypot), several times faster on the CPU
    power = torch.hypot(spectrum[..., 0], spectrum[..., 1])
    del spectrum
    # out of place from here on, so that autograd can differentiate the result
    mel = torch.matmul(power.pow(2.0), _mel_matrix(num_mel_bins, device))
    return mel.clamp_min(EPSILON).log()


@runtime_checkable
class PaddedBatch(Protocol):
    """What :func:`fbank` takes as it is, unchecked: clips already padded by
    :func:`pad_waveforms` (such as :class:`skast._batches.Batch`)."""

    waves: torch.Tensor  # (n_clips, n_samples) float32, as pad_waveforms pads
    lengths: torch.Tensor  # (n_clips,) int64 on the CPU


def _tensor_batch(waveforms, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """A user's ``(n_clips, n_samples)`` tensor (or one 1-D clip) and its
    ``lengths``, checked: the waveforms as they are and CPU int64 lengths."""
    waves = torch.as_tensor(waveforms)
    if waves.ndim == 1:
        waves = waves.unsqueeze(0)
    if waves.ndim != 2:
        raise ValueError(
            "waveforms must be a (n_clips, n_samples) tensor or a list of 1-D "
            f"tensors, got a tensor of shape {tuple(waves.shape)}"
        )
    _check_float(waves.dtype, "waveforms")
    n_clips, width = waves.shape
    if lengths is None:
        return waves, torch.full((n_clips,), width, dtype=torch.int64)
    lens = torch.as_tensor(lengths).detach().to("cpu")
    if lens.is_floating_point() or lens.is_complex() or lens.dtype == torch.bool:
        raise TypeError(f"lengths must be integers, got dtype {lens.dtype}")
    lens = lens.to(torch.int64).reshape(-1)
    if len(lens) != n_clips:
        raise ValueError(f"lengths has {len(lens)} entries for {n_clips} waveforms")
    if n_clips and int(lens.max()) > width:
        raise ValueError(
            f"lengths must not exceed the waveforms' width {width}, "
            f"got {int(lens.max())}"
        )
    return waves, lens


def _list_batch(waveforms) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A user's list of 1-D float clips, checked, and their CPU int64 lengths."""
    if isinstance(waveforms, (str, bytes)) or not isinstance(waveforms, Sequence):
        raise TypeError(
            "waveforms must be a (n_clips, n_samples) tensor or a list of 1-D "
            f"tensors, got {type(waveforms).__name__}"
        )
    clips = [torch.as_tensor(w) for w in waveforms]
    for i, w in enumerate(clips):
        if w.ndim != 1:
            raise ValueError(
                f"clip {i} must be 1-D, got a tensor of shape {tuple(w.shape)}"
            )
        _check_float(w.dtype, f"clip {i}")
    return clips, torch.tensor([len(w) for w in clips], dtype=torch.int64)


def _check_lengths(lens: torch.Tensor) -> None:
    """At least one clip, and no empty one."""
    if len(lens) == 0:
        raise ValueError("fbank needs at least one clip, got an empty batch")
    if int(lens.min()) < 1:
        i = int(torch.argmin(lens))
        raise ValueError(f"clip {i} is empty (0 samples); a clip needs at least one")


def _width(lens: torch.Tensor, max_length: int | None) -> int:
    """Samples that the kept frames of the longest clip read (at least 400)."""
    n_frames = int(_frame_counts(lens).max())
    if max_length is not None:
        n_frames = min(n_frames, max_length)
    return _n_samples_for(n_frames)


def _pad_list(clips, width: int, pin_memory: bool) -> torch.Tensor:
    """The clips zero-padded (or cut) to ``width`` samples, copying only the
    samples that are read, on the first clip's device (clips given as CUDA
    tensors are padded there, never copied to the host); ``pin_memory``:
    CPU clips into page-locked memory."""
    device = clips[0].device
    waves = torch.zeros(
        (len(clips), width),
        dtype=torch.float32,
        device=device,
        pin_memory=pin_memory and device.type == "cpu",
    )
    for i, w in enumerate(clips):
        n = min(len(w), width)
        waves[i, :n] = w[:n]
    return waves


def _fit_tensor(waves: torch.Tensor, lens: torch.Tensor, width: int) -> torch.Tensor:
    """A padded float tensor as float32 of ``width`` samples, zero after the
    end of clips shorter than one frame (whatever the padding held)."""
    waves = waves[:, :width].to(torch.float32)
    if waves.shape[1] < width:  # every clip is shorter than one frame
        waves = torch.nn.functional.pad(waves, (0, width - waves.shape[1]))
    if int(lens.min()) < FRAME_LENGTH:  # short clips read past their end: zero it
        idx = torch.arange(width, device=waves.device)
        waves = waves.masked_fill(idx >= lens.to(waves.device)[:, None], 0.0)
    return waves


def pad_waveforms(
    waveforms, *, max_length: int | None = None, pin_memory: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of any lengths as one zero-padded batch for :func:`fbank`.

    Only the samples that ``max_length`` frames read are copied, so a batch
    made on the CPU moves to an accelerator in one transfer, with no more
    bytes than :func:`fbank` reads.

    Parameters
    ----------
    waveforms : list of 1-D torch.Tensor
        Float waveforms at 16 kHz, on one device.
    max_length : int, default=None
        The frames that will be kept (``None``: all of the longest clip's).
    pin_memory : bool, default=False
        Pad CPU clips into page-locked memory, for an asynchronous copy to a
        CUDA device.

    Returns
    -------
    waveforms : torch.Tensor of shape (n_clips, n_samples), dtype float32
        The clips, zero-padded at the end (long clips cut where the last kept
        frame ends).
    lengths : torch.Tensor of shape (n_clips,), dtype int64
        Each clip's samples in ``waveforms``: ``fbank(waveforms, lengths,
        max_length=max_length)`` equals ``fbank(list, max_length=max_length)``.

    Raises
    ------
    ValueError
        On an empty list, an empty clip or a clip that is not 1-D.
    TypeError
        On a tensor (not a list) or integer samples.

    Examples
    --------
    >>> import torch
    >>> from skast._features import fbank, pad_waveforms
    >>> clips = [torch.randn(16000), torch.randn(4000)]
    >>> waves, lengths = pad_waveforms(clips, max_length=50)
    >>> waves.shape, lengths.tolist()
    (torch.Size([2, 8240]), [8240, 4000])
    >>> torch.equal(fbank(waves, lengths, max_length=50), fbank(clips, max_length=50))
    True
    """
    if isinstance(waveforms, (torch.Tensor, np.ndarray)):
        raise TypeError("pad_waveforms takes a list of 1-D tensors")
    clips, lens = _list_batch(waveforms)
    _check_lengths(lens)
    width = _width(lens, max_length)
    return _pad_list(clips, width, pin_memory), lens.clamp(max=width)


def _check_float(dtype: torch.dtype, what: str) -> None:
    if not dtype.is_floating_point:
        raise TypeError(
            f"{what} must hold floating-point samples in [-1, 1], got dtype {dtype} "
            "(integer PCM must be scaled first)"
        )


def _frame_counts(lengths: torch.Tensor) -> torch.Tensor:
    return 1 + (lengths.clamp(min=FRAME_LENGTH) - FRAME_LENGTH) // FRAME_SHIFT


def fbank(
    waveforms,
    lengths=None,
    *,
    max_length: int | None = None,
    num_mel_bins: int = NUM_MEL_BINS,
) -> torch.Tensor:
    """Kaldi log-mel filterbank of a batch of 16 kHz clips, as AST's reference.

    Equals ``torchaudio.compliance.kaldi.fbank(w[None], sample_frequency=16000,
    window_type="hanning", num_mel_bins=num_mel_bins)`` per clip to float32
    rounding, then zero-padded or truncated along time as transformers'
    ``ASTFeatureExtractor`` does (not normalised). Runs on the waveforms' device.

    Parameters
    ----------
    waveforms : torch.Tensor of shape (n_clips, n_samples) or list of 1-D tensors
        Mono float waveforms in [-1, 1] at 16 kHz. A 2-D tensor holds clips
        zero-padded at the end, with their true sample counts in ``lengths``;
        a list holds clips of any lengths on one device. A 1-D tensor is one
        clip. Samples are cast to float32. NaN and inf are not checked. A
        :class:`PaddedBatch` (``waves`` and ``lengths`` as
        :func:`pad_waveforms` returns them, such as the batches of
        :func:`skast._batches.load_batches`) is used as it is, unchecked.
    lengths : torch.Tensor or sequence of int of shape (n_clips,), default=None
        True sample counts of the rows of a 2-D ``waveforms``; ``None`` means
        every row is a full clip. Not accepted with a list.
    max_length : int, default=None
        Number of frames of the output: longer clips keep their first
        ``max_length`` frames (only those are computed), shorter ones are
        padded with 0.0. ``None`` gives the largest frame count of the batch.
    num_mel_bins : int, default=128
        Number of mel bins (more than 3).

    Returns
    -------
    torch.Tensor of shape (n_clips, n_frames, num_mel_bins)
        float32 log-mel energies on the waveforms' device (for a list, the
        first clip's). The frames of a clip beyond its own :func:`num_frames`
        are 0.0.

    Raises
    ------
    ValueError
        On an empty batch, an empty clip, lengths larger than the tensor or
        badly shaped input.
    TypeError
        On integer samples or non-integer lengths.

    Notes
    -----
    Clips of 1 to 399 samples (shorter than one 25 ms frame, which kaldi
    rejects) are zero-padded at the end to 400 samples and give one frame.

    The batch is computed in one pass on accelerators and in blocks of about
    4096 frames on the CPU (faster there: the temporaries stay in cache). The
    result is differentiable with respect to the waveforms.

    Examples
    --------
    >>> import torch
    >>> from skast._features import fbank
    >>> waves = [torch.zeros(16000), torch.zeros(8000)]
    >>> fbank(waves).shape
    torch.Size([2, 98, 128])
    >>> fbank(torch.zeros(2, 16000), lengths=[16000, 8000], max_length=128).shape
    torch.Size([2, 128, 128])

    A batch padded when it was loaded is not checked or padded again:

    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> from skast._batches import load_batches
    >>> audio = check_audio_input([np.zeros(16000), np.zeros(8000)])
    >>> batch = next(load_batches(audio, sample_rate=16000, batch_size=2))
    >>> torch.equal(fbank(batch), fbank(waves))
    True
    """
    if max_length is not None:
        max_length = operator.index(max_length)
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
    num_mel_bins = operator.index(num_mel_bins)
    if num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be at least 4, got {num_mel_bins}")

    if isinstance(waveforms, PaddedBatch):  # padded once, as it was loaded
        waves, lens = waveforms.waves, waveforms.lengths
    elif isinstance(waveforms, (torch.Tensor, np.ndarray)):
        waves, lens = _tensor_batch(waveforms, lengths)
        _check_lengths(lens)
        waves = _fit_tensor(waves, lens, _width(lens, max_length))
    else:
        if lengths is not None:
            raise ValueError("lengths is only accepted with a 2-D waveforms tensor")
        clips, lens = _list_batch(waveforms)
        _check_lengths(lens)
        waves = _pad_list(clips, _width(lens, max_length), pin_memory=False)
    return _fbank_padded(waves, lens, max_length, num_mel_bins)


def _fbank_padded(
    waves: torch.Tensor, lengths: torch.Tensor, max_length, num_mel_bins: int
) -> torch.Tensor:
    """:func:`fbank` of float32 ``waves`` padded as :func:`pad_waveforms`
    pads them and CPU int64 ``lengths``, computed as they are."""
    n_clips = waves.shape[0]
    n_computed = num_frames(waves.shape[1])  # the full frames of waves
    if max_length is not None:
        n_computed = min(n_computed, max_length)
    n_out = n_computed if max_length is None else max_length
    feats = waves.new_empty((n_clips, n_out, num_mel_bins))
    # A few thousand frames at a time keep the CPU's temporaries in cache
    # (about twice as fast as one pass); accelerators take the batch at once.
    # Frames are independent, so blocks of clips (and of frames of very long
    # clips) give the same numbers as one pass.
    budget = _CPU_CHUNK_FRAMES if waves.device.type == "cpu" else _CHUNK_FRAMES
    clip_step = max(1, budget // n_computed)
    frame_step = min(n_computed, budget)
    for c0 in range(0, n_clips, clip_step):
        c1 = min(c0 + clip_step, n_clips)
        for t0 in range(0, n_computed, frame_step):
            t1 = min(t0 + frame_step, n_computed)
            block = waves[c0:c1, t0 * FRAME_SHIFT : _n_samples_for(t1)]
            feats[c0:c1, t0:t1] = _log_mel(block, num_mel_bins)
    feats[:, n_computed:] = 0.0
    counts = _frame_counts(lengths)
    if int(counts.min()) < n_computed:  # frames past a clip's end are 0.0
        frame_idx = torch.arange(n_out, device=feats.device)
        past_end = frame_idx >= counts.to(feats.device)[:, None]
        feats.masked_fill_(past_end[..., None], 0.0)
    return feats


# --------------------------------------------------------------------------- normalisation


def normalize(features: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalise log-mel features as AST does: ``(x - mean) / (2 * std)``.

    Parameters
    ----------
    features : torch.Tensor
        Log-mel features, e.g. the output of :func:`fbank`.
    mean : float
        Mean of the training features (see :data:`skast._recipes.NORM_STATS`).
    std : float
        Their standard deviation; the result has std 0.5.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape, dtype and device.

    Examples
    --------
    >>> import torch
    >>> from skast._features import normalize
    >>> from skast._recipes import NORM_STATS
    >>> normalize(torch.zeros(1, 2), *NORM_STATS["audioset"])
    tensor([[0.4670, 0.4670]])
    """
    return (features - mean) / (std * 2)
