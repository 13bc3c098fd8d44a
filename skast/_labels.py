"""Label names of the published AST heads, a head's labels as ``classes_``,
and whether a head is multi-label.

An original ``.pth`` file of the AST repository does not name its outputs; its
task shows in its head's size: 527 outputs are AudioSet's labels, 35 the Speech
Commands keywords, 50 the ESC-50 classes. The tables ship in ``skast/data/``
(their source and licences are in its README).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
from importlib import resources

import numpy as np
import torch

__all__ = ["label_table", "guess_multilabel", "head_labels", "AUDIOSET_LABELS"]

#: Number of outputs of an AudioSet head (multi-label, sigmoid per label).
AUDIOSET_LABELS = 527
# head size -> the table that names its outputs
_TABLES = {
    AUDIOSET_LABELS: "audioset_class_labels_indices.csv",
    35: "speechcommands_class_labels_indices.csv",
    50: "esc50_class_labels_indices.csv",
}


@functools.cache
def _read(name: str) -> tuple[str, ...]:
    text = resources.files("skast").joinpath("data", name).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"skast/data/{name}: the indices are not 0, 1, 2 ...")
    return tuple(r["display_name"] for r in rows)


def label_table(n_outputs: int) -> dict[int, str] | None:
    """The names of a published head's outputs, by the head's size.

    Parameters
    ----------
    n_outputs : int
        Number of outputs of the head.

    Returns
    -------
    dict of int to str or None
        ``{index: name}`` of AudioSet (527), Speech Commands (35) or ESC-50
        (50); ``None`` for any other size.

    Examples
    --------
    >>> from skast._labels import label_table
    >>> label_table(527)[0], label_table(35)[0], label_table(50)[0]
    ('Speech', 'backward', 'dog')
    >>> label_table(3) is None
    True
    """
    name = _TABLES.get(n_outputs)
    return None if name is None else dict(enumerate(_read(name)))


def guess_multilabel(n_outputs: int, problem_type: str | None = None) -> bool:
    """Whether a head is multi-label: its config's ``problem_type``, else its size.

    Parameters
    ----------
    n_outputs : int
        Number of outputs of the head.
    problem_type : str, default=None
        A Hugging Face config's ``problem_type``:
        ``"multi_label_classification"`` is multi-label,
        ``"single_label_classification"`` (and ``"regression"``) are not.

    Returns
    -------
    bool
        With ``problem_type`` unset, True for an AudioSet head (527 outputs)
        and False for any other.

    Examples
    --------
    >>> from skast._labels import guess_multilabel
    >>> guess_multilabel(527), guess_multilabel(35)
    (True, False)
    >>> guess_multilabel(10, "multi_label_classification")
    True
    """
    if problem_type is not None:
        return problem_type == "multi_label_classification"
    return n_outputs == AUDIOSET_LABELS


def head_labels(model, *, sort: bool) -> np.ndarray:
    """A model's head's label names, in order, as a classifier's ``classes_``.

    Parameters
    ----------
    model : skast._model.AST
        A model with a head; with ``sort``, changed in place.
    sort : bool
        Sort the names (as ``fit`` sorts labels), reordering the head's
        outputs and ``model.config.id2label`` alike, so that output ``i`` is
        still the score of name ``i``. Refuses names that are not unique.

    Returns
    -------
    ndarray of str
        The names of the head's outputs, in the order of its outputs.

    Examples
    --------
    >>> from skast._labels import head_labels
    >>> from skast._model import AST, ASTConfig
    >>> model = AST(ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...                       num_attention_heads=2, intermediate_size=64,
    ...                       max_length=32, id2label={0: "dog", 1: "cat"}))
    >>> head_labels(model, sort=True), model.config.id2label
    (array(['cat', 'dog'], dtype='<U3'), {0: 'cat', 1: 'dog'})
    """
    id2label = model.config.id2label
    names = np.array([id2label[i] for i in range(len(id2label))])
    if not sort:
        return names
    if len(set(names.tolist())) != len(names):
        raise ValueError(
            "the head's label names are not unique; pass multilabel=True to "
            "use it as a multi-label head"
        )
    order = np.argsort(names, kind="stable")
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(linear.weight[torch.as_tensor(order)])
        linear.bias.copy_(linear.bias[torch.as_tensor(order)])
    model.config = dataclasses.replace(
        model.config, id2label=dict(enumerate(names[order].tolist()))
    )
    return names[order]
