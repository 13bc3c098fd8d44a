"""Streaming loaded clips in padded batches: a DataLoader over :class:`AudioDataset`.

The estimators read ``X`` through :func:`load_batches`, ``batch_size`` clips
at a time, so memory is bounded by the batch, not by ``len(X)``. The
DataLoader's collate pads each batch (:func:`skast._features.pad_waveforms`:
only the samples that ``max_length`` frames read) into page-locked memory when
it is bound for CUDA, and yields one :class:`Batch`. Files can be decoded in
DataLoader worker processes (``num_workers > 0``); an error there is raised in
the main process with its own type and message.
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass, replace

import torch
import torch.utils.data

from skast._features import pad_waveforms
from skast._recipes import SAMPLE_RATE

__all__ = ["AudioDataset", "Batch", "load_batches"]


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
):
    """Yield the loaded clips in order, as padded :class:`Batch` objects.

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

    Yields
    ------
    Batch
        Positions in ``audio_input``, waveforms at 16 kHz padded to one
        tensor, and their lengths.

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
    """
    dataset = AudioDataset(audio_input, sample_rate, copy=copy)
    in_workers = num_workers > 0
    loader = torch.utils.data.DataLoader(
        _WorkerDataset(dataset) if in_workers else dataset,
        batch_size=batch_size,
        shuffle=False,
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
