"""When fine-tuning stops: Ctrl-C, and early stopping on a validation split.

:class:`Interrupt` is the one record of a Ctrl-C that the loop of
:func:`skast._training.train` checks; :class:`EarlyStopping` keeps the best
validation score and weights as scikit-learn's MLP does, on the clips that
:func:`split` holds out, scored by :func:`validation_score`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from sklearn.model_selection import train_test_split

__all__ = ["EarlyStopping", "Interrupt", "split", "validation_score"]


# --------------------------------------------------------------------------- Ctrl-C


class Interrupt:
    """The one record of a Ctrl-C: :attr:`requested`, checked after each batch.

    In the main thread, the first Ctrl-C only sets the flag; a second raises
    :class:`KeyboardInterrupt` at once. Within :meth:`caught`, a
    :class:`KeyboardInterrupt` (a second Ctrl-C, or one raised by code the
    loop runs) ends the block and is taken as the same request:
    :func:`skast._training.train` runs each epoch and what follows it there.
    The previous handler is restored on exit.

    Examples
    --------
    >>> import os, signal
    >>> from skast._stopping import Interrupt
    >>> with Interrupt() as interrupt:
    ...     os.kill(os.getpid(), signal.SIGINT)
    ...     interrupt.requested
    True
    """

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        """A block that a :class:`KeyboardInterrupt` ends as a request.

        Examples
        --------
        >>> from skast._stopping import Interrupt
        >>> interrupt = Interrupt()
        >>> with interrupt.caught():
        ...     raise KeyboardInterrupt
        >>> interrupt.requested
        True
        """
        try:
            yield
        except KeyboardInterrupt:
            self.requested = True

    def __enter__(self) -> Interrupt:
        # signal handlers can only be set in the main thread
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            previous = self._previous
            signal.signal(
                signal.SIGINT, signal.SIG_DFL if previous is None else previous
            )


# --------------------------------------------------------------------------- validation


def validation_score(logits: torch.Tensor, targets: torch.Tensor, multilabel) -> float:
    """Accuracy (single-label) or the mean average precision over the labels
    that have a positive clip (multi-label, the paper's metric).

    Examples
    --------
    >>> import torch
    >>> from skast._stopping import validation_score
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    >>> validation_score(logits, torch.tensor([0, 1, 1]), multilabel=False)
    0.6666666865348816
    """
    if not multilabel:
        return float((logits.argmax(1) == targets).float().mean())
    y = targets.numpy()
    has_positive = y.sum(0) > 0
    if not has_positive.any():
        return 0.0
    return float(
        average_precision_score(
            y[:, has_positive], logits.numpy()[:, has_positive], average="macro"
        )
    )


# --------------------------------------------------------------------------- early stopping


class EarlyStopping:
    """Early stopping as scikit-learn's MLP: the best validation score, the
    count of epochs without an improvement of ``tol``, the best weights (CPU).

    Examples
    --------
    >>> import torch
    >>> from skast._stopping import EarlyStopping
    >>> stopping, model = EarlyStopping(tol=0.01, n_iter_no_change=1), torch.nn.Linear(1, 1)
    >>> [stopping.update(s, epoch, model) for epoch, s in enumerate([0.5, 0.8, 0.805, 0.7], 1)]
    [False, False, False, True]
    >>> stopping.best_score, stopping.best_epoch, sorted(stopping.best_state)
    (0.805, 3, ['bias', 'weight'])
    """

    def __init__(self, tol: float, n_iter_no_change: int):
        self.tol, self.n_iter_no_change = tol, n_iter_no_change
        self.scores: list[float] = []
        self.best_score = self.best_epoch = self.best_state = None
        self.no_improvement_count = 0

    def update(self, score: float, epoch: int, model) -> bool:
        """Record an epoch's score; whether training should stop."""
        self.scores.append(score)
        best = self.best_score
        if best is not None and score < best + self.tol:
            self.no_improvement_count += 1
        else:
            self.no_improvement_count = 0
        if best is None or score > best:  # the copy first: an interrupted
            state = {  # copy leaves the last best as it was
                k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            }
            self.best_score, self.best_epoch, self.best_state = score, epoch, state
        return self.no_improvement_count > self.n_iter_no_change


def split(targets: torch.Tensor, validation_fraction: float, multilabel, seed: int):
    """Sorted ``(train, validation)`` indices, stratified for single-label
    ``targets``, the same for the same ``seed``.

    Examples
    --------
    >>> import torch
    >>> from skast._stopping import split
    >>> train, valid = split(torch.tensor([0, 0, 0, 1, 1, 1]), 1 / 3, False, seed=0)
    >>> len(train), len(valid), sorted(torch.tensor([0, 0, 0, 1, 1, 1])[valid].tolist())
    (4, 2, [0, 1])
    """
    n = len(targets)
    stratify = None if multilabel else targets.numpy()
    try:
        train_idx, valid_idx = train_test_split(
            np.arange(n),
            test_size=validation_fraction,
            stratify=stratify,
            random_state=seed,
        )
    except ValueError as err:
        raise ValueError(
            f"cannot hold out validation_fraction={validation_fraction} "
            f"of {n} clips for early_stopping: {err}"
        ) from err
    return torch.as_tensor(np.sort(train_idx)), torch.as_tensor(np.sort(valid_idx))
