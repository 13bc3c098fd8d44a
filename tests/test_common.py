"""scikit-learn's estimator checks for ASTFeaturizer.

The checks feed 2-D arrays ``(n_samples, n_features)``; to the featurizer each
row is a waveform of ``n_features`` samples, i.e. a clip of a fraction of a
millisecond, which it pads to its ``max_length`` frames. A tiny random-weight
encoder keeps the dozens of fits fast.
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

from skast import ASTFeaturizer

TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_length=64,
)

LENGTH = "a waveform's length is not a feature count: clips of any length are accepted"


def expected_failed_checks(estimator):
    """Checks that assume ``X.shape[1]`` is a fixed number of features."""
    return {
        # asserts n_features_in_ is set at fit
        "check_n_features_in": LENGTH,
        # expects transform(X[:, [1]]) to raise "X has 1 features, but ..."
        "check_n_features_in_after_fitting": LENGTH,
        # ends by expecting transform(X[:, :-1]) to raise
        "check_transformer_general": LENGTH,
    }


def featurizers():
    return [ASTFeaturizer(model_config=TINY, device="cpu")]


_strict = (
    {"xfail_strict": True}  # an expected failure that passes is an error
    if parse_version(sklearn.__version__) >= parse_version("1.8")
    else {}
)


@parametrize_with_checks(
    featurizers(), expected_failed_checks=expected_failed_checks, **_strict
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# Public checks that check_estimator does not run (scikit-learn runs them in its
# own test_common.py).
@pytest.mark.parametrize("estimator", featurizers(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "check",
    [
        check_param_validation,
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
