"""skast._targets: the encoding of y, by where its classes come from, the
balanced sampler's weights and draws, and bad labels through the classifier's
``fit``, ``partial_fit`` and ``score`` (each error names what is wrong; a
failed refit keeps the previous model).

fit's other label checks (NaN/None labels, one class, a ``y`` of the wrong
length, unseen labels at ``score``) are in tests/test_classifier.py.
"""

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from skast._targets import Targets, balanced_sample, class_weights, encode_targets
from tests._helpers import assert_same_input, assert_unchanged, classifier, snapshot


def test_a_first_fit_takes_the_classes_of_y():
    t = encode_targets(np.array([3, 7, 3]), 3)
    assert isinstance(t, Targets) and not t.multilabel and t.y_dtype is None
    assert_array_equal(t.classes, [3, 7])
    assert t.values.dtype == torch.int64 and t.values.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="at least 2 classes in y"):
        encode_targets(["a", "a"], 2)
    with pytest.raises(ValueError, match="as many"):
        encode_targets(["a", "b"], 3)
    with pytest.raises(ValueError, match="requires y to be passed"):
        encode_targets(None, 3)


def test_a_first_partial_fit_takes_the_classes_given():
    t = encode_targets(["b"], 1, incremental=True, classes=["c", "a", "b"])
    assert_array_equal(t.classes, ["a", "b", "c"])
    assert t.values.tolist() == [1]
    with pytest.raises(ValueError, match="classes must be passed on the first"):
        encode_targets(["b"], 1, incremental=True)
    with pytest.raises(ValueError, match="at least 2 classes; got"):
        encode_targets(["b"], 1, incremental=True, classes=["b"])
    with pytest.raises(ValueError, match=r"labels \['z'\] that are not in classes"):
        encode_targets(["z"], 1, incremental=True, classes=["a", "b"])


def test_a_partial_fit_that_goes_on_keeps_the_fitted_classes():
    fitted = (np.array(["a", "b"]), False)
    t = encode_targets(["b", "a"], 2, fitted=fitted, incremental=True)
    assert_array_equal(t.classes, ["a", "b"])
    assert t.values.tolist() == [1, 0]
    same = encode_targets(["a"], 1, fitted=fitted, incremental=True, classes=["b", "a"])
    assert_array_equal(same.classes, ["a", "b"])
    with pytest.raises(ValueError, match="is not the classes_ of the first call"):
        encode_targets(["a"], 1, fitted=fitted, incremental=True, classes=["a", "c"])
    with pytest.raises(ValueError, match="fitted on multi-label y"):
        encode_targets(["a"], 1, fitted=(np.arange(2), True), incremental=True)


def test_an_indicator_matrix():
    Y = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    t = encode_targets(sp.csr_matrix(Y), 2)
    assert (
        t.multilabel and t.y_dtype == np.dtype(bool) and t.values.dtype == torch.uint8
    )
    assert_array_equal(t.classes, [0, 1, 2])
    assert t.values.tolist() == Y.tolist()
    with pytest.raises(ValueError, match="indicator matrix of 0/1"):
        encode_targets(np.array([[0, 2], [1, 0]]), 2)
    with pytest.raises(ValueError, match="3 columns"):
        encode_targets(Y, 2, incremental=True, classes=[0, 1])
    with pytest.raises(
        ValueError, match="y has 3 labels but the model was fitted with 2"
    ):
        encode_targets(Y, 2, fitted=(np.arange(2), True), incremental=True)
    with pytest.raises(ValueError, match="fitted on single-label y"):
        encode_targets(Y, 2, fitted=(np.arange(3), False), incremental=True)


def test_class_weights():
    t = encode_targets(["a", "a", "a", "b"], 4)
    assert class_weights(None, t) is None
    balanced = class_weights("balanced", t)
    assert balanced.dtype == torch.float32
    assert balanced.tolist() == pytest.approx([4 / 6, 4 / 2])
    assert class_weights({"a": 1.0, "b": 3.0}, t).tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="single-label"):
        class_weights("balanced", encode_targets(np.eye(2, dtype=int), 2))


# ---------------------------------------------------------------- balanced sampling


def expected_weights(Y):
    """The AudioSet recipe's sample weights, written out for an indicator
    ``Y`` (egs/audioset/gen_weight_file.py)."""
    Y = np.asarray(Y, dtype=np.float64)
    return Y @ (1000.0 / (Y.sum(0) + 0.01))


def assert_binomial(counts, weights, n_draws):
    """Each clip's count of ``n_draws`` independent draws within 5 binomial
    standard deviations of ``n_draws * p`` (p = its share of the weights),
    and the counts told apart from drawing every clip alike."""
    p = weights / weights.sum()
    sigma = np.sqrt(n_draws * p * (1 - p))
    assert_array_equal(counts[p == 0], 0)
    assert (np.abs(counts - n_draws * p) <= 5 * sigma).all()
    uniform = n_draws / len(p)
    assert (np.abs(uniform - n_draws * p) > 5 * sigma).any()  # the test can tell


@pytest.mark.parametrize("multilabel", [False, True])
def test_balanced_sample_follows_the_weights(multilabel):
    rng = np.random.default_rng(0)
    y = rng.choice(4, size=30, p=[0.6, 0.25, 0.1, 0.05])
    Y = np.eye(4, dtype=np.uint8)[y]
    if multilabel:
        Y[:, 3] |= (rng.random(30) < 0.2).astype(np.uint8)  # a second label
        Y[0] = 0  # a clip without labels
        targets = torch.from_numpy(Y)
    else:
        targets = torch.from_numpy(y)
    n = 100_000
    draws = balanced_sample(targets, n, torch.Generator().manual_seed(0))
    assert draws.shape == (n,) and draws.dtype == torch.int64
    assert_binomial(np.bincount(draws, minlength=30), expected_weights(Y), n)
    again = balanced_sample(targets, n, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    with pytest.raises(ValueError, match="no training clip has a label"):
        balanced_sample(torch.zeros((3, 2), dtype=torch.uint8), 3, torch.Generator())


# ---------------------------------------------------------------- through the classifier


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
def test_bad_labels(call, y, error, pattern, fitted_classifier, good_clips):
    """fit's other label checks are in test_classifier.py; a failed refit
    keeps the previous model."""
    y_copy = copy.deepcopy(y)
    if call == "partial_fit_one_class":  # a first call with one class
        est = classifier()
        params = dict(est.__dict__)
        with pytest.raises(error, match=pattern):
            est.partial_fit(good_clips, y, classes=["a"])
        assert est.__dict__ == params
    else:
        est = copy.deepcopy(fitted_classifier)
        snap = snapshot(est)
        with pytest.raises(error, match=pattern):
            getattr(est, call)(good_clips, y)
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
    est = classifier()
    pattern = rf"at index {bad[0]} and {len(bad) - 1} other"
    with pytest.raises(ValueError, match=pattern):
        est.fit(X, y)
    assert not hasattr(est, "model_")
