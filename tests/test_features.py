"""skast._features: kaldi fbank parity, padding, normalisation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from skast._features import (
    FRAME_LENGTH,
    FRAME_SHIFT,
    PaddedBatch,
    fbank,
    normalize,
    num_frames,
    pad_waveforms,
)
from skast._recipes import NORM_STATS, NUM_MEL_BINS, SAMPLE_RATE

# 0.03 s, 0.5 s, 1 s, 5 s, 10 s, 30 s and odd lengths around frame boundaries
LENGTHS = [480, 8000, 16000, 80000, 160000, 480000, 16001, 400, 401, 559, 560]


def make_clip(n, seed):
    """Noise plus two tones, float32, seeded."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    f1, f2 = rng.uniform(50, 7500, size=2)
    wave = (
        rng.uniform(0.001, 0.2) * rng.standard_normal(n)
        + 0.4 * np.sin(2 * np.pi * f1 * t)
        + 0.2 * np.sin(2 * np.pi * f2 * t + 1.0)
    )
    return torch.from_numpy(wave.astype(np.float32))


def kaldi_fbank(wave):
    return kaldi.fbank(
        wave.unsqueeze(0),
        sample_frequency=SAMPLE_RATE,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
    )


@pytest.fixture(scope="module")
def clips():
    return [make_clip(n, seed) for seed, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def references(clips):
    return [kaldi_fbank(w) for w in clips]


# --------------------------------------------------------------------------- fbank


def test_constants():
    assert (SAMPLE_RATE, NUM_MEL_BINS, FRAME_LENGTH, FRAME_SHIFT) == (
        16000,
        128,
        400,
        160,
    )
    assert NORM_STATS["audioset"] == (-4.2677393, 4.5689974)
    assert NORM_STATS["esc50"] == (-6.6268077, 5.358466)
    assert NORM_STATS["speechcommands"] == (-6.845978, 5.5654526)


def test_mel_filter_bank_is_torchaudios():
    # the filter bank is compared through fbank: energy in one FFT bin at a
    # time (a pure tone at its centre frequency, under the Hann window) weighs
    # the mel bins as kaldi's filters do; 1e-4 on log-mel values as above
    t = np.arange(16000) / SAMPLE_RATE
    for k in (1, 7, 40, 128, 255):
        tone = torch.from_numpy(np.sin(2 * np.pi * k * 31.25 * t).astype(np.float32))
        for bins in (23, 128):
            ref = kaldi.fbank(
                tone[None],
                sample_frequency=16000,
                window_type="hanning",
                num_mel_bins=bins,
            )
            ours = fbank([tone], num_mel_bins=bins)[0]
            torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("index", range(len(LENGTHS)))
def test_fbank_matches_kaldi(clips, references, index):
    wave, ref = clips[index], references[index]
    assert ref.shape[0] == num_frames(len(wave))
    ours = fbank([wave])
    assert ours.dtype == torch.float32
    assert ours.shape == (1, *ref.shape)
    torch.testing.assert_close(ours[0], ref, atol=1e-4, rtol=0)
    # a 1-D tensor is a batch of one, a 2-D tensor a batch of full rows
    torch.testing.assert_close(fbank(wave), ours, atol=0, rtol=0)
    torch.testing.assert_close(fbank(wave[None]), ours, atol=0, rtol=0)


def test_ragged_batch_matches_single(clips, references):
    batched = fbank(clips)
    longest = max(r.shape[0] for r in references)
    assert batched.shape == (len(clips), longest, NUM_MEL_BINS)
    for row, wave, ref in zip(batched, clips, references):
        n = ref.shape[0]
        torch.testing.assert_close(row[:n], fbank([wave])[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(row[:n], ref, atol=1e-4, rtol=0)
        assert torch.all(row[n:] == 0.0)

    # the same batch as a zero-padded tensor with lengths
    lengths = [len(w) for w in clips]
    padded = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    torch.testing.assert_close(fbank(padded, lengths), batched, atol=1e-5, rtol=0)
    lengths_t = torch.tensor(lengths)
    torch.testing.assert_close(fbank(padded, lengths_t), batched, atol=1e-5, rtol=0)


def test_max_length_pads_and_truncates(clips):
    full = fbank(clips)
    for max_length in (1, 7, 98, 1024, 5000):
        cut = fbank(clips, max_length=max_length)
        assert cut.shape == (len(clips), max_length, NUM_MEL_BINS)
        keep = min(max_length, full.shape[1])
        torch.testing.assert_close(cut[:, :keep], full[:, :keep], atol=1e-5, rtol=0)
        assert torch.all(cut[:, keep:] == 0.0)


def test_hf_feature_extractor_audioset(clips):
    transformers = pytest.importorskip("transformers")
    extractor = transformers.ASTFeatureExtractor()
    expected = extractor(
        [w.numpy() for w in clips], sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )["input_values"]
    ours = normalize(fbank(clips, max_length=1024), *NORM_STATS["audioset"])
    assert ours.shape == expected.shape == (len(clips), 1024, 128)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_hf_feature_extractor_speechcommands(clips):
    transformers = pytest.importorskip("transformers")
    mean, std = NORM_STATS["speechcommands"]
    extractor = transformers.ASTFeatureExtractor(max_length=128, mean=mean, std=std)
    expected = extractor(
        [w.numpy() for w in clips], sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )["input_values"]
    ours = normalize(fbank(clips, max_length=128), mean, std)
    assert ours.shape == expected.shape == (len(clips), 128, 128)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n", [1, 100, 399])
def test_short_clip_is_zero_padded_to_one_frame(n):
    wave = make_clip(n, seed=n)
    expected = kaldi_fbank(torch.nn.functional.pad(wave, (0, FRAME_LENGTH - n)))
    assert num_frames(n) == 1 == expected.shape[0]
    torch.testing.assert_close(fbank([wave])[0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(fbank(wave[None])[0], expected, atol=1e-4, rtol=0)
    # in a batch, with garbage (not zeros) after its end in the padded tensor
    long = make_clip(1000, seed=0)
    padded = torch.stack([long, torch.cat([wave, torch.ones(1000 - n)])])
    out = fbank(padded, [1000, n])
    torch.testing.assert_close(out[1, :1], expected, atol=1e-4, rtol=0)
    assert torch.all(out[1, 1:] == 0.0)
    torch.testing.assert_close(out[0], kaldi_fbank(long), atol=1e-4, rtol=0)


def test_empty_clips_raise():
    with pytest.raises(ValueError, match="empty"):
        fbank([torch.zeros(16000), torch.zeros(0)])
    with pytest.raises(ValueError, match="empty"):
        fbank(torch.zeros(2, 16000), lengths=[16000, 0])
    with pytest.raises(ValueError, match="at least one clip"):
        fbank([])
    with pytest.raises(ValueError, match="at least one sample"):
        num_frames(0)


def test_fbank_input_validation():
    with pytest.raises(TypeError, match="floating-point"):
        fbank(torch.zeros(1, 16000, dtype=torch.int16))
    with pytest.raises(TypeError, match="floating-point"):
        fbank([torch.zeros(16000, dtype=torch.int32)])
    with pytest.raises(ValueError, match="shape"):
        fbank(torch.zeros(1, 2, 16000))
    with pytest.raises(ValueError, match="1-D"):
        fbank([torch.zeros(2, 16000)])
    with pytest.raises(ValueError, match="exceed"):
        fbank(torch.zeros(2, 16000), lengths=[16000, 16001])
    with pytest.raises(ValueError, match="entries"):
        fbank(torch.zeros(2, 16000), lengths=[16000])
    with pytest.raises(TypeError, match="integers"):
        fbank(torch.zeros(2, 16000), lengths=[1.5, 2.0])
    with pytest.raises(ValueError, match="only accepted"):
        fbank([torch.zeros(16000)], lengths=[16000])
    with pytest.raises(ValueError, match="max_length"):
        fbank([torch.zeros(16000)], max_length=0)
    with pytest.raises(TypeError):
        fbank("clip.wav")


def test_fbank_casts_to_float32_and_other_mel_counts():
    wave = make_clip(4000, seed=1)
    out = fbank([wave.double()])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fbank([wave]), atol=1e-5, rtol=0)
    ref = kaldi.fbank(
        wave[None], sample_frequency=16000, window_type="hanning", num_mel_bins=64
    )
    torch.testing.assert_close(
        fbank([wave], num_mel_bins=64)[0], ref, atol=1e-4, rtol=0
    )


def test_fbank_blocks_and_inputs(clips, references):
    # the CPU computes a few thousand frames at a time: a clip longer than a
    # block (45 s, 4498 frames) is cut along time, and a batch of clips of
    # 1000 frames takes several blocks of a few clips
    long = make_clip(720000, seed=99)
    torch.testing.assert_close(fbank([long])[0], kaldi_fbank(long), atol=1e-4, rtol=0)
    batch = [make_clip(160240 + 7 * i, seed=i) for i in range(6)]
    before = [w.clone() for w in batch]
    together = fbank(batch)
    assert together.shape == (6, 1000, NUM_MEL_BINS)
    for row, wave in zip(together, batch):
        torch.testing.assert_close(row, fbank([wave])[0], atol=1e-5, rtol=0)
    assert all(torch.equal(w, b) for w, b in zip(batch, before))
    padded = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True)
    copy = padded.clone()
    fbank(padded, [len(w) for w in batch])
    assert torch.equal(padded, copy)


def test_fbank_is_differentiable():
    wave = make_clip(3000, seed=2).requires_grad_()
    fbank([wave, wave[:1000]], max_length=30).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()


def test_fbank_is_differentiable_after_a_run_in_inference_mode():
    # the mel filter bank is built once per (bins, device) and kept: when it
    # is first built under inference_mode (as transform runs), it must not be
    # an inference tensor, which autograd refuses to save. 41 bins are used
    # nowhere else, so it is first built here.
    wave = make_clip(3000, seed=3)
    with torch.inference_mode():
        fbank([wave], max_length=30, num_mel_bins=41)
    wave.requires_grad_()
    fbank([wave], max_length=30, num_mel_bins=41).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()


@pytest.mark.parametrize(
    "n, expected",
    [(1, 1), (399, 1), (400, 1), (559, 1), (560, 2), (16000, 98), (160000, 998)],
)
def test_num_frames(n, expected):
    assert num_frames(n) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fbank_on_cuda(clips):
    ours = fbank([w.cuda() for w in clips], max_length=1024)
    assert ours.device.type == "cuda"
    diff = (ours.cpu() - fbank(clips, max_length=1024)).abs()
    # float32 rounding differs between the devices' FFT and matmul kernels; the
    # log magnifies it in the few mel bins of very low energy (on an H200: 14
    # of 1.4 million values beyond 1e-3, at most 4e-3)
    assert float(diff.max()) < 2e-2
    assert float((diff > 1e-3).float().mean()) < 1e-4


def test_pad_waveforms_gives_the_same_fbank_as_a_list():
    clips = [make_clip(n, seed=n) for n in (16000, 100, 399, 1234, 40000)]
    for max_length in (None, 10, 98, 300):
        waves, lengths = pad_waveforms(clips, max_length=max_length)
        assert waves.dtype == torch.float32 and lengths.dtype == torch.int64
        # long clips are cut where the last kept frame ends
        assert int(lengths.max()) == waves.shape[1]
        assert torch.equal(
            fbank(waves, lengths, max_length=max_length),
            fbank(clips, max_length=max_length),
        )
    with pytest.raises(TypeError, match="list of 1-D tensors"):
        pad_waveforms(torch.zeros(2, 400))
    with pytest.raises(ValueError, match="empty"):
        pad_waveforms([torch.zeros(400), torch.zeros(0)])


def test_fbank_of_a_padded_batch():
    # what the estimators run: the batch padded once, as it was loaded, and
    # taken as it is (a PaddedBatch: anything with waves and lengths)
    clips = [make_clip(n, seed=n) for n in (16000, 100, 399, 1234, 40000)]
    for max_length in (None, 1, 10, 98, 300):
        waves, lengths = pad_waveforms(clips, max_length=max_length)
        batch = SimpleNamespace(waves=waves, lengths=lengths)
        assert isinstance(batch, PaddedBatch)
        assert torch.equal(
            fbank(batch, max_length=max_length), fbank(clips, max_length=max_length)
        )
    out = fbank(batch, max_length=98, num_mel_bins=64)
    assert torch.equal(out, fbank(clips, max_length=98, num_mel_bins=64))
    with pytest.raises(ValueError, match="max_length"):  # the settings are checked
        fbank(batch, max_length=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pad_waveforms_pins_memory_for_cuda(clips):
    waves, lengths = pad_waveforms(clips, max_length=1024, pin_memory=True)
    assert waves.is_pinned()
    moved = waves.to("cuda", non_blocking=True)
    torch.testing.assert_close(
        fbank(moved, lengths, max_length=1024).cpu(),
        fbank([w.cuda() for w in clips], max_length=1024).cpu(),
        atol=0,
        rtol=0,
    )


# --------------------------------------------------------------------------- normalisation


def test_normalize():
    x = torch.tensor([[0.0, -4.2677393, 4.5689974 * 2 - 4.2677393]])
    out = normalize(x, *NORM_STATS["audioset"])
    torch.testing.assert_close(out, torch.tensor([[0.467032, 0.0, 1.0]]))
    assert x[0, 0] == 0.0  # out of place
