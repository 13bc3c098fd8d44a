"""skast._base: what the estimators share.

- The ``normalize`` parameter's values (:func:`resolve_normalization`).
- Bad input through every public method that takes ``X``: one table of bad
  inputs (``BAD_X``) runs through each; each raises a clear error naming the
  offending clip (its index, or the file's path), and afterwards the
  estimator and the user's arrays equal copies taken before. A failed first
  fit leaves an unfitted estimator.
- Odd but valid input gets its documented behaviour: integer PCM, 1-sample
  and 10-minute clips, multichannel files, other sample rates, and the
  ``sample_rate`` parameter.

The tables in docs/user_guide/robustness.rst are written from these tests.
The input contract's own functions are tested in tests/test_audio.py, the
labels in tests/test_targets.py, the command line's bad files in
tests/test_cli.py.
"""

import copy
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from skast import ASTClassifier
from skast._audio import SampleTypeError
from skast._base import resolve_normalization
from skast._checkpoints import save_pretrained
from skast._recipes import NORM_STATS, SAMPLE_RATE
from skast.cli import main
from tests._helpers import (
    assert_same_input,
    assert_unchanged,
    classifier,
    featurizer,
    snapshot,
    write,
)
from tests.conftest import FAST, TINY

N = 3  # clips per X in the table
LABELS = np.array(["a", "b", "a"])


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


# ---------------------------------------------------------------- bad input

# name -> (X factory(good clips, tmp_path), error type, pattern naming the item)
BAD_X = {
    "nan": (
        lambda g, d: [g[0], g[1], np.r_[g[2][:10], np.nan, g[2][10:]]],
        ValueError,
        r"clip 2: the clip contains NaN or infinite",
    ),
    "inf in a 2-D array": (
        lambda g, d: np.stack([g[0], np.r_[np.inf, g[1][1:]], g[2]]),
        ValueError,
        r"clip 1: the clip contains NaN or infinite",
    ),
    "-inf float16": (
        lambda g, d: [g[0], np.array([0.0, -np.inf], np.float16), g[2]],
        ValueError,
        r"clip 1: .*infinite",
    ),
    "empty X": (lambda g, d: [], ValueError, r"X holds 0 clips"),
    "empty 2-D array": (
        lambda g, d: np.zeros((N, 0), np.float32),
        ValueError,
        r"clip 0: the clip is empty",
    ),
    "zero-length clip": (
        lambda g, d: [g[0], np.zeros(0, np.float32), g[2]],
        ValueError,
        r"clip 1: the clip is empty \(0 samples\)",
    ),
    "3-D array": (
        lambda g, d: np.zeros((N, 2, 800), np.float32),
        ValueError,
        r"X must be 2-D .*shape \(3, 2, 800\)",
    ),
    "2-D clip in a list": (
        lambda g, d: [g[0], np.zeros((800, 2), np.float32), g[2]],
        ValueError,
        r"clip 1: a waveform must be 1-D, got shape \(800, 2\)",
    ),
    "object array: waveform and path": (
        lambda g, d: np.array([g[0], "x.wav", g[2]], dtype=object),
        ValueError,
        r"mixes file paths and waveforms: .*clip 1 is a path",
    ),
    "object array: waveform and number": (
        lambda g, d: np.array([g[0], 0.5, g[2]], dtype=object),
        TypeError,
        r"clip 1: expected a 1-D waveform or an audio file path, got float",
    ),
    "object array: waveform and None": (
        lambda g, d: np.array([g[0], g[1], None], dtype=object),
        TypeError,
        r"clip 2: .*got NoneType",
    ),
    "bool samples": (
        lambda g, d: [g[0], np.ones(800, bool), g[2]],
        SampleTypeError,
        r"clip 1: .*real numbers.*bool",
    ),
    "complex samples": (
        lambda g, d: [g[0], g[1].astype(np.complex64), g[2]],
        SampleTypeError,
        r"clip 1: Complex data not supported",
    ),
    "int64 beyond 32-bit PCM": (
        lambda g, d: [g[0], np.full(800, 2**40), g[2]],
        ValueError,
        r"clip 1: int64 samples are read as 32-bit PCM",
    ),
    "missing file": (
        lambda g, d: [d / "good.wav", d / "missing.wav", d / "good.wav"],
        ValueError,
        r"clip 1: cannot read audio file '.*missing\.wav': .*No such file",
    ),
    "truncated file": (
        lambda g, d: [d / "good.wav", d / "good.wav", d / "truncated.wav"],
        ValueError,
        r"clip 2: cannot read audio file '.*truncated\.wav'",
    ),
    "corrupt file": (
        lambda g, d: [d / "good.wav", d / "corrupt.flac", d / "good.wav"],
        ValueError,
        r"clip 1: cannot read audio file '.*corrupt\.flac'",
    ),
    "text file with an audio extension": (
        lambda g, d: [d / "good.wav", d / "good.wav", str(d / "notes.ogg")],
        ValueError,
        r"clip 2: cannot read audio file '.*notes\.ogg'",
    ),
    "file with 0 frames": (
        lambda g, d: [d / "good.wav", d / "empty.wav", d / "good.wav"],
        ValueError,
        r"clip 1: the audio file '.*empty\.wav' is empty \(0 frames\)",
    ),
    "file of NaN": (
        lambda g, d: [d / "nan.wav", d / "good.wav", d / "good.wav"],
        ValueError,
        r"clip 0: the audio file '.*nan\.wav' contains NaN",
    ),
}


# entry point -> call(featurizer, classifier, X, y)
ENTRY_POINTS = {
    "ASTFeaturizer.fit": lambda f, c, X, y: f.fit(X),
    "ASTFeaturizer.fit_transform": lambda f, c, X, y: f.fit_transform(X),
    "ASTFeaturizer.transform": lambda f, c, X, y: f.transform(X),
    "ASTClassifier.fit": lambda f, c, X, y: c.fit(X, y),
    "ASTClassifier.partial_fit": lambda f, c, X, y: c.partial_fit(X, y),
    "ASTClassifier.predict": lambda f, c, X, y: c.predict(X),
    "ASTClassifier.predict_proba": lambda f, c, X, y: c.predict_proba(X),
    "ASTClassifier.predict_log_proba": lambda f, c, X, y: c.predict_log_proba(X),
    "ASTClassifier.decision_function": lambda f, c, X, y: c.decision_function(X),
    "ASTClassifier.score": lambda f, c, X, y: c.score(X, y),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", list(BAD_X))
def test_bad_input_names_the_item_and_changes_nothing(
    case, entry, fitted_featurizer, fitted_classifier, good_clips, audio_files
):
    make_X, error, pattern = BAD_X[case]
    X = make_X(good_clips, audio_files)
    y = LABELS[: len(X)]
    f, c = copy.deepcopy(fitted_featurizer), copy.deepcopy(fitted_classifier)
    f_snap, c_snap = snapshot(f), snapshot(c)
    X_copy, y_copy = copy.deepcopy(X), y.copy()
    with pytest.raises(error, match=pattern) as info:
        ENTRY_POINTS[entry](f, c, X, y)
    # an error of the input contract (or of the decoder it reads files with),
    # not one from deep inside torch or numpy
    assert info.traceback[-1].path.name in (
        "_audio.py",
        "_containers.py",
        "_samples.py",
        "_records.py",
        "_decode.py",
    )
    assert_unchanged(f, f_snap)  # refits that fail leave the old model
    assert_unchanged(c, c_snap)
    assert_same_input(X, X_copy)
    assert_array_equal(y, y_copy)


@pytest.mark.parametrize("case", ["nan", "missing file", "corrupt file"])
def test_failed_first_fit_leaves_an_unfitted_estimator(case, good_clips, audio_files):
    """Not half-fitted: a featurizer whose fit failed must not transform."""
    X = BAD_X[case][0](good_clips, audio_files)
    for est, args in [
        (featurizer(normalize="fit"), ()),
        (ASTClassifier(model_config=FAST, device="cpu", max_epochs=1), (LABELS,)),
    ]:
        params = dict(est.__dict__)
        with pytest.raises(ValueError, match=BAD_X[case][2]):
            est.fit(X, *args)
        assert est.__dict__ == params  # no model_, device_, normalization_...
        with pytest.raises(NotFittedError):
            est.predict(good_clips) if args else est.transform(good_clips)


@pytest.mark.parametrize("bad", ["missing.wav", "notes.ogg", "truncated.wav"])
@pytest.mark.parametrize("method", ["fit", "fit_transform", "classifier"])
def test_fit_checks_every_file_before_model_work(method, bad, audio_files):
    """fit reads each file's header first (a probe, not a decode), so a file
    that is missing or not audio fails there, with transform's error."""
    X = [audio_files / "good.wav", audio_files / bad]
    fitted = featurizer().fit(X[:1])
    with pytest.raises(ValueError) as at_transform:
        fitted.transform(X)
    passes = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: passes.append(type(module).__name__)
    )
    try:
        with pytest.raises(ValueError) as at_fit:
            if method == "classifier":
                classifier().fit(X, ["a", "b"])
            else:
                getattr(featurizer(), method)(X)
    finally:
        hook.remove()
    assert str(at_fit.value) == str(at_transform.value)
    assert str(at_fit.value).startswith("clip 1: ")
    assert passes == []  # no model work


# ---------------------------------------------------------------- sample types


@pytest.mark.parametrize(
    "dtype, scale, offset",
    [
        (np.int8, 2**7, 0),
        (np.uint8, 2**7, 2**7),
        (np.int16, 2**15, 0),
        (np.int32, 2**31, 0),
        (np.float16, 1, 0),
        (np.float64, 1, 0),
    ],
)
def test_pcm_types_through_the_estimators(
    dtype, scale, offset, fitted_featurizer, fitted_classifier
):
    """Integer PCM is scaled to [-1, 1]; float16/64 are cast, not rescaled."""
    rng = np.random.default_rng(3)
    floats = np.clip(0.3 * rng.standard_normal((2, 4000)), -1, 127 / 128)
    if np.dtype(dtype).kind == "f":
        X = floats.astype(dtype)
        expected = X.astype(np.float32)
    else:
        X = (np.round(floats * scale) + offset).astype(dtype)
        expected = ((X.astype(np.float64) - offset) / scale).astype(np.float32)
    X_copy = X.copy()
    snap = snapshot(fitted_featurizer)
    out = fitted_featurizer.transform(X)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert_allclose(out, fitted_featurizer.transform(expected), atol=1e-6)
    as_list = [row for row in X]  # ragged-list form: the same
    assert_allclose(fitted_featurizer.transform(as_list), out, atol=1e-6)
    assert_allclose(
        fitted_classifier.predict_proba(X),
        fitted_classifier.predict_proba(expected),
        atol=1e-6,
    )
    assert_unchanged(fitted_featurizer, snap)
    assert_array_equal(X, X_copy)


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=4),
    dtype=st.sampled_from(["int8", "uint8", "int16", "int32", "float16", "float64"]),
    poison=st.one_of(
        st.none(),
        st.tuples(st.integers(0, 3), st.floats(0, 1), st.sampled_from(["nan", "inf"])),
    ),
    seed=st.integers(0, 2**16),
)
def test_any_clips_embed_or_name_the_bad_one(
    lengths, dtype, poison, seed, fitted_featurizer
):
    """Clips of any length (from 1 sample) and PCM type embed to finite
    vectors; a NaN or inf anywhere is reported with its clip's index. The
    input is never modified."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    X = []
    for n in lengths:
        if info is None:
            X.append((0.5 * rng.standard_normal(n)).astype(dtype))
        else:
            X.append(rng.integers(info.min, info.max, n, endpoint=True, dtype=dtype))
    bad = None
    if poison is not None and info is None:
        i, where, value = poison
        bad = i % len(X)
        X[bad][int(where * (len(X[bad]) - 1))] = float(value)
    X_copy = copy.deepcopy(X)
    if bad is None:
        out = fitted_featurizer.transform(X)
        assert out.shape == (len(X), TINY["hidden_size"]) and np.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match=rf"^clip {bad}: .*NaN or infinite"):
            fitted_featurizer.transform(X)
    assert_same_input(X, X_copy)


# ---------------------------------------------------------------- lengths


def test_one_sample_clips_are_padded_to_one_frame(fitted_featurizer):
    """Documented: clips shorter than one 25 ms frame (400 samples) are
    zero-padded to it; a 1-sample clip embeds like that sample then zeros."""
    one = np.array([0.25], np.float32)
    padded = np.r_[one, np.zeros(399, np.float32)]
    out = fitted_featurizer.transform([one, padded])
    assert np.isfinite(out).all()
    assert_allclose(out[0], out[1], atol=1e-6)
    assert_allclose(fitted_featurizer.transform(one[None, :]), out[:1], atol=1e-6)


@pytest.mark.parametrize("kind", ["array", "file"])
def test_ten_minute_clip_in_bounded_memory(kind, fitted_featurizer, tmp_path):
    """Only the first max_length frames are computed (the rest is cut, as the
    reference does), and the clip is not copied more than about once: the
    peak of new numpy memory stays under twice the clip's float32 size."""
    n = 600 * SAMPLE_RATE
    rng = np.random.default_rng(4)
    wave = (0.1 * rng.standard_normal(n)).astype(np.float32)
    X = [wave] if kind == "array" else [write(tmp_path / "long.wav", wave)]
    # more samples than max_length=64 frames read (a file is 16-bit PCM)
    two_seconds = 2 * SAMPLE_RATE
    head = wave[:two_seconds] if kind == "array" else sf.read(X[0], two_seconds)[0]
    tracemalloc.start()
    try:
        out = fitted_featurizer.transform(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * wave.nbytes, f"peak {peak / 2**20:.0f} MiB"
    assert_allclose(out, fitted_featurizer.transform([head]), atol=1e-6)


# ---------------------------------------------------------------- channels, rates


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_files_are_mixed_to_mono(channels, tmp_path, fitted_featurizer):
    rng = np.random.default_rng(channels)
    data = (0.2 * rng.standard_normal((8000, channels))).astype(np.float32)
    path = write(tmp_path / f"{channels}ch.wav", data, subtype="FLOAT")
    mono = data.mean(axis=1, dtype=np.float32)
    assert_allclose(
        fitted_featurizer.transform([path]),
        fitted_featurizer.transform([mono]),
        atol=1e-6,
    )
    out = tmp_path / "emb.npy"  # and through the command line
    ckpt = tmp_path / "ckpt"
    save_pretrained(fitted_featurizer.model_, ckpt)
    args = ["--checkpoint", str(ckpt), "--device", "cpu", "-q"]
    assert main(["embed", str(path), "-o", str(out), *args]) == 0
    assert np.load(out).shape == (1, TINY["hidden_size"])


@pytest.mark.parametrize(
    "rate, error, pattern",
    [
        (0, InvalidParameterError, "'sample_rate' parameter .* Got 0 instead"),
        (-16000, InvalidParameterError, "'sample_rate' parameter"),
        (1.5, InvalidParameterError, "'sample_rate' parameter"),
        ("16k", InvalidParameterError, "'sample_rate' parameter"),
        (None, InvalidParameterError, "'sample_rate' parameter"),
        (True, TypeError, "sample_rate must be an integer, got True"),
    ],
)
def test_bad_sample_rate_parameter(rate, error, pattern, good_clips):
    for est in (
        featurizer(sample_rate=rate),
        ASTClassifier(model_config=FAST, device="cpu", sample_rate=rate),
    ):
        params = dict(est.__dict__)
        with pytest.raises(error, match=pattern):
            est.fit(good_clips, LABELS)
        assert est.__dict__ == params


def test_bad_sample_rate_set_after_fit(fitted_featurizer, good_clips):
    est = copy.deepcopy(fitted_featurizer).set_params(sample_rate=0)
    snap = snapshot(est)
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        est.transform(good_clips)
    assert_unchanged(est, snap)


def test_sample_rate_is_the_rate_of_the_arrays(fitted_featurizer):
    """Documented: arrays are taken to be at sample_rate (a wrong one cannot
    be detected) and resampled; the same sound at 8 kHz embeds like at 16 kHz."""
    t = np.arange(8000) / 8000
    at_8k = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    at_16k = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / SAMPLE_RATE)).astype(
        np.float32
    )
    est = copy.deepcopy(fitted_featurizer).set_params(sample_rate=8000)
    a, b = est.transform([at_8k]), fitted_featurizer.transform([at_16k])
    assert np.abs(a - b).max() < 0.1 * np.abs(b).max()
    wrong = fitted_featurizer.transform([at_8k])  # 8 kHz data announced as 16 kHz
    assert np.abs(wrong - b).max() > np.abs(a - b).max()
