"""ASTFeaturizer: clips in, one pooled AST embedding per clip out."""

from __future__ import annotations

import os
from numbers import Integral

import joblib
import numpy as np
from sklearn.base import (
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from skast import _audio, _cache
from skast._base import ASTBase, split_windows
from skast._model import POOLINGS

__all__ = ["ASTFeaturizer"]


class ASTFeaturizer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ASTBase):
    """Embed audio clips with a pretrained Audio Spectrogram Transformer.

    Each clip becomes one vector: the AST encoder's pooled output, by default
    the mean of its ``[CLS]`` and distillation tokens after the final
    LayerNorm, which is what transformers' ``ASTModel`` returns as
    ``pooler_output``. ``fit`` loads the encoder and never trains it; put a
    classifier after it in a :class:`~sklearn.pipeline.Pipeline` for
    linear-probe style transfer learning.

    Parameters
    ----------
    checkpoint : str or path-like, default=None
        The encoder's weights: a Hugging Face hub id (such as
        ``"MIT/ast-finetuned-audioset-10-10-0.4593"``, needs the ``hub``
        extra), a directory written by ``save_pretrained``, or an original
        ``.pth`` file of the AST repository. ``None`` builds a randomly
        initialised encoder from ``model_config`` (for tests and experiments).

    model_config : dict, default=None
        Fields of :class:`skast._model.ASTConfig` (``hidden_size``,
        ``num_hidden_layers``, ``max_length`` ...) for a randomly initialised
        encoder; only with ``checkpoint=None``. ``None`` is the base AST.

    max_length : int, default=None
        Number of 10 ms frames the encoder sees: longer clips are truncated,
        shorter ones zero-padded. ``None`` is the checkpoint's own length; other
        values adapt the position embeddings as the original recipe does.

    pooling : {"mean", "cls", "dist", "patch"}, default="mean"
        How token states become one vector: ``"mean"`` averages the ``[CLS]``
        and distillation tokens (the reference pooler), ``"cls"`` and
        ``"dist"`` take one of them, ``"patch"`` averages the patch tokens.

    layer : int, default=None
        Which hidden state to pool. ``None`` is the last block's output after
        the final LayerNorm. An int selects a hidden state as in
        transformers' ``hidden_states``: 0 is the embeddings, ``i`` the output
        of block ``i`` (before the final LayerNorm), negative values count
        from the end. Blocks after it are not run.

    window_hop : float, default=None
        Seconds between the starts of the windows a long clip is cut into.
        ``None`` keeps each clip's first ``max_length`` frames (the
        reference's truncation). A number cuts each clip longer than
        ``max_length`` frames into windows of ``max_length`` frames starting
        every ``window_hop`` seconds (rounded to 10 ms frames; at least
        0.01), the last one ending at the clip's end; the clip's embedding is
        the mean of its windows'. Shorter clips are embedded as without it.
        See :meth:`transform_windows` and :ref:`long_audio`.

    normalize : {"audioset", "esc50", "speechcommands", "fit"} or (mean, std), \
            default="audioset"
        Normalisation ``(x - mean) / (2 * std)`` of the log-mel features: a
        preset of the original recipes, an explicit pair, or ``"fit"`` to use
        the mean and standard deviation of the training clips' features
        (with ``window_hop``, of all their windows). Use the statistics the
        checkpoint was trained with.

    sample_rate : int, default=16000
        Sample rate of waveform arrays; they are resampled to 16 kHz. Files
        carry their own rate.

    batch_size : int, default=16
        Clips per forward pass. A device out-of-memory error halves it and
        retries; the rest of the ``transform`` call keeps the smaller size.

    device : str, torch.device or list of them, default=None
        Where the encoder runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        ``None`` is CUDA when available, else the CPU. A list such as
        ``["cuda:0", "cuda:1"]`` runs a replica of the encoder on each
        device (all of one type), the batches dealt out to them in turn
        and fed by one DataLoader; the embeddings are those of one device
        (to float32 rounding), in input order. See :ref:`several_devices`.

    precision : {"auto", "float32", "bfloat16", "float16", "int8"}, default="auto"
        Autocast precision. ``"auto"`` is bfloat16 (float16 on GPUs without
        it) on CUDA and float32 elsewhere. Embeddings are float32 in any case.
        With ``backend="onnxruntime"``: ``"auto"`` and ``"float32"`` run the
        exported encoder in float32, ``"int8"`` its dynamically quantised copy
        (int8 weights; only with that backend).

    backend : {"torch", "onnxruntime"}, default="torch"
        What runs ``transform``: PyTorch, or ONNX Runtime on the CPU (its
        ``CPUExecutionProvider``, whatever ``device``, which then only says
        where the features are computed). The encoder is exported with
        :func:`torch.onnx.export` the first time, into ``$SKAST_ONNX_DIR``
        (default ``~/.cache/skast/onnx``), keyed by a hash of the weights,
        and never exported again for the same weights. Needs
        ``pip install "skast[onnx]"``. Read at ``transform`` time. See
        :ref:`onnx`.

    torch_compile : bool or dict, default=False
        Compile the transformer blocks with :func:`torch.compile`, to fuse
        their LayerNorms, GELU and residual adds (kept in float32 under
        autocast) into fewer kernels: ``True`` with torch's defaults, a dict
        with keyword arguments of ``torch.compile`` (``backend``, ``mode``,
        ``dynamic``, ``fullgraph``, ``options``). Meant for GPUs, where these
        operations take about a third of the encoder's time; compiling takes
        seconds to minutes, once per process (a batch of a new size compiles
        once more), and later calls reuse it. Embeddings equal the eager
        model's to float32 rounding. Applied in ``fit`` (and on loading);
        where ``torch.compile`` does not run (no C compiler, a platform its
        backend lacks), a warning says so and the model runs eagerly. See
        :ref:`torch_compile`.

    num_workers : int, default=0
        DataLoader worker processes decoding audio files; 0 decodes in the
        main process.

    cache : str, path-like or joblib.Memory, default=None
        Where to keep each clip's embedding, so that no clip is embedded twice,
        even across estimators, cross-validation folds, grid-search candidates
        and processes. A clip is identified by the hash of its content (not its
        file name) together with the weights and every setting that changes
        its embedding. Files go to ``<cache>/skast-embeddings/``; for a
        :class:`joblib.Memory`, under its ``location`` (a ``Memory`` without a
        location disables caching). ``None`` caches nothing.

    verbose : bool or int, default=False
        Show a progress bar over the clips.

    Attributes
    ----------
    model_ : torch.nn.Module
        The encoder (:class:`skast._model.AST`), in eval mode on ``device_``
        (on its first device for a list).

    device_ : str or list of str
        The device the encoder runs on; the list of devices for a list.

    normalization_ : tuple of (float, float)
        The ``(mean, std)`` the features are normalised with.

    See Also
    --------
    ASTClassifier : Fine-tune an AST end to end on labelled clips.
    sklearn.pipeline.make_pipeline : Put a classifier after the featurizer.

    Notes
    -----
    ``fit`` only loads the encoder (and, with ``normalize="fit"``, computes the
    feature statistics); it never embeds a clip. ``transform`` streams the
    clips in batches of ``batch_size``, so memory does not grow with their
    number, and returns a float32 array of shape ``(n_clips, hidden_size)``.

    Clips may have any length: a waveform's length is not a feature count, so
    this transformer sets no ``n_features_in_``. Waveform arrays of shape
    ``(n_clips, n_samples)``, lists of 1-D arrays of different lengths and
    lists of file paths are all accepted.

    A pickled (or ``joblib.dump``-ed) featurizer holds its weights, as CPU
    tensors. This is deliberate: a fitted featurizer is self-contained, works
    offline and on another device, and its embeddings stay reproducible even
    if a hub model changes. The cost is the size, about 345 MB for the base
    model in float32. Loaded where the device it was fitted on is missing, it
    runs on the CPU with a warning.

    Examples
    --------
    >>> import numpy as np
    >>> from skast import ASTFeaturizer
    >>> rng = np.random.default_rng(0)
    >>> X = 0.1 * rng.standard_normal((4, 8000))   # four 0.5 s clips at 16 kHz
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> featurizer = ASTFeaturizer(model_config=tiny, device="cpu").fit(X)
    >>> embeddings = featurizer.transform(X)
    >>> embeddings.shape, embeddings.dtype
    ((4, 32), dtype('float32'))
    >>> featurizer.get_feature_names_out()[:2]
    array(['astfeaturizer0', 'astfeaturizer1'], dtype=object)

    In a pipeline, with a probe on the embeddings:

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> pipe = make_pipeline(ASTFeaturizer(model_config=tiny, device="cpu"),
    ...                      LogisticRegression())
    >>> pipe.fit(X, [0, 1, 0, 1]).predict(X).shape
    (4,)
    """

    _parameter_constraints: dict = {
        **ASTBase._common_constraints,
        "pooling": [StrOptions(set(POOLINGS))],
        "layer": [None, Integral],
        "cache": [None, str, os.PathLike, joblib.Memory],
    }

    def __init__(
        self,
        checkpoint=None,
        *,
        model_config=None,
        max_length=None,
        pooling="mean",
        layer=None,
        window_hop=None,
        normalize="audioset",
        sample_rate=16000,
        batch_size=16,
        device=None,
        precision="auto",
        backend="torch",
        torch_compile=False,
        num_workers=0,
        cache=None,
        verbose=False,
    ):
        self.checkpoint = checkpoint
        self.model_config = model_config
        self.max_length = max_length
        self.pooling = pooling
        self.layer = layer
        self.window_hop = window_hop
        self.normalize = normalize
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.backend = backend
        self.torch_compile = torch_compile
        self.num_workers = num_workers
        self.cache = cache
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the encoder; nothing is trained or embedded.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files. Only read with ``normalize="fit"``; otherwise
            validated, and each file's header read (a file that is missing or
            not audio fails here, before any model work, with the error
            ``transform`` would give).

        y : None
            Ignored.

        Returns
        -------
        self : ASTFeaturizer
            The fitted featurizer.
        """
        with self._rollback_on_error():  # a failed fit changes nothing
            self._setup(_audio.check_audio_input(X, probe_files=True))
            self.model_.layer_index(self.layer)  # "layer must be in [...]"
            self._n_features_out = self.model_.config.hidden_size
            self._update_fingerprint()
        return self

    def transform(self, X):
        """Embed each clip.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        Returns
        -------
        embeddings : ndarray of shape (n_clips, hidden_size), dtype float32
            One pooled encoder output per clip, in the order of ``X``.
        """
        check_is_fitted(self)
        audio = _audio.check_audio_input(X)
        folder = _cache.cache_dir(self.cache)
        if folder is None:
            return self._embed(audio)
        return _cache.embed_cached(
            audio,
            self._embed,
            folder=folder,
            key=self._cache_key(),
            n_features=self._n_features_out,
        )

    def transform_windows(self, X):
        """Embed each window of each clip.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        Returns
        -------
        embeddings : list of ndarray of shape (n_windows, hidden_size)
            Per clip, one float32 embedding per window (see ``window_hop``;
            without it, one window per clip: its first ``max_length``
            frames). A window's embedding is ``transform`` of the clip cut at
            the window's start. Their mean is the clip's ``transform``.
        starts : list of ndarray of shape (n_windows,)
            Per clip, the windows' start times in seconds.

        Examples
        --------
        >>> import numpy as np
        >>> from skast import ASTFeaturizer
        >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...             intermediate_size=64, max_length=64)
        >>> X = [np.zeros(16000), np.zeros(4000)]   # 1 s and 0.25 s
        >>> featurizer = ASTFeaturizer(model_config=tiny, window_hop=0.25,
        ...                            device="cpu").fit(X)
        >>> embeddings, starts = featurizer.transform_windows(X)
        >>> embeddings[0].shape, starts[0].tolist(), starts[1].tolist()
        ((3, 32), [0.0, 0.25, 0.34], [0.0])
        """
        check_is_fitted(self)
        audio = _audio.check_audio_input(X)
        windows = self._windows(audio, always=True)
        return split_windows(self._embed_windows(audio, windows), windows)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.requires_fit = True
        return tags

    def __setstate__(self, state):
        super().__setstate__(state)
        # loaded on another device, the precision (part of the key) may differ
        if hasattr(self, "model_"):
            self._update_fingerprint()

    def _update_fingerprint(self) -> None:
        """The cache key's fingerprint of the fitted model; hashing the weights
        takes a moment, so only when a cache will use it."""
        cached = _cache.cache_dir(self.cache) is not None
        self._fingerprint = self._model_fingerprint() if cached else None

    # ------------------------------------------------------------------ embedding

    def _embed(self, audio, desc: str = "embedding") -> np.ndarray:
        """The pooled hidden state at ``layer`` of every clip (the mean of
        its windows' with ``window_hop``)."""
        windows = self._windows(audio)
        out = self._embed_windows(audio, windows, desc)
        if windows is None:
            return out
        rows, _ = split_windows(out, windows)
        return np.stack([r[0] if len(r) == 1 else r.mean(axis=0) for r in rows])

    def _embed_windows(self, audio, windows, desc: str = "embedding") -> np.ndarray:
        """The pooled hidden state of every window (every clip if ``None``)."""
        embed, output = self._graph()
        return self._forward_batches(
            audio, embed, desc=desc, windows=windows, output=output
        )

    def _graph(self):
        """What ``transform`` evaluates, ``(model, normalised features) ->
        pooled hidden state at layer``, and its name, ``("embedding", layer,
        pooling)``."""
        layer, pooling = self.layer, self.pooling

        def embed(model, x):
            return model.pool(model.forward_features(x, layer), pooling)

        return embed, ("embedding", layer, pooling)

    # ------------------------------------------------------------------ cache

    def _model_fingerprint(self) -> str:
        """A hash of the weights and every fitted setting that changes them."""
        settings = (self.normalization_, self.sample_rate, str(self._autocast))
        return _cache.model_fingerprint(self.model_, settings)

    def _cache_key(self) -> str:
        """The fitted model's fingerprint and the settings read at transform
        time (so that ``set_params`` after ``fit`` cannot serve stale files)."""
        fingerprint = getattr(self, "_fingerprint", None) or self._model_fingerprint()
        settings = (self.pooling, self.layer, self.sample_rate)
        if self.window_hop is not None:  # the keys without windows stay as they were
            settings += (("window_hop", float(self.window_hop)),)
        if self.backend != "torch":  # so do those of the torch backend
            settings += (("backend", self.backend, self.precision),)
        return _cache.cache_key(fingerprint, settings)
