"""est.save(directory) / skast.load(directory): a format that runs no code.

Round trips of each estimator give bit-identical outputs on the CPU; every
kind of tampering is refused with a ValueError naming the file and the key;
payloads that would create a file if they ran never do.
"""

import json
import pathlib
import pickle
import shutil

import joblib
import numpy as np
import pytest
import soundfile as sf
import torch
from numpy.testing import assert_array_equal
from safetensors.torch import load_file, save_file
from sklearn.exceptions import NotFittedError

import skast
from skast import ASTClassifier, ASTFeaturizer
from skast.cli import main
from tests.conftest import SHORT

SR = 16000


def clips(n=8, seed=0):
    """Tones of two pitches (0.3 s), a little noise: something to learn."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.3 * SR)) / SR
    freqs = [400 if i % 2 else 2500 for i in range(n)]
    return np.stack(
        [np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(len(t)) for f in freqs]
    ).astype(np.float32)


X = clips()
Y_STR = np.array(["low", "high", "mid", "low", "high", "mid", "low", "high"])


def classifier(**kw):
    params = dict(
        model_config=SHORT,
        device="cpu",
        max_epochs=2,
        learning_rate=1e-3,
        batch_size=4,
        random_state=0,
    )
    return ASTClassifier(**{**params, **kw})


CASES = {
    "featurizer": lambda: ASTFeaturizer(model_config=SHORT, device="cpu").fit(X),
    "featurizer-layer-pooling": lambda: ASTFeaturizer(
        model_config=SHORT, device="cpu", layer=1, pooling="patch", normalize="fit"
    ).fit(X),
    "string-labels": lambda: classifier().fit(X, Y_STR),
    "integer-labels": lambda: classifier(class_weight={0: 1.0, 7: 2.0}).fit(
        X, [0, 7, 3, 0, 7, 3, 0, 7]
    ),
    "float-labels": lambda: classifier().fit(
        X, [0.0, 2.0, 1.0, 0.0, 2.0, 1.0, 0.0, 2.0]
    ),
    "binary": lambda: classifier(betas=[0.9, 0.99]).fit(X, [True, False] * 4),
    "multi-label": lambda: classifier().fit(
        X, np.eye(8, 3, dtype=np.int32)[[0, 1] * 4]
    ),
    "normalize-fit": lambda: classifier(normalize="fit").fit(X, Y_STR),
    "early-stopping": lambda: classifier(
        early_stopping=True, validation_fraction=0.5, n_iter_no_change=1, max_epochs=4
    ).fit(X, [0, 1] * 4),
    "object-labels": lambda: classifier().fit(X, np.array(Y_STR, dtype=object)),
}


def outputs(est):
    if isinstance(est, ASTFeaturizer):
        return [est.transform(X)]
    return [est.decision_function(X), est.predict_proba(X), est.predict(X)]


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_exact(case, tmp_path):
    est = CASES[case]()
    est.save(tmp_path / "model")
    loaded = skast.load(tmp_path / "model")
    assert type(loaded) is type(est)
    for got, ref in zip(outputs(loaded), outputs(est)):
        assert got.dtype == ref.dtype
        assert_array_equal(got, ref)  # bit-identical on the same device
    assert loaded.get_params() == est.get_params()
    assert {k: type(v) for k, v in loaded.get_params().items()} == {
        k: type(v) for k, v in est.get_params().items()
    }
    assert loaded.normalization_ == est.normalization_
    assert loaded.model_.config == est.model_.config
    assert not loaded.model_.training
    if isinstance(est, ASTClassifier):
        assert loaded.classes_.dtype == est.classes_.dtype
        assert_array_equal(loaded.classes_, est.classes_)
        assert loaded.history_ == est.history_
        assert loaded.recipe_params_ == est.recipe_params_
        for name in ("n_iter_", "loss_curve_", "validation_scores_"):
            assert getattr(loaded, name) == getattr(est, name)
        assert loaded.best_validation_score_ == est.best_validation_score_
        assert loaded.score(X, loaded.predict(X)) == 1.0


def test_from_a_checkpoint_needs_the_checkpoint_no_more(checkpoint, tmp_path):
    clf = classifier(model_config=None, checkpoint=checkpoint).fit(X, Y_STR)
    feat = ASTFeaturizer(checkpoint, device="cpu", max_length=64).fit(X)
    clf.save(tmp_path / "clf")
    feat.save(tmp_path / "feat")
    shutil.rmtree(checkpoint)
    loaded_clf, loaded_feat = (
        skast.load(tmp_path / "clf"),
        skast.load(tmp_path / "feat"),
    )
    assert loaded_clf.checkpoint == checkpoint  # a Path, as it was given
    assert_array_equal(loaded_clf.predict_proba(X), clf.predict_proba(X))
    assert_array_equal(loaded_feat.transform(X), feat.transform(X))
    assert loaded_feat.model_.config.max_length == 64


@pytest.mark.parametrize("multilabel", [False, True])
def test_from_pretrained_round_trip(hf_tiny_dir, tmp_path, multilabel):
    transformers = pytest.importorskip("transformers")
    source = tmp_path / "hf"
    shutil.copytree(hf_tiny_dir, source)
    transformers.ASTFeatureExtractor(max_length=64, mean=-3.0, std=4.0).save_pretrained(
        source
    )
    est = ASTClassifier.from_pretrained(source, multilabel=multilabel, device="cpu")
    est.save(tmp_path / "model")
    shutil.rmtree(source)
    loaded = skast.load(tmp_path / "model")
    for got, ref in zip(outputs(loaded), outputs(est)):
        assert got.dtype == ref.dtype
        assert_array_equal(got, ref)
    assert loaded.get_params() == est.get_params()
    assert loaded.normalize == loaded.normalization_ == (-3.0, 4.0)
    assert loaded.classes_.dtype == est.classes_.dtype
    assert_array_equal(loaded.classes_, est.classes_)
    assert (loaded.n_iter_, loaded.history_) == (0, [])
    assert loaded.predict(X).ndim == (2 if multilabel else 1)
    assert loaded.model_.config == est.model_.config


def test_early_stopping_keeps_its_record(tmp_path):
    est = CASES["early-stopping"]()
    assert est.validation_scores_ is not None
    est.save(tmp_path)
    loaded = skast.load(tmp_path)
    assert loaded.validation_scores_ == est.validation_scores_
    assert [h["valid_score"] for h in loaded.history_] == est.validation_scores_


def test_windowed_round_trip_is_exact(tmp_path):
    long = np.concatenate([X, X], axis=1)  # 0.6 s: 58 frames, 3 windows of 32
    clf = classifier(window_hop=0.15, window_aggregation="max").fit(long, Y_STR)
    feat = ASTFeaturizer(model_config=SHORT, device="cpu", window_hop=0.2).fit(long)
    for est, name in ((clf, "clf"), (feat, "feat")):
        est.save(tmp_path / name)
        loaded = skast.load(tmp_path / name)
        assert loaded.get_params() == est.get_params()
        if est is clf:
            got, ref = (
                loaded.predict_proba_windows(long),
                clf.predict_proba_windows(long),
            )
            assert_array_equal(loaded.predict_proba(long), clf.predict_proba(long))
        else:
            got, ref = loaded.transform_windows(long), feat.transform_windows(long)
            assert_array_equal(loaded.transform(long), feat.transform(long))
        assert len(ref[0][0]) == 3
        for a, b in zip(got[0] + got[1], ref[0] + ref[1]):
            assert_array_equal(a, b)


def test_values_keep_their_types(tmp_path):
    rs = np.random.RandomState(5)
    est = classifier(random_state=rs, device=torch.device("cpu"), betas=(0.9, 0.99))
    est.set_params(checkpoint=None).fit(X, Y_STR)
    est.save(tmp_path)
    loaded = skast.load(tmp_path)
    assert loaded.betas == (0.9, 0.99) and isinstance(loaded.betas, tuple)
    assert loaded.device == torch.device("cpu")
    assert isinstance(loaded.random_state, np.random.RandomState)
    assert loaded.random_state.randint(1 << 30) == rs.randint(1 << 30)
    assert loaded.classes_.dtype == np.dtype("<U4")
    manifest = json.loads((tmp_path / "skast.json").read_text())
    assert manifest["fitted"]["classes_"] == {
        "type": "ndarray",
        "dtype": "<U4",
        "shape": [3],
        "data": ["high", "low", "mid"],
    }


def test_memory_cache_is_saved_as_its_location(tmp_path):
    memory = joblib.Memory(tmp_path / "mem", verbose=0)
    est = ASTFeaturizer(model_config=SHORT, device="cpu", cache=memory).fit(X)
    ref = est.transform(X)
    est.save(tmp_path / "model")
    loaded = skast.load(tmp_path / "model")
    assert loaded.cache == str(tmp_path / "mem")
    assert_array_equal(loaded.transform(X), ref)  # read from the same cache
    path_cache = ASTFeaturizer(model_config=SHORT, device="cpu", cache=tmp_path / "c")
    path_cache.fit(X).save(tmp_path / "model2")
    assert skast.load(tmp_path / "model2").cache == tmp_path / "c"


def test_partial_fit_after_loading_starts_a_new_optimizer(tmp_path):
    est = classifier(max_epochs=1).partial_fit(X, Y_STR, classes=np.unique(Y_STR))
    est.save(tmp_path)
    loaded = skast.load(tmp_path)
    assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    loaded.partial_fit(X, Y_STR)  # goes on from the weights, a new Adam
    assert loaded.n_iter_ == 2 and len(loaded.history_) == 2


def test_set_output_is_kept(tmp_path):
    pd = pytest.importorskip("pandas")
    est = CASES["featurizer"]().set_output(transform="pandas")
    est.save(tmp_path)
    out = skast.load(tmp_path).transform(X)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_frame_equal(out, est.transform(X))


def test_unfitted_is_refused(tmp_path):
    with pytest.raises(NotFittedError):
        ASTFeaturizer().save(tmp_path)
    assert not (tmp_path / "skast.json").exists()


def test_loads_on_the_cpu_where_the_device_is_missing(tmp_path, monkeypatch):
    est = CASES["string-labels"]()
    ref = est.predict_proba(X)
    est.device_ = "cuda:0"  # as if fitted on a GPU (the weights are saved from the CPU)
    try:
        est.save(tmp_path)
    finally:
        est.device_ = "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="'cuda:0', which is not available"):
        loaded = skast.load(tmp_path)
    assert loaded.device_ == "cpu"
    assert next(loaded.model_.parameters()).device.type == "cpu"
    assert_array_equal(loaded.predict_proba(X), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["auto", "float32"])
def test_cuda_round_trip(tmp_path, monkeypatch, precision):
    est = classifier(device="cuda", precision=precision).fit(X, Y_STR)
    feat = ASTFeaturizer(model_config=SHORT, device="cuda", precision=precision)
    feat.fit(X)
    est.save(tmp_path / "clf")
    feat.save(tmp_path / "feat")
    loaded, loaded_feat = skast.load(tmp_path / "clf"), skast.load(tmp_path / "feat")
    assert loaded.device_ == est.device_ and loaded._autocast == est._autocast
    assert next(loaded.model_.parameters()).is_cuda
    assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    assert_array_equal(loaded_feat.transform(X), feat.transform(X))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="not available"):
        on_cpu = skast.load(tmp_path / "clf")
    assert on_cpu.device_ == "cpu"
    if precision == "float32":  # float32 on both: the kernels' rounding differs
        np.testing.assert_allclose(
            on_cpu.predict_proba(X), est.predict_proba(X), atol=1e-4
        )


# ---------------------------------------------------------------- tampering


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    CASES["string-labels"]().save(path)
    return path


@pytest.fixture
def copy(saved, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(saved, path)
    return path


def edit(path, change):
    manifest = json.loads((path / "skast.json").read_text())
    change(manifest)
    (path / "skast.json").write_text(json.dumps(manifest))


def refused(path, *patterns):
    with pytest.raises(ValueError) as info:
        skast.load(path)
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_the_copy_loads(copy):
    assert skast.load(copy).predict(X).shape == (8,)


def test_newer_format_version_is_refused(copy):
    edit(copy, lambda m: m.update(format_version=2))
    refused(copy, "skast.json", "format_version", "newer", "upgrade skast")


@pytest.mark.parametrize(
    "section, key",
    [(None, "extra"), ("params", "surprise"), ("fitted", "_hidden_state")],
)
def test_unknown_keys_are_refused(copy, section, key):
    def change(m):
        (m if section is None else m[section])[key] = {"type": "none"}

    edit(copy, change)
    refused(
        copy,
        "skast.json",
        key if section is None else f"{section}.{key}",
        "unknown key",
    )


def test_missing_key_is_refused(copy):
    edit(copy, lambda m: m["fitted"].pop("classes_"))
    refused(copy, "skast.json", "fitted.classes_", "missing")


def test_a_parameter_the_file_predates_takes_its_default(copy):
    """A file written before a parameter existed (here: without ``patchout``
    and ``batch_size``) loads with the parameter at its default."""
    reference = skast.load(copy)
    edit(copy, lambda m: [m["params"].pop(k) for k in ("patchout", "batch_size")])
    loaded = skast.load(copy)
    defaults = type(loaded)().get_params()
    assert loaded.patchout is None and loaded.batch_size == defaults["batch_size"]
    assert_array_equal(loaded.predict_proba(X), reference.predict_proba(X))


def test_a_pickle_that_predates_a_parameter_takes_its_default():
    est = CASES["string-labels"]()
    state = est.__getstate__()
    del state["patchout"], state["max_epochs"]  # as an earlier version wrote
    clone = type(est).__new__(type(est))
    clone.__setstate__(state)
    default = type(est)().get_params()["max_epochs"]
    assert clone.patchout is None and clone.get_params()["max_epochs"] == default
    assert_array_equal(clone.predict_proba(X), est.predict_proba(X))


@pytest.mark.parametrize(
    "key, change",
    [
        (
            "params.batch_size",
            lambda m: m["params"].update(batch_size={"type": "str", "value": "16"}),
        ),
        ("params.pooling", lambda m: None),
        ("params.max_epochs", lambda m: m["params"]["max_epochs"].update(value=0)),
        (
            "params.betas",
            lambda m: m["params"].update(betas={"type": "tuple", "value": 1}),
        ),
        (
            "fitted.classes_",
            lambda m: m["fitted"]["classes_"].update(shape=[2], data=["a", "b"]),
        ),
        ("fitted.classes_", lambda m: m["fitted"]["classes_"].update(dtype="<M8[ns]")),
        (
            "fitted._multilabel",
            lambda m: m["fitted"].update(_multilabel={"type": "int", "value": 0}),
        ),
        (
            "fitted.normalization_",
            lambda m: m["fitted"].update(normalization_={"type": "list", "items": []}),
        ),
        (
            "fitted.history_",
            lambda m: m["fitted"].update(
                history_={"type": "list", "items": [{"type": "int", "value": 1}]}
            ),
        ),
        (
            "fitted.recipe_params_",
            lambda m: m["fitted"].update(recipe_params_={"type": "dict", "items": []}),
        ),
        (
            "model_config.hidden_size",
            lambda m: m["model_config"].update(hidden_size=32.0),
        ),
        ("model_config.qkv", lambda m: m["model_config"].update(qkv=True)),
        ("estimator", lambda m: m.update(estimator="os.system")),
        ("format", lambda m: m.update(format="pickle")),
    ],
)
def test_wrong_types_are_refused(copy, key, change):
    if key == "params.pooling":  # a parameter of the featurizer, not of the classifier
        change = lambda m: m["params"].update(pooling={"type": "str", "value": "mean"})  # noqa: E731
    edit(copy, change)
    refused(copy, "skast.json", key)


def test_symlinked_files_are_refused(copy, tmp_path):
    for name in ("skast.json", "model.safetensors"):
        target = tmp_path / f"elsewhere-{name}"
        shutil.move(copy / name, target)
        (copy / name).symlink_to(target)
        refused(copy, name, "symlink")
        (copy / name).unlink()
        shutil.move(target, copy / name)
    skast.load(copy)


@pytest.mark.parametrize(
    "name", ["../model.safetensors", "..", "sub/model.safetensors", "/etc/passwd", ""]
)
def test_paths_in_names_are_refused(copy, tmp_path, name):
    shutil.copy(copy / "model.safetensors", tmp_path / "model.safetensors")
    edit(copy, lambda m: m.update(weights=name))
    refused(copy, "skast.json", "weights", "not a plain file name")


def rewrite_weights(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors")


def test_weights_of_the_wrong_shape_are_refused(copy):
    rewrite_weights(copy, lambda t: t.update({"head.1.weight": torch.zeros(4, 32)}))
    refused(copy, "model.safetensors", "head.1.weight", "shape (4, 32)", "(3, 32)")


def test_weights_of_the_wrong_dtype_are_refused(copy):
    rewrite_weights(copy, lambda t: t.update({"norm.bias": t["norm.bias"].double()}))
    refused(copy, "model.safetensors", "norm.bias", "torch.float64")


def test_missing_and_extra_weights_are_refused(copy):
    rewrite_weights(copy, lambda t: t.pop("blocks.1.mlp.fc2.bias"))
    refused(copy, "model.safetensors", "blocks.1.mlp.fc2.bias", "missing")
    rewrite_weights(
        copy,
        lambda t: t.update(
            {"blocks.1.mlp.fc2.bias": torch.zeros(32), "x": torch.ones(1)}
        ),
    )
    refused(copy, "model.safetensors", "x", "not a weight of the model")
    (copy / "model.safetensors").unlink()
    refused(copy, "model.safetensors", "missing")


def test_config_disagreeing_with_the_weights_is_refused(copy):
    edit(copy, lambda m: m["model_config"].update(intermediate_size=128))
    refused(copy, "model.safetensors", "fc1.weight")


# ---------------------------------------------------------------- payloads


class _Touch:
    """Unpickling it creates ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_the_payload_is_live(tmp_path):
    """The payloads below would create their file if unpickled."""
    pickle.loads(pickle.dumps(_Touch(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


def test_a_pickle_as_the_weights_never_runs(copy, tmp_path):
    marker = tmp_path / "pwned"
    (copy / "model.safetensors").write_bytes(pickle.dumps(_Touch(marker)))
    refused(copy, "model.safetensors", "not a readable safetensors file")
    torch.save({"x": _Touch(marker)}, copy / "model.safetensors")
    refused(copy, "model.safetensors", "not a readable safetensors file")
    assert not marker.exists()


def test_a_pickle_as_the_manifest_never_runs(copy, tmp_path):
    marker = tmp_path / "pwned"
    (copy / "skast.json").write_bytes(pickle.dumps(_Touch(marker)))
    refused(copy, "skast.json", "not a skast manifest")
    assert not marker.exists()


@pytest.mark.parametrize(
    "where, payload",
    [
        (
            "params.checkpoint",
            {
                "py/reduce": [
                    {"py/function": "pathlib.Path.touch"},
                    {"py/tuple": ["MARKER"]},
                ]
            },
        ),
        ("params.checkpoint", {"py/object": "pathlib.Path", "py/newargs": ["MARKER"]}),
        (
            "params.checkpoint",
            {"type": "__reduce__", "value": ["pathlib.Path.touch", ["MARKER"]]},
        ),
        (
            "params.checkpoint",
            {"type": "path", "value": "MARKER", "__reduce__": ["pathlib.Path.touch"]},
        ),
        (
            "fitted.classes_",
            {
                "type": "ndarray",
                "dtype": "|O",
                "shape": [3],
                "data": [{"py/object": "os.system"}] * 3,
            },
        ),
        (
            "fitted.classes_",
            {"type": "ndarray", "dtype": "|V8", "shape": [3], "data": ["MARKER"] * 3},
        ),
        ("fitted._y_dtype", {"type": "dtype", "value": "pathlib.Path"}),
        ("py/object", "pathlib.Path"),
    ],
)
def test_a_payload_in_the_json_never_runs(copy, tmp_path, where, payload):
    marker = str(tmp_path / "pwned")
    payload = json.loads(json.dumps(payload).replace("MARKER", marker))

    def change(m):
        if "." in where:
            section, key = where.split(".")
            m[section][key] = payload
        else:
            m[where] = payload

    edit(copy, change)
    refused(copy, "skast.json", where)
    assert not pathlib.Path(marker).exists()


def test_not_a_saved_model(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="not a directory written by save"):
        skast.load(tmp_path / "nothing")
    refused(tmp_path, "skast.json", "missing", "not a directory written by save")
    refused(checkpoint, "skast.json", "missing")  # a checkpoint is not a saved model
    (tmp_path / "skast.json").write_text("[1, 2]")
    refused(tmp_path, "not a skast manifest")
    (tmp_path / "skast.json").write_text('{"format": NaN}')
    refused(tmp_path, "not a skast manifest")


def test_load_is_lazy_and_exported():
    assert "load" in skast.__all__ and skast.load.__module__ == "skast._persist"


# ---------------------------------------------------------------- command line


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    for label, freq in (("low", 300), ("high", 3000)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            t = np.arange(8000) / SR
            wave = 0.5 * np.sin(2 * np.pi * (freq + 20 * i) * t)
            sf.write(root / label / f"{i}.wav", wave.astype(np.float32), SR)
    return root


@pytest.fixture
def checkpoint(tmp_path):
    from skast._checkpoints import save_pretrained
    from skast._model import AST, ASTConfig

    torch.manual_seed(0)
    save_pretrained(AST(ASTConfig(**SHORT)), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def finetune(folder, checkpoint, output):
    args = ["--checkpoint", str(checkpoint), "--epochs", "1", "--device", "cpu", "-q"]
    return main(["finetune", str(folder), "-o", str(output), *args])


def test_cli_finetune_writes_a_directory_that_predict_reads(
    folder, checkpoint, tmp_path, capsys
):
    model = tmp_path / "model"
    assert finetune(folder, checkpoint, model) == 0
    assert (model / "skast.json").is_file() and (model / "model.safetensors").is_file()
    assert f"saved to {model}" in capsys.readouterr().out
    assert (
        main(["predict", str(model), str(folder), "-o", str(tmp_path / "p.npy")]) == 0
    )
    proba = np.load(tmp_path / "p.npy")
    files = sorted(str(f) for f in folder.rglob("*.wav"))
    assert_array_equal(proba, skast.load(model).predict_proba(files))
    assert finetune(folder, checkpoint, tmp_path / "model.joblib") == 0
    assert (tmp_path / "model.joblib").is_file()
    assert main(["predict", str(tmp_path / "model.joblib"), str(folder)]) == 0


def test_cli_predict_refuses_a_tampered_directory(folder, copy, capsys):
    edit(copy, lambda m: m.update(format_version=99))
    assert main(["predict", str(copy), str(folder)]) == 1
    err = capsys.readouterr().err
    assert "skast.json" in err and "format_version" in err


def test_cli_predict_refuses_a_featurizer(folder, tmp_path, capsys):
    CASES["featurizer"]().save(tmp_path / "f")
    assert main(["predict", str(tmp_path / "f"), str(folder)]) == 1
    assert "does not hold a fitted classifier" in capsys.readouterr().err


def test_cli_finetune_refuses_a_file_as_the_directory(folder, tmp_path, capsys):
    (tmp_path / "model.bin").write_bytes(b"x")
    assert main(["finetune", str(folder), "-o", str(tmp_path / "model.bin")]) == 2
    assert "is a file" in capsys.readouterr().err
