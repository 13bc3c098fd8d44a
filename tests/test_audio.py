"""The input contract: containers, clip validation, files and resampling through
it (the decoder's own tests are in tests/test_decode.py), batching."""

import math
import pickle
import re
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from skast._audio import (
    AudioInput,
    SampleTypeError,
    check_audio_input,
    to_waveform,
)
from skast._batches import AudioDataset, load_batches
from skast._decode import load_audio
from skast._recipes import SAMPLE_RATE

pd = pytest.importorskip("pandas")


def resample(wave, rate):
    """The reference: torchaudio's resample with default arguments."""
    return torchaudio.functional.resample(torch.tensor(wave), rate, 16000)


@pytest.fixture
def wave(rng):
    return (0.3 * rng.standard_normal(1600)).astype(np.float32)


def write(path, data, rate, **kwargs):
    sf.write(path, data, rate, **kwargs)
    return path


# --------------------------------------------------------------------- containers


def test_sample_rate():
    assert SAMPLE_RATE == 16000


def test_containers(wave, tmp_path):
    X = np.stack([wave, -wave])
    cases = {
        "array2d": [
            X,
            X.astype(np.int16),
            pd.DataFrame(X),
            torch.tensor(X),
            X.astype(object),
            np.asarray(X, order="F"),
        ],
        "arrays": [
            [wave, wave[:100]],
            (wave.tolist(), [1, 2, 3]),
            [[0.0, 0.1], [0.2]],
            np.array([wave, wave[:10], wave[:5]], dtype=object),
            pd.Series([wave, wave[:5]], index=[10, 20]),
            pd.DataFrame({"clip": [wave, wave[:5]]}),
            [torch.tensor(wave), wave[:3]],
        ],
        "paths": [
            [str(tmp_path / "a.wav"), tmp_path / "b.wav"],
            (str(tmp_path / "a.wav"),),
            np.array(["a.wav", "b.flac"]),
            pd.Series(["a.wav", "b.flac"]),
            pd.DataFrame({"path": ["a.wav", "b.flac"]}),
        ],
    }
    for kind, inputs in cases.items():
        for X_ in inputs:
            audio = check_audio_input(X_)
            assert isinstance(audio, AudioInput)
            assert audio.kind == kind, type(X_)
            assert len(audio) == len(X_)
    paths = check_audio_input(pd.Series(["a.wav", tmp_path / "b.wav"]))
    assert paths[0] == "a.wav" and paths[1] == tmp_path / "b.wav"
    rows = list(check_audio_input(X))  # a Sequence: iterates the raw items
    assert len(rows) == 2 and rows[1] is not None and (rows[1] == -wave).all()
    with pytest.raises(ValueError, match="kind"):
        AudioInput([wave], "waveforms")


def test_check_does_not_copy_arrays(wave):
    X = np.stack([wave, wave])
    assert check_audio_input(X)[0].base is X
    assert np.shares_memory(check_audio_input(torch.from_numpy(X))[0], X)
    items = [wave, wave]
    assert check_audio_input(items)[1] is wave


@pytest.mark.parametrize(
    "X, error, match",
    [
        (None, TypeError, "got NoneType"),
        ("a.wav", TypeError, "got str"),
        (b"a.wav", TypeError, "got bytes"),
        ({"a": np.zeros(3)}, TypeError, "got dict"),
        ({1.0, 2.0}, TypeError, "got set"),
        (3.0, TypeError, "scalar"),
        (np.float32(1), TypeError, "scalar"),
        (iter([np.zeros(3)]), TypeError, "got list_iterator"),
        (np.zeros(10), ValueError, r"single waveform.*\[clip\] or clip\[None, :\]"),
        (np.zeros(10), ValueError, "Reshape your data"),
        ([0.0, 0.1, 0.2], ValueError, r"single waveform \(3 samples\).*\[clip\]"),
        (pd.Series([0.0, 0.1]), ValueError, r"single waveform.*\[clip\]"),
        (np.zeros((2, 3, 4)), ValueError, r"2-D.*shape \(2, 3, 4\)"),
        ([np.zeros(3), np.zeros((2, 3))], ValueError, r"clip 1: .*1-D.*\(2, 3\)"),
        ([[0.0], [[0.0, 1.0]]], ValueError, "clip 1: .*1-D.*nested lists"),
        (np.zeros((0, 10)), ValueError, "0 clips"),
        (np.zeros(0), ValueError, "0 clips"),
        ([], ValueError, "0 clips"),
        ((), ValueError, "0 clips"),
        (pd.Series([], dtype=object), ValueError, "0 clips"),
        (np.zeros((2, 0)), ValueError, r"clip 0: .*empty"),
        (np.zeros((2, 0)), ValueError, r"0 feature\(s\) \(shape=\(2, 0\)\) while"),
        (["a.wav", "b.wav", np.zeros(3)], ValueError, "mixes .*clip 2 is not"),
        ([np.zeros(3), "b.wav"], ValueError, "mixes .*clip 1 is a path"),
        ([np.zeros(3), None], TypeError, "clip 1: .*got NoneType"),
        ([np.zeros(3), 0.5], TypeError, "clip 1: .*got float"),
        ([np.zeros(3), {"a": 1}], TypeError, "clip 1: .*got dict"),
        (np.ones((2, 3), dtype=bool), TypeError, "dtype bool"),
        (np.ones((2, 3), dtype=complex), TypeError, "dtype complex"),
        (np.ones((2, 3), dtype=complex), ValueError, "Complex data not supported"),
        (np.array([[0.0, {}]], dtype=object), TypeError, "argument must be .* number"),
        (np.array([[0.0], [np.inf]], dtype=object), ValueError, "clip 1: .*infinite"),
        (np.array([[0, 2**33]]), ValueError, "clip 0: int64 .*32-bit PCM"),
        (np.array([b"a.wav"]), TypeError, "bytes"),
    ],
)
def test_bad_containers(X, error, match):
    with pytest.raises(error, match=match):
        check_audio_input(X)


def test_sparse_input_is_refused():
    sparse = pytest.importorskip("scipy.sparse")
    dense = np.ones((2, 3))
    for X in (
        sparse.csr_matrix(dense),
        sparse.csr_array(dense),
        sparse.dok_array(dense),
    ):
        with pytest.raises(TypeError, match="sparse input is not supported"):
            check_audio_input(X)
    with pytest.raises(TypeError, match="sparse input is not supported"):
        check_audio_input(torch.ones(2, 3).to_sparse())


def test_sample_type_error_is_a_type_and_a_value_error():
    assert issubclass(SampleTypeError, TypeError)
    assert issubclass(SampleTypeError, ValueError)
    for clip in (np.array([True]), np.array([1j])):
        with pytest.raises(SampleTypeError, match="clip 0: "):
            check_audio_input([clip])


def test_check_clips_false_reads_no_samples():
    X = np.full((3, 5), np.nan)
    assert check_audio_input(X, check_clips=False).kind == "array2d"
    assert check_audio_input(list(X), check_clips=False).kind == "arrays"


# ------------------------------------------------------------------------ clips


@pytest.mark.parametrize(
    "clip, error, match",
    [
        (np.array([0.0, np.nan]), ValueError, "clip 3: the clip contains NaN or inf"),
        (np.array([np.inf, 0], dtype=np.float16), ValueError, "clip 3: .*infinite"),
        (np.array([-np.inf], dtype=np.float32), ValueError, "clip 3: .*infinite"),
        (np.array([1e300]), ValueError, "clip 3: .*beyond the float32 range"),
        ([0.0, float("nan")], ValueError, "clip 3: .*NaN"),
        (np.zeros(0, dtype=np.float32), ValueError, r"clip 3: .*empty \(0 samples"),
        ([], ValueError, "clip 3: .*empty"),
        (np.array([2**40]), ValueError, r"clip 3: int64 .*\[-2147483648"),
        (np.array([2**31]), ValueError, "clip 3: int64 .*32-bit PCM"),
        (np.array([2**32], dtype=np.uint64), ValueError, "clip 3: uint64"),
        (np.array([True, False]), TypeError, "clip 3: .*real numbers.*bool"),
        (np.array([1j, 2j]), ValueError, "clip 3: Complex data not supported"),
        (np.array([1j, 2j]), TypeError, "clip 3: .*must be real.*complex128"),
        (np.array(["0.1", "x"]), TypeError, "clip 3: .*real numbers.*<U"),
        ([0.1, {}], TypeError, "clip 3: the clip is not a numeric waveform"),
        ([0.1, None], ValueError, "clip 3: .*NaN"),  # numpy: None -> nan
    ],
)
def test_bad_clips_name_their_index(clip, error, match):
    X = [np.zeros(3)] * 3 + [clip]
    with pytest.raises(error, match=match):
        check_audio_input(X)  # in-memory clips are checked up front
    audio = check_audio_input(X, check_clips=False)  # and again as they load
    assert audio.load(0).shape == (3,)
    with pytest.raises(error, match=match):
        audio.load(3)
    with pytest.raises(error, match=match.replace("clip 3: ", "")):
        to_waveform(clip)  # no index: no "clip i" prefix


def test_ragged_nested_lists():
    with pytest.raises(TypeError, match="^clip 5: cannot convert the clip"):
        to_waveform([[0.0, 1.0], [2.0]], index=5)


def test_bad_2d_clip_names_its_row():
    X = np.zeros((4, 5))
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match="clip 2: the clip contains NaN"):
        check_audio_input(X)
    audio = check_audio_input(X, check_clips=False)
    audio.load(1)
    with pytest.raises(ValueError, match="clip 2: the clip contains NaN"):
        audio.load(2)


@pytest.mark.parametrize(
    "dtype, values, expected",
    [
        (np.int8, [127, -128, 0], [127 / 128, -1.0, 0.0]),
        (np.uint8, [255, 128, 0], [127 / 128, 0.0, -1.0]),
        (np.int16, [32767, -32768, 16384], [32767 / 32768, -1.0, 0.5]),
        (np.uint16, [65535, 32768, 0], [32767 / 32768, 0.0, -1.0]),
        (np.int32, [2**31 - 1, -(2**31), 2**30], [1.0, -1.0, 0.5]),
        (np.uint32, [2**32 - 1, 2**31, 0], [1.0, 0.0, -1.0]),
        (np.int64, [2**31 - 1, -(2**31), -(2**29)], [1.0, -1.0, -0.25]),
        (np.uint64, [2**32 - 1, 2**31, 0], [1.0, 0.0, -1.0]),
        (">i2", [32767, -16384, 0], [32767 / 32768, -0.5, 0.0]),  # big-endian
        (np.float16, [0.5, -2.0, 0.1], np.array([0.5, -2.0, 0.1], np.float16)),
        (np.float32, [0.5, -3.0, 1e-8], [0.5, -3.0, 1e-8]),
        (np.float64, [0.25, 2.5, -7.0], [0.25, 2.5, -7.0]),  # not rescaled
        (">f8", [0.25, 2.5, -7.0], [0.25, 2.5, -7.0]),
    ],
)
def test_sample_conversion(dtype, values, expected):
    clip = np.array(values, dtype=dtype)
    out = to_waveform(clip)
    assert out.dtype == torch.float32 and out.shape == (3,)
    np.testing.assert_array_equal(out.numpy(), np.asarray(expected, np.float32))
    assert check_audio_input(clip[None, :]).load(0).equal(out)  # 2-D rows too


def test_python_numbers():
    floats = to_waveform([0.5, -0.25])
    np.testing.assert_array_equal(floats.numpy(), [0.5, -0.25])
    ints = to_waveform([2**30, -(2**31)])  # integers are PCM, numpy makes int64
    np.testing.assert_array_equal(ints.numpy(), [0.5, -1.0])
    objects = np.array([[0.5, -0.25]], dtype=object)
    np.testing.assert_array_equal(check_audio_input(objects).load(0).numpy(), floats)


def test_int16_full_scale_is_about_one():
    out = to_waveform(np.array([32767, -32768], dtype=np.int16))
    assert out[0] == pytest.approx(1.0, abs=1e-4) and out[1] == -1.0


def test_user_arrays_are_untouched_and_memmaps_work(wave, tmp_path):
    X = np.stack([wave, -wave]) * 2  # values beyond [-1, 1] stay as given
    path = tmp_path / "x.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    assert not ro.flags.writeable
    ints = (X * 1000).astype(np.int16)
    readonly_list = [wave.copy(), wave[:100].copy()]
    for a in readonly_list:
        a.setflags(write=False)
    sources = [X, ro, [X[0], X[1]], ints, [ints[0], ints[1]], readonly_list, X[:, ::2]]
    copies = [[np.array(a, copy=True) for a in s] for s in sources]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch.from_numpy on a read-only array
        for source in sources:
            audio = check_audio_input(source)
            for i in range(len(audio)):
                out = audio.load(i)
                assert not np.shares_memory(out.numpy(), np.asarray(source[i]))
                out.mul_(0).add_(7)  # what the caller does never reaches X
    for source, copy in zip(sources, copies):
        for a, b in zip(source, copy):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(check_audio_input(ro).load(1).numpy(), -2 * wave)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 16000])
def test_resampling_arrays(wave, rate):
    out = check_audio_input([wave]).load(0, sample_rate=rate)
    assert out.shape == (math.ceil(len(wave) * 16000 / rate),)
    torch.testing.assert_close(out, resample(wave, rate), rtol=0, atol=0)


def test_resampled_length_rounds_up():
    # torchaudio's output has ceil(n * 16000 / rate) samples: round() when exact
    assert to_waveform(np.zeros(11025), sample_rate=22050).shape == (8000,)
    assert to_waveform(np.zeros(1000), sample_rate=44100).shape == (363,)  # 362.8
    assert to_waveform(np.zeros(1001), sample_rate=44100).shape == (364,)  # 363.2


@pytest.mark.parametrize("rate", [0, -8000, 22050.5, "16000", None])
def test_bad_sample_rates(wave, rate):
    with pytest.raises((TypeError, ValueError), match="sample_rate"):
        to_waveform(wave, sample_rate=rate)


def test_integral_float_rate_is_fine(wave):
    assert to_waveform(wave, sample_rate=8000.0).equal(resample(wave, 8000))
    assert to_waveform(wave, sample_rate=np.int64(8000)).equal(resample(wave, 8000))


# ------------------------------------------------------------------------ files


@pytest.mark.parametrize(
    "fmt, subtype, rate, channels, atol",
    [
        ("WAV", "PCM_16", 16000, 1, 1 / 32768),
        ("WAV", "PCM_16", 44100, 2, 1 / 32768),
        ("WAV", "PCM_32", 48000, 2, 1e-7),
        ("WAV", "FLOAT", 22050, 6, 0),
        ("WAV", "PCM_U8", 8000, 1, 1 / 128),
        ("FLAC", "PCM_16", 22050, 2, 1 / 32768),
        ("FLAC", "PCM_24", 48000, 6, 1 / 2**23),
        ("OGG", "VORBIS", 44100, 2, None),
        ("OGG", "VORBIS", 16000, 1, None),
    ],
)
def test_files(tmp_path, fmt, subtype, rate, channels, atol):
    n = rate // 4 + 7  # a resampled length that is not a whole number
    t = np.arange(n) / rate
    data = np.stack(
        [0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], 1
    ).astype(np.float32)
    path = write(tmp_path / f"clip.{fmt.lower()}", data, rate, subtype=subtype)
    wave, native = load_audio(path)
    assert native == rate and wave.dtype == np.float32 and wave.shape == (n,)
    mono = data.mean(axis=1)
    if atol is None:  # lossy: close, not equal
        assert np.linalg.norm(wave - mono) < 0.1 * np.linalg.norm(mono)
    else:
        np.testing.assert_allclose(wave, mono, rtol=0, atol=atol * 1.01)
    out = check_audio_input([path]).load(0, sample_rate=1234)  # files: own rate
    assert out.dtype == torch.float32
    assert out.shape == (math.ceil(n * 16000 / rate),)
    torch.testing.assert_close(out, resample(wave, rate), rtol=0, atol=0)
    again, rate16k = load_audio(str(path), sample_rate=16000)
    assert rate16k == 16000
    np.testing.assert_array_equal(again, out.numpy())


def test_bad_files_name_their_index(tmp_path, wave):
    good = write(tmp_path / "good.wav", wave, 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])  # cut inside the header
    text = tmp_path / "text.wav"
    text.write_text("not audio at all, just some text")
    empty = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    assert sf.info(empty).frames == 0
    nan = np.array([0.0, np.nan], np.float32)
    nan = write(tmp_path / "nan.wav", nan, 8000, subtype="FLOAT")
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    missing = tmp_path / "missing.wav"
    audio = check_audio_input([good, missing, truncated, text, empty, nan, folder])
    assert audio.load(0).shape == (1600,)
    expected = {
        1: r"clip 1: cannot read audio file '.*missing\.wav': .*No such file",
        2: r"clip 2: cannot read audio file '.*truncated\.wav'",
        3: r"clip 3: cannot read audio file '.*text\.wav'",
        4: r"clip 4: the audio file '.*empty\.wav' is empty \(0 frames\)",
        5: r"clip 5: the audio file '.*nan\.wav' contains NaN or infinite",
        6: r"clip 6: cannot read audio file '.*folder\.wav'",
    }
    for i, match in expected.items():
        with pytest.raises(ValueError, match=match) as info:
            audio.load(i)
        if i in (1, 2, 3, 6):  # the original error is chained
            assert isinstance(info.value.__cause__, Exception)
        with pytest.raises(ValueError, match=match.replace(f"clip {i}: ", "^")):
            load_audio(audio[i])  # no index: no "clip i" prefix
    with pytest.raises(ValueError, match="clip 1: cannot read"):
        audio.fingerprint(1)


# ----------------------------------------------------------------- fingerprints


def test_fingerprints_follow_file_content(tmp_path, wave):
    a = write(tmp_path / "a.wav", wave, 16000)
    b = tmp_path / "sub" / "b.wav"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    c = write(tmp_path / "c.wav", -wave, 16000)
    files = check_audio_input([a, str(b), c])
    fp = [files.fingerprint(i) for i in range(3)]
    assert re.fullmatch("[0-9a-f]{64}", fp[0])
    assert fp[0] == fp[1] != fp[2]
    moved = tmp_path / "moved.wav"
    a.rename(moved)
    assert check_audio_input([moved]).fingerprint(0) == fp[0]
    moved.write_bytes(c.read_bytes())  # same path, new content: not stale
    assert check_audio_input([moved]).fingerprint(0) == fp[2]


def test_fingerprints_follow_array_content(wave):
    arrays = check_audio_input(
        [wave, wave.copy(), wave.astype(np.float64), wave[:-1], -wave, wave[::-1]]
    )
    fp = [arrays.fingerprint(i) for i in range(len(arrays))]
    assert fp[0] == fp[1]
    assert len(set(fp[1:])) == len(fp) - 1
    row = check_audio_input(np.stack([-wave, wave])).fingerprint(1)
    assert row == fp[0]
    strided = check_audio_input(np.stack([wave, wave], axis=1).T).fingerprint(0)
    assert strided == fp[0]
    as_list = check_audio_input([wave.astype(np.float64).tolist()]).fingerprint(0)
    assert as_list == fp[2]
    assert check_audio_input([wave]).fingerprint(0) == fp[0]  # stable across calls


# ---------------------------------------------------------------------- batches


def test_dataset_is_picklable(tmp_path, wave):
    path = write(tmp_path / "a.flac", wave, 8000)
    for X in ([path], np.stack([wave, wave]), [wave]):
        dataset = AudioDataset(check_audio_input(X), 8000)
        clone = pickle.loads(pickle.dumps(dataset))
        assert len(clone) == len(dataset)
        i, out = clone[0]
        assert i == 0 and out.equal(dataset[0][1])
        assert out.shape == (3200,)


@pytest.mark.parametrize("as_2d", [False, True])
def test_parallel_checks_name_the_first_bad_clip(monkeypatch, rng, as_2d):
    from skast import _containers

    monkeypatch.setattr(_containers, "_PARALLEL_SAMPLES", 0)
    monkeypatch.setattr(_containers.os, "cpu_count", lambda: 4)
    X = rng.standard_normal((23, 500)).astype(np.float32)
    check_audio_input(X if as_2d else list(X))  # all good: no error
    for bad in ([22], [3, 17], [0, 5, 11, 22], [12, 13]):
        Y = X.copy()
        Y[bad, 7] = np.nan
        with pytest.raises(ValueError, match=rf"^clip {bad[0]}: .*NaN"):
            check_audio_input(Y if as_2d else list(Y))
    Y = list(X)
    Y[9] = np.array([1.0, np.inf])
    Y[14] = np.zeros(0)
    with pytest.raises(ValueError, match=r"^clip 9: "):
        check_audio_input(Y)


def test_probe_names_the_first_bad_file(tmp_path, wave):
    good = write(tmp_path / "good.wav", wave, 16000)
    text = tmp_path / "text.wav"
    text.write_text("not audio")
    empty = write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    # a long list is probed by threads, each over a run of clips
    X = [good] * 70 + [text] + [good] * 9 + [empty]
    with pytest.raises(ValueError, match=r"^clip 70: cannot read audio file"):
        check_audio_input(X, probe_files=True)
    with pytest.raises(ValueError, match=r"^clip 80: the audio file .* is empty"):
        check_audio_input(X).subset([0, 80]).probe()
    assert check_audio_input(X[:70], probe_files=True).kind == "paths"
    assert check_audio_input([wave], probe_files=True).kind == "arrays"  # no files


def test_loading_without_a_copy_shares_only_writeable_float32(wave):
    X = np.stack([wave, -wave])
    ro = X.copy()
    ro.setflags(write=False)
    ints = (X * 1000).astype(np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy on a read-only array
        assert np.shares_memory(check_audio_input(X).load(1, copy=False).numpy(), X)
        for source in (ro, ints, X.astype(np.float64)):
            out = check_audio_input(source).load(1, copy=False)
            assert out.dtype == torch.float32
            assert not np.shares_memory(out.numpy(), source)
        # resampled clips are new in any case
        out = check_audio_input(X).load(0, sample_rate=8000, copy=False)
        assert not np.shares_memory(out.numpy(), X)


def test_subsets_name_clips_as_in_X(tmp_path, wave):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file")
    paths = [write(tmp_path / f"{i}.wav", wave * i, 16000) for i in range(4)]
    audio = check_audio_input(paths + [corrupt])
    sub = audio.subset([4, 1, 3])
    assert isinstance(sub, AudioInput) and sub.kind == "paths" and len(sub) == 3
    assert sub[0] == corrupt and sub[-1] == paths[3] and sub[1:] == paths[1::2]
    assert sub.fingerprint(1) == audio.fingerprint(1)
    assert sub.load(2).equal(audio.load(3))
    with pytest.raises(ValueError, match="^clip 4: cannot read"):
        sub.load(0)
    nested = sub.subset([2, 0])  # positions in sub, named as in X
    assert [nested[i] for i in range(2)] == [paths[3], corrupt]
    with pytest.raises(ValueError, match="^clip 4: cannot read"):
        nested.load(1)
    with pytest.raises(IndexError):
        sub.load(3)
    with pytest.raises(ValueError, match="^clip 4: cannot read"):
        list(load_batches(sub, sample_rate=16000, batch_size=2, num_workers=2))
    clone = pickle.loads(pickle.dumps(sub))
    assert clone[1] == paths[1] and clone.load(1).equal(audio.load(1))

    X = np.stack([wave, -wave, 2 * wave])
    rows = check_audio_input(X).subset(np.array([2, 0]))
    assert rows[0].base is X  # not copied
    assert rows.load(0).equal(torch.tensor(2 * wave))
    assert rows.fingerprint(1) == check_audio_input(X).fingerprint(0)
    batch = next(load_batches(rows, sample_rate=8000, batch_size=5))
    assert batch.indices == [0, 1]
    assert torch.equal(batch.waves[1], rows.load(1, 8000)[: batch.waves.shape[1]])


# ----------------------------------------------------------------------- pandas


def test_pandas(tmp_path, wave):
    paths = [write(tmp_path / f"{i}.wav", wave * i / 4, 16000) for i in range(3)]
    series = pd.Series([str(p) for p in paths], index=["x", "y", "z"])
    audio = check_audio_input(series)
    assert audio.kind == "paths" and audio[2] == str(paths[2])
    torch.testing.assert_close(audio.load(2), torch.tensor(wave / 2), atol=1e-4, rtol=0)
    column = check_audio_input(pd.DataFrame({"path": series}))
    assert column.kind == "paths" and column.fingerprint(1) == audio.fingerprint(1)

    frame = pd.DataFrame(np.stack([wave, -wave]), index=[5, 6])
    X = check_audio_input(frame)
    assert X.kind == "array2d"
    assert X.load(1, 16000).equal(torch.tensor(-wave))
    ints = check_audio_input(pd.DataFrame(np.array([[16384, -32768]], np.int16)))
    assert ints.load(0).tolist() == [0.5, -1.0]

    bad = pd.Series([wave, wave[:0]], index=[7, 8])
    with pytest.raises(ValueError, match="clip 1: the clip is empty"):  # position
        check_audio_input(bad).load(1)


# ------------------------------------------------------------------- tensors


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_tensors_stay_on_their_device(device, wave):
    t = torch.from_numpy(wave).to(device)
    X2d = torch.stack([t, -t])
    for X in (X2d, [t, -t[:800]], [t.to(torch.float64), t.to(torch.bfloat16)]):
        audio = check_audio_input(X)
        assert isinstance(audio[0], torch.Tensor) and audio[0].device == t.device
        for i in range(2):
            out = audio.load(i, sample_rate=8000)
            assert out.device == t.device and out.dtype == torch.float32
            expected = resample(audio[i].float().cpu().numpy(), 8000)
            torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-6)
    # a float32 tensor at 16 kHz is shared with copy=False, copied otherwise
    assert check_audio_input(X2d).load(1, copy=False).data_ptr() == X2d[1].data_ptr()
    assert check_audio_input(X2d).load(1).data_ptr() != X2d[1].data_ptr()
    pcm = torch.tensor([16384, -32768], dtype=torch.int16, device=device)
    torch.testing.assert_close(
        check_audio_input([pcm]).load(0).cpu(), torch.tensor([0.5, -1.0])
    )
    leaf = t.clone().requires_grad_(True)  # checked and loaded without autograd
    assert not check_audio_input([leaf]).load(0).requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_errors_match_the_arrays(device):
    def on(*args, **kwargs):
        return torch.tensor(*args, **kwargs, device=device)

    cases = [
        ([on([0.5]), on([0.0, float("nan")])], ValueError, r"^clip 1: .*NaN"),
        ([on([0.5]), on([], dtype=torch.float32)], ValueError, r"^clip 1: .*empty"),
        ([on([0.5]), on([1e300], dtype=torch.float64)], ValueError, "float32 range"),
        ([on([2**40])], ValueError, r"^clip 0: int64 samples are read as 32-bit"),
        ([on([True])], SampleTypeError, "got dtype bool"),
        ([on([1j])], SampleTypeError, "Complex data not supported"),
        (on([[0.0], [float("inf")]]), ValueError, r"^clip 1: .*NaN or infinite"),
        (on([0.5, 0.1]), ValueError, "single waveform"),
        (on([[[0.5]]]), ValueError, "must be 2-D"),
        (on([[0.5]]).to_sparse(), TypeError, "sparse"),
    ]
    for X, error, match in cases:
        with pytest.raises(error, match=match):
            check_audio_input(X)
    # the same ints as numpy's table, on the tensor's device
    for dtype in ("uint8", "int8", "int32", "uint16", "uint32"):
        ints = on([0, 3, 100], dtype=getattr(torch, dtype))
        expected = check_audio_input([np.array([0, 3, 100], dtype=dtype)]).load(0)
        torch.testing.assert_close(
            check_audio_input([ints]).load(0).cpu(), expected, rtol=0, atol=0
        )
