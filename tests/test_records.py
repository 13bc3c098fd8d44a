"""Clips as Hugging Face ``datasets`` gives them: audio dicts, decoders, columns."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from skast._audio import check_audio_input, to_waveform


def resample(wave, rate):
    """The reference: torchaudio's resample with default arguments."""
    return torchaudio.functional.resample(torch.as_tensor(wave), rate, 16000)


@pytest.fixture
def clips(rng):
    """Three mono float32 clips, each at its own rate."""
    return [
        ((0.3 * rng.standard_normal(rate // 10)).astype(np.float32), rate)
        for rate in (8000, 16000, 22050)
    ]


@pytest.fixture
def files(tmp_path, clips):
    paths = []
    for i, (wave, rate) in enumerate(clips):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], wave, rate, subtype="FLOAT")
    return paths


def test_audio_dicts_keep_their_own_rate(clips, files):
    with_path = [
        {"array": w, "sampling_rate": r, "path": p} for (w, r), p in zip(clips, files)
    ]
    without = [{"array": w.tolist(), "sampling_rate": float(r)} for w, r in clips]
    path_only = [{"path": p} for p in files]
    as_bytes = [{"bytes": open(p, "rb").read(), "path": "x.wav"} for p in files]
    for X in (with_path, without, path_only, as_bytes):
        audio = check_audio_input(X, probe_files=True)
        assert audio.kind == "records" and len(audio) == 3
        for i, (wave, rate) in enumerate(clips):
            # sample_rate is the rate of plain waveforms: records carry theirs
            out = audio.load(i, sample_rate=44100)
            torch.testing.assert_close(out, resample(wave, rate), rtol=0, atol=0)


def test_bad_audio_dicts_name_the_clip(clips, tmp_path):
    (w0, r0), (w1, _), _ = clips
    good = {"array": w0, "sampling_rate": r0}
    cases = [
        (
            {"audio": w1},
            ValueError,
            r"clip 1: an audio dict needs .*got keys \['audio'\]",
        ),
        (
            {"array": w1},
            ValueError,
            r"clip 1: .* with 'array' needs its 'sampling_rate'",
        ),
        ({"array": w1, "sampling_rate": 0}, ValueError, r"clip 1: sample_rate must be"),
        ({"path": 3}, TypeError, r"clip 1: an audio dict's 'path' must be a str"),
        ({"bytes": "abc"}, TypeError, r"clip 1: an audio dict's 'bytes' must be bytes"),
        (w1, TypeError, r"clip 1: expected an audio record like clip 0"),
    ]
    for item, error, match in cases:
        with pytest.raises(error, match=match):
            check_audio_input([good, item])
    with pytest.raises(ValueError, match="clip 1: the clip contains NaN"):
        check_audio_input([good, {"array": [0.0, np.nan], "sampling_rate": 8000}])
    with pytest.raises(ValueError, match="clip 1: a waveform must be 1-D"):
        check_audio_input([good, {"array": np.zeros((2, 5)), "sampling_rate": 8000}])
    # among waveforms, a dict is still not a clip; paths and records do not mix
    with pytest.raises(TypeError, match="clip 1: expected a 1-D waveform .*got dict"):
        check_audio_input([w0, good])
    with pytest.raises(ValueError, match="mixes file paths and audio records"):
        check_audio_input([good, "a.wav"])
    missing = {"path": str(tmp_path / "missing.wav")}
    audio = check_audio_input([good, missing])  # files: checked when probed
    for check in (audio.probe, lambda: audio.load(1)):
        with pytest.raises(
            ValueError, match=r"clip 1: cannot read audio file .*No such"
        ):
            check()


class Decoder:
    """What torchcodec's AudioDecoder gives: get_all_samples() -> samples."""

    def __init__(self, data, rate):
        self.data, self.sample_rate = data, rate

    def get_all_samples(self):
        return self


def test_decoder_objects_are_averaged_to_mono(clips):
    (wave, rate), _, _ = clips
    stereo = torch.from_numpy(np.stack([wave, -0.5 * wave]))
    X = [Decoder(stereo, rate), Decoder(stereo[:1], rate)]
    audio = check_audio_input(X)
    assert audio.kind == "records"
    expected = resample(torch.from_numpy(0.25 * wave), rate)
    torch.testing.assert_close(audio.load(0), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(audio.load(1), resample(wave, rate), rtol=0, atol=0)
    with pytest.raises(ValueError, match="clip 0: get_all_samples"):
        to_waveform(Decoder(torch.zeros(5), rate), index=0)

    class Broken:
        def get_all_samples(self):
            raise RuntimeError("no audio stream")

    audio = check_audio_input([Decoder(stereo, rate), Broken()])  # decodes nothing
    with pytest.raises(
        ValueError, match="clip 1: cannot decode the audio: no audio"
    ) as info:
        audio.load(1)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.fixture
def datasets():
    # an ImportError, not only a missing package: the pyarrow that datasets
    # imports refuses NumPy 1.x at import
    return pytest.importorskip("datasets", exc_type=ImportError)


def audio_column(datasets, files, **kwargs):
    return (
        datasets.Dataset.from_dict({"audio": files})
        .cast_column("audio", datasets.Audio(**kwargs))
        .__getitem__("audio")
    )


def test_an_undecoded_datasets_column(datasets, clips, files):
    column = audio_column(datasets, files, decode=False)
    audio = check_audio_input(column, probe_files=True)
    assert audio.kind == "records"
    for i, (wave, rate) in enumerate(clips):
        torch.testing.assert_close(audio.load(i), resample(wave, rate), rtol=0, atol=0)
    with pytest.raises(TypeError, match="pass its audio column"):
        check_audio_input(datasets.Dataset.from_dict({"audio": files}))


def test_a_decoded_datasets_column(datasets, clips, files):
    # datasets 4+ decodes through torchcodec; older releases give dicts
    column = audio_column(datasets, files)
    try:
        column[0]
    except ImportError as err:
        pytest.skip(f"this datasets needs torchcodec to decode: {err}")
    audio = check_audio_input(column)
    assert audio.kind == "records"
    for i, (wave, rate) in enumerate(clips):
        # FLOAT wavs decode exactly, by any decoder
        torch.testing.assert_close(audio.load(i), resample(wave, rate), rtol=0, atol=0)
    resampled = check_audio_input(audio_column(datasets, files, sampling_rate=16000))
    assert [len(resampled.load(i)) for i in range(3)] == [1600] * 3  # each 0.1 s long


def test_a_column_that_cannot_open_a_file_names_the_clip(datasets, files, tmp_path):
    column = audio_column(datasets, [*files, str(tmp_path / "missing.wav")])
    try:
        column[0]
    except ImportError as err:
        pytest.skip(f"this datasets needs torchcodec to decode: {err}")
    # datasets opens the file as the item is read: before any model work
    with pytest.raises(ValueError, match=r"^clip 3: cannot read the clip: .*missing"):
        check_audio_input(column)
    undecoded = audio_column(
        datasets, [*files, str(tmp_path / "missing.wav")], decode=False
    )
    audio = check_audio_input(undecoded)
    with pytest.raises(ValueError, match=r"^clip 3: cannot read audio file .*No such"):
        audio.probe()
