"""skast._batches: padded batches from a DataLoader, in order, errors from
workers raised with their own type and message."""

import re

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from skast._audio import check_audio_input
from skast._batches import AudioDataset, Batch, load_batches
from skast._features import fbank, pad_waveforms


def write(path, data, rate):
    sf.write(path, data, rate)
    return path


def unpadded(batch):
    """The clips of a batch, as (index, waveform) pairs: the samples that the
    clips' full frames read (a partial last frame is not kept)."""
    return [
        (i, batch.waves[j, :n])
        for j, (i, n) in enumerate(zip(batch.indices, batch.lengths.tolist()))
    ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_in_order(tmp_path, num_workers):
    def n(i):
        return 400 + 160 * i

    paths = [
        write(tmp_path / f"{i}.wav", np.full(n(i), i / 10, np.float32), 16000)
        for i in range(7)
    ]
    audio = check_audio_input(paths)  # whole frames: nothing is cut
    batches = list(
        load_batches(audio, sample_rate=16000, batch_size=3, num_workers=num_workers)
    )
    assert all(isinstance(b, Batch) for b in batches)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [pair for batch in batches for pair in unpadded(batch)]
    assert [i for i, _ in flat] == list(range(7))
    for i, w in flat:
        assert w.dtype == torch.float32 and w.shape == (n(i),)
        torch.testing.assert_close(w, torch.full((n(i),), i / 10), atol=1e-4, rtol=0)
    for batch in batches:  # zero-padded after each clip's end
        for j, n in enumerate(batch.lengths.tolist()):
            assert torch.all(batch.waves[j, n:] == 0)

    (tmp_path / "3.wav").write_text("corrupt")
    batches = load_batches(
        audio, sample_rate=16000, batch_size=3, num_workers=num_workers
    )
    assert next(batches).indices == [0, 1, 2]
    with pytest.raises(ValueError) as info:
        next(batches)
    message = str(info.value)
    assert re.match(r"clip 3: cannot read audio file '.*3\.wav'", message)
    assert "Traceback" not in message and "worker" not in message
    if num_workers:  # the worker's traceback is chained, for debugging
        assert "load_audio" in str(info.value.__cause__)


def test_arrays_in_workers(rng):
    clips = [rng.standard_normal(n).astype(np.float32) for n in (800, 50, 333, 1)]
    clips.append(np.array([0.0, np.inf]))
    audio = check_audio_input(clips, check_clips=False)
    batches = load_batches(audio, sample_rate=8000, batch_size=2, num_workers=2)
    for i, w in unpadded(next(batches)) + unpadded(next(batches)):
        ref = torchaudio.functional.resample(torch.tensor(clips[i]), 8000, 16000)
        assert len(w) == min(len(ref), max(400, len(ref) - (len(ref) - 400) % 160))
        torch.testing.assert_close(w, ref[: len(w)], rtol=0, atol=0)
    with pytest.raises(ValueError, match="^clip 4: the clip contains NaN"):
        next(batches)


def test_batches_are_cut_to_max_length_and_give_fbank(rng):
    clips = [rng.standard_normal(n).astype(np.float32) for n in (16000, 100, 40000)]
    (batch,) = load_batches(
        check_audio_input(clips), sample_rate=16000, batch_size=4, max_length=50
    )
    waves, lengths = pad_waveforms([torch.from_numpy(c) for c in clips], max_length=50)
    assert torch.equal(batch.waves, waves) and torch.equal(batch.lengths, lengths)
    assert batch.waves.shape == (3, 49 * 160 + 400)  # what 50 frames read
    torch.testing.assert_close(
        fbank(batch, max_length=50),
        fbank([torch.from_numpy(c) for c in clips], max_length=50),
        rtol=0,
        atol=0,
    )


def test_any_clip_source(wave):
    class Reversed:  # any object with len() and load(i, sample_rate)
        def __init__(self, audio):
            self.audio = audio

        def __len__(self):
            return len(self.audio)

        def load(self, i, sample_rate):
            return self.audio.load(len(self.audio) - 1 - i, sample_rate)

    audio = Reversed(check_audio_input([wave[:10], wave[:20]]))
    (batch,) = load_batches(audio, sample_rate=16000, batch_size=4)
    assert batch.indices == [0, 1] and batch.lengths.tolist() == [20, 10]


def test_loading_without_a_copy(wave):
    X = np.stack([wave, -wave])
    shared = AudioDataset(check_audio_input(X), copy=False)
    assert all(np.shares_memory(shared[i][1].numpy(), X) for i in range(2))
    copied = AudioDataset(check_audio_input(X))
    assert not any(np.shares_memory(copied[i][1].numpy(), X) for i in range(2))
    # the padded batch is the only copy, and equal either way
    (batch,) = load_batches(check_audio_input(X), sample_rate=16000, batch_size=2)
    (again,) = load_batches(
        check_audio_input(X), sample_rate=16000, batch_size=2, copy=False
    )
    assert not np.shares_memory(again.waves.numpy(), X)
    assert torch.equal(batch.waves, again.waves)


@pytest.fixture
def wave(rng):
    return (0.3 * rng.standard_normal(1600)).astype(np.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_for_cuda_are_pinned(rng, num_workers):
    clips = [rng.standard_normal(n).astype(np.float32) for n in (16000, 4000, 900)]
    audio = check_audio_input(clips)
    kw = dict(sample_rate=16000, batch_size=2, max_length=64, num_workers=num_workers)
    for batch, plain in zip(
        load_batches(audio, pin_memory=True, **kw), load_batches(audio, **kw)
    ):
        assert batch.waves.is_pinned() and not plain.waves.is_pinned()
        moved = batch.to("cuda")
        assert moved.waves.device.type == "cuda" and moved.lengths.device.type == "cpu"
        assert torch.equal(moved.waves.cpu(), plain.waves)
