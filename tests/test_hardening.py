"""Hardening: every public entry point against bad and odd input.

One table of bad inputs (``BAD_X``) runs through every method that takes
``X``: each raises a clear error naming the offending clip (its index, or the
file's path), and afterwards the estimator and the user's arrays equal copies
taken before. Odd but valid input (integer PCM, 1-sample and 10-minute clips,
multichannel files, other sample rates) gets its documented behaviour. The
table in docs/user_guide/robustness.rst is written from these tests.

Already tested elsewhere, not repeated here: the input contract's own
functions (tests/test_audio.py), ``fit`` with NaN/None labels, one class or a
``y`` of the wrong length and ``score`` with unseen labels
(tests/test_classifier.py), interrupted downloads (tests/test_datasets.py).
Faults (out of memory, interruptions, checkpoints, the shared cache) are in
tests/test_hardening_faults.py.
"""

import copy
import re
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

from skast import ASTClassifier, ASTFeaturizer
from skast._audio import SampleTypeError
from skast.cli import main
from tests.conftest import FAST, TINY

SR = 16000
N = 3  # clips per X in the table
LABELS = np.array(["a", "b", "a"])


# ---------------------------------------------------------------- helpers


def same(a, b) -> bool:
    """Deep equality of estimator attributes (tensors, arrays, containers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.equal(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b))
        )
    return type(a) is type(b) and a == b


def snapshot(est) -> dict:
    """A copy of the estimator's state: the model as (object id, its tensors)."""
    snap = {}
    for name, value in est.__dict__.items():
        if isinstance(value, torch.nn.Module):
            tensors = {k: v.detach().clone() for k, v in value.state_dict().items()}
            snap[name] = ("module", id(value), tensors)
        else:
            snap[name] = copy.deepcopy(value)
    return snap


def assert_unchanged(est, snap) -> None:
    assert est.__dict__.keys() == snap.keys()
    for name, before in snap.items():
        now = est.__dict__[name]
        if isinstance(now, torch.nn.Module):
            assert before[:2] == ("module", id(now)), f"{name} was replaced"
            assert same(
                {k: v.detach() for k, v in now.state_dict().items()}, before[2]
            ), f"the weights of {name} changed"
        else:
            assert same(now, before), f"{name} changed"


def copies(X):
    """A deep copy of X, to compare the user's input against afterwards."""
    return copy.deepcopy(X)


def assert_same_input(X, X_copy) -> None:
    assert type(X) is type(X_copy)
    if isinstance(X, np.ndarray):
        assert X.dtype == X_copy.dtype and X.shape == X_copy.shape
        if X.dtype == object:
            for a, b in zip(X.ravel(), X_copy.ravel()):
                assert_same_input(a, b)
        else:
            assert_array_equal(X, X_copy)
            assert X.flags.writeable == X_copy.flags.writeable
    elif isinstance(X, (list, tuple)):
        assert len(X) == len(X_copy)
        for a, b in zip(X, X_copy):
            assert_same_input(a, b)
    else:
        assert X == X_copy or (X != X and X_copy != X_copy)


def clips(rng, n=N, seconds=0.3):
    return [
        (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        for _ in range(n)
    ]


def write(path, data, rate=SR, **kw):
    sf.write(path, data, rate, **kw)
    return path


@pytest.fixture(scope="module")
def good():
    return clips(np.random.default_rng(0))


@pytest.fixture(scope="module")
def featurizer(good):
    return ASTFeaturizer(model_config=FAST, device="cpu", normalize="fit").fit(good)


@pytest.fixture(scope="module")
def classifier(good):
    X = good + clips(np.random.default_rng(1))
    y = np.r_[LABELS, LABELS]
    return ASTClassifier(
        model_config=FAST, device="cpu", max_epochs=1, batch_size=4, random_state=0
    ).fit(X, y)


# ---------------------------------------------------------------- the table

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


@pytest.fixture(scope="module")
def files(tmp_path_factory, good):
    d = tmp_path_factory.mktemp("files")
    raw = write(d / "good.wav", good[0]).read_bytes()
    (d / "truncated.wav").write_bytes(raw[:30])  # cut inside the header
    (d / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    (d / "notes.ogg").write_text("these are not audio samples")
    write(d / "empty.wav", np.zeros(0, np.float32))
    write(d / "nan.wav", np.array([0.0, np.nan], np.float32), subtype="FLOAT")
    return d


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
    case, entry, featurizer, classifier, good, files
):
    make_X, error, pattern = BAD_X[case]
    X = make_X(good, files)
    y = LABELS[: len(X)]
    f, c = copy.deepcopy(featurizer), copy.deepcopy(classifier)
    f_snap, c_snap = snapshot(f), snapshot(c)
    X_copy, y_copy = copies(X), y.copy()
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
def test_failed_first_fit_leaves_an_unfitted_estimator(case, good, files):
    """Not half-fitted: a featurizer whose fit failed must not transform."""
    X = BAD_X[case][0](good, files)
    for est, args in [
        (ASTFeaturizer(model_config=FAST, device="cpu", normalize="fit"), ()),
        (ASTClassifier(model_config=FAST, device="cpu", max_epochs=1), (LABELS,)),
    ]:
        params = dict(est.__dict__)
        with pytest.raises(ValueError, match=BAD_X[case][2]):
            est.fit(X, *args)
        assert est.__dict__ == params  # no model_, device_, normalization_...
        with pytest.raises(NotFittedError):
            est.predict(good) if args else est.transform(good)


def test_preset_normalization_fit_does_not_open_files(files):
    """Documented: with a preset normalisation, fit opens no file, so an
    unreadable one is reported by transform."""
    X = [files / "good.wav", files / "missing.wav"]
    est = ASTFeaturizer(model_config=FAST, device="cpu").fit(X)
    with pytest.raises(ValueError, match=r"clip 1: cannot read .*missing\.wav"):
        est.transform(X)


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "call, y, error, pattern",
    [
        ("score", [None, "a", "b"], ValueError, r"missing labels.*at index 0"),
        ("score", np.array([0.0, 1.0, np.nan]), ValueError, r"missing.*index 2"),
        ("score", ["a", "b"], ValueError, r"X has 3 clips but y has 2 labels"),
        ("score", ["a", "b", "z"], ValueError, r"labels \['z'\] that the classi"),
        ("partial_fit", ["a", None, "b"], ValueError, r"missing.*at index 1"),
        ("partial_fit", ["a", "b"], ValueError, r"X has 3 clips but y has 2"),
        (
            "partial_fit",
            ["a", "b", "z"],
            ValueError,
            r"labels \['z'\] that are not in classes \['a', 'b'\]",
        ),
        ("partial_fit_one_class", ["a", "a", "a"], ValueError, r"at least 2 classes"),
        ("fit", [0.5, 1.5, 0.25], ValueError, r"Unknown label type: continuous"),
    ],
)
def test_bad_labels(call, y, error, pattern, classifier, good):
    """fit's other label checks are in test_classifier.py; a failed refit
    keeps the previous model."""
    y_copy = copy.deepcopy(y)
    if call == "partial_fit_one_class":  # a first call with one class
        est = ASTClassifier(model_config=FAST, device="cpu")
        params = dict(est.__dict__)
        with pytest.raises(error, match=pattern):
            est.partial_fit(good, y, classes=["a"])
        assert est.__dict__ == params
    else:
        est = copy.deepcopy(classifier)
        snap = snapshot(est)
        with pytest.raises(error, match=pattern):
            getattr(est, call)(good, y)
        assert_unchanged(est, snap)
    assert_same_input(y, y_copy)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 12),
    data=st.data(),
    missing=st.sampled_from([None, float("nan")]),
)
def test_a_missing_label_is_named_by_its_index(n, data, missing):
    bad = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    y = np.array(["dog", "cat"] * n, dtype=object)[:n]
    for i in bad:
        y[i] = missing
    X = [np.zeros(400, np.float32)] * n
    est = ASTClassifier(model_config=FAST, device="cpu")
    pattern = rf"at index {bad[0]} and {len(bad) - 1} other"
    with pytest.raises(ValueError, match=pattern):
        est.fit(X, y)
    assert not hasattr(est, "model_")


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
def test_pcm_types_through_the_estimators(dtype, scale, offset, featurizer, classifier):
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
    snap = snapshot(featurizer)
    out = featurizer.transform(X)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert_allclose(out, featurizer.transform(expected), atol=1e-6)
    as_list = [row for row in X]  # ragged-list form: the same
    assert_allclose(featurizer.transform(as_list), out, atol=1e-6)
    assert_allclose(
        classifier.predict_proba(X), classifier.predict_proba(expected), atol=1e-6
    )
    assert_unchanged(featurizer, snap)
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
def test_any_clips_embed_or_name_the_bad_one(lengths, dtype, poison, seed, featurizer):
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
    X_copy = copies(X)
    if bad is None:
        out = featurizer.transform(X)
        assert out.shape == (len(X), TINY["hidden_size"]) and np.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match=rf"^clip {bad}: .*NaN or infinite"):
            featurizer.transform(X)
    assert_same_input(X, X_copy)


# ---------------------------------------------------------------- lengths


def test_one_sample_clips_are_padded_to_one_frame(featurizer):
    """Documented: clips shorter than one 25 ms frame (400 samples) are
    zero-padded to it; a 1-sample clip embeds like that sample then zeros."""
    one = np.array([0.25], np.float32)
    padded = np.r_[one, np.zeros(399, np.float32)]
    out = featurizer.transform([one, padded])
    assert np.isfinite(out).all()
    assert_allclose(out[0], out[1], atol=1e-6)
    assert_allclose(featurizer.transform(one[None, :]), out[:1], atol=1e-6)


@pytest.mark.parametrize("kind", ["array", "file"])
def test_ten_minute_clip_in_bounded_memory(kind, featurizer, tmp_path):
    """Only the first max_length frames are computed (the rest is cut, as the
    reference does), and the clip is not copied more than about once: the
    peak of new numpy memory stays under twice the clip's float32 size."""
    n = 600 * SR
    rng = np.random.default_rng(4)
    wave = (0.1 * rng.standard_normal(n)).astype(np.float32)
    X = [wave] if kind == "array" else [write(tmp_path / "long.wav", wave)]
    # more samples than max_length=64 frames read (a file is 16-bit PCM)
    head = wave[: 2 * SR] if kind == "array" else sf.read(X[0], 2 * SR)[0]
    tracemalloc.start()
    try:
        out = featurizer.transform(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * wave.nbytes, f"peak {peak / 2**20:.0f} MiB"
    assert_allclose(out, featurizer.transform([head]), atol=1e-6)


# ---------------------------------------------------------------- channels, rates


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_files_are_mixed_to_mono(channels, tmp_path, featurizer):
    rng = np.random.default_rng(channels)
    data = (0.2 * rng.standard_normal((8000, channels))).astype(np.float32)
    path = write(tmp_path / f"{channels}ch.wav", data, subtype="FLOAT")
    mono = data.mean(axis=1, dtype=np.float32)
    assert_allclose(
        featurizer.transform([path]), featurizer.transform([mono]), atol=1e-6
    )
    out = tmp_path / "emb.npy"  # and through the command line
    ckpt = tmp_path / "ckpt"
    from skast._checkpoints import save_pretrained

    save_pretrained(featurizer.model_, ckpt)
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
def test_bad_sample_rate_parameter(rate, error, pattern, good):
    for est in (
        ASTFeaturizer(model_config=FAST, device="cpu", sample_rate=rate),
        ASTClassifier(model_config=FAST, device="cpu", sample_rate=rate),
    ):
        params = dict(est.__dict__)
        with pytest.raises(error, match=pattern):
            est.fit(good, LABELS)
        assert est.__dict__ == params


def test_bad_sample_rate_set_after_fit(featurizer, good):
    est = copy.deepcopy(featurizer).set_params(sample_rate=0)
    snap = snapshot(est)
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        est.transform(good)
    assert_unchanged(est, snap)


def test_sample_rate_is_the_rate_of_the_arrays(featurizer):
    """Documented: arrays are taken to be at sample_rate (a wrong one cannot
    be detected) and resampled; the same sound at 8 kHz embeds like at 16 kHz."""
    t = np.arange(8000) / 8000
    at_8k = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    at_16k = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / SR)).astype(np.float32)
    est = copy.deepcopy(featurizer).set_params(sample_rate=8000)
    a, b = est.transform([at_8k]), featurizer.transform([at_16k])
    assert np.abs(a - b).max() < 0.1 * np.abs(b).max()
    wrong = featurizer.transform([at_8k])  # 8 kHz data announced as 16 kHz
    assert np.abs(wrong - b).max() > np.abs(a - b).max()


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, classifier):
    import joblib

    d = tmp_path_factory.mktemp("cli")
    from skast._checkpoints import save_pretrained

    save_pretrained(classifier.model_, d / "ckpt")
    joblib.dump(classifier, d / "model.joblib")
    return d


@pytest.mark.parametrize(
    "name", ["truncated.wav", "corrupt.flac", "notes.ogg", "empty.wav", "nan.wav"]
)
@pytest.mark.parametrize("command", ["embed", "predict", "finetune"])
def test_cli_bad_audio_files_exit_1_naming_the_file(
    command, name, files, cli_model, tmp_path, capsys
):
    out = str(tmp_path / "out.csv")
    ckpt = ["--checkpoint", str(cli_model / "ckpt")]
    if command == "embed":
        argv = ["embed", str(files / "good.wav"), str(files / name), "-o", out, *ckpt]
    elif command == "predict":
        argv = ["predict", str(cli_model / "model.joblib"), str(files / name)]
    else:
        root = tmp_path / "data"
        for label in ("a", "b"):
            (root / label).mkdir(parents=True)
            (root / label / "good.wav").write_bytes((files / "good.wav").read_bytes())
        (root / "b" / name).write_bytes((files / name).read_bytes())
        argv = ["finetune", str(root), "-o", out, *ckpt, "--epochs", "1"]
    if command != "predict":  # predict runs where the model was fitted
        argv += ["--device", "cpu", "-q"]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("skast: error: clip ")
    assert re.search(re.escape(name), err)
    assert "Traceback" not in err


def test_cli_empty_folder_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "empty"), "-o", str(tmp_path / "x.npy")]) == 2
    assert "no audio files found in" in capsys.readouterr().err
