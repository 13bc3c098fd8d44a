"""skast._targets: the encoding of y, by where its classes come from."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from numpy.testing import assert_array_equal

from skast._targets import Targets, class_weights, encode_targets


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
