"""The decoder: files -> mono float32 waveforms, sample rates, resampling."""

import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from skast._decode import check_rate, load_audio, read, resample, resample_clips


def write(path, data, rate, **kwargs):
    sf.write(path, data, rate, **kwargs)
    return path


def test_integer_wavs_decode_exactly(tmp_path):
    pcm16 = np.array([32767, -32768, 16384, 0, -1], dtype=np.int16)
    path = write(tmp_path / "int16.wav", pcm16, 16000)
    np.testing.assert_array_equal(load_audio(path)[0], pcm16 / 32768)
    assert load_audio(path)[0][0] == pytest.approx(1.0, abs=1e-4)
    pcm32 = np.array([2**31 - 1, -(2**31), 2**30], dtype=np.int32)
    path = write(tmp_path / "int32.wav", pcm32, 16000, subtype="PCM_32")
    np.testing.assert_array_equal(load_audio(path)[0], np.float32(pcm32 / 2**31))
    u8 = np.array([-1.0, 0.0, 0.5], dtype=np.float32)
    path = write(tmp_path / "u8.wav", u8, 8000, subtype="PCM_U8")
    np.testing.assert_array_equal(load_audio(path)[0], u8)
    assert sf.info(path).subtype == "PCM_U8"


def test_stereo_is_the_mean_of_its_channels(tmp_path):
    data = np.array([[0.5, -0.25], [1.0, 0.0], [-0.5, -0.5]], dtype=np.float32)
    path = write(tmp_path / "stereo.wav", data, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path)[0], [0.125, 0.5, -0.5])
    six = np.tile(np.arange(6, dtype=np.float32) / 10, (4, 1))
    path = write(tmp_path / "six.flac", six, 48000, subtype="PCM_24")
    np.testing.assert_allclose(load_audio(path)[0], np.full(4, 0.25), atol=1e-6)


def test_read_keeps_what_load_audio_refuses(tmp_path):
    # read decodes; load_audio adds the checks of the input contract
    empty = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    wave, rate = read(empty)
    assert wave.shape == (0,) and wave.dtype == np.float32 and rate == 16000
    with pytest.raises(ValueError, match="is empty"):
        load_audio(empty)
    nan = np.array([0.5, np.nan], np.float32)
    nan = write(tmp_path / "nan.wav", nan, 8000, subtype="FLOAT")
    assert np.isnan(read(nan)[0][1])
    with pytest.raises(ValueError, match="contains NaN"):
        load_audio(nan)
    text = tmp_path / "text.wav"
    text.write_text("not audio")
    with pytest.raises(ValueError, match="^clip 7: cannot read audio file") as info:
        read(text, index=7)
    assert isinstance(info.value.__cause__, sf.LibsndfileError)


def test_load_audio_resamples_with_torchaudio(tmp_path, rng):
    data = (0.3 * rng.standard_normal(4410)).astype(np.float32)
    path = write(tmp_path / "clip.wav", data, 44100, subtype="FLOAT")
    wave, rate = load_audio(path, sample_rate=16000)
    expected = torchaudio.functional.resample(torch.from_numpy(data), 44100, 16000)
    assert rate == 16000 and wave.dtype == np.float32
    np.testing.assert_array_equal(wave, expected.numpy())
    same, rate = load_audio(path, sample_rate=44100.0)
    assert rate == 44100 and isinstance(rate, int)
    np.testing.assert_array_equal(same, data)
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        load_audio(path, sample_rate=-1)


@pytest.mark.parametrize(
    "rate, error",
    [(0, ValueError), (22050.5, ValueError), (True, TypeError), ("16000", TypeError)],
)
def test_check_rate(rate, error):
    with pytest.raises(error, match="sample_rate must be"):
        check_rate(rate)
    assert check_rate(np.int32(8000)) == 8000


def test_resample_keeps_leading_dimensions():
    x = torch.randn(3, 2, 441, generator=torch.Generator().manual_seed(0))
    assert resample(x, 16000, 16000) is x
    out = resample(x, 44100, 16000)
    assert out.shape == (3, 2, 160)
    torch.testing.assert_close(
        out[1, 0], torchaudio.functional.resample(x[1, 0], 44100, 16000)
    )


def test_resample_clips_stacks_equal_rates_and_lengths(rng):
    waves = [rng.standard_normal(n).astype(np.float32) for n in (441, 441, 300, 441)]
    rates = [44100, 44100, 44100, 22050]
    clips = list(zip(waves, rates)) + [(waves[2], 16000)]
    out = resample_clips(clips, 16000)
    assert out[4] is waves[2]  # already at the rate: as it is
    # one resample per (rate, length) group: the same numbers as resampling
    # that stack (resampling one clip alone may round differently)
    stack = torchaudio.functional.resample(
        torch.from_numpy(np.stack(waves[:2])), 44100, 16000
    )
    np.testing.assert_array_equal(np.stack(out[:2]), stack.numpy())
    for i in (2, 3):
        alone = torchaudio.functional.resample(
            torch.from_numpy(waves[i]), rates[i], 16000
        )
        np.testing.assert_array_equal(out[i], alone.numpy())
    assert all(w.dtype == np.float32 and w.flags.c_contiguous for w in out)


def test_a_torchaudio_that_cannot_load_says_what_to_install(monkeypatch):
    # what `import torchaudio.functional` raises when torchaudio's compiled
    # library does not load with this torch (an OSError in torchaudio 2.9+)
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)
    with pytest.raises(ImportError, match=r"does not load with torch .*torch>=2\.13"):
        resample(torch.zeros(8000), 8000, 16000)
    assert resample(torch.zeros(3), 16000, 16000).shape == (3,)  # no resampling


def test_probe_reads_headers_with_the_errors_of_load_audio(tmp_path):
    from skast._decode import probe

    good = write(tmp_path / "good.wav", np.zeros(400, np.float32), 16000)
    text = tmp_path / "text.wav"
    text.write_text("not audio")
    empty = write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    probe(good)
    probe(good.read_bytes())
    for bad in (tmp_path / "missing.wav", text, empty, folder):
        with pytest.raises(ValueError) as loaded:
            load_audio(bad, index=4)
        with pytest.raises(ValueError) as probed:
            probe(bad, index=4)
        assert str(probed.value) == str(loaded.value)


def test_undecodable_files_say_what_to_install(tmp_path):
    from skast._decode import _torchcodec

    text = tmp_path / "song.m4a"
    text.write_text("not audio either")
    decoder, why = _torchcodec()
    with pytest.raises(ValueError) as info:
        read(text)
    if decoder is None:
        assert why in str(info.value)
        assert "pip install 'skast[codecs]'" in str(info.value)
    else:
        assert "; torchcodec: " in str(info.value)


def ffmpeg_files(tmp_path, rate=22050):
    """Files FFmpeg writes in formats soundfile does not read: a 440 Hz tone."""
    import shutil
    import subprocess

    from skast._decode import _torchcodec

    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg program is not installed")
    if _torchcodec()[0] is None:
        pytest.skip(_torchcodec()[1])
    made = {}
    for name, args in {
        "tone.m4a": ["-c:a", "aac"],
        "tone.webm": ["-c:a", "libopus"],
        "tone.mp4": ["-c:a", "aac"],
        "tone.mkv": ["-c:a", "aac"],
    }.items():
        video = (
            ["-f", "lavfi", "-i", "color=size=32x32:rate=5"]
            if name.endswith((".mp4", ".mkv"))
            else []
        )
        out = tmp_path / name
        cmd = ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i"]
        cmd += [f"sine=frequency=440:sample_rate={rate}:duration=0.5", *video]
        cmd += [*args, "-ac", "2", "-shortest", str(out)]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            made[name] = out
    return made


def test_torchcodec_decodes_what_soundfile_does_not(tmp_path):
    from skast._decode import probe

    files = ffmpeg_files(tmp_path)
    assert len(files) == 4, sorted(files)  # this FFmpeg writes all four
    t = np.arange(22050 // 2) / 22050
    tone = 0.125 * np.sin(2 * np.pi * 440 * t)  # lavfi's sine: amplitude 1/8
    for name, path in files.items():
        with pytest.raises(sf.LibsndfileError):
            sf.info(path)  # soundfile alone cannot
        wave, rate = read(path)
        # opus decodes at 48 kHz; lossy codecs: close to the tone, not equal
        assert rate in (22050, 48000), name
        ref = (
            tone
            if rate == 22050
            else np.sin(2 * np.pi * 440 * np.arange(24000) / 48000) / 8
        )
        n = min(len(ref), len(wave)) - 2000  # codec delay and priming at the ends
        spectrum = np.abs(np.fft.rfft(wave[1000:n]))
        peak = np.argmax(spectrum) * rate / (n - 1000)
        assert abs(peak - 440) < 5, name
        probe(path)
        again, rate16k = load_audio(path, sample_rate=16000)
        assert rate16k == 16000
        assert len(again) == pytest.approx(len(wave) * 16000 / rate, abs=1)
