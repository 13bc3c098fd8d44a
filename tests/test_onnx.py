"""backend="onnxruntime": parity with PyTorch, int8, the export cache, errors,
persistence, and ``skast export --onnx`` run by onnxruntime alone.

Tolerances. ONNX Runtime computes the same float32 operations as PyTorch in
other orders (its own GEMM kernels, fused LayerNorm and attention). A dot
product of length ``K`` rounded in two orders differs by at most about
``K * eps`` times the sum of the magnitudes of its terms (eps = 2**-24, the
float32 unit roundoff); the encoder chains one such reduction per stage (the
patch projection and each block), and LayerNorm rescales each stage's output
to unit size. :func:`fp32_tolerance` is that bound, ``stages * K * eps`` of
the output's scale, with ``K`` the longest reduction; for the tests' models it
is under the 1e-4 the eager model is held to against transformers.
Probabilities move less than logits (a softmax or sigmoid is 1-Lipschitz), so
they are held to the logits' bound.

int8: cosine similarity >= 0.999 against the eager model's output is the
target of the quantised backend (a property of the quantisation, not a
rounding bound), checked on random and on trained weights, where the
accuracy must not move by more than one clip.
"""

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from scipy.special import softmax

import skast._onnx
from skast import ASTClassifier, ASTFeaturizer, load
from skast.cli import main
from skast.datasets import make_sounds
from tests._helpers import classifier, clips, featurizer
from tests.conftest import FAST

ort = pytest.importorskip("onnxruntime")

EPS32 = 2.0**-24


def fp32_tolerance(config, reference) -> float:
    """``stages * K * eps`` times the output's largest magnitude (see the
    module docstring)."""
    c = dict(FAST, **config)
    n_tokens = 2 + (c["max_length"] // c["time_stride"]) * (
        c["num_mel_bins"] // c["frequency_stride"]
    )
    longest = max(16 * 16, c["hidden_size"], c["intermediate_size"], n_tokens)
    stages = c["num_hidden_layers"] + 1
    return stages * longest * EPS32 * float(np.abs(reference).max())


def cosine(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    """$SKAST_ONNX_DIR for the module: a folder of its own."""
    folder = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKAST_ONNX_DIR", str(folder))
        yield folder


def exported(folder):
    """Each exported file under ``folder`` and its modification time."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*.onnx")
    }


@pytest.fixture(scope="module")
def sounds():
    X, y = make_sounds(16, n_classes=4, duration=0.4, random_state=0, return_X_y=True)
    X_test, y_test = make_sounds(
        8, n_classes=4, duration=0.4, random_state=1, return_X_y=True
    )
    return X, y, X_test, y_test


@pytest.fixture(scope="module")
def trained(sounds, onnx_dir):
    """A small classifier fine-tuned on the built-in sounds (4 classes)."""
    X, y, _, _ = sounds
    return classifier(
        max_epochs=12, normalize="fit", batch_size=16, learning_rate=1e-3
    ).fit(X, y)


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "settings", [{}, {"layer": 1, "pooling": "patch"}], ids=["pooled", "layer1"]
)
def test_featurizer_fp32_equals_eager(onnx_dir, settings):
    X = clips(5)
    est = featurizer(**settings).fit(X)
    eager = est.transform(X)
    got = est.set_params(backend="onnxruntime").transform(X)
    assert got.dtype == np.float32 and got.shape == eager.shape
    tol = fp32_tolerance({}, eager)
    assert tol < 1e-4
    np.testing.assert_allclose(got, eager, rtol=0, atol=tol)


def test_classifier_fp32_equals_eager(onnx_dir, trained, sounds):
    X_test = sounds[2]
    eager_logits = trained.decision_function(X_test)
    eager = trained.predict_proba(X_test)
    trained.set_params(backend="onnxruntime")
    try:
        logits = trained.decision_function(X_test)
        proba = trained.predict_proba(X_test)
        labels = trained.predict(X_test)
    finally:
        trained.set_params(backend="torch")
    tol = fp32_tolerance({}, eager_logits)
    np.testing.assert_allclose(logits, eager_logits, rtol=0, atol=tol)
    np.testing.assert_allclose(proba, eager, rtol=0, atol=tol)
    margin = np.sort(eager_logits, axis=1)
    clear = margin[:, -1] - margin[:, -2] > 2 * tol  # no near tie
    np.testing.assert_array_equal(
        labels[clear], trained.classes_[eager.argmax(1)][clear]
    )


def test_windows_go_through_onnxruntime(onnx_dir):
    X = [clips(1, seconds=1.0)[0], clips(1, seed=1)[0]]
    est = featurizer(window_hop=0.25).fit(X)
    eager, _ = est.transform_windows(X)
    got, starts = est.set_params(backend="onnxruntime").transform_windows(X)
    assert [len(s) for s in starts] == [len(e) for e in eager]
    for a, b in zip(got, eager):
        np.testing.assert_allclose(a, b, rtol=0, atol=fp32_tolerance({}, b))


# ---------------------------------------------------------------- int8


def test_int8_cosine_random_weights(onnx_dir):
    X = clips(6)
    est = featurizer(normalize="fit").fit(X)
    eager = est.transform(X)
    got = est.set_params(backend="onnxruntime", precision="int8").transform(X)
    assert cosine(got, eager).min() >= 0.999
    assert not np.array_equal(got, eager)  # int8 weights, not the float ones
    assert any(name.endswith("model.int8.onnx") for name in exported(onnx_dir))


def test_int8_on_trained_weights(onnx_dir, trained, sounds):
    _, _, X_test, y_test = sounds
    eager_score = trained.score(X_test, y_test)
    assert eager_score > 0.5  # it learned (chance: 0.25)
    eager = trained.predict_proba(X_test)
    int8 = pickle.loads(pickle.dumps(trained))
    int8.set_params(backend="onnxruntime", precision="int8")
    proba = int8.predict_proba(X_test)
    assert abs(int8.score(X_test, y_test) - eager_score) <= 1 / len(y_test)
    assert cosine(proba, eager).min() >= 0.999


# ---------------------------------------------------------------- the export cache


def test_exported_once_and_shared(onnx_dir):
    X = clips(3)
    first = featurizer(backend="onnxruntime").fit(X)
    out = first.transform(X)
    files = exported(onnx_dir)
    assert any(name.endswith("/model.onnx") for name in files)
    first.transform(X[:1])  # the same estimator: no new export
    # a second estimator of the same weights (same config, same seed) and a
    # pickled copy reuse the file; the session itself is not pickled
    second = featurizer(backend="onnxruntime").fit(X)
    np.testing.assert_array_equal(second.transform(X), out)
    copy = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(copy.transform(X), out)
    assert exported(onnx_dir) == files  # not one file written again
    assert not list(onnx_dir.rglob("*.tmp"))  # written atomically


def test_changed_weights_export_again(onnx_dir, trained, sounds):
    X, y, X_test, _ = sounds
    clf = pickle.loads(pickle.dumps(trained)).set_params(backend="onnxruntime")
    clf.predict_proba(X_test)
    before = exported(onnx_dir)
    clf.partial_fit(X, y)  # in-place updates of the weights
    proba = clf.predict_proba(X_test)
    after = exported(onnx_dir)
    assert len(after) == len(before) + 1  # a new folder, the old one kept
    assert all(after[name] == mtime for name, mtime in before.items())
    eager = clf.set_params(backend="torch").predict_proba(X_test)
    np.testing.assert_allclose(proba, eager, rtol=0, atol=fp32_tolerance({}, eager))


def test_a_failed_fusion_runs_the_standard_graph(tmp_path, monkeypatch):
    from onnxscript.rewriter import ort_fusions

    def broken(model, *args, **kwargs):
        raise RuntimeError("no rule for this graph")

    monkeypatch.setenv("SKAST_ONNX_DIR", str(tmp_path))
    monkeypatch.setattr(ort_fusions, "optimize_for_ort", broken)
    X = clips(2)
    est = featurizer(backend="onnxruntime").fit(X)
    with pytest.warns(RuntimeWarning, match="no rule for this graph"):
        got = est.transform(X)
    eager = est.set_params(backend="torch").transform(X)
    np.testing.assert_allclose(got, eager, rtol=0, atol=fp32_tolerance({}, eager))


def test_replaced_weights_export_again(onnx_dir):
    # new parameter tensors (version counters back at 0), not in-place writes
    X = clips(2)
    est = featurizer(backend="onnxruntime").fit(X)
    before = est.transform(X)
    gen = torch.Generator().manual_seed(1)
    state = {
        name: t + 0.1 * torch.randn(t.shape, generator=gen)
        if t.is_floating_point()
        else t
        for name, t in est.model_.state_dict().items()
    }
    est.model_.load_state_dict(state, assign=True)
    after = est.transform(X)
    eager = est.set_params(backend="torch").transform(X)
    assert np.abs(after - before).max() > 100 * fp32_tolerance({}, eager)
    np.testing.assert_allclose(after, eager, rtol=0, atol=fp32_tolerance({}, eager))


def test_save_and_load_keep_the_backend(onnx_dir, tmp_path):
    X = clips(3)
    est = featurizer(backend="onnxruntime", precision="int8").fit(X)
    out = est.transform(X)
    est.save(tmp_path / "saved")
    loaded = load(tmp_path / "saved")
    assert loaded.get_params()["backend"] == "onnxruntime"
    np.testing.assert_array_equal(loaded.transform(X), out)


def test_embedding_cache_keys_the_backend(onnx_dir, tmp_path):
    X = clips(2)
    est = featurizer(cache=tmp_path).fit(X)
    eager = est.transform(X)
    int8 = est.set_params(backend="onnxruntime", precision="int8").transform(X)
    assert not np.array_equal(int8, eager)  # not the cached eager rows
    np.testing.assert_array_equal(est.set_params(backend="torch").transform(X), eager)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("Est", [ASTFeaturizer, ASTClassifier])
def test_int8_needs_onnxruntime_backend(Est):
    est = Est(model_config=FAST, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="precision='int8' runs through ONNX Runtime"):
        est.fit(clips(2), *([["a", "b"]] if Est is ASTClassifier else []))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"backend": "tensorrt"}, "'backend' parameter"),
        ({"backend": "onnxruntime", "precision": "bfloat16"}, "float32 or int8"),
        ({"backend": "onnxruntime", "precision": "float16"}, "float32 or int8"),
        ({"precision": "int4"}, "'precision' parameter"),
    ],
)
def test_bad_backend_settings(params, match):
    with pytest.raises(ValueError, match=match):
        featurizer(**params).fit(clips(1))


def test_bad_settings_after_fit(onnx_dir):
    est = featurizer().fit(clips(1))
    with pytest.raises(ValueError, match="precision='int8' runs through"):
        est.set_params(precision="int8").transform(clips(1))
    with pytest.raises(ValueError, match="backend must be one of"):
        est.set_params(backend="tvm", precision="auto").transform(clips(1))


def test_missing_onnxruntime_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SKAST_ONNX_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    est = featurizer(backend="onnxruntime").fit(clips(1))
    with pytest.raises(ImportError, match=r'pip install "skast\[onnx\]"'):
        est.transform(clips(1))
    assert not exported(tmp_path)  # nothing exported before the error


# ---------------------------------------------------------------- skast export


def deployed_logits(directory, waves):
    """What a deployment without skast computes: torchaudio's kaldi fbank with
    the arguments of model.json, padding, normalisation, onnxruntime."""
    from torchaudio.compliance import kaldi

    info = json.loads((directory / "model.json").read_text())
    feats = info["features"]
    n, bins = feats["max_length"], feats["fbank"]["num_mel_bins"]
    mean, std = feats["normalization"]["mean"], feats["normalization"]["std"]
    batch = np.zeros((len(waves), n, bins), dtype=np.float32)
    for i, w in enumerate(waves):
        fb = kaldi.fbank(torch.as_tensor(w)[None], **feats["fbank"]).numpy()[:n]
        batch[i, : len(fb)] = fb
    batch = (batch - mean) / (2 * std)
    session = ort.InferenceSession(
        str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == (info["input"]["name"], info["output"]["name"])
    assert inp.shape[1:] == info["input"]["shape"][1:]
    return info, session.run(None, {inp.name: batch})[0]


def test_export_command_runs_without_skast(onnx_dir, trained, sounds, tmp_path):
    _, _, X_test, _ = sounds
    trained.save(tmp_path / "model")
    assert (
        main(["export", str(tmp_path / "model"), str(tmp_path / "out"), "--onnx"]) == 0
    )
    info, logits = deployed_logits(tmp_path / "out", X_test)
    assert (tmp_path / "out" / "model.onnx").stat().st_mode & 0o777 == 0o644
    if skast._onnx._DYNAMO:  # ONNX Runtime's fused attention, one per block
        import onnx

        graph = onnx.load(tmp_path / "out" / "model.onnx").graph
        ops = [(node.domain, node.op_type) for node in graph.node]
        n_blocks = trained.model_.config.num_hidden_layers
        assert ops.count(("com.microsoft", "MultiHeadAttention")) == n_blocks
        assert ("", "Softmax") not in ops
    assert info["classes"] == trained.classes_.tolist()
    assert info["output"]["activation"] == "softmax"
    assert info["precision"] == "float32"
    eager = trained.predict_proba(X_test)
    # the features differ from skast's by float32 rounding, too
    proba = softmax(logits, axis=1)
    np.testing.assert_allclose(proba, eager, rtol=0, atol=fp32_tolerance({}, logits))


def test_export_command_int8_and_joblib(onnx_dir, tmp_path):
    import joblib

    X = clips(3)
    est = featurizer(normalize="fit").fit(X)
    joblib.dump(est, tmp_path / "feat.joblib")
    args = ["export", str(tmp_path / "feat.joblib"), str(tmp_path / "out")]
    assert main([*args, "--onnx", "--int8"]) == 0
    info, emb = deployed_logits(tmp_path / "out", X)
    assert info["precision"] == "int8" and info["output"]["name"] == "embedding"
    assert info["features"]["normalization"]["mean"] == est.normalization_[0]
    assert cosine(emb, est.transform(X)).min() >= 0.999


def test_export_command_usage(tmp_path, capsys):
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "--onnx" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["export", str(tmp_path), str(tmp_path / "file"), "--onnx"]) == 2
    assert os.path.isfile(tmp_path / "file")
