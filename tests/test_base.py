"""skast._base: what the estimators share; here, the normalize parameter's values."""

import numpy as np
import pytest

from skast._base import resolve_normalization
from skast._recipes import NORM_STATS


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
