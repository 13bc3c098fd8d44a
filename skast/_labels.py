"""Label names of the published AST heads, and whether a head is multi-label.

An original ``.pth`` file of the AST repository does not name its outputs; its
task shows in its head's size: 527 outputs are AudioSet's labels, 35 the Speech
Commands keywords, 50 the ESC-50 classes. The tables ship in ``skast/data/``
(their source and licences are in its README).
"""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources

__all__ = ["label_table", "guess_multilabel", "AUDIOSET_LABELS"]

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
