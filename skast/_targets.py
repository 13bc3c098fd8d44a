"""Labels in, training targets out: the encoding of ``y`` for ASTClassifier.

Single-label ``y`` becomes class indices, multi-label ``y`` (an indicator
matrix) a uint8 matrix; the checks name what is wrong with ``y``. Where the
classes come from is what :func:`encode_targets` decides: from ``y`` on a
first ``fit``, from ``classes`` on a first ``partial_fit`` call, from the
fitted model when a ``partial_fit`` goes on. The targets also weigh the
clips: :func:`class_weights` in the loss, :func:`balanced_sample` in the
draw of an epoch's clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, is_multilabel
from sklearn.utils.validation import column_or_1d

__all__ = [
    "Targets",
    "balanced_sample",
    "balanced_weights",
    "check_no_missing",
    "class_weights",
    "encode_targets",
    "equal",
    "require_classes",
]


@dataclass(frozen=True)
class Targets:
    """The training targets of a ``fit`` and what they were encoded against.

    Attributes
    ----------
    values : torch.Tensor
        CPU class indices (int64, single-label) or a uint8 indicator matrix.
    classes : ndarray
        The classifier's ``classes_``: the labels, or ``arange(n_labels)``.
    multilabel : bool
        Whether ``y`` is an indicator matrix.
    y_dtype : numpy.dtype or None
        The indicator matrix's dtype (that of the predictions); None for
        single-label ``y``.
    """

    values: torch.Tensor
    classes: np.ndarray
    multilabel: bool
    y_dtype: np.dtype | None = None


def encode_targets(y, n_clips, *, fitted=None, incremental=False, classes=None):
    """The :class:`Targets` of ``y`` for a classifier's ``fit``.

    ``fitted`` is ``(classes_, multilabel)`` of the model that training goes
    on from (a ``partial_fit`` after the first), else None; ``incremental``
    and ``classes`` are those of ``partial_fit``.

    Examples
    --------
    >>> from skast._targets import encode_targets
    >>> t = encode_targets(["dog", "cat", "dog"], 3)
    >>> t.values, t.classes, t.multilabel
    (tensor([1, 0, 1]), array(['cat', 'dog'], dtype='<U3'), False)
    >>> encode_targets(["cat"], 1, incremental=True, classes=["cat", "dog"]).values
    tensor([0])
    """
    y = _label_array(y, n_clips)
    if y.ndim == 2:
        n_labels = _indicator_columns(y.shape[1], fitted, incremental, classes)
        values = torch.from_numpy(np.ascontiguousarray(y != 0, dtype=np.uint8))
        return Targets(values, np.arange(n_labels), True, y.dtype)
    labels, inverse = _unique_labels(y)
    if fitted is None and not incremental:  # a first fit: y's classes
        if len(labels) < 2:
            raise ValueError(
                "ASTClassifier needs samples of at least 2 classes in y; got "
                f"1 class: {labels!r}"
            )
        return Targets(torch.from_numpy(inverse.astype(np.int64)), labels, False)
    known = _known_classes(fitted, classes)
    unseen = labels[~np.isin(labels, known)]
    if len(unseen):
        raise ValueError(
            f"y holds labels {unseen.tolist()!r} that are not in classes "
            f"{known.tolist()!r}"
        )
    indices = np.searchsorted(known, y).astype(np.int64)
    return Targets(torch.from_numpy(indices), known, False)


def _label_array(y, n_clips) -> np.ndarray:
    """``y`` as a 1-D array of labels or a 2-D indicator matrix of ``n_clips`` rows."""
    if y is None:
        raise ValueError(
            "This ASTClassifier estimator requires y to be passed, but the "
            "target y is None."
        )
    if sp.issparse(y):
        y = y.toarray()
    y = np.asarray(y)
    multilabel = y.ndim == 2 and y.shape[1] > 1
    if multilabel and not is_multilabel(y):
        raise ValueError(
            "a 2-D y must be a multi-label indicator matrix of 0/1 (one column "
            f"per label); got values {np.unique(y)[:10]}"
        )
    if not multilabel:
        y = column_or_1d(y, warn=True)
    if y.shape[0] != n_clips:
        raise ValueError(
            f"X has {n_clips} clips but y has {y.shape[0]} labels; they must be as many"
        )
    return y


def _indicator_columns(n_labels, fitted, incremental, classes) -> int:
    """Check an indicator matrix's ``n_labels`` columns against the fitted
    model or partial_fit's first ``classes``."""
    if fitted is not None and len(fitted[0]) != n_labels:
        raise ValueError(
            f"y has {n_labels} labels but the model was fitted with {len(fitted[0])}"
        )
    if incremental and fitted is None:
        require_classes(classes)
        if len(np.unique(classes)) != n_labels:
            raise ValueError(
                f"classes has {len(np.unique(classes))} entries but the "
                f"multi-label y has {n_labels} columns"
            )
    if fitted is not None and not fitted[1]:
        raise ValueError("the model was fitted on single-label y")
    return n_labels


def _unique_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted labels of single-label ``y`` and each clip's index into them."""
    check_no_missing(y)
    check_classification_targets(y)
    try:
        return np.unique(y, return_inverse=True)
    except TypeError as err:
        raise ValueError(
            f"y mixes labels of types that cannot be compared: {err}"
        ) from err


def _known_classes(fitted, classes) -> np.ndarray:
    """The classes of a partial_fit: the fitted model's (``classes``, when
    given, must be them), or on the first call ``classes`` themselves."""
    if fitted is not None:
        fitted_classes, fitted_multilabel = fitted
        if fitted_multilabel:
            raise ValueError("the model was fitted on multi-label y")
        if classes is not None and not equal(np.unique(classes), fitted_classes):
            raise ValueError(
                f"classes={classes!r} is not the classes_ of the first call, "
                f"{fitted_classes!r}"
            )
        return fitted_classes
    require_classes(classes)
    known = np.unique(column_or_1d(np.asarray(classes)))
    if len(known) < 2:
        raise ValueError(
            f"ASTClassifier needs at least 2 classes; got classes={known!r}"
        )
    return known


def class_weights(class_weight, targets: Targets):
    """Per-class loss weights (a float32 tensor) for ``class_weight``, or None."""
    if class_weight is None:
        return None
    if targets.multilabel:
        raise ValueError("class_weight is only supported for single-label y")
    y_idx, classes = targets.values.numpy(), targets.classes
    if isinstance(class_weight, str):
        weights = compute_class_weight(
            "balanced", classes=np.arange(len(classes)), y=y_idx
        )
    else:
        weights = compute_class_weight(class_weight, classes=classes, y=classes[y_idx])
    return torch.as_tensor(weights, dtype=torch.float32)


#: The original's ``label_weight = LABEL_WEIGHT / (label_count + LABEL_SMOOTHING)``
#: (egs/audioset/gen_weight_file.py).
LABEL_WEIGHT, LABEL_SMOOTHING = 1000.0, 0.01


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """The AudioSet recipe's sampling weight of each clip (float64).

    ``sample_weight[i] = sum over the labels of clip i of 1000 /
    (label_count + 0.01)``, the counts over these ``targets``: a uint8
    indicator matrix, or class indices (a clip's labels are its one class).
    A clip without labels weighs 0.

    Examples
    --------
    >>> import torch
    >>> from skast._targets import balanced_weights
    >>> balanced_weights(torch.tensor([0, 0, 0, 1]))  # 1000 / 3.01, 1000 / 1.01
    tensor([332.2259, 332.2259, 332.2259, 990.0990], dtype=torch.float64)
    >>> balanced_weights(torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.uint8))
    tensor([1487.6114,  497.5124,    0.0000], dtype=torch.float64)
    """
    if targets.ndim == 1:
        label_count = torch.bincount(targets).double()
        return LABEL_WEIGHT / (label_count[targets] + LABEL_SMOOTHING)
    indicator = targets.double()
    return indicator @ (LABEL_WEIGHT / (indicator.sum(0) + LABEL_SMOOTHING))


def balanced_sample(
    targets: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` clip indices drawn with replacement, each with probability
    proportional to its :func:`balanced_weights` among ``targets``.

    The AudioSet recipe's sampler:
    ``torch.utils.data.WeightedRandomSampler(replacement=True)``. One call
    is one epoch's draw (the original draws ``n`` = the number of training
    clips); it depends only on its arguments, so that a loop over streamed
    data or over several ranks can call it per epoch with its own targets
    and generator.

    Examples
    --------
    >>> import torch
    >>> from skast._targets import balanced_sample
    >>> y = torch.tensor([0] * 9 + [1])  # one clip of class 1
    >>> draws = balanced_sample(y, 10_000, torch.Generator().manual_seed(0))
    >>> float((draws == 9).float().mean())  # weighs as much as the other nine
    0.5030...
    """
    weights = balanced_weights(targets)
    if not weights.any():
        raise ValueError(
            "sampler='balanced' draws clips by their labels, but no training "
            "clip has a label"
        )
    sampler = torch.utils.data.WeightedRandomSampler(
        weights, n, replacement=True, generator=generator
    )
    return torch.tensor(list(sampler), dtype=torch.int64)


def equal(a, b) -> bool:
    """Whether two label arrays are the same (shape and values)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all(a == b))


def require_classes(classes) -> None:
    """``partial_fit``'s first call must name every class."""
    if classes is None:
        raise ValueError("classes must be passed on the first call to partial_fit")


def check_no_missing(y: np.ndarray) -> None:
    """Clear errors for NaN/None labels (np.unique would fail obscurely)."""
    if y.dtype.kind == "f":
        if np.isinf(y).any():
            raise ValueError("Input y contains infinity: labels must be finite")
        bad = np.flatnonzero(np.isnan(y))
    elif y.dtype.kind == "O":
        bad = [
            i
            for i, v in enumerate(y)
            if v is None or (isinstance(v, float) and np.isnan(v))
        ]
    else:
        return
    if len(bad):
        raise ValueError(
            f"y contains missing labels (NaN or None), at index {int(bad[0])} "
            f"and {len(bad) - 1} other(s); every clip needs a label"
        )
