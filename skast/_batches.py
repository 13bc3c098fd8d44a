"""Streaming loaded clips in batches: a DataLoader over :class:`AudioDataset`.

The estimators read ``X`` through :func:`iter_batches`, ``batch_size`` clips
at a time, so memory is bounded by the batch, not by ``len(X)``. Files can be
decoded in DataLoader worker processes (``num_workers > 0``); an error there
is raised in the main process with its own type and message.
"""

from __future__ import annotations

import pickle
import traceback

import torch
import torch.utils.data

from skast._recipes import SAMPLE_RATE

__all__ = ["AudioDataset", "iter_batches"]


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
    iter_batches : Batches of ``(i, waveform)`` pairs from a DataLoader.

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


def _collate(batch):
    return list(batch)


def iter_batches(audio_input, *, sample_rate, batch_size, num_workers=0, copy=True):
    """Yield the loaded clips in order, in lists of ``(index, waveform)`` pairs.

    A :class:`torch.utils.data.DataLoader` over :class:`AudioDataset` (no
    shuffling, no collation: waveforms keep their own lengths). With
    ``num_workers > 0``, files are decoded and resampled in worker processes;
    an error there is raised in the main process with its own type and message
    (the worker's traceback is chained). Memory is bounded by ``batch_size``
    (times the DataLoader's prefetching), not by ``len(audio_input)``.

    Parameters
    ----------
    audio_input : AudioInput
        The clips (any object with ``len()`` and ``load(i, sample_rate)``).
    sample_rate : int
        The rate of in-memory waveforms; files use their own.
    batch_size : int
        The most clips per batch (the last batch may hold fewer).
    num_workers : int, default=0
        DataLoader worker processes; 0 loads in the main process.
    copy : bool, default=True
        ``False``: float32 clips may share the input's memory and must only be
        read (see :class:`AudioDataset`).

    Yields
    ------
    list of (int, torch.Tensor)
        Positions in ``audio_input`` and 1-D float32 waveforms at 16 kHz.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> from skast._batches import iter_batches
    >>> audio = check_audio_input(np.zeros((5, 400), dtype=np.float32))
    >>> batches = iter_batches(audio, sample_rate=16000, batch_size=2)
    >>> [[i for i, _ in batch] for batch in batches]
    [[0, 1], [2, 3], [4]]
    """
    dataset = AudioDataset(audio_input, sample_rate, copy=copy)
    if num_workers == 0:
        yield from torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate
        )
        return
    loader = torch.utils.data.DataLoader(
        _WorkerDataset(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    for batch in loader:
        for pair in batch:
            if isinstance(pair, _Failure):
                pair.reraise()
        yield batch
