"""skast._features: kaldi fbank parity, padding, normalisation."""

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from skast._features import (
    FRAME_LENGTH,
    FRAME_SHIFT,
    _mel_matrix,
    fbank,
    normalize,
    num_frames,
    pad_waveforms,
    resolve_normalization,
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


def test_mel_matrix_is_torchaudios():
    banks, _ = kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks, (0, 1))
    ours = _mel_matrix(128, "cpu")
    assert ours.dtype == torch.float32 and ours.shape == (257, 128)
    assert torch.equal(ours, banks.T)
    assert _mel_matrix(128, "cpu") is ours  # cached


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


def test_fbank_blocks_and_inputs(clips, monkeypatch):
    import skast._features as features

    batch = clips[:6]
    expected = fbank(batch, max_length=600)
    short = fbank(batch, max_length=30)
    # tiny blocks: long clips cut along time, or several clips per block
    monkeypatch.setattr(features, "_CPU_CHUNK_FRAMES", 70)
    before = [w.clone() for w in batch]
    blocked = fbank(batch, max_length=600)
    torch.testing.assert_close(blocked, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(fbank(batch, max_length=30), short, atol=1e-5, rtol=0)
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
    # the window and mel matrix are cached per device: when the first call
    # ran under inference_mode (as transform does), they must not be
    # inference tensors, which autograd refuses to save
    from skast._features import _mel_matrix, _window

    _window.cache_clear()
    _mel_matrix.cache_clear()
    wave = make_clip(3000, seed=3)
    with torch.inference_mode():
        fbank([wave], max_length=30)
    assert not _window("cpu").is_inference()
    assert not _mel_matrix(NUM_MEL_BINS, "cpu").is_inference()
    wave.requires_grad_()
    fbank([wave], max_length=30).sum().backward()
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


def test_resolve_normalization_presets_and_pairs():
    for name, stats in NORM_STATS.items():
        assert resolve_normalization(name) == stats
    assert resolve_normalization("AudioSet") == NORM_STATS["audioset"]
    assert resolve_normalization((-4, 4.5)) == (-4.0, 4.5)
    assert resolve_normalization([1, 2]) == (1.0, 2.0)
    assert resolve_normalization(np.array([0.5, 0.25])) == (0.5, 0.25)
    mean, std = resolve_normalization((np.float32(1.5), np.int64(3)))
    assert (mean, std) == (1.5, 3.0)
    assert type(mean) is float and type(std) is float


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("imagenet", ValueError, "unknown normalization preset 'imagenet'"),
        ((0.0, -1.0), ValueError, "std must be > 0"),
        ((0.0, 0.0), ValueError, "std must be > 0"),
        ((0.0, float("nan")), ValueError, "finite"),
        ((0.0,), ValueError, "pair, got 1 values"),
        ((0.0, 1.0, 2.0), ValueError, "pair, got 3 values"),
        (("a", 1.0), TypeError, "mean must be a real number"),
        ((0.0, None), TypeError, "std must be a real number"),
        ((True, 1.0), TypeError, "mean must be a real number"),
        (None, TypeError, "NoneType"),
        (3.0, TypeError, "float"),
    ],
)
def test_resolve_normalization_rejects(bad, error, match):
    with pytest.raises(error, match=match):
        resolve_normalization(bad)


@pytest.mark.parametrize("bad", ["imagenet", None, (1.0,)])
def test_resolve_normalization_lists_accepted_values(bad):
    with pytest.raises((TypeError, ValueError)) as info:
        resolve_normalization(bad)
    message = str(info.value)
    assert all(name in message for name in NORM_STATS)
    assert "(mean, std)" in message


def test_normalize():
    x = torch.tensor([[0.0, -4.2677393, 4.5689974 * 2 - 4.2677393]])
    out = normalize(x, *NORM_STATS["audioset"])
    torch.testing.assert_close(out, torch.tensor([[0.467032, 0.0, 1.0]]))
    assert x[0, 0] == 0.0  # out of place
