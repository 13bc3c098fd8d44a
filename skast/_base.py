"""What ASTFeaturizer and ASTClassifier share: parameters, set-up, the data
path and device-safe pickling.

The data path, one pass per batch, top to bottom in :meth:`ASTBase._iter_features`
and :meth:`ASTBase._forward_batches`: ``X`` (validated by
:func:`skast._audio.check_audio_input`) -> :func:`skast._batches.load_batches`
(clips decoded, padded into page-locked memory for CUDA) -> the model's device
(one asynchronous copy) -> :func:`skast._features.fbank` of the padded batch
(``max_length`` frames) -> :func:`skast._features.normalize` -> :func:`skast._runtime.evaluate`
of the model -> float32 numpy. One path for both estimators up to the pooled
vector. With ``window_hop``, the batch items are the windows of the clips
(:func:`skast._batches.window_starts`), ``batch_size`` windows at a time
across clips; :meth:`ASTBase._windows` places them and
:func:`split_windows` hands each clip its windows' rows.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Callable, Iterator
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions

from skast import _batches, _features, _onnx
from skast._checkpoints import load_checkpoint
from skast._decode import check_rate
from skast._model import AST, ASTConfig
from skast._recipes import BACKENDS, NORM_STATS
from skast._runtime import (
    PRECISIONS,
    device_on_load,
    evaluate,
    progress_bar,
    resolve_autocast,
    resolve_device,
)

__all__ = ["ASTBase", "resolve_normalization", "split_windows"]


class ASTBase(BaseEstimator):
    """Parameters, model construction, the feature path and device-safe pickling.

    Subclasses set ``_parameter_constraints`` from :attr:`_common_constraints`
    and call :meth:`_setup` at the start of ``fit``.
    """

    _common_constraints: dict = {
        "checkpoint": [None, str, os.PathLike],
        "model_config": [None, dict],
        "max_length": [None, Interval(Integral, 16, None, closed="left")],
        # a pair's values are checked by _resolve_normalization
        "normalize": [StrOptions({*NORM_STATS, "fit"}), tuple, list],
        # True is an Integral too: _setup refuses booleans
        "sample_rate": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [None, str, torch.device],
        # int8 only with backend="onnxruntime": checked by _setup
        "precision": [StrOptions({*PRECISIONS, "int8"})],
        "backend": [StrOptions(set(BACKENDS))],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        # seconds; windows start on 10 ms frames, so a hop is at least one
        "window_hop": [None, Interval(Real, 0.01, None, closed="left")],
        "verbose": ["verbose"],
    }

    # ------------------------------------------------------------------ set-up

    @contextlib.contextmanager
    def _rollback_on_error(self):
        """Restore the estimator's attributes if the block raises, so that a
        failed (or interrupted) ``fit`` leaves the estimator as it was, not
        half-fitted. The model object itself is not copied."""
        state = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state)
            raise

    def _setup(self, audio, *, keep_model: bool = False) -> None:
        """Resolve device and precision; build or load the model and the
        normalisation (``keep_model``: keep both, as warm starts do).

        ``audio`` is the validated input (:func:`skast._audio.check_audio_input`).
        """
        normalization = self._resolve_normalization()
        check_rate(self.sample_rate)  # True passes Interval(Integral)
        _onnx.check_backend(self.backend, self.precision)
        device = resolve_device(self.device)
        self.device_ = str(device)
        self._autocast = self._resolve_autocast(device)
        if keep_model:
            self.model_.to(device)
            return
        self.model_ = self._build_model().to(device).eval()
        if normalization is None:
            normalization = self._fit_normalization(audio)
        self.normalization_ = normalization

    def _resolve_autocast(self, device: torch.device) -> torch.dtype | None:
        """PyTorch's autocast dtype (int8 is ONNX Runtime's alone)."""
        return resolve_autocast(_onnx.torch_precision(self.precision), device)

    def _setting(self, name: str):
        """The value in force for parameter ``name`` (a classifier's recipe may
        fill in parameters the user left at their defaults)."""
        return getattr(self, name)

    def _resolve_normalization(self) -> tuple[float, float] | None:
        """The ``(mean, std)`` of the ``normalize`` in force (``None`` for
        ``"fit"``); a bad pair raises ``ValueError`` naming it."""
        normalize = self._setting("normalize")
        if isinstance(normalize, str) and normalize == "fit":
            return None
        try:
            return resolve_normalization(normalize)
        except (TypeError, ValueError) as err:
            raise ValueError(f"normalize={normalize!r}: {err}") from err

    def _build_model(self) -> AST:
        """The encoder: loaded from ``checkpoint`` or randomly initialised
        (seeded by :meth:`_init_seed`; the global RNG state is left as it was)."""
        max_length = self._setting("max_length")
        if self.checkpoint is None:
            fields = dict(self.model_config or {})
            if max_length is not None:
                fields["max_length"] = max_length
            try:
                config = ASTConfig(**fields)
            except (TypeError, ValueError) as err:
                raise ValueError(f"model_config={self.model_config!r}: {err}") from err
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(self._init_seed())
                return AST(config)
        if self.model_config:
            raise ValueError(
                "model_config only applies to a randomly initialised model "
                "(checkpoint=None); a checkpoint brings its own architecture"
            )
        return load_checkpoint(self.checkpoint, max_length=max_length).model

    def _init_seed(self) -> int:
        """Seed of a random initialisation (the classifier uses random_state)."""
        return 0

    def _fit_normalization(self, audio) -> tuple[float, float]:
        """Mean and std of the training clips' log-mel features.

        Computed over every value of the padded/truncated features, as the
        original ``get_norm_stats`` does (without its augmentation); with
        ``window_hop``, over every window of the clips.
        """
        total = total_sq = 0.0
        count = 0
        batches = self._iter_features(
            audio, desc="normalization", normalized=False, windows=self._windows(audio)
        )
        for _, feats in batches:
            feats = feats.double()
            total += feats.sum().item()
            total_sq += feats.square().sum().item()
            count += feats.numel()
        mean = total / count
        std = max((total_sq / count - mean * mean) ** 0.5, 1e-8)
        return float(mean), float(std)

    # ------------------------------------------------------------------ data path

    def _windows(self, audio, *, always: bool = False) -> list[tuple[int, int]] | None:
        """Each window's ``(clip, start frame)``, in the clips' order, or
        ``None`` when ``window_hop`` is ``None`` or no clip is longer than
        one window (then the clips are the batch items, as without windows).
        ``always``: the windows even then (one per clip at frame 0 without
        ``window_hop``). Each clip is loaded (once) to count its samples."""
        hop = getattr(self, "window_hop", None)
        if hop is None and not always:
            return None
        max_length = self.model_.config.max_length
        windows, long_clip = [], False
        for i in range(len(audio)):
            if hop is None:
                starts = [0]
            else:
                n_samples = audio.load(i, self.sample_rate, copy=False).shape[0]
                starts = _batches.window_starts(n_samples, max_length, hop)
            long_clip |= len(starts) > 1
            windows.extend((i, int(start)) for start in starts)
        return windows if long_clip or always else None

    def _iter_features(
        self, audio, *, desc: str, normalized: bool = True, windows=None
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield ``(indices, log-mel (B, max_length, n_mels))`` on the device,
        in order, ``batch_size`` clips at a time; normalised unless told not.

        Each batch is padded on the CPU as it is loaded (into page-locked
        memory for CUDA) and moves to the device in one asynchronous copy, so
        that preparing the next batch overlaps the device's work on this one.
        Float32 clips are read in place, not copied first: the padding is
        their only copy. With ``windows`` (see :meth:`_windows`), the items
        and indices are the windows.
        """
        device = torch.device(self.device_)
        config = self.model_.config
        batches = _batches.load_batches(
            audio,
            sample_rate=self.sample_rate,
            batch_size=self.batch_size,
            max_length=config.max_length,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            copy=False,
            windows=windows,
        )
        total = len(audio) if windows is None else len(windows)
        unit = "clip" if windows is None else "window"
        bar = progress_bar(
            total=total, enabled=bool(self.verbose), desc=desc, unit=unit
        )
        with bar:
            for batch in batches:
                feats = _features.fbank(
                    batch.to(device),
                    max_length=config.max_length,
                    num_mel_bins=config.num_mel_bins,
                )
                if normalized:
                    feats = _features.normalize(feats, *self.normalization_)
                bar.update(len(batch))
                yield batch.indices, feats

    def _forward_batches(
        self,
        audio,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        desc: str,
        windows=None,
        output: tuple = ("logits",),
    ) -> np.ndarray:
        """:func:`skast._runtime.evaluate` of ``fn`` (normalised features ->
        (B, k)) over every clip (every window with ``windows``): float32
        numpy (n, k). ``output`` names what ``fn`` computes; with
        ``backend="onnxruntime"``, ONNX Runtime runs ``fn``'s export
        (:func:`skast._onnx.onnx_fn`) instead of PyTorch."""
        dtype = self._autocast
        # read here, so that set_params after fit applies
        _onnx.check_backend(self.backend, self.precision)
        if self.backend == "onnxruntime":
            fn = _onnx.onnx_fn(self.model_, fn, output, self.precision)
            dtype = None
        return evaluate(
            self.model_,
            fn,
            self._iter_features(audio, desc=desc, windows=windows),
            len(audio) if windows is None else len(windows),
            device=self.device_,
            dtype=dtype,
        )

    def _graph(self):
        """What prediction evaluates (normalised features -> logits) and its
        name for :func:`skast._onnx.onnx_fn`; the featurizer's is its
        pooled hidden state."""
        return self.model_, ("logits",)

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        # BaseEstimator may hand back the live __dict__: copy before popping
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            state["_packed_model"] = {
                "config": model.config.to_dict(),
                "state_dict": {
                    k: v.detach().cpu() for k, v in model.state_dict().items()
                },
            }
        return state

    def __setstate__(self, state):
        packed = state.pop("_packed_model", None)
        super().__setstate__(state)
        if packed is not None:
            self.device_ = device_on_load(self.device_)
            config = ASTConfig.from_dict(packed["config"])
            model = AST.from_state_dict(config, packed["state_dict"])
            self.model_ = model.to(self.device_).eval()
            self._autocast = self._resolve_autocast(torch.device(self.device_))

    # ------------------------------------------------------------------ saving

    def save(self, directory):
        """Write the fitted estimator to ``directory`` in a format that runs no code.

        The parameters and fitted attributes go to ``skast.json`` (JSON whose
        every value records its type), the weights to ``model.safetensors``.
        :func:`skast.load` reads them back without unpickling, checking every
        value; the loaded estimator predicts (or embeds) exactly as this one
        on the same device, and falls back to the CPU with a warning where its
        device is missing. Not saved: ``partial_fit``'s optimizer state (the
        next ``partial_fit`` starts a new optimizer, as after ``fit``); a
        :class:`joblib.Memory` ``cache`` is saved as its location.

        Parameters
        ----------
        directory : str or path-like
            Created if missing; the two files in it are overwritten.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> import skast
        >>> X = np.zeros((2, 4000))
        >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...             intermediate_size=64, max_length=64)
        >>> est = skast.ASTFeaturizer(model_config=tiny, device="cpu").fit(X)
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     est.save(directory)
        ...     loaded = skast.load(directory)
        >>> np.array_equal(loaded.transform(X), est.transform(X))
        True
        """
        from skast import _persist

        _persist.save(self, directory)


def split_windows(rows: np.ndarray, windows) -> tuple[list, list]:
    """Each clip's rows and window start times, from the rows of its windows.

    Parameters
    ----------
    rows : ndarray of shape (n_windows, k)
        One row per window, in the order of ``windows``.
    windows : sequence of (int, int)
        Each window's clip and start frame, clips in order, each with at
        least one window (as :meth:`ASTBase._windows` gives them).

    Returns
    -------
    rows : list of ndarray of shape (n_windows_i, k)
        Per clip, its windows' rows.
    starts : list of ndarray of shape (n_windows_i,), dtype float64
        Per clip, its windows' start times in seconds.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._base import split_windows
    >>> rows, starts = split_windows(np.eye(3), [(0, 0), (1, 0), (1, 50)])
    >>> [r.shape for r in rows], starts[1].tolist()
    ([(1, 3), (2, 3)], [0.0, 0.5])
    """
    clips, frames = np.asarray(windows, dtype=np.int64).reshape(-1, 2).T
    cuts = np.flatnonzero(np.diff(clips)) + 1
    starts = frames / _batches.FRAMES_PER_SECOND
    return np.split(rows, cuts), np.split(starts, cuts)


def resolve_normalization(normalize) -> tuple[float, float]:
    """The ``(mean, std)`` of a normalisation preset name or pair.

    Parameters
    ----------
    normalize : {"audioset", "esc50", "speechcommands"} or (float, float)
        A preset of the original AST recipes (:data:`skast._recipes.NORM_STATS`; names are
        case-insensitive) or a ``(mean, std)`` pair of finite real numbers
        with ``std > 0``.

    Returns
    -------
    tuple of (float, float)
        ``(mean, std)``.

    Raises
    ------
    ValueError
        On an unknown preset name, a pair of the wrong length, a non-finite
        value or ``std <= 0``.
    TypeError
        On any other type, or a pair holding something other than real numbers.

    Examples
    --------
    >>> from skast._base import resolve_normalization
    >>> resolve_normalization("esc50")
    (-6.6268077, 5.358466)
    >>> resolve_normalization((0, 0.5))
    (0.0, 0.5)
    """
    accepted = (
        f"one of {sorted(NORM_STATS)} or a (mean, std) pair of real numbers "
        "with std > 0"
    )
    if isinstance(normalize, str):
        key = normalize.lower()
        if key not in NORM_STATS:
            raise ValueError(
                f"unknown normalization preset {normalize!r}; expected {accepted}"
            )
        return NORM_STATS[key]
    if isinstance(normalize, torch.Tensor):
        normalize = normalize.tolist()
    if isinstance(normalize, np.ndarray):
        if normalize.ndim != 1:
            raise ValueError(
                f"normalization must be a (mean, std) pair, got an array of shape "
                f"{normalize.shape}; expected {accepted}"
            )
        normalize = normalize.tolist()
    if not isinstance(normalize, (tuple, list)):
        raise TypeError(
            f"normalization must be {accepted}, got {type(normalize).__name__}"
        )
    if len(normalize) != 2:
        raise ValueError(
            f"normalization must be a (mean, std) pair, got {len(normalize)} "
            f"values {normalize!r}; expected {accepted}"
        )
    for name, value in zip(("mean", "std"), normalize):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"normalization {name} must be a real number, got "
                f"{type(value).__name__} {value!r}; expected {accepted}"
            )
        if not math.isfinite(value):
            raise ValueError(f"normalization {name} must be finite, got {value!r}")
    mean, std = float(normalize[0]), float(normalize[1])
    if std <= 0:
        raise ValueError(f"normalization std must be > 0, got {std!r}")
    return mean, std
