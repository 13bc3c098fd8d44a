"""Streaming loaded clips in padded batches: a DataLoader over :class:`AudioDataset`.

The estimators read ``X`` through :func:`load_batches`, ``batch_size`` clips
at a time, so memory is bounded by the batch, not by ``len(X)``. The
DataLoader's collate pads each batch (:func:`skast._features.pad_waveforms`:
only the samples that ``max_length`` frames read) into page-locked memory when
it is bound for CUDA, and yields one :class:`Batch`. Files can be decoded in
DataLoader worker processes (``num_workers > 0``); an error there is raised in
the main process with its own type and message.

Windows of long clips are batch items too (``window_hop``): :func:`window_starts`
places them, and with ``windows`` :func:`load_batches` reads
:class:`WindowDataset`, whose item ``j`` is window ``j`` cut from its clip's
waveform. The clip is loaded once per batch that needs it (its last loaded
clip is kept), so a long recording's features are never computed whole.
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.utils.data

from skast._features import FRAME_SHIFT, _n_samples_for, num_frames, pad_waveforms
from skast._recipes import SAMPLE_RATE

__all__ = ["AudioDataset", "Batch", "WindowDataset", "load_batches", "window_starts"]

FRAMES_PER_SECOND = SAMPLE_RATE // FRAME_SHIFT  # 100: one frame every 10 ms


@dataclass(frozen=True)
class Batch:
    """Clips padded into one tensor, as :func:`load_batches` yields them.

    Attributes
    ----------
    indices : list of int
        The clips' positions in the input.
    waves : torch.Tensor of shape (n_clips, n_samples), dtype float32
        The waveforms at 16 kHz, zero-padded at the end (see
        :func:`skast._features.pad_waveforms`).
    lengths : torch.Tensor of shape (n_clips,), dtype int64
        Each clip's samples in ``waves``, on the CPU.

    Examples
    --------
    >>> import torch
    >>> from skast._batches import Batch
    >>> batch = Batch([0, 1], torch.zeros(2, 400), torch.tensor([400, 10]))
    >>> batch.to("cpu").waves.shape, len(batch)
    (torch.Size([2, 400]), 2)
    """

    indices: list[int]
    waves: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device) -> Batch:
        """The batch with its waveforms on ``device``: one copy, asynchronous
        from page-locked memory; the lengths stay on the CPU."""
        return replace(self, waves=self.waves.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (what DataLoader's ``pin_memory``
        calls on batches from workers)."""
        return replace(self, waves=self.waves.pin_memory())


class AudioDataset(torch.utils.data.Dataset):
    """A map-style dataset of loaded clips: item ``i`` is ``(i, waveform)``.

    Picklable, so that DataLoader workers (``num_workers > 0``) can load clips.

    Parameters
    ----------
    audio_input : AudioInput
        The clips (any object with ``len()`` and ``load(i, sample_rate)``).
    sample_rate : int, default=16000
        The rate of in-memory waveforms; files use their own.
    copy : bool, default=True
        ``False`` passes ``copy=False`` to ``load``: float32 clips may share
        the input's memory (in the main process; a worker's are sent back as
        copies), and must only be read.

    See Also
    --------
    load_batches : Padded batches of these clips from a DataLoader.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> from skast._batches import AudioDataset
    >>> dataset = AudioDataset(check_audio_input(np.zeros((2, 400))), 8000)
    >>> len(dataset)
    2
    >>> i, wave = dataset[1]
    >>> i, wave.dtype, wave.shape
    (1, torch.float32, torch.Size([800]))
    """

    def __init__(self, audio_input, sample_rate=SAMPLE_RATE, copy=True):
        self.audio_input = audio_input
        self.sample_rate = sample_rate
        self.copy = copy

    def __len__(self) -> int:
        return len(self.audio_input)

    def __getitem__(self, i):
        if self.copy:
            return i, self.audio_input.load(i, self.sample_rate)
        return i, self.audio_input.load(i, self.sample_rate, copy=False)


def window_starts(n_samples: int, max_length: int, hop: float) -> np.ndarray:
    """The first frames of the windows of a clip, ``hop`` seconds apart.

    A clip of at most ``max_length`` frames is one window, at frame 0. A
    longer one has windows of ``max_length`` frames starting every ``hop``
    seconds (rounded to the nearest 10 ms frame), and a last one that ends at
    the clip's last frame. A window starting at frame ``f`` is the clip's
    waveform from sample ``160 * f``: its kaldi frames are exactly the clip's
    from frame ``f`` on.

    Parameters
    ----------
    n_samples : int
        The clip's samples at 16 kHz.
    max_length : int
        Frames per window.
    hop : float
        Seconds between window starts, at least 0.01.

    Returns
    -------
    ndarray of shape (n_windows,), dtype int64
        Increasing start frames (times 0.01 s: start times in seconds).

    Examples
    --------
    >>> from skast._batches import window_starts
    >>> window_starts(16000, 100, 0.5)  # 98 frames: one window
    array([0])
    >>> window_starts(32000, 100, 0.5)  # 198 frames
    array([ 0, 50, 98])
    """
    last = num_frames(n_samples) - max_length
    if last <= 0:
        return np.zeros(1, dtype=np.int64)
    starts = np.rint(np.arange(0, last, hop * FRAMES_PER_SECOND)).astype(np.int64)
    return np.unique(np.append(starts, last))


class WindowDataset(torch.utils.data.Dataset):
    """A map-style dataset of windows: item ``j`` is ``(j, window j's samples)``.

    Window ``j`` is ``windows[j] = (clip, start_frame)``: the ``max_length``
    frames of the clip from ``start_frame`` (the samples they read). The last
    clip loaded is kept, so that consecutive windows of one clip load it once.

    Parameters
    ----------
    audio_input : AudioInput
        The clips.
    windows : sequence of (int, int)
        Each window's clip and start frame (see :func:`window_starts`).
    max_length : int
        Frames per window.
    sample_rate : int, default=16000
        The rate of in-memory waveforms; files use their own.
    copy : bool, default=True
        As for :class:`AudioDataset`.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> from skast._batches import WindowDataset
    >>> audio = check_audio_input(np.arange(32000, dtype=np.float32)[None])
    >>> dataset = WindowDataset(audio, [(0, 0), (0, 98)], max_length=100)
    >>> j, wave = dataset[1]
    >>> j, wave.shape, wave[0].item()  # frame 98 starts at sample 98 * 160
    (1, torch.Size([16240]), 15680.0)
    """

    def __init__(
        self, audio_input, windows, max_length, sample_rate=SAMPLE_RATE, copy=True
    ):
        self.clips = AudioDataset(audio_input, sample_rate, copy=copy)
        self.windows = windows
        self.width = _n_samples_for(max_length)
        self._loaded = (None, None)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, j):
        clip, start = self.windows[j]
        if self._loaded[0] != clip:
            self._loaded = (None, None)  # free the last clip before loading
            self._loaded = self.clips[clip]
        start = int(start) * FRAME_SHIFT
        return j, self._loaded[1][start : start + self.width]


class _RemoteTraceback(Exception):
    """The traceback of an error raised in a DataLoader worker (its cause)."""

    def __str__(self) -> str:
        return self.args[0]


class _Failure:
    """An error in a worker, sent back as an item to be raised in the main
    process with its own type and message (DataLoader would replace the
    message with the worker's traceback)."""

    def __init__(self, error: Exception):
        self.traceback = traceback.format_exc()
        try:  # only what survives the trip to the main process
            pickle.loads(pickle.dumps(error))
            self.error = error
        except Exception:
            self.error = RuntimeError(f"{type(error).__name__}: {error}")

    def reraise(self):
        raise self.error from _RemoteTraceback(self.traceback)


class _WorkerDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: AudioDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except Exception as err:
            return _Failure(err)


class _Collate:
    """Pads a batch of ``(i, waveform)`` items into a :class:`Batch`, or
    passes on the first :class:`_Failure` among them (picklable, for workers)."""

    def __init__(self, max_length: int | None, pin_memory: bool):
        self.max_length = max_length
        self.pin_memory = pin_memory

    def __call__(self, items) -> Batch | _Failure:
        for item in items:
            if isinstance(item, _Failure):
                return item
        waves, lengths = pad_waveforms(
            [wave for _, wave in items],
            max_length=self.max_length,
            pin_memory=self.pin_memory,
        )
        return Batch([i for i, _ in items], waves, lengths)


def load_batches(
    audio_input,
    *,
    sample_rate,
    batch_size,
    max_length=None,
    num_workers=0,
    pin_memory=False,
    copy=True,
    windows=None,
    batches=None,
):
    """Yield the loaded clips (or windows) in order, as padded :class:`Batch` objects.

    A :class:`torch.utils.data.DataLoader` over :class:`AudioDataset` (no
    shuffling) whose collate pads each batch. With ``num_workers > 0``, files
    are decoded, resampled and padded in worker processes; an error there is
    raised in the main process with its own type and message (the worker's
    traceback is chained). Memory is bounded by ``batch_size`` (times the
    DataLoader's prefetching), not by ``len(audio_input)``.

    Parameters
    ----------
    audio_input : AudioInput
        The clips (any object with ``len()`` and ``load(i, sample_rate)``).
    sample_rate : int
        The rate of in-memory waveforms; files use their own.
    batch_size : int
        The most clips per batch (the last batch may hold fewer).
    max_length : int, default=None
        The frames that will be kept: longer clips are cut where the last
        kept frame ends (``None``: every frame of the longest clip).
    num_workers : int, default=0
        DataLoader worker processes; 0 loads in the main process.
    pin_memory : bool, default=False
        Pad into page-locked memory, for an asynchronous copy to a CUDA
        device (:meth:`Batch.to`). Batches padded in the main process are
        padded there directly; batches from workers are copied there by the
        DataLoader.
    copy : bool, default=True
        ``False``: float32 clips may share the input's memory and are only
        read, into the padded batch (see :class:`AudioDataset`).
    windows : sequence of (int, int), default=None
        Yield these windows of the clips instead of the clips (see
        :class:`WindowDataset`; needs ``max_length``): each window is a batch
        item, ``batch_size`` windows a batch, across clips.
    batches : iterable of sequences of int, default=None
        The items of each batch, in this order (a training epoch's shuffled
        order cut into batches), instead of ``batch_size`` items at a time in
        input order; ``batch_size`` is then unused. Only these items are
        loaded.

    Yields
    ------
    Batch
        Positions in ``audio_input`` (in ``windows`` with windows), waveforms
        at 16 kHz padded to one tensor, and their lengths.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> from skast._batches import load_batches
    >>> audio = check_audio_input(np.zeros((5, 400), dtype=np.float32))
    >>> batches = load_batches(audio, sample_rate=16000, batch_size=2)
    >>> [batch.indices for batch in batches]
    [[0, 1], [2, 3], [4]]
    >>> batch = next(load_batches(audio, sample_rate=8000, batch_size=5))
    >>> batch.waves.shape  # 800 samples at 16 kHz: 3 frames, which read 720
    torch.Size([5, 720])
    >>> batches = load_batches(audio, sample_rate=16000, batch_size=2, batches=[[4, 0], [2]])
    >>> [batch.indices for batch in batches]
    [[4, 0], [2]]
    """
    if windows is None:
        dataset = AudioDataset(audio_input, sample_rate, copy=copy)
    else:
        dataset = WindowDataset(audio_input, windows, max_length, sample_rate, copy)
    in_workers = num_workers > 0
    if batches is None:
        sampling = {"batch_size": batch_size, "shuffle": False}
    else:
        sampling = {"batch_sampler": [[int(i) for i in b] for b in batches]}
    loader = torch.utils.data.DataLoader(
        _WorkerDataset(dataset) if in_workers else dataset,
        **sampling,
        num_workers=num_workers,
        # workers pad into ordinary memory (a worker process must not touch
        # CUDA); the DataLoader then pins their batches in the main process
        collate_fn=_Collate(max_length, pin_memory and not in_workers),
        pin_memory=pin_memory and in_workers,
    )
    for batch in loader:
        if isinstance(batch, _Failure):
            batch.reraise()
        yield batch
