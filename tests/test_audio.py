"""The input contract: containers, clip validation, decoding, resampling, batching."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from skast._audio import check_audio_input, iter_batches, load_audio, to_waveform


@pytest.fixture
def wave(rng):
    return (0.3 * rng.standard_normal(16000)).astype(np.float32)


def test_containers(wave, tmp_path):
    pd = pytest.importorskip("pandas")
    assert check_audio_input(np.stack([wave, wave])).kind == "array2d"
    assert check_audio_input([wave, wave[:100]]).kind == "arrays"
    assert check_audio_input((wave.tolist(),)).kind == "arrays"
    assert (
        check_audio_input([str(tmp_path / "a.wav"), tmp_path / "b.wav"]).kind == "paths"
    )
    assert check_audio_input(pd.Series([wave, wave[:5]])).kind == "arrays"
    assert check_audio_input(pd.DataFrame(np.stack([wave, wave]))).kind == "array2d"
    objects = np.empty(2, dtype=object)
    objects[:] = [wave, wave[:10]]
    assert check_audio_input(objects).kind == "arrays"


@pytest.mark.parametrize(
    "X, error, match",
    [
        (None, TypeError, "got NoneType"),
        ("a.wav", TypeError, "got str"),
        ({"a": 1}, TypeError, "got dict"),
        (np.zeros(10), ValueError, r"single 1-D array.*pass one clip as \[clip\]"),
        (np.zeros((2, 3, 4)), ValueError, "shape"),
        (np.zeros((0, 10)), ValueError, "0 clips"),
        ([], ValueError, "0 clips"),
        (["a.wav", np.zeros(3)], ValueError, "mixes file paths and waveforms.*clip 1"),
        ([np.zeros(3), None], TypeError, "clip 1"),
    ],
)
def test_bad_containers(X, error, match):
    with pytest.raises(error, match=match):
        check_audio_input(X)


@pytest.mark.parametrize(
    "clip, match",
    [
        (np.zeros(0), "clip 2: the clip is empty"),
        (np.zeros((2, 5)), "clip 2: a waveform must be 1-D"),
        (np.array([2**40]), "clip 2: int64 samples outside"),
    ],
)
def test_bad_clips_name_their_index(clip, match):
    audio = check_audio_input([np.zeros(3), np.zeros(3), clip])
    with pytest.raises(ValueError, match=match):
        audio.load(2)


def test_non_real_clips():
    with pytest.raises(TypeError, match="clip 0: waveforms must be real"):
        check_audio_input([np.array([True, False])]).load(0)
    with pytest.raises(ValueError, match="clip 1: Complex data not supported"):
        check_audio_input([np.zeros(3), np.array([1j, 2j])])
    with pytest.raises(ValueError, match="Complex data not supported"):
        check_audio_input(np.ones((2, 3), dtype=complex))


@pytest.mark.parametrize(
    "X",
    [
        [np.zeros(3), np.zeros(3), np.array([0.0, np.nan])],
        [np.zeros(3), np.zeros(3), np.array([0.0, np.inf], dtype=np.float16)],
        np.array([[0.0, 1.0], [0.0, 0.0], [np.nan, 0.0]]),
    ],
)
def test_nan_and_inf_are_found_up_front(X):
    with pytest.raises(ValueError, match="clip 2: the clip contains NaN or infinite"):
        check_audio_input(X)


def test_sparse_and_empty_samples():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse input is not supported"):
        check_audio_input(sparse.csr_matrix(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        check_audio_input(np.zeros((3, 0)))


@pytest.mark.parametrize(
    "dtype, value, expected",
    [
        (np.int8, 127, 127 / 128),
        (np.uint8, 255, 127 / 128),
        (np.uint8, 128, 0.0),
        (np.int16, 32767, 32767 / 32768),
        (np.int16, -32768, -1.0),
        (np.int32, 2**30, 0.5),
        (np.int64, -(2**31), -1.0),
        (np.float16, 0.5, 0.5),
        (np.float64, 0.25, 0.25),
    ],
)
def test_pcm_scaling(dtype, value, expected):
    out = to_waveform(np.full(5, value, dtype=dtype))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full((5,), expected))


def test_user_arrays_are_untouched_and_memmaps_work(wave, tmp_path):
    X = np.stack([wave, -wave]) * 2  # values beyond [-1, 1] stay as given
    X_copy = X.copy()
    path = tmp_path / "x.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    for source in (X, ro, [X[0], X[1]]):
        audio = check_audio_input(source)
        out = audio.load(1)
        out.mul_(0)  # what the caller does with it never reaches the input
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(ro, X_copy)


def test_resampling(wave):
    out = to_waveform(wave, sample_rate=8000)
    expected = torchaudio.functional.resample(torch.from_numpy(wave), 8000, 16000)
    assert out.shape == (32000,)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "fmt, subtype, rate, channels, atol",
    [
        ("WAV", "PCM_16", 16000, 1, 1 / 32768),
        ("WAV", "PCM_32", 44100, 2, 1e-6),
        ("WAV", "FLOAT", 48000, 6, 1e-7),
        ("WAV", "PCM_U8", 8000, 1, 1 / 128),
        ("FLAC", "PCM_16", 22050, 2, 1 / 32768),
        ("OGG", "VORBIS", 16000, 1, None),
    ],
)
def test_files(tmp_path, rng, fmt, subtype, rate, channels, atol):
    data = (0.4 * rng.uniform(-1, 1, (rate // 2, channels))).astype(np.float32)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt, subtype=subtype)
    wave, native = load_audio(path)
    assert native == rate and wave.shape == (rate // 2,)
    if atol is not None:
        np.testing.assert_allclose(wave, data.mean(axis=1), atol=atol * 1.01)
    out = check_audio_input([path]).load(0)
    assert out.shape[0] == round(len(wave) * 16000 / rate)
    if rate != 16000:
        expected = torchaudio.functional.resample(torch.from_numpy(wave), rate, 16000)
        torch.testing.assert_close(out, expected)


def test_bad_files_name_their_index(tmp_path, wave):
    good = tmp_path / "good.wav"
    sf.write(good, wave, 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])
    text = tmp_path / "text.wav"
    text.write_text("not audio")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    audio = check_audio_input([good, tmp_path / "missing.wav", truncated, text, empty])
    assert audio.load(0).shape == (16000,)
    for i in (1, 2, 3):
        with pytest.raises(ValueError, match=f"clip {i}: cannot read audio file"):
            audio.load(i)
    with pytest.raises(ValueError, match="clip 4: audio file .* is empty"):
        audio.load(4)


def test_fingerprints_follow_content(tmp_path, wave):
    a, b, c = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.wav"
    sf.write(a, wave, 16000)
    b.write_bytes(a.read_bytes())
    sf.write(c, -wave, 16000)
    files = check_audio_input([a, b, c])
    assert files.fingerprint(0) == files.fingerprint(1) != files.fingerprint(2)
    arrays = check_audio_input([wave, wave.copy(), wave.astype(np.float64)])
    assert arrays.fingerprint(0) == arrays.fingerprint(1) != arrays.fingerprint(2)
    assert check_audio_input(np.stack([wave])).fingerprint(0) == arrays.fingerprint(0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iter_batches_in_order(tmp_path, rng, num_workers):
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], np.full(400 + i, i / 10, dtype=np.float32), 16000)
    audio = check_audio_input(paths)
    batches = list(
        iter_batches(audio, sample_rate=16000, batch_size=3, num_workers=num_workers)
    )
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [pair for b in batches for pair in b]
    assert [i for i, _ in flat] == list(range(7))
    assert [w.shape[0] for _, w in flat] == [400 + i for i in range(7)]
    (tmp_path / "3.wav").write_text("corrupt")
    with pytest.raises(ValueError, match="clip 3: cannot read audio file"):
        list(
            iter_batches(
                audio, sample_rate=16000, batch_size=2, num_workers=num_workers
            )
        )
