"""Labels in, training targets out: the encoding of ``y`` for ASTClassifier.

Single-label ``y`` becomes class indices, multi-label ``y`` (an indicator
matrix) a uint8 matrix; the checks name what is wrong with ``y``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, is_multilabel
from sklearn.utils.validation import column_or_1d

__all__ = [
    "check_no_missing",
    "class_weights",
    "encode_targets",
    "equal",
    "first_call_classes",
]


def encode_targets(y, n_clips, *, fitted=None, incremental=False, classes=None):
    """``(targets, classes, multilabel, y dtype)`` for a classifier's ``fit``.

    ``targets`` is a CPU tensor of class indices or a uint8 indicator matrix.
    ``fitted`` is ``(classes_, multilabel)`` of the model that training goes
    on from (a ``partial_fit`` after the first), else None; ``incremental``
    and ``classes`` are those of ``partial_fit``.
    """
    going_on = fitted is not None
    if going_on:
        fitted_classes, fitted_multilabel = fitted
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
    if multilabel:
        if going_on and len(fitted_classes) != y.shape[1]:
            raise ValueError(
                f"y has {y.shape[1]} labels but the model was fitted with "
                f"{len(fitted_classes)}"
            )
        n_labels = y.shape[1]
        if incremental and not going_on:
            first_call_classes(classes)
            if len(np.unique(classes)) != n_labels:
                raise ValueError(
                    f"classes has {len(np.unique(classes))} entries but the "
                    f"multi-label y has {n_labels} columns"
                )
        if going_on and not fitted_multilabel:
            raise ValueError("the model was fitted on single-label y")
        targets = torch.from_numpy(np.ascontiguousarray(y != 0, dtype=np.uint8))
        return targets, np.arange(n_labels), True, y.dtype

    check_no_missing(y)
    check_classification_targets(y)
    try:
        labels, inverse = np.unique(y, return_inverse=True)
    except TypeError as err:
        raise ValueError(
            f"y mixes labels of types that cannot be compared: {err}"
        ) from err
    if going_on:
        if fitted_multilabel:
            raise ValueError("the model was fitted on multi-label y")
        if classes is not None and not equal(np.unique(classes), fitted_classes):
            raise ValueError(
                f"classes={classes!r} is not the classes_ of the first call, "
                f"{fitted_classes!r}"
            )
        new_classes = fitted_classes
    elif incremental:
        first_call_classes(classes)
        new_classes = np.unique(column_or_1d(np.asarray(classes)))
        if len(new_classes) < 2:
            raise ValueError(
                f"ASTClassifier needs at least 2 classes; got classes={new_classes!r}"
            )
    else:
        new_classes = labels
        if len(labels) < 2:
            raise ValueError(
                "ASTClassifier needs samples of at least 2 classes in y; got "
                f"1 class: {labels!r}"
            )
        return torch.from_numpy(inverse.astype(np.int64)), labels, False, None
    unseen = labels[~np.isin(labels, new_classes)]
    if len(unseen):
        raise ValueError(
            f"y holds labels {unseen.tolist()!r} that are not in classes "
            f"{new_classes.tolist()!r}"
        )
    idx = np.searchsorted(new_classes, y)
    return torch.from_numpy(idx.astype(np.int64)), new_classes, False, None


def class_weights(class_weight, targets, classes, multilabel):
    """Per-class loss weights (a float32 tensor) for ``class_weight``, or None."""
    if class_weight is None:
        return None
    if multilabel:
        raise ValueError("class_weight is only supported for single-label y")
    if isinstance(class_weight, str):
        y_idx = targets.numpy()
        weights = compute_class_weight(
            "balanced", classes=np.arange(len(classes)), y=y_idx
        )
    else:
        weights = compute_class_weight(
            class_weight, classes=classes, y=classes[targets.numpy()]
        )
    return torch.as_tensor(weights, dtype=torch.float32)


def equal(a, b) -> bool:
    """Whether two label arrays are the same (shape and values)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all(a == b))


def first_call_classes(classes):
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
