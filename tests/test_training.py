"""skast._training: the fine-tuning loop, seen from outside.

The tests watch and steer a fit only through public seams:

- torch's global optimizer-step hooks (:func:`optimizer_steps`): the learning
  rate of each step, and faults (a ``KeyboardInterrupt`` or a Ctrl-C) at a
  chosen step;
- torch's global module forward hook, for the AST modules (:func:`ast_forward`):
  what the model is given in training and in eval mode, and, in eval mode
  (validation), logits that script the validation score (:class:`ScriptedScores`);
- a :class:`torch.overrides.TorchFunctionMode` over the feature path's FFT
  (:class:`FeaturePasses`): how often the features are computed;
- the public fitted ``model_``'s forward hooks, with ``warm_start``;
- the ``oom`` fixture of tests/conftest.py: device out-of-memory errors
  raised by torch's global forward pre-hook on the patch embedding.

The clips of :func:`toned` are tones whose class can be read from the
features the model is given (:func:`class_of`), so that a hook knows the
truth of the clips it sees.
"""

import contextlib
import io
import os
import signal
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.overrides import TorchFunctionMode
from tqdm import TqdmWarning

from skast._model import AST
from skast._training import WARMUP_PERIOD, warmup_lr
from tests._helpers import (
    assert_unchanged,
    classifier,
    clips,
    featurizer,
    snapshot,
    write,
)
from tests.test_classifier import make
from tests.test_targets import assert_binomial, expected_weights

SR = 16000
TONES = (300.0, 1500.0, 5000.0)  # Hz: mel bins about 16, 57 and 106 of 128


def toned(n_per_class, seed, n_classes=3, seconds=0.5):
    """Clips of a tone per class (labels "a", "b", "c") with a little noise,
    in a random order; longer than the model's 32 frames."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    X, y = [], []
    for _ in range(n_per_class):
        for k in range(n_classes):
            w = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * TONES[k] * t)
            X.append((w + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
            y.append("abc"[k])
    order = rng.permutation(len(X))
    return [X[i] for i in order], np.array(y)[order]


def class_of(x: torch.Tensor) -> torch.Tensor:
    """The class index of each clip of :func:`toned` from its features
    ``(B, frames, mel bins)``: which tone's mel bin is the loudest."""
    loudest = x.float().mean(1).argmax(-1)
    return (loudest > 36).long() + (loudest > 81).long()


@contextlib.contextmanager
def optimizer_steps(pre=None, post=None):
    """torch's global optimizer-step hooks ``(optimizer, args, kwargs)``
    for the block."""
    handles = []
    if pre is not None:
        handles.append(register_optimizer_step_pre_hook(pre))
    if post is not None:
        handles.append(register_optimizer_step_post_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def ast_forward(hook):
    """``hook(model, x, logits)`` on every forward of an AST in the block
    (torch's global forward hook); what it returns replaces the logits."""

    def on_forward(module, args, output):
        if isinstance(module, AST):
            return hook(module, args[0], output)
        return None

    handle = register_module_forward_hook(on_forward)
    try:
        yield
    finally:
        handle.remove()


class FeaturePasses(TorchFunctionMode):
    """Counts the FFTs of the feature path (one per batch of clips); raises
    ``fault`` at the first one if given."""

    def __init__(self, fault=None):
        super().__init__()
        self.ffts, self.fault = 0, fault

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.fft.rfft:
            self.ffts += 1
            if self.fault is not None:
                raise self.fault
        return func(*args, **(kwargs or {}))


class ScriptedScores:
    """Validation logits whose accuracy is the next of ``scores``.

    For an AST in eval mode (validation, within a fit), the first
    ``score * n_valid`` clips of a validation pass get logits of their own
    class (:func:`class_of`), the others of another class. ``heads`` keeps
    the head's weights at each validation.
    """

    def __init__(self, scores, n_valid, n_classes=3):
        self.scores, self.n_valid, self.n_classes = iter(scores), n_valid, n_classes
        self.done, self.score, self.heads = n_valid, None, []

    def __call__(self, model, x, logits):
        if model.training:
            return None
        if self.done == self.n_valid:  # a new validation pass
            self.score, self.done = next(self.scores), 0
            self.heads.append(model.head[1].weight.detach().clone())
        truth = class_of(x)
        rank = self.done + torch.arange(len(x))
        right = rank < round(self.score * self.n_valid)
        label = torch.where(right, truth, (truth + 1) % self.n_classes)
        self.done += len(x)
        return 10 * torch.nn.functional.one_hot(label, self.n_classes).to(logits)


@pytest.fixture(scope="module")
def data():
    return toned(4, seed=0)


def test_the_tones_are_told_apart(data):
    X, y = data
    seen = []
    clf = make(max_epochs=1)
    with ast_forward(lambda model, x, logits: seen.append(class_of(x))):
        clf.fit(X, y)
        clf.predict(X)
    # the prediction pass sees the clips in order
    assert_array_equal(torch.cat(seen)[-len(X) :], np.searchsorted(["a", "b", "c"], y))


# ---------------------------------------------------------------- warm-up and schedule


def test_warm_up_as_the_original():
    lr, lrs = 1e-3, []
    for step in range(1200):
        new = warmup_lr(step, 1000, 1e-3)
        lr = lr if new is None else new
        lrs.append(lr)
    # src/traintest.py: every 50 steps up to 1000, lr = step / 1000 * lr
    expected = [min(s // WARMUP_PERIOD * 50, 1000) / 1000 * 1e-3 for s in range(1200)]
    assert_allclose(lrs, expected)
    assert warmup_lr(120, 120, 1e-3) == 1e-3  # not a multiple of 50: ends at lr
    assert warmup_lr(0, 0, 1e-3) is None  # no warm-up


def test_warm_up_in_fit(data):
    X, y = data  # 12 clips: 6 steps of 2 an epoch
    lrs = []
    with optimizer_steps(pre=lambda opt, a, k: lrs.append(opt.param_groups[0]["lr"])):
        clf = make(warmup_steps=60, batch_size=2, max_epochs=11, lr_decay=1.0)
        clf.fit(X, y)
    assert len(lrs) == 66
    assert lrs == [0.0] * 50 + [50 / 60 * 1e-3] * 10 + [1e-3] * 6
    with optimizer_steps(pre=lambda opt, a, k: lrs.append(opt.param_groups[0]["lr"])):
        lrs.clear()
        make(warmup_steps=1, max_epochs=1).fit(X, y)
    assert lrs[0] == 0 and lrs[1:] == [1e-3] * (len(lrs) - 1)


def test_step_decay_per_epoch(data):
    X, y = data
    clf = make(max_epochs=5, lr_decay_start=2, lr_decay_every=2, lr_decay=0.5)
    clf.fit(X, y)
    lrs = [h["learning_rate"] for h in clf.history_]
    # MultiStepLR(milestones=range(2, 1000, 2)) stepped after each epoch
    assert_allclose(lrs, [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


# ---------------------------------------------------------------- features and augmentation


def inputs_by_mode(store):
    """A forward hook filing each AST input under the model's mode."""

    def hook(model, x, logits):
        store["train" if model.training else "eval"].append(x.detach().clone())

    return hook


def test_features_streamed_once_per_epoch(data):
    # the features are computed per batch as training reaches it (nothing is
    # kept between epochs): one pass over the clips per epoch
    X, y = data
    fit_passes, predict_passes = FeaturePasses(), FeaturePasses()
    clf = make(max_epochs=3, batch_size=4)
    with fit_passes:
        clf.fit(X, y)
    with predict_passes:
        clf.predict(X)
    assert predict_passes.ffts > 0
    assert fit_passes.ffts == 3 * predict_passes.ffts


def test_spec_augment_masks_with_log_mel_zero_while_training(data):
    X, y = data
    seen = {"train": [], "eval": []}
    clf = make(max_epochs=3, freqm=10, timem=5, batch_size=4)
    with ast_forward(inputs_by_mode(seen)):
        clf.fit(X, y)
        clf.predict(X)  # no augmentation at prediction time
    clean = torch.cat(seen["eval"])
    assert len(clean) == len(X)
    trained = torch.cat(seen["train"])
    assert len(trained) == 3 * len(X)
    # each training input is a clip's features with some bins replaced
    same = (trained[:, None] == clean[None]).flatten(2)  # (inputs, clips, values)
    clip = same.sum(-1).argmax(1)
    masked = ~same[torch.arange(len(trained)), clip]
    values = trained.flatten(1)[masked]
    mean, std = clf.normalization_
    assert masked.any(1).float().mean() > 0.5
    assert torch.all(values == values[0])
    assert float(values[0]) == pytest.approx((0 - mean) / (2 * std), rel=1e-6)
    assert_array_equal(np.bincount(clip, minlength=len(X)), [3] * len(X))


def test_mixup_mixes_training_inputs_only(data):
    X, y = data
    seen = {"train": [], "eval": []}
    with ast_forward(inputs_by_mode(seen)):
        make(max_epochs=3, mixup=0.3, batch_size=4).fit(X, y)
    training_inputs = seen["train"]
    seen["train"], seen["eval"] = [], []
    with ast_forward(inputs_by_mode(seen)):
        make(max_epochs=3, batch_size=4).fit(X, y).predict(X)
    clean = torch.cat(seen["eval"])

    def is_a_clip(inputs):
        x = torch.cat(inputs)
        return (x[:, None] == clean[None]).flatten(2).all(-1).any(1)

    mixed = ~is_a_clip(training_inputs)
    assert 0 < int(mixed.sum()) < len(mixed)  # p = 0.3 per clip
    assert is_a_clip(seen["train"]).all()  # no mixup: every input is a clip


# ---------------------------------------------------------------- freezing


@pytest.mark.parametrize("freeze", [None, "encoder", 1])
def test_no_graph_and_no_dropout_through_frozen_modules(data, freeze):
    X, y = data
    clf = make(max_epochs=1, warm_start=True).fit(X, y)
    seen = []

    def record(module, args, output):
        if torch.is_grad_enabled():
            seen.append((module, module.training, output.requires_grad))

    model = clf.model_
    handles = [m.register_forward_hook(record) for m in (model.blocks[0], model.norm)]
    try:
        clf.set_params(freeze=freeze).fit(X, y)
    finally:
        for handle in handles:
            handle.remove()
    first = {(training, grad) for m, training, grad in seen if m is model.blocks[0]}
    last = {(training, grad) for m, training, grad in seen if m is model.norm}
    assert first == {(freeze is None, freeze is None)}
    assert last == {(freeze != "encoder", freeze != "encoder")}
    # what the fit changed is restored
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())


# ---------------------------------------------------------------- early stopping


def test_early_stopping_keeps_the_best_weights():
    X, y = toned(11, seed=4)
    X, y = X[:32], y[:32]  # 8 validation clips
    scores = ScriptedScores([0.5, 0.875, 0.25, 0.375, 0.5, 0.125, 0.125, 0.125], 8)
    clf = make(
        early_stopping=True, validation_fraction=0.25, n_iter_no_change=2, max_epochs=8
    )
    with ast_forward(scores):
        clf.fit(X, y)
    # no improvement over 0.875 for 3 (> n_iter_no_change) epochs: stop after 5
    assert clf.n_iter_ == 5
    assert clf.validation_scores_ == [0.5, 0.875, 0.25, 0.375, 0.5]
    assert clf.best_validation_score_ == 0.875
    assert torch.equal(clf.model_.head[1].weight, scores.heads[1])
    assert [h["valid_score"] for h in clf.history_] == clf.validation_scores_
    assert all(h["valid_loss"] > 0 for h in clf.history_)


def test_early_stopping_split_is_stratified():
    X, y = toned(10, seed=5, n_classes=2)
    seen = {"train": [], "eval": []}
    with ast_forward(inputs_by_mode(seen)):
        clf = make(early_stopping=True, validation_fraction=0.2, max_epochs=1)
        clf.fit(X, y)
    assert_array_equal(np.bincount(class_of(torch.cat(seen["train"]))), [8, 8])
    assert_array_equal(np.bincount(class_of(torch.cat(seen["eval"]))), [2, 2])
    assert clf.history_[0]["valid_score"] is not None
    assert make().fit(X, y).best_validation_score_ is None


# ---------------------------------------------------------------- Ctrl-C


class InterruptAt:
    """Optimizer-step hooks that interrupt a fit: a ``KeyboardInterrupt``
    raised before step ``n`` (1-based), or a Ctrl-C sent after it."""

    def __init__(self, n, how):
        self.n, self.how, self.steps = n, how, 0

    def pre(self, optimizer, args, kwargs):
        self.steps += 1
        if self.how == "raise" and self.steps >= self.n:
            raise KeyboardInterrupt

    def post(self, optimizer, args, kwargs):
        if self.how == "signal" and self.steps == self.n:
            os.kill(os.getpid(), signal.SIGINT)

    def hooks(self):
        return optimizer_steps(pre=self.pre, post=self.post)


def test_sigint_stops_after_the_current_batch(data):
    X, y = data
    before = signal.getsignal(signal.SIGINT)
    interrupt = InterruptAt(2, "signal")
    clf = make(max_epochs=5, batch_size=2)
    with interrupt.hooks(), pytest.warns(UserWarning, match="interrupted.*current"):
        clf.fit(X, y)
    assert interrupt.steps == 2
    assert signal.getsignal(signal.SIGINT) is before
    assert clf.n_iter_ == 1 and clf.history_[0]["valid_score"] is None
    assert clf.predict(X).shape == (len(X),)  # fitted and usable


def test_keyboard_interrupt_keeps_the_best_weights():
    X, y = toned(11, seed=6)
    X, y = X[:32], y[:32]  # 24 training clips, 8 validation clips
    scores = ScriptedScores([0.75, 0.375, 0.25], 8)
    clf = make(
        early_stopping=True, validation_fraction=0.25, batch_size=4, max_epochs=5
    )
    n_batches = 24 // 4
    interrupt = InterruptAt(2 * n_batches + 2, "raise")
    with ast_forward(scores), interrupt.hooks():
        with pytest.warns(UserWarning, match="best validation epoch \\(1\\)"):
            clf.fit(X, y)
    assert interrupt.steps == 2 * n_batches + 2
    assert clf.n_iter_ == 3 and clf.best_validation_score_ == 0.75
    assert clf.validation_scores_ == [0.75, 0.375]
    assert torch.equal(clf.model_.head[1].weight, scores.heads[0])
    assert clf.predict_proba(X).shape == (len(X), 3)


class InterruptingStream(io.StringIO):
    """A stdout that raises ``KeyboardInterrupt`` at its first line holding
    ``text`` (the verbose report of an epoch)."""

    def __init__(self, text):
        super().__init__()
        self.text, self.raised = text, False

    def write(self, s):
        if self.text in s and not self.raised:
            self.raised = True
            raise KeyboardInterrupt
        return super().write(s)


def test_keyboard_interrupt_in_the_epoch_report_ends_fitted(data):
    X, y = data
    stream = InterruptingStream("epoch 2, train_loss=")
    clf = make(max_epochs=5, verbose=True)
    with contextlib.redirect_stdout(stream), warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        with pytest.warns(UserWarning, match="interrupted.*after 2 epoch"):
            clf.fit(X, y)
    assert stream.raised and "epoch 1, train_loss=" in stream.getvalue()
    assert clf.n_iter_ == 2 and len(clf.history_) == 2
    assert clf.predict(X).shape == (len(X),)


@pytest.mark.skipif(
    not hasattr(torch.nn.Module, "register_state_dict_post_hook"),
    reason="the public state-dict post hook is torch 2.5's",
)
def test_keyboard_interrupt_while_keeping_the_best_weights_ends_fitted():
    X, y = toned(11, seed=6)
    X, y = X[:32], y[:32]  # 8 validation clips
    clf = make(max_epochs=1, warm_start=True).fit(X, y)
    copies = []

    def on_state_dict(module, state, prefix, local_metadata):
        copies.append(module.head[1].weight.detach().clone())
        if len(copies) == 2:  # the copy of the second best epoch's weights
            raise KeyboardInterrupt

    handle = clf.model_.register_state_dict_post_hook(on_state_dict)
    scores = ScriptedScores([0.5, 0.75, 0.875], 8)
    clf.set_params(early_stopping=True, validation_fraction=0.25, max_epochs=3)
    try:
        with ast_forward(scores), pytest.warns(UserWarning, match="epoch \\(2\\)"):
            clf.fit(X, y)
    finally:
        handle.remove()
    # the fit ends after its second epoch (history's third), with the weights
    # of the first, whose copy was complete
    assert len(copies) == 2 and clf.n_iter_ == 3
    assert clf.validation_scores_ == [0.5, 0.75] and clf.best_validation_score_ == 0.5
    assert torch.equal(clf.model_.head[1].weight, copies[0])
    assert torch.equal(copies[0], scores.heads[0])


# ---------------------------------------------------------------- balanced sampling


def clips_seen(store, clean):
    """The clip index of each training input: the clip whose features it is."""
    x = torch.cat(store)
    same = (x[:, None] == clean[None]).flatten(2).all(-1)
    assert same.any(1).all()  # every input is one of the clips
    return same.float().argmax(1)


def test_balanced_sampler_in_fit():
    X, y = toned(6, seed=7)  # 18 clips
    Y = np.stack([y == "a", (y == "b") & (np.cumsum(y == "b") <= 2), y != "a"], 1)
    Y = Y.astype(int)
    Y[np.flatnonzero(y == "c")[0]] = 0  # never drawn
    epochs, seen = 20, {"train": [], "eval": []}
    params = dict(max_epochs=epochs, batch_size=6, sampler="balanced")
    with ast_forward(inputs_by_mode(seen)):
        clf = make(**params).fit(X, Y)
        clf.predict(X)
    clean = torch.cat(seen["eval"])
    drawn = clips_seen(seen["train"], clean)
    assert len(drawn) == epochs * len(X)  # as many draws as clips an epoch
    assert_binomial(
        np.bincount(drawn, minlength=len(X)), expected_weights(Y), len(drawn)
    )
    # the same random_state draws the same clips; another, others
    again, other = {"train": [], "eval": []}, {"train": [], "eval": []}
    with ast_forward(inputs_by_mode(again)):
        make(**params).fit(X, Y)
    with ast_forward(inputs_by_mode(other)):
        make(**params, random_state=1).fit(X, Y)
    assert torch.equal(clips_seen(again["train"], clean), drawn)
    assert not torch.equal(clips_seen(other["train"], clean), drawn)


def test_balanced_sampler_draws_training_clips_only():
    X, y = toned(8, seed=8, n_classes=2)  # 16 clips: 12 to train, 4 to validate
    seen = {"train": [], "eval": []}
    with ast_forward(inputs_by_mode(seen)):
        clf = make(
            sampler="balanced", early_stopping=True, validation_fraction=0.25,
            max_epochs=3, n_iter_no_change=5,
        ).fit(X, y)  # fmt: skip
        clf.predict(X)
    evaluated = torch.cat(seen["eval"])  # 3 validations, then the prediction
    clean = evaluated[-len(X) :]
    validated = clips_seen([evaluated[: -len(X)]], clean)
    assert len(validated) == 3 * 4 and len(set(validated.tolist())) == 4
    drawn = clips_seen(seen["train"], clean)
    assert len(drawn) == 3 * 12
    assert not set(drawn.tolist()) & set(validated.tolist())


# ---------------------------------------------------------------- weight averaging


class EpochWeights:
    """The trained weights after each epoch's last optimizer step (torch's
    global optimizer-step hook), for epochs of ``steps`` steps."""

    def __init__(self, steps):
        self.steps, self.count, self.epochs = steps, 0, []

    def __call__(self, optimizer, args, kwargs):
        self.count += 1
        if self.count % self.steps == 0:
            params = optimizer.param_groups[0]["params"]
            self.epochs.append([p.detach().clone() for p in params])


def assert_mean_to_float32_rounding(result, tensors):
    """``result`` is the float32 mean of ``tensors`` summed in order, then
    divided: within the rounding bound of that sum and division.

    With u = 2**-24, a sum of k float32 terms is within
    gamma_{k-1} = (k-1)u / (1-(k-1)u) times the sum of their magnitudes, and
    the division adds u times the result's magnitude; the float64 reference
    adds its own 2**-52.
    """
    k, u = len(tensors), 2.0**-24
    x = torch.stack(tensors).double()
    exact, magnitude = x.mean(0), x.abs().mean(0)
    gamma = (k - 1) * u / (1 - (k - 1) * u)
    bound = gamma * magnitude * (1 + u) + (u + 2.0**-52) * exact.abs()
    assert ((result.double() - exact).abs() <= bound).all()


def test_weight_averaging_is_the_mean_of_the_epochs(data):
    X, y = data  # 12 clips: 3 steps of 4 an epoch
    weights = EpochWeights(steps=3)
    with optimizer_steps(post=weights):
        plain = make(max_epochs=4, batch_size=4).fit(X, y)
    # the seam sees the fitted weights: without averaging, the last epoch's
    assert all(
        torch.equal(p, w) for p, w in zip(plain.model_.parameters(), weights.epochs[-1])
    )
    weights = EpochWeights(steps=3)
    with optimizer_steps(post=weights):
        # a range past max_epochs averages the epochs up to it: 2, 3 and 4
        clf = make(max_epochs=4, batch_size=4, weight_averaging=(2, 9)).fit(X, y)
    assert len(weights.epochs) == 4
    assert clf.loss_curve_ == plain.loss_curve_  # the same training
    for i, p in enumerate(clf.model_.parameters()):
        assert_mean_to_float32_rounding(p, [w[i] for w in weights.epochs[1:]])
    assert not torch.equal(p, weights.epochs[-1][i])
    assert clf.recipe_params_["weight_averaging"] == (2, 9)


def test_weight_averaging_interrupted():
    X, y = toned(4, seed=0)  # 12 clips: 3 steps of 4 an epoch
    interrupt, weights = InterruptAt(7, "signal"), EpochWeights(steps=3)
    clf = make(max_epochs=5, batch_size=4, weight_averaging=(2, 5))
    with interrupt.hooks(), optimizer_steps(post=weights):
        with pytest.warns(UserWarning, match="mean of its weights after epoch 2 of"):
            clf.fit(X, y)
    # epoch 3 was interrupted after its first step: only epoch 2 is averaged
    assert clf.n_iter_ == 3
    assert all(
        torch.equal(p, w) for p, w in zip(clf.model_.parameters(), weights.epochs[1])
    )


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(weight_averaging=(0, 2)), "1 <= first <= last, got \\(0, 2\\)"),
        (dict(weight_averaging=(3, 2)), "1 <= first <= last"),
        (dict(weight_averaging=(1, 2, 3)), "a pair of epochs"),
        (dict(weight_averaging=(1.0, 2)), "a pair of epochs"),
        (dict(weight_averaging=(True, 2)), "a pair of epochs"),
        (dict(weight_averaging=(3, 4), max_epochs=2), "starts after the last epoch"),
        (dict(weight_averaging=(1, 2), early_stopping=True), "early_stopping"),
        (dict(weight_averaging="last"), "weight_averaging"),
        (dict(sampler="uniform"), "sampler"),
    ],
)
def test_bad_sampler_and_weight_averaging(data, params, match):
    X, y = data
    with pytest.raises(ValueError, match=match):
        make(**params).fit(X, y)


def test_weight_averaging_leaves_frozen_weights_as_they_are(data):
    X, y = data
    clf = make(max_epochs=1, warm_start=True).fit(X, y)
    before = {k: v.clone() for k, v in clf.model_.state_dict().items()}
    clf.set_params(freeze="encoder", max_epochs=3, weight_averaging=(1, 3)).fit(X, y)
    after = clf.model_.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"}


# ---------------------------------------------------------------- faults
#
# Out of memory in fit, through the ``oom`` fixture of tests/conftest.py
# (torch's global forward pre-hook on the model's patch embedding), and fits
# interrupted before the epochs or in the first step. Out of memory in
# transform and predict is in tests/test_runtime.py.

LABELS = np.array(["a", "b"] * 4)


@pytest.fixture
def step_gradients():
    """The gradients each optimizer step is given, recorded through torch's
    global optimizer-step hook: one list of tensors (None: no gradient) per
    step, in the optimizer's parameter order."""
    steps = []

    def record(optimizer, args, kwargs):
        steps.append(
            [
                None if p.grad is None else p.grad.detach().clone()
                for group in optimizer.param_groups
                for p in group["params"]
            ]
        )

    with optimizer_steps(pre=record):
        yield steps


# float32 rounding of the accumulated gradient. Halving a batch changes only
# the order of float32 sums (each piece's loss is weighted by its share, so
# the sum of the pieces' gradients is the whole batch's gradient in exact
# arithmetic). A sum of K terms in another order differs by at most about
# K * eps * sum|terms| (Higham's bound); the reductions here run over the batch
# and the tokens times the hidden width, K < 2**12, so relative to the largest
# gradient of a tensor the difference stays below 2**12 * 2**-23 < 1e-3.
GRAD_RTOL = 2**12 * float(torch.finfo(torch.float32).eps)


@pytest.mark.parametrize(
    "params, limit",
    [
        (dict(), 1),
        # 6 training clips (4 + 2) and 2 validation clips, both split
        (dict(early_stopping=True, validation_fraction=0.25), 1),
        (dict(freeze="encoder"), 3),
    ],
)
def test_oom_in_fit_halves_the_batch(params, limit, oom, step_gradients):
    """The training step accumulates the gradients of the halves, so each
    optimizer step is given the gradient of the whole batch.

    What the mathematics fixes is that gradient, not the weights after Adam:
    Adam's first step moves each weight by about ``lr * sign(grad)``, so a
    gradient of about zero whose rounding differs moves its weight by up to
    twice the learning rate. The learning rate is therefore tiny here (the
    weights the later steps' gradients are taken at stay equal to well below
    float32 rounding of the gradients), and the gradients are compared.
    """
    X = clips(8)
    params = dict(params, batch_size=4, max_epochs=1, learning_rate=1e-9)
    ref = classifier(**params).fit(X, LABELS)
    ref_steps = list(step_gradients)
    step_gradients.clear()
    oom.limit = limit
    clf = classifier(**params).fit(X, LABELS)
    oom.limit = None
    # out of memory in the training steps, and in the validation if any
    failed = {phase for _, ran, phase in oom.calls if not ran}
    assert failed == ({"train", "eval"} if "early_stopping" in params else {"train"})
    # every piece that ran fits; once one has, the later steps start from
    # its size and never run out of memory again
    assert max(oom.sizes(ran=True)) <= limit
    ran = [ok for _, ok, phase in oom.calls if phase == "train"]
    assert all(ran[ran.index(True) :])
    assert len(step_gradients) == len(ref_steps) > 0
    for step, (got_step, ref_step) in enumerate(zip(step_gradients, ref_steps)):
        assert len(got_step) == len(ref_step)
        for i, (got, want) in enumerate(zip(got_step, ref_step)):
            assert (got is None) == (want is None), (step, i)
            if want is not None:
                scale = float(want.abs().max())
                assert_allclose(
                    got, want, rtol=0, atol=GRAD_RTOL * scale, err_msg=f"{step}/{i}"
                )
    assert len(clf.history_) == len(ref.history_)
    for a, b in zip(clf.history_, ref.history_):
        assert_allclose(a["train_loss"], b["train_loss"], rtol=GRAD_RTOL)
        assert a["valid_score"] == b["valid_score"]
    assert_allclose(clf.predict_proba(X), ref.predict_proba(X), atol=GRAD_RTOL)


def test_oom_on_a_single_clip_in_fit_leaves_the_estimator(oom):
    X = clips(8)
    clf = classifier(max_epochs=1).fit(X, LABELS)
    snap = snapshot(clf)
    oom.limit = 0  # not even one clip fits
    with pytest.raises(torch.OutOfMemoryError):
        clf.fit(X, LABELS)
    assert oom.sizes(ran=True) == [] and min(oom.sizes(ran=False)) == 1
    oom.limit = None
    assert_unchanged(clf, snap)  # the previous model, still usable
    assert clf.predict(X).shape == (8,)


def test_interrupted_feature_extraction_keeps_the_fitted_model():
    """Ctrl-C before the epochs (while the normalisation's statistics are
    computed) raises KeyboardInterrupt, and the estimator keeps its previous
    fit."""
    X = clips(8)
    clf = classifier(max_epochs=1, normalize="fit").fit(X, LABELS)
    est = featurizer(normalize="fit").fit(X)
    proba = clf.predict_proba(X)
    snaps = snapshot(clf), snapshot(est)
    for fit in (lambda: clf.fit(X, LABELS), lambda: est.fit(X)):
        with pytest.raises(KeyboardInterrupt), FeaturePasses(KeyboardInterrupt()):
            fit()
    assert_unchanged(clf, snaps[0])
    assert_unchanged(est, snaps[1])
    assert_array_equal(clf.predict_proba(X), proba)
    fresh = featurizer(normalize="fit")
    params = dict(fresh.__dict__)
    with pytest.raises(KeyboardInterrupt), FeaturePasses(KeyboardInterrupt()):
        fresh.fit(X)
    assert fresh.__dict__ == params  # not half-fitted


def test_interrupted_first_batch_gives_a_usable_model():
    """Ctrl-C during the very first optimizer step: fitted, with 0 epochs
    and the initial weights, and it predicts."""
    X = clips(8)
    with InterruptAt(1, "raise").hooks():
        with pytest.warns(UserWarning, match=r"interrupted .* after 0 epoch"):
            clf = classifier().fit(X, LABELS)
    assert clf.n_iter_ == 0 and clf.history_ == []
    proba = clf.predict_proba(X)
    assert proba.shape == (8, 2) and np.isfinite(proba).all()


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_a_clip_failing_mid_epoch_restores_the_kept_model(how, tmp_path):
    """Clips are decoded as training reaches them: a file whose header reads
    but whose data does not fails after some optimizer steps, and a model
    that was being trained in place gets its weights (and head) back."""
    good, bad = (
        write(tmp_path / "good.flac", clips(1, seconds=1)[0]),
        tmp_path / "bad.flac",
    )
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # data cut
    X = [good] * 6 + [bad]
    y = ["a", "b"] * 3 + ["a"]
    clf = classifier(max_epochs=1, batch_size=2, random_state=0, warm_start=True)
    clf.fit(X[:6], y[:6]) if how == "warm_start" else clf.partial_fit(
        X[:6], y[:6], classes=["a", "b"]
    )
    snap = snapshot(clf)
    steps = []
    with optimizer_steps(pre=lambda opt, a, k: steps.append(1)):
        with pytest.raises(ValueError, match=r"clip 6: cannot read audio file"):
            if how == "warm_start":
                clf.fit(X, y)
            else:
                clf.partial_fit(X, y)
    assert steps  # the failure came after some steps had updated the model
    assert_unchanged(clf, snap)
