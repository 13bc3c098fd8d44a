"""What a fitted :class:`skast.ASTClassifier` answers: logits, probabilities,
labels, per-window probabilities, and its score.

:class:`ClassifierPredictions` is a mixin of the estimator (left of
scikit-learn's ``ClassifierMixin``, whose ``score`` its own extends); it reads
the fitted attributes ``fit`` sets (``classes_``, the multi-label flag, the
label dtype, ``window_aggregation``) and runs the model through
:meth:`skast._base.ASTBase._forward_batches`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.utils.validation import check_is_fitted, column_or_1d

from skast import _audio
from skast._base import split_windows
from skast._targets import check_no_missing

__all__ = ["ClassifierPredictions"]


class ClassifierPredictions:
    """The prediction methods of :class:`skast.ASTClassifier`."""

    def _window_logits(self, X, *, always: bool = False):
        """The logits of each window of the clips (of each clip, without
        windows unless ``always``), and the windows."""
        check_is_fitted(self)
        audio = _audio.check_audio_input(X)
        windows = self._windows(audio, always=always)
        out = self._forward_batches(
            audio, _logits_of, desc="predicting", windows=windows
        ).astype(np.float64)
        return out, windows

    def _clip_logits(self, out: np.ndarray, windows) -> np.ndarray:
        """Per clip, the logits of its windows' aggregated probabilities."""
        if windows is None:
            return out
        rows, _ = split_windows(out, windows)
        return np.stack([r[0] if len(r) == 1 else self._aggregate(r) for r in rows])

    def _logits(self, X) -> np.ndarray:
        """The clips' logits; a windowed clip's are those of its aggregated
        probabilities (their logits or, single-label, their logarithms)."""
        return self._clip_logits(*self._window_logits(X))

    def _proba_and_windows(self, X):
        """:meth:`predict_proba` and :meth:`predict_proba_windows` from one
        pass over the windows (``skast tag --window-hop``)."""
        logits, windows = self._window_logits(X, always=True)
        proba = self._from_logits(self._clip_logits(logits, windows), expit, softmax)
        per_window = split_windows(self._from_logits(logits, expit, softmax), windows)
        return proba, per_window

    def _aggregate(self, logits: np.ndarray) -> np.ndarray:
        """Logits of the aggregate of the probabilities of one clip's windows."""
        how = self.window_aggregation
        if how == "auto":
            how = "max" if self._multilabel else "mean"
        if self._multilabel:
            if how == "max":  # the sigmoid is increasing
                return logits.max(axis=0)
            p = expit(logits).mean(axis=0)
            return np.log(p) - np.log1p(-p)
        log_p = log_softmax(logits, axis=1)
        if how == "max":
            return log_p.max(axis=0)  # a softmax of them renormalises
        return np.log(np.exp(log_p).mean(axis=0))

    def predict_proba_windows(self, X):
        """Class probabilities of each window of each clip.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        Returns
        -------
        proba : list of ndarray of shape (n_windows, n_classes)
            Per clip, one row of probabilities per window (see
            ``window_hop``; without it, one window per clip: its first
            ``max_length`` frames), as :meth:`predict_proba` gives for the
            clip cut at the window's start.
        starts : list of ndarray of shape (n_windows,)
            Per clip, the windows' start times in seconds.

        Examples
        --------
        >>> import numpy as np
        >>> from skast import ASTClassifier
        >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...             intermediate_size=64, max_length=64)
        >>> X = [np.zeros(16000), 0.1 * np.ones(4000)]
        >>> clf = ASTClassifier(model_config=tiny, window_hop=0.5, max_epochs=1,
        ...                     device="cpu", random_state=0).fit(X, ["a", "b"])
        >>> proba, starts = clf.predict_proba_windows(X)
        >>> proba[0].shape, starts[0].tolist(), starts[1].tolist()
        ((2, 2), [0.0, 0.34], [0.0])
        """
        logits, windows = self._window_logits(X, always=True)
        return split_windows(self._from_logits(logits, expit, softmax), windows)

    def decision_function(self, X):
        """The model's logits.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        Returns
        -------
        scores : ndarray of shape (n_clips,) or (n_clips, n_classes)
            One logit per class (per label for multi-label ``y``). For two
            classes, ``logit[1] - logit[0]``: positive means ``classes_[1]``.
        """
        logits = self._logits(X)
        if not self._multilabel and len(self.classes_) == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities: a softmax, or a sigmoid per label.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        Returns
        -------
        proba : ndarray of shape (n_clips, n_classes)
            In the order of ``classes_``. Rows sum to one, except for
            multi-label ``y`` where each column is one label's probability.
        """
        return self._probabilities(X, expit, softmax)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        Returns
        -------
        log_proba : ndarray of shape (n_clips, n_classes)
        """
        return self._probabilities(X, log_expit, log_softmax)

    def _probabilities(self, X, sigmoid, softmax_):
        """(Log-)probabilities from the logits: a sigmoid per label, the
        two-class softmax written with one sigmoid, or a softmax."""
        return self._from_logits(self._logits(X), sigmoid, softmax_)

    def _from_logits(self, logits, sigmoid, softmax_):
        if self._multilabel:
            return sigmoid(logits)
        if len(self.classes_) == 2:
            d = logits[:, 1] - logits[:, 0]
            return np.column_stack([sigmoid(-d), sigmoid(d)])
        return softmax_(logits, axis=1)

    def predict(self, X):
        """Predict the class (or the labels) of each clip.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        Returns
        -------
        y_pred : ndarray of shape (n_clips,) or (n_clips, n_labels)
            Labels from ``classes_``; for multi-label ``y``, an indicator
            matrix (a label is on when its probability exceeds 0.5).
        """
        logits = self._logits(X)
        if self._multilabel:
            return (logits > 0).astype(self._y_dtype)
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy (subset accuracy for multi-label ``y``) on these clips.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        y : array-like of shape (n_clips,) or (n_clips, n_labels)
            True labels; every one must be in ``classes_``.

        sample_weight : array-like of shape (n_clips,), default=None
            Sample weights.

        Returns
        -------
        score : float
            Mean accuracy of ``self.predict(X)`` with respect to ``y``.
        """
        check_is_fitted(self)
        y_arr = y.toarray() if sp.issparse(y) else np.asarray(y)
        if self._multilabel:
            if y_arr.ndim != 2 or y_arr.shape[1] != len(self.classes_):
                raise ValueError(
                    f"y must be an indicator matrix with {len(self.classes_)} "
                    f"columns, got shape {y_arr.shape}"
                )
        else:
            y_arr = column_or_1d(y_arr, warn=True)
            check_no_missing(y_arr)
            unseen = [  # .tolist(): ['z'], not [np.str_('z')]
                v for v in np.unique(y_arr).tolist() if not np.isin(v, self.classes_)
            ]
            if unseen:
                raise ValueError(
                    f"y holds labels {unseen!r} that the classifier was not fitted "
                    f"with; classes_ is {self.classes_!r}"
                )
        n_clips = len(_audio.check_audio_input(X, check_clips=False))
        if len(y_arr) != n_clips:  # before predicting, not after
            raise ValueError(
                f"X has {n_clips} clips but y has {len(y_arr)} labels; they "
                "must be as many"
            )
        return super().score(X, y_arr, sample_weight=sample_weight)


def _logits_of(model, x):
    """The model's logits of the features ``x``."""
    return model(x)
