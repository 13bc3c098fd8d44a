"""When fine-tuning stops, and which weights it ends with.

:class:`Interrupt` is the one record of a Ctrl-C that the loop of
:func:`skast._training.train` checks; :class:`EarlyStopping` keeps the best
validation score and weights as scikit-learn's MLP does, on the clips that
:func:`split` holds out, scored by :func:`validation_score`;
:class:`WeightAverage` keeps the mean of the weights of a range of epochs,
as the AudioSet recipe does.
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

__all__ = ["EarlyStopping", "Interrupt", "WeightAverage", "split", "validation_score"]


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


# --------------------------------------------------------------------------- weight averaging


class WeightAverage:
    """The mean of a model's trained weights at the end of epochs ``first``
    to ``last`` (counted from 1, both included), as the original's
    ``wa_start`` / ``wa_end``.

    A running sum on the CPU, in the weights' dtype as the original's sum of
    the saved state dicts: one copy of the trained weights, not one per
    epoch. Only the parameters that require gradients when an epoch is added
    are averaged: frozen ones (and buffers) keep their values exactly.

    Examples
    --------
    >>> import torch
    >>> from skast._stopping import WeightAverage
    >>> model, average = torch.nn.Linear(1, 1), WeightAverage(2, 3)
    >>> bias = model.bias.requires_grad_(False).item()  # frozen
    >>> for epoch, w in enumerate([1.0, 2.0, 4.0, 8.0], 1):
    ...     _ = torch.nn.init.constant_(model.weight, w)
    ...     average.update(epoch, model)
    >>> average.epochs, average.state_dict()
    ([2, 3], {'weight': tensor([[3.]])})
    >>> average.load_into(model)
    >>> model.weight.item(), model.bias.item() == bias
    (3.0, True)
    """

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.epochs: list[int] = []
        self.total: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, model) -> None:
        """Add the trained weights at the end of ``epoch`` if it is in the
        range."""
        if not self.first <= epoch <= self.last:
            return
        trained = [
            (k, p.detach()) for k, p in model.named_parameters() if p.requires_grad
        ]
        if self.total is None:
            total = {k: p.to("cpu", copy=True) for k, p in trained}
        else:  # a new sum, so that an interrupted one leaves the last as it was
            total = {k: self.total[k] + p.cpu() for k, p in trained}
        self.total, self.epochs = total, [*self.epochs, epoch]

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The mean of the epochs added, of the trained parameters; None
        before the first."""
        if self.total is None:
            return None
        return {k: v / len(self.epochs) for k, v in self.total.items()}

    def load_into(self, model) -> None:
        """Give ``model`` the mean (if an epoch was added); its other
        entries are left as they are."""
        if self.total is not None:
            model.load_state_dict(self.state_dict(), strict=False)
