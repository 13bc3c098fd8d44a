"""ASTClassifier: it learns, it follows scikit-learn's rules, it persists.

The training loop itself (schedule, augmentation, early stopping, Ctrl-C) is
tested in tests/test_training.py.
"""

import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from torch.optim.optimizer import register_optimizer_step_post_hook

from skast import ASTClassifier
from skast._recipes import NORM_STATS

SR = 16000
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_length=32,
    frequency_stride=16,
    time_stride=16,
)
CLASSES = ("low", "high", "chirp", "clicks", "noise")


def sounds(n_per_class, seed, classes=CLASSES, duration=(0.5, 1.0)):
    """Clips of clearly different kinds, with random phase, amplitude, length
    and a little frequency jitter, in a random order."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for _ in range(n_per_class):
        for name in classes:
            dur = rng.uniform(*duration)
            n = int(dur * SR)
            t = np.arange(n) / SR
            phase = rng.uniform(0, 2 * np.pi)
            if name == "low":
                w = np.sin(2 * np.pi * rng.uniform(380, 420) * t + phase)
            elif name == "high":
                w = np.sin(2 * np.pi * rng.uniform(2400, 2600) * t + phase)
            elif name == "chirp":
                f0, f1 = rng.uniform(500, 600), rng.uniform(3000, 3500)
                w = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur)) + phase)
            elif name == "clicks":
                w = np.zeros(n)
                for s in np.arange(rng.uniform(0, 0.05), dur, 1 / rng.uniform(8, 15)):
                    i = int(s * SR)
                    w[i : i + 40] += rng.standard_normal(len(w[i : i + 40]))
            else:  # noise band-limited to about 5-6 kHz
                spec = np.fft.rfft(rng.standard_normal(n))
                freqs = np.fft.rfftfreq(n, 1 / SR)
                spec[(freqs < 5000) | (freqs > 6000)] = 0
                w = np.fft.irfft(spec, n)
            w = rng.uniform(0.3, 0.8) * w / np.abs(w).max()
            X.append((w + 0.01 * rng.standard_normal(n)).astype(np.float32))
            y.append(name)
    order = rng.permutation(len(X))
    return [X[i] for i in order], np.array(y)[order]


def make(**params):
    base = dict(
        model_config=TINY,
        device="cpu",
        learning_rate=1e-3,
        max_epochs=2,
        batch_size=8,
        random_state=0,
    )
    return ASTClassifier(**{**base, **params})


class ModelLogits:
    """The logits of the fitted ``model_``'s forwards in the block (its own
    forward hook), as one float64 array: :attr:`value`."""

    def __init__(self, clf):
        self.model, self.outputs = clf.model_, []

    def __enter__(self):
        self.handle = self.model.register_forward_hook(
            lambda module, args, out: self.outputs.append(out.detach().double())
        )
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    @property
    def value(self) -> np.ndarray:
        return torch.cat(self.outputs).numpy()


class AdamSteps:
    """Adam's step count after each optimizer step in the block (torch's
    global optimizer-step hook): :attr:`steps`."""

    def __init__(self):
        self.steps = []

    def __enter__(self):
        self.handle = register_optimizer_step_post_hook(self.record)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def record(self, optimizer, args, kwargs):
        first = optimizer.param_groups[0]["params"][0]
        self.steps.append(int(optimizer.state[first]["step"]))


@pytest.fixture(scope="module")
def data():
    return sounds(4, seed=0, classes=CLASSES[:3], duration=(0.2, 0.4))


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return make().fit(X, y)


# ---------------------------------------------------------------- it learns


def test_learns_distinguishable_sounds():
    X, y = sounds(40, seed=0)
    X_test, y_test = sounds(20, seed=1)
    config = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_length=64,
        frequency_stride=16,
        time_stride=16,
    )
    clf = ASTClassifier(
        model_config=config,
        normalize="fit",
        learning_rate=1e-3,
        max_epochs=20,
        lr_decay_start=10,
        batch_size=16,
        device="cpu",
        random_state=0,
    )
    # about 3 s on 2 idle cores (no wall-clock assertion: shared CI machines
    # slow it down tenfold)
    clf.fit(X, y)
    assert clf.score(X_test, y_test) > 0.9  # chance: 0.2 (0.97 when written)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0] / 3
    assert clf.n_iter_ == 20 and len(clf.history_) == 20


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("labels", [["cat", "dog"], [3, 7]], ids=["str", "int"])
def test_binary_outputs(labels):
    X, y = sounds(4, seed=2, classes=CLASSES[:2], duration=(0.2, 0.3))
    y = np.where(y == "low", labels[0], labels[1])
    clf = make().fit(X, y)
    assert_array_equal(clf.classes_, np.unique(y))
    with ModelLogits(clf) as seen:
        decision = clf.decision_function(X)
    logits = seen.value
    assert decision.shape == (len(X),)
    assert logits.shape == (len(X), 2)
    assert_allclose(decision, logits[:, 1] - logits[:, 0])
    pred = clf.predict(X)
    assert set(pred) <= set(labels) and pred.dtype == clf.classes_.dtype
    assert_array_equal(pred, clf.classes_[(decision > 0).astype(int)])
    proba = clf.predict_proba(X)
    assert_allclose(proba.sum(1), 1)
    assert_allclose(proba, torch.softmax(torch.tensor(logits), 1).numpy(), atol=1e-12)
    assert_allclose(clf.predict_log_proba(X), np.log(proba), atol=1e-12)
    assert 0 <= clf.score(X, y) <= 1


def test_multiclass_outputs_agree(fitted, data):
    X, y = data
    n = len(X)
    decision = fitted.decision_function(X)
    proba = fitted.predict_proba(X)
    pred = fitted.predict(X)
    assert decision.shape == proba.shape == (n, 3) and pred.shape == (n,)
    assert_array_equal(fitted.classes_[decision.argmax(1)], pred)
    assert_array_equal(proba.argmax(1), decision.argmax(1))
    assert_allclose(proba.sum(1), 1)
    assert_allclose(np.exp(fitted.predict_log_proba(X)), proba, atol=1e-12)
    # lists and arrays of labels give the same model
    again = make().fit(list(X), list(y))
    assert_array_equal(again.predict(X), pred)


def test_multilabel_indicator():
    X, y = sounds(6, seed=3, classes=CLASSES[:3], duration=(0.2, 0.3))
    Y = np.stack([y == "low", y == "high", y != "chirp"], axis=1).astype(int)
    clf = make(max_epochs=3, learning_rate=3e-3).fit(X, Y)
    assert_array_equal(clf.classes_, [0, 1, 2])
    pred = clf.predict(X)
    assert pred.shape == Y.shape and pred.dtype == Y.dtype
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and ((proba >= 0) & (proba <= 1)).all()
    assert_array_equal(pred, (proba > 0.5).astype(int))
    with ModelLogits(clf) as seen:
        decision = clf.decision_function(X)
    assert_allclose(decision, seen.value)
    # binary cross-entropy, not a softmax: rows need not sum to one
    assert not np.allclose(proba.sum(1), 1)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    # a boolean indicator gives a boolean prediction
    assert make(max_epochs=1).fit(X, Y.astype(bool)).predict(X).dtype == bool
    assert 0 <= clf.score(X, Y) <= 1
    with pytest.raises(ValueError, match="class_weight"):
        make(class_weight="balanced").fit(X, Y)
    # partial_fit: one entry of classes per column
    with pytest.raises(ValueError, match="3 columns"):
        make().partial_fit(X, Y, classes=[0, 1])
    inc = make().partial_fit(X, Y, classes=[0, 1, 2]).partial_fit(X, Y)
    assert inc.n_iter_ == 2 and inc.predict(X).shape == Y.shape
    with pytest.raises(ValueError, match="multi-label"):
        inc.partial_fit(X, y)


# ---------------------------------------------------------------- randomness


def test_same_random_state_same_model(data):
    X, y = data
    params = dict(
        freqm=8, timem=8, mixup=0.5, model_config={**TINY, "hidden_dropout_prob": 0.1}
    )
    a = make(**params).fit(X, y)
    b = make(**params).fit(X, y)
    assert_array_equal(a.decision_function(X), b.decision_function(X))
    assert a.loss_curve_ == b.loss_curve_
    c = make(**params, random_state=1).fit(X, y)
    assert not np.allclose(a.decision_function(X), c.decision_function(X))


def test_fit_leaves_the_global_random_state_alone(data):
    X, y = data
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    make(random_state=0, mixup=0.5).fit(X, y)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()  # noqa: NPY002


# ---------------------------------------------------------------- recipe


def test_recipe_fills_in_defaults_only(data):
    X, y = data
    clf = make(recipe="speechcommands", max_epochs=1, model_config={**TINY})
    params = clf.get_params()
    clf.fit(X, y)
    assert clf.get_params() == params  # the parameters are untouched
    rp = clf.recipe_params_
    assert rp["max_epochs"] == 1 and rp["learning_rate"] == 1e-3  # set by the user
    assert rp["batch_size"] == 8  # set by the user
    assert (rp["freqm"], rp["timem"], rp["mixup"]) == (48, 48, 0.6)
    assert rp["max_length"] == 128 and clf.model_.config.max_length == 128
    assert rp["normalize"] == "speechcommands"
    assert clf.normalization_ == NORM_STATS["speechcommands"]
    assert (rp["lr_decay_start"], rp["lr_decay_every"], rp["lr_decay"]) == (5, 1, 0.85)
    esc = ASTClassifier(recipe="esc50")._resolve_recipe()
    assert esc == dict(
        learning_rate=1e-5, max_epochs=25, batch_size=48, freqm=24, timem=96,
        mixup=0.0, max_length=512, normalize="esc50", warmup_steps=0,
        lr_decay_start=5, lr_decay_every=1, lr_decay=0.85, sampler=None,
        weight_averaging=None,
    )  # fmt: skip
    assert (rp["sampler"], rp["weight_averaging"]) == (None, None)


def test_audioset_recipe_samples_and_averages(data):
    X, y = data
    clf = make(recipe="audioset", max_length=32, max_epochs=2).fit(X, y)
    rp = clf.recipe_params_
    assert rp["warmup_steps"] == 1000 and rp["lr_decay"] == 0.5
    assert (rp["freqm"], rp["timem"], rp["mixup"]) == (48, 192, 0.5)
    assert (rp["sampler"], rp["weight_averaging"]) == ("balanced", (1, 5))
    assert clf.n_iter_ == 2
    assert ASTClassifier(recipe="audioset")._resolve_recipe()["max_length"] == 1024
    # with early stopping the recipe keeps the best epoch's weights instead
    early = make(recipe="audioset", max_length=32, max_epochs=2, early_stopping=True)
    early.set_params(validation_fraction=0.25).fit(X, y)
    assert early.recipe_params_["weight_averaging"] is None
    assert early.recipe_params_["sampler"] == "balanced"


# ---------------------------------------------------------------- partial_fit, warm_start


def test_partial_fit(data):
    X, y = data
    clf = make(lr_decay_start=1, lr_decay=0.5)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    classes = np.unique(y)
    with AdamSteps() as adam:  # 6 and 6 clips: one step of 8 per call
        clf.partial_fit(X[:6], y[:6], classes=classes)
        assert clf.n_iter_ == 1
        clf.partial_fit(X[6:], y[6:])
        assert clf.n_iter_ == 2
    # the second call goes on with the first's Adam and schedule
    assert adam.steps == [1, 2]
    assert [h["learning_rate"] for h in clf.history_] == [1e-3, 5e-4]
    assert_array_equal(clf.classes_, classes)
    with pytest.raises(ValueError, match="not in classes"):
        clf.partial_fit(X[:2], ["bird", "bird"])
    # two calls on all the data are two epochs of fit
    a = make().partial_fit(X, y, classes=classes).partial_fit(X, y)
    b = make(max_epochs=2).fit(X, y)
    assert_allclose(a.decision_function(X), b.decision_function(X), atol=1e-6)
    assert a.loss_curve_ == pytest.approx(b.loss_curve_)
    # a pickle goes on where the estimator would
    loaded = pickle.loads(pickle.dumps(a))
    with AdamSteps() as adam:
        going_on = loaded.partial_fit(X, y).decision_function(X)
    assert_array_equal(going_on, a.partial_fit(X, y).decision_function(X))
    assert adam.steps == [5, 6]  # after two calls of two steps
    # fit keeps no optimizer state: a partial_fit after it starts a new Adam
    with AdamSteps() as adam:
        b.partial_fit(X, y)  # 12 clips: two steps an epoch
        a.fit(X, y)  # two epochs
        a.partial_fit(X, y)
    assert adam.steps == [1, 2] + [1, 2, 3, 4] + [1, 2]


def test_warm_start(data):
    X, y = data
    clf = make(max_epochs=1, warm_start=True).fit(X, y)
    head = clf.model_.head[1].weight.detach().clone()
    model = clf.model_
    clf.fit(X, y)
    assert clf.model_ is model and clf.n_iter_ == 2
    assert not torch.equal(clf.model_.head[1].weight, head)  # trained further
    y2 = np.where(y == y[0], "other", y)
    clf.fit(X, y2)  # new classes: a new head
    assert clf.model_.config.id2label == dict(enumerate(np.unique(y2)))
    assert make(max_epochs=1).fit(X, y).n_iter_ == 1


# ---------------------------------------------------------------- freezing, class weights


@pytest.mark.parametrize("freeze", ["encoder", 0, 1])
def test_freeze(data, freeze):
    X, y = data
    clf = make(max_epochs=1)
    clf.fit(X, y)
    before = {k: v.clone() for k, v in clf.model_.state_dict().items()}
    clf.set_params(freeze=freeze, warm_start=True).fit(X, y)
    after = clf.model_.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("head.", "blocks.", "norm.")) for k in changed)
    if freeze == "encoder":
        assert all(k.startswith("head.") for k in changed)
    elif freeze == 1:
        assert not any(k.startswith("blocks.0.") for k in changed)
        assert any(k.startswith("blocks.1.") for k in changed)
    else:
        assert any(k.startswith("blocks.0.") for k in changed)
    assert all(p.requires_grad for p in clf.model_.parameters())


def test_bad_freeze(data):
    X, y = data
    with pytest.raises(ValueError, match="only 2 blocks"):
        make(freeze=3).fit(X, y)
    with pytest.raises(ValueError, match="freeze"):
        make(freeze=True).fit(X, y)


def test_class_weight(data):
    X, y = data
    heavy = {label: (1e3 if label == "low" else 1e-3) for label in np.unique(y)}
    clf = make(class_weight=heavy, max_epochs=4, learning_rate=1e-2).fit(X, y)
    assert (clf.predict(X) == "low").mean() > 0.9
    make(class_weight="balanced", max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="partial_fit"):
        make(class_weight="balanced").partial_fit(X, y, classes=np.unique(y))


# ---------------------------------------------------------------- bad input


def test_bad_input_and_nothing_modified(fitted, data):
    X, y = data
    X_copy, y_copy = [x.copy() for x in X], y.copy()
    params = fitted.get_params()
    bad_x = [x.copy() for x in X]
    bad_x[3][10] = np.nan
    with pytest.raises(ValueError, match="3"):
        make().fit(bad_x, y)
    with pytest.raises(ValueError):
        make().fit([], [])
    with pytest.raises(ValueError, match="1 class"):
        make().fit(X, np.full(len(X), "low"))
    with pytest.raises(ValueError, match="as many"):
        make().fit(X, y[:-1])
    for missing in [np.nan, None]:
        labels = y.astype(object)
        labels[2] = missing
        with pytest.raises(ValueError, match="missing labels"):
            make().fit(X, labels)
    with pytest.raises(ValueError, match="Input y contains NaN|missing"):
        make().fit(X, np.r_[np.ones(len(X) - 1), np.nan])
    with pytest.raises(ValueError, match="infinity"):
        make().fit(X, np.r_[np.ones(len(X) - 1), np.inf])
    with pytest.raises(ValueError, match="not fitted with"):
        fitted.score(X, np.where(y == y[0], "bird", y))
    with pytest.raises(ValueError):
        make(betas=(0.9,)).fit(X, y)
    with pytest.raises(ValueError, match="model_config"):
        make(model_config={"hidden_size": 30, "num_attention_heads": 4}).fit(X, y)
    X2 = np.stack([x[:3200] for x in X])  # a 2-D array of waveforms
    X2_copy = X2.copy()
    make(max_epochs=1, freqm=4, timem=4, mixup=0.5).fit(X2, y).predict(X2)
    assert_array_equal(X2, X2_copy)
    for a, b in zip(X, X_copy):
        assert_array_equal(a, b)
    assert_array_equal(y, y_copy)
    assert fitted.get_params() == params


def test_unfitted():
    X, _ = sounds(1, seed=0, classes=CLASSES[:2])
    for method in ("predict", "predict_proba", "decision_function"):
        with pytest.raises(NotFittedError):
            getattr(make(), method)(X)
    with pytest.raises(NotFittedError):
        make().save_pretrained("nowhere")


def test_tags_and_no_n_features_in(fitted, data):
    tags = get_tags(fitted)
    assert tags.estimator_type == "classifier"
    assert tags.classifier_tags.poor_score and tags.classifier_tags.multi_label
    assert not tags.non_deterministic
    assert not hasattr(fitted, "n_features_in_")
    X, _ = data
    longer = [np.tile(x, 3) for x in X[:2]]  # clips of any length
    assert fitted.predict(longer).shape == (2,)


def test_clone_and_params():
    clf = make(betas=[0.9, 0.99])
    assert clone(clf).get_params() == clf.get_params()
    assert ASTClassifier().learning_rate == 1e-5


# ---------------------------------------------------------------- persistence


def test_fitted_on_cuda_loads_on_a_cpu_only_machine(
    fitted, data, tmp_path, monkeypatch
):
    X, _ = data
    ref = fitted.predict_proba(X)
    fitted.device_ = "cuda:0"  # as if fitted on a GPU (pickles hold CPU tensors)
    try:
        joblib.dump(fitted, tmp_path / "clf.joblib")
    finally:
        fitted.device_ = "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="'cuda:0', which is not available"):
        loaded = joblib.load(tmp_path / "clf.joblib")
    assert loaded.device_ == "cpu"
    assert next(loaded.model_.parameters()).device.type == "cpu"
    assert_array_equal(loaded.predict_proba(X), ref)
    assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert hasattr(fitted, "model_")  # pickling did not unfit the original


def test_pickle_is_small_and_complete(fitted, data):
    X, _ = data
    blob = pickle.dumps(fitted)
    n_weights = sum(v.numel() * 4 for v in fitted.model_.state_dict().values())
    assert len(blob) < 1.3 * n_weights + 50_000  # no features, no optimizer
    loaded = pickle.loads(blob)
    assert_array_equal(loaded.decision_function(X), fitted.decision_function(X))
    assert loaded.history_ == fitted.history_


def test_save_pretrained_loads_in_transformers(fitted, tmp_path):
    transformers = pytest.importorskip("transformers")
    fitted.save_pretrained(tmp_path)
    hf = transformers.ASTForAudioClassification.from_pretrained(tmp_path).eval()
    assert hf.config.id2label == dict(enumerate(str(c) for c in fitted.classes_))
    x = torch.randn(
        3, TINY["max_length"], 128, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, fitted.model_(x), atol=1e-5, rtol=0)
    fe = transformers.ASTFeatureExtractor.from_pretrained(tmp_path)
    assert (fe.mean, fe.std) == pytest.approx(fitted.normalization_)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_autocast_precisions_train(data, precision):
    X, y = data
    clf = make(precision=precision).fit(X, y)
    assert clf._autocast == getattr(torch, precision)
    assert np.isfinite(clf.loss_curve_).all()
    assert clf.predict_proba(X).dtype == np.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["auto", "float16", "float32"])
def test_cuda_training_and_round_trip(data, precision, tmp_path, monkeypatch):
    X, y = data
    clf = make(device="cuda", precision=precision, freqm=8, timem=8, mixup=0.5)
    clf.fit(X, y)
    assert clf.device_.startswith("cuda") and np.isfinite(clf.loss_curve_).all()
    ref = clf.predict_proba(X)
    assert next(clf.model_.parameters()).is_cuda
    joblib.dump(clf, tmp_path / "clf.joblib")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="not available"):
        loaded = joblib.load(tmp_path / "clf.joblib")
    assert_allclose(loaded.predict_proba(X), ref, atol=2e-2)


# ---------------------------------------------------------------- verbose


def test_verbose_reports_each_epoch(data, capsys):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm's own
        make(verbose=True, early_stopping=True, validation_fraction=0.25).fit(X, y)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "epoch 1" in text and "train_loss=" in text and "valid_score=" in text
