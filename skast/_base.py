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
:func:`split_windows` hands each clip its windows' rows. With a list of
devices, :func:`skast._replicas.evaluate_on_devices` deals the loaded batches
out to one replica of the model per device, each computing its batches'
features and outputs in a thread of its own.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable, Iterator
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions

from skast import _batches, _features, _onnx, _replicas
from skast._checkpoints import load_checkpoint
from skast._decode import check_rate
from skast._fusion import compile_blocks, compile_options
from skast._model import AST, ASTConfig
from skast._recipes import BACKENDS, NORM_STATS
from skast._runtime import (
    PRECISIONS,
    device_names,
    device_on_load,
    evaluate,
    progress_bar,
    resolve_autocast,
    resolve_devices,
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
        # a list's entries are checked by resolve_devices
        "device": [None, str, torch.device, list, tuple],
        # int8 only with backend="onnxruntime": checked by _setup
        "precision": [StrOptions({*PRECISIONS, "int8"})],
        "backend": [StrOptions(set(BACKENDS))],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        # seconds; windows start on 10 ms frames, so a hop is at least one
        "window_hop": [None, Interval(Real, 0.01, None, closed="left")],
        # a dict's keys are checked by skast._fusion.compile_options
        "torch_compile": ["boolean", dict],
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
        compile_options(self.torch_compile)  # a bad dict fails before any loading
        _onnx.check_backend(self.backend, self.precision)
        devices = resolve_devices(self.device)
        self.device_ = device_names(self.device, devices)
        device = devices[0]  # the model's; a list's others get replicas
        self._autocast = self._resolve_autocast(device)
        if keep_model:
            self.model_.to(device)
            compile_blocks(self.model_, self.torch_compile, device)
            return
        self.model_ = self._build_model().to(device).eval()
        compile_blocks(self.model_, self.torch_compile, device)
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
        windows = self._windows(audio)
        group = self._statistics_group()
        batches = None
        if group is not None:  # each rank its share of the items, then the sums
            mine = group.share(range(len(audio) if windows is None else len(windows)))
            size = self.batch_size
            batches = [mine[i : i + size] for i in range(0, len(mine), size)]
        features = self._iter_features(
            audio,
            desc="normalization",
            normalized=False,
            windows=windows,
            batches=batches,
        )
        for _, feats in features:
            feats = feats.double()
            total += feats.sum().item()
            total_sq += feats.square().sum().item()
            count += feats.numel()
        if group is not None:
            total, total_sq, count = group.sum(
                [total, total_sq, count], "the normalisation statistics"
            )
        mean = total / count
        std = max((total_sq / count - mean * mean) ** 0.5, 1e-8)
        return float(mean), float(std)

    def _statistics_group(self):
        """The :class:`skast._distributed.Group` that shares the normalisation
        pass among ranks (None: this process reads every clip); the
        classifier's under torchrun."""
        return None

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
        self,
        audio,
        *,
        desc: str | None,
        normalized: bool = True,
        windows=None,
        batches=None,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield ``(indices, log-mel (B, max_length, n_mels))`` on the model's
        device, in order, ``batch_size`` clips at a time; normalised unless
        told not.

        Each batch is padded on the CPU as it is loaded (into page-locked
        memory for CUDA) and moves to the device in one asynchronous copy, so
        that preparing the next batch overlaps the device's work on this one.
        Float32 clips are read in place, not copied first: the padding is
        their only copy. With ``windows`` (see :meth:`_windows`), the items
        and indices are the windows. With ``batches`` (lists of item
        positions), those batches in that order (a training epoch's); with
        ``desc=None``, no progress bar.
        """
        device = resolve_devices(self.device_)[0]
        if batches is not None:
            batches = [list(b) for b in batches]
        with self._progress(audio, desc, windows, batches) as bar:
            for batch in self._load_batches(audio, windows, device, batches):
                yield self._batch_features(batch, device, normalized, bar)

    def _load_batches(self, audio, windows, device: torch.device, batches=None):
        """:func:`skast._batches.load_batches` of the clips (or ``windows``;
        in ``batches`` if given), padded for ``device``."""
        return _batches.load_batches(
            audio,
            sample_rate=self.sample_rate,
            batch_size=self.batch_size,
            max_length=self.model_.config.max_length,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            copy=False,
            windows=windows,
            batches=batches,
        )

    def _progress(self, audio, desc: str | None, windows, batches=None):
        """The progress bar over the clips (or the windows, or the items of
        ``batches``); none with ``desc=None``."""
        if batches is not None:
            total = sum(len(b) for b in batches)
        else:
            total = len(audio) if windows is None else len(windows)
        unit = "clip" if windows is None else "window"
        enabled = bool(self.verbose) and desc is not None
        return progress_bar(total=total, enabled=enabled, desc=desc, unit=unit)

    def _batch_features(self, batch, device, normalized: bool = True, bar=None):
        """``(indices, log-mel features)`` of one loaded batch, computed on
        ``device``; normalised unless told not."""
        config = self.model_.config
        feats = _features.fbank(
            batch.to(device),
            max_length=config.max_length,
            num_mel_bins=config.num_mel_bins,
        )
        if normalized:
            feats = _features.normalize(feats, *self.normalization_)
        if bar is not None:
            bar.update(len(batch))
        return batch.indices, feats

    def _forward_batches(
        self,
        audio,
        fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
        *,
        desc: str,
        windows=None,
        output: tuple = ("logits",),
    ) -> np.ndarray:
        """:func:`skast._runtime.evaluate` of ``fn`` (the model, normalised
        features -> (B, k)) over every clip (every window with ``windows``):
        float32 numpy (n, k). ``output`` names what ``fn`` computes; with
        ``backend="onnxruntime"``, ONNX Runtime runs ``fn``'s export
        (:func:`skast._onnx.onnx_fn`) instead of PyTorch.

        With a list of devices, one DataLoader feeds a replica of the model
        on each (:func:`skast._replicas.evaluate_on_devices`)."""
        n = len(audio) if windows is None else len(windows)
        devices = resolve_devices(self.device_)
        model, dtype = self.model_, self._autocast
        # read here, so that set_params after fit applies
        _onnx.check_backend(self.backend, self.precision)
        if self.backend == "onnxruntime":
            runner = _onnx.onnx_fn(
                model, functools.partial(fn, model), output, self.precision
            )
            fn, dtype = (lambda _, x: runner(x)), None
        if len(devices) == 1:
            batches = self._iter_features(audio, desc=desc, windows=windows)
            return evaluate(
                model,
                lambda x: fn(model, x),
                batches,
                n,
                device=devices[0],
                dtype=dtype,
            )
        with self._progress(audio, desc, windows) as bar:
            return _replicas.evaluate_on_devices(
                _replicas.replicas(model, devices),
                fn,
                self._load_batches(audio, windows, devices[0]),
                n,
                devices=devices,
                dtype=dtype,
                featurize=lambda batch, device: self._batch_features(
                    batch, device, bar=bar
                ),
            )

    def _graph(self):
        """What prediction evaluates, ``(model, normalised features) ->
        logits``, and its name for :func:`skast._onnx.onnx_fn`; the
        featurizer's is its pooled hidden state."""
        return _call, ("logits",)

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
        # a parameter added after the pickle was written takes its default,
        # which is what the writing version did (new parameters default to off)
        defaults = {
            name: p.default
            for name, p in inspect.signature(type(self).__init__).parameters.items()
            if p.default is not p.empty
        }
        state = {**{k: v for k, v in defaults.items() if k not in state}, **state}
        super().__setstate__(state)
        if packed is not None:
            self.device_ = device_on_load(self.device_)
            device = resolve_devices(self.device_)[0]
            config = ASTConfig.from_dict(packed["config"])
            model = AST.from_state_dict(config, packed["state_dict"])
            self.model_ = model.to(device).eval()
            self._autocast = self._resolve_autocast(device)
            compile_blocks(self.model_, self.torch_compile, device)

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


def _call(model, x):
    """``model``'s output for the features ``x`` (the classifier's logits)."""
    return model(x)


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
