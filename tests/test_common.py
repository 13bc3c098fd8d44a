"""scikit-learn's estimator checks for ASTFeaturizer and ASTClassifier.

The checks feed 2-D arrays ``(n_samples, n_features)``; to the estimators each
row is a waveform of ``n_features`` samples, i.e. a clip of a fraction of a
millisecond, which they pad to their ``max_length`` frames. Tiny random-weight
models (the classifier trained for two epochs in one batch) keep the dozens of
fits fast.
"""

import pytest
import sklearn
from sklearn.utils.estimator_checks import (
    check_param_validation,
    check_set_output_transform,
    check_transformer_get_feature_names_out,
    check_transformer_get_feature_names_out_pandas,
    parametrize_with_checks,
)
from sklearn.utils.fixes import parse_version

from skast import ASTClassifier, ASTFeaturizer
from tests.conftest import SHORT, TINY

# One encoder layer: check_methods_subset_invariance compares the outputs of
# one batch with those of one clip at a time at atol=1e-7, about one float32
# rounding of values near 1; every layer's batched matmuls add their own.
FEATURIZER = dict(TINY, num_hidden_layers=1)
CLASSIFIER = dict(SHORT, num_hidden_layers=1)

LENGTH = "a waveform's length is not a feature count: clips of any length are accepted"

# Checks that assume ``X.shape[1]`` is a fixed number of features.
EXPECTED_FAILURES = {
    "ASTFeaturizer": {
        # asserts n_features_in_ is set at fit
        "check_n_features_in": LENGTH,
        # expects transform(X[:, [1]]) to raise "X has 1 features, but ..."
        "check_n_features_in_after_fitting": LENGTH,
        # ends by expecting transform(X[:, :-1]) to raise
        "check_transformer_general": LENGTH,
    },
    "ASTClassifier": {
        "check_n_features_in": LENGTH,
        "check_n_features_in_after_fitting": LENGTH,
        # expects partial_fit to raise when X.shape[1] changes between calls
        "check_estimators_partial_fit_n_features": LENGTH,
        # expects predict(X.T) to raise; X.T is a valid set of longer clips
        # (the rest of this check is in test_classifier.py)
        "check_classifiers_train": LENGTH,
    },
}


def expected_failed_checks(estimator):
    return EXPECTED_FAILURES[type(estimator).__name__]


def featurizers():
    return [ASTFeaturizer(model_config=FEATURIZER, device="cpu")]


def classifiers():
    return [
        ASTClassifier(
            model_config=CLASSIFIER,
            device="cpu",
            max_epochs=2,
            batch_size=256,
            learning_rate=1e-2,
            random_state=0,
        )
    ]


_strict = (
    {"xfail_strict": True}  # an expected failure that passes is an error
    if parse_version(sklearn.__version__) >= parse_version("1.8")
    else {}
)


@parametrize_with_checks(
    featurizers() + classifiers(),
    expected_failed_checks=expected_failed_checks,
    **_strict,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# Public checks that check_estimator does not run (scikit-learn runs them in its
# own test_common.py).
@pytest.mark.parametrize(
    "estimator", featurizers() + classifiers(), ids=lambda e: type(e).__name__
)
def test_param_validation(estimator):
    check_param_validation(type(estimator).__name__, estimator)


@pytest.mark.parametrize("estimator", featurizers(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "check",
    [
        check_set_output_transform,
        # both expect get_feature_names_out(input_features) to check the names
        # against the input columns, which are samples of a waveform here
        pytest.param(
            check_transformer_get_feature_names_out,
            marks=pytest.mark.xfail(strict=True, reason=LENGTH),
        ),
        pytest.param(
            check_transformer_get_feature_names_out_pandas,
            marks=pytest.mark.xfail(strict=True, reason=LENGTH),
        ),
    ],
    ids=lambda c: c.__name__,
)
def test_more_checks(estimator, check):
    check(type(estimator).__name__, estimator)
