"""ASTClassifier: fine-tune an Audio Spectrogram Transformer on labelled clips."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from skast import _audio, _checkpoints, _distributed, _snapshots
from skast._base import ASTBase
from skast._labels import guess_multilabel, head_labels
from skast._patchout import check_patchout, drop_counts
from skast._predicting import ClassifierPredictions
from skast._recipes import RECIPES
from skast._runtime import resolve_device
from skast._targets import class_weights, encode_targets, equal
from skast._training import (
    TrainingConfig,
    TrainingData,
    derive_seed,
    forked_rng,
    seed_torch,
    train,
)

__all__ = ["ASTClassifier"]

#: skast._training.derive_seed key of the new head's initialisation
_HEAD_SEED = 1


class ASTClassifier(ClassifierPredictions, ClassifierMixin, ASTBase):
    """Fine-tune an Audio Spectrogram Transformer to classify audio clips.

    The whole model (or only its head, or all but its first blocks) is
    trained with the recipe of the AST paper: Adam, an optional warm-up, a
    step decay of the learning rate per epoch, SpecAugment and mixup. Labels
    may be binary, multiclass (strings or integers) or multi-label (an
    indicator matrix, trained with a sigmoid per label).

    Parameters
    ----------
    checkpoint : str or path-like, default=None
        Pretrained weights to start from: a Hugging Face hub id (such as
        ``"MIT/ast-finetuned-audioset-10-10-0.4593"``, needs the ``hub``
        extra), a directory written by ``save_pretrained``, or an original
        ``.pth`` file of the AST repository. Its head is replaced by a new one
        for the classes of ``y``. ``None`` starts from a random initialisation
        built from ``model_config``.

    model_config : dict, default=None
        Fields of :class:`skast._model.ASTConfig` (``hidden_size``,
        ``num_hidden_layers``, ``max_length`` ...) for a randomly initialised
        model; only with ``checkpoint=None``. ``None`` is the base AST.

    max_length : int, default=None
        Number of 10 ms frames the model sees: longer clips are truncated,
        shorter ones padded. ``None`` is the checkpoint's own length; other
        values adapt its position embeddings as the original recipe does.

    window_hop : float, default=None
        Seconds between the starts of the windows a long clip is cut into.
        ``None`` keeps each clip's first ``max_length`` frames (the
        reference's truncation). A number cuts each clip longer than
        ``max_length`` frames into windows of ``max_length`` frames starting
        every ``window_hop`` seconds (rounded to 10 ms frames; at least
        0.01), the last one ending at the clip's end. ``fit`` then trains on
        the windows (each one a sample with its clip's label); prediction
        aggregates the windows' probabilities (``window_aggregation``).
        Shorter clips are handled as without it. See
        :meth:`predict_proba_windows` and :ref:`long_audio`.

    window_aggregation : {"auto", "mean", "max"}, default="auto"
        How a windowed clip's probabilities come from its windows': their
        mean or their maximum per class; ``"auto"`` is the mean for
        single-label and the maximum for multi-label classifiers. For
        single-label classifiers the maxima are renormalised to sum to one.

    normalize : {"audioset", "esc50", "speechcommands", "fit"} or (mean, std), \
            default="audioset"
        Normalisation ``(x - mean) / (2 * std)`` of the log-mel features: a
        preset of the original recipes, an explicit pair, or ``"fit"`` for the
        statistics of the training clips' features (with ``window_hop``, of
        all their windows).

    sample_rate : int, default=16000
        Sample rate of waveform arrays; they are resampled to 16 kHz. Files
        carry their own rate.

    learning_rate : float, default=1e-5
        Adam's learning rate. 1e-5 is the paper's for fine-tuning a pretrained
        checkpoint; from scratch (``checkpoint=None``) 1e-4 to 2.5e-4 works
        better (the Speech Commands recipe without AudioSet pretraining uses
        2.5e-4).

    weight_decay : float, default=5e-7
        Adam's L2 penalty, as the original.

    betas : tuple of (float, float), default=(0.95, 0.999)
        Adam's coefficients, as the original.

    max_epochs : int, default=10
        Number of passes over the training clips (fewer with
        ``early_stopping``).

    batch_size : int, default=16
        Clips per optimizer step; also the batch of feature extraction and
        prediction.

    warmup_steps : int, default=0
        The original warm-up: for the first ``warmup_steps`` optimizer steps,
        every 50 steps the learning rate is set to
        ``step / warmup_steps * learning_rate`` (so it is 0 for the first 50
        steps). 0 disables it; the AudioSet recipe uses 1000.

    lr_decay_start : int, default=5
        First epoch after which the learning rate is multiplied by
        ``lr_decay``.

    lr_decay_every : int, default=1
        ... and every this many epochs after it: ``MultiStepLR`` with
        milestones ``range(lr_decay_start, 1000, lr_decay_every)``, stepped
        once per epoch.

    lr_decay : float, default=0.85
        Multiplicative factor of the learning-rate decay.

    freqm : int, default=0
        SpecAugment: each training clip gets one frequency mask narrower than
        ``freqm`` mel bins. 0 disables it.

    timem : int, default=0
        SpecAugment: each training clip gets one time mask shorter than
        ``timem`` frames. 0 disables it.

    mixup : float, default=0.0
        Probability that a training clip is mixed with another of its batch
        (weight ``lambda ~ Beta(10, 10)``; the targets are mixed alike).

    patchout : (time, frequency) pair or None, default=None
        Structured patchout (PaSST): in each training batch, drop ``time``
        whole time columns and ``frequency`` whole frequency rows of the
        model's patch grid (with their position embeddings), drawn at random
        per batch, before the transformer blocks. Each is an int (a number of
        columns / rows) or a float in ``[0, 1)`` (a share of them, rounded to
        the nearest number). Training steps are faster (the blocks see fewer
        tokens) and the model learns not to depend on any one part of the
        spectrogram (on small data it also fits more slowly: give it more
        epochs); prediction and validation always see every patch. PaSST
        drops 40 of 99 columns and 4 of 12 rows (about 60% of the patches):
        ``(40, 4)`` at 1024 frames, ``(0.4, 0.33)`` at any length. ``None``
        keeps every patch, as the AST paper's recipes do. A value that would
        drop every column or row of the grid is an error. See
        :ref:`patchout`.

    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss: ``{label: weight}``, or
        ``"balanced"`` for ``n_samples / (n_classes * np.bincount(y))``.
        ``None`` gives every class weight one. Single-label ``y`` only.

    sampler : {"balanced"} or None, default=None
        How each epoch draws its training clips. ``None``: each clip once, in
        a random order. ``"balanced"``: the AudioSet recipe's sampler, as many
        clips drawn with replacement, clip ``i`` with probability proportional
        to the sum over its labels of ``1000 / (label_count + 0.01)`` (the
        counts over the training clips; a single-label clip's labels are its
        class), so that rare labels are seen about as often as common ones.
        A multi-label clip without labels is never drawn.

    freeze : {"encoder"}, int or None, default=None
        What not to train. ``None`` trains everything; ``"encoder"`` trains
        only the head (a linear probe on the pooled output); an int ``k``
        freezes the patch embedding, the two tokens, the position embedding
        and the first ``k`` transformer blocks.

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training clips (stratified),
        stop when their score has not improved by ``tol`` for
        ``n_iter_no_change`` epochs, and keep the weights of the best epoch.
        The score is the accuracy (single-label ``y``) or the mean average
        precision over labels (multi-label ``y``, the paper's metric).

    validation_fraction : float, default=0.1
        Fraction of the clips held out with ``early_stopping``.

    n_iter_no_change : int, default=5
        Epochs without improvement before ``early_stopping`` stops.

    tol : float, default=1e-4
        Smallest improvement of the validation score that counts.

    weight_averaging : (int, int) or None, default=None
        ``(first, last)``: end with the mean of the weights at the end of
        epochs ``first`` to ``last`` of the fit (counted from 1, both
        included), as the AudioSet recipe does. A range past ``max_epochs``
        averages the epochs up to it; one that starts after it is an error.
        The sum is kept on the CPU (one copy of the trained weights; frozen
        ones keep their values). Cannot be combined with ``early_stopping``,
        which keeps the weights of the best validation epoch instead.
        ``None`` keeps the last epoch's weights.

    device : str, torch.device or list of them, default=None
        Where the model trains and runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
        ``"mps"``. ``None`` is CUDA when available, else the CPU. A list
        (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``) makes ``fit`` and
        ``partial_fit`` train data-parallel in one worker process per
        device, ``batch_size`` being the batch of all of them, and the
        prediction methods run a replica of the model on each device (see
        :ref:`several_devices`). Under ``torchrun`` every rank trains its
        share of each batch, ``None`` or ``"cuda"`` meaning the rank's own
        GPU (``LOCAL_RANK``). See :ref:`distributed_finetuning`.

    precision : {"auto", "float32", "bfloat16", "float16", "int8"}, default="auto"
        Autocast precision. ``"auto"`` is bfloat16 (float16 on GPUs without
        it) on CUDA and float32 elsewhere. float16 trains with a gradient
        scaler. With ``backend="onnxruntime"``, the precision of prediction:
        ``"auto"`` and ``"float32"`` run the exported model in float32,
        ``"int8"`` its dynamically quantised copy (int8 weights; only with
        that backend; training then runs as with ``"auto"``).

    backend : {"torch", "onnxruntime"}, default="torch"
        What runs prediction (``predict``, ``predict_proba``,
        ``decision_function``...): PyTorch, or ONNX Runtime on the CPU (its
        ``CPUExecutionProvider``, whatever ``device``, which then only says
        where the features are computed). Training always runs on PyTorch.
        The fitted model is exported with :func:`torch.onnx.export` the
        first time, into ``$SKAST_ONNX_DIR`` (default
        ``~/.cache/skast/onnx``), keyed by a hash of the weights, and never
        exported again for the same weights. Needs
        ``pip install "skast[onnx]"``. Read at prediction time, so a model
        fine-tuned on a GPU can ``set_params(backend="onnxruntime")`` to
        predict on a CPU. See :ref:`onnx`.

    torch_compile : bool or dict, default=False
        Train and predict with the transformer blocks compiled by
        :func:`torch.compile` (``True``: torch's defaults; a dict: its
        keyword arguments), which fuses the LayerNorms, GELU and residual
        adds that autocast keeps in float32. Meant for fitting on a GPU: the
        first steps, and the first batch of each new size, wait for the
        compilation (seconds to minutes, once per process). Outputs equal
        the eager model's to float32 rounding. Applied in ``fit``; where
        ``torch.compile`` does not run here, a warning says so and the model
        runs eagerly. See :ref:`torch_compile`.

    num_workers : int, default=0
        DataLoader worker processes decoding audio files; 0 decodes in the
        main process.

    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation of the model and its head, the validation
        split, the order of the clips (or the balanced sampler's draws),
        dropout, SpecAugment, mixup and patchout. An int gives the same model
        on the same device every time.

    warm_start : bool, default=False
        Start ``fit`` from the fitted model (and its normalisation) instead of
        a new one; the head is kept if the classes are the same. The
        optimizer and the schedule start afresh; ``history_`` goes on.

    verbose : bool or int, default=False
        Progress bars for the features and for each epoch (with the running
        loss), and one line per epoch.

    snapshot_dir : str or path-like, default=None
        A directory where ``fit`` writes a resumable snapshot at the end of
        each epoch (the weights, the optimizer, the schedule, the step count,
        early stopping's or weight averaging's state, ``history_``, the seed),
        replacing the previous one atomically. A ``fit`` with the same
        directory, the same clips and labels and the same parameters goes on
        after the last complete epoch and ends with the model an
        uninterrupted fit gives (on the CPU, the same weights bit for bit);
        so a killed run, or a ``torchrun --max-restarts`` restart, loses at
        most one epoch. A snapshot of another fit (other parameters, classes
        or clips) raises a ValueError saying what differs: delete the
        directory to start over (one directory serves one fit: not the
        fits of a grid search). A fit that completes leaves its last
        snapshot, so that the same ``fit`` again returns the same model at
        once. ``device``, ``num_workers`` and ``verbose`` may differ, and
        ``random_state=None`` resumes with the snapshot's seed. Not used by
        ``partial_fit`` (an error). See :ref:`snapshots`.

    recipe : {"esc50", "speechcommands", "audioset"}, default=None
        Take the hyper-parameters of one of the paper's recipes (see Notes)
        for every parameter left at its default value. The values used are
        in ``recipe_params_``; the parameters themselves are not changed.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels; ``arange(n_labels)`` for multi-label ``y``.

    model_ : torch.nn.Module
        The fine-tuned model (:class:`skast._model.AST`), in eval mode on
        ``device_`` (on its first device for a list).

    device_ : str or list of str
        The device the model runs on; the list of devices for a list.

    normalization_ : tuple of (float, float)
        The ``(mean, std)`` the features are normalised with.

    recipe_params_ : dict
        The values of the recipe's hyper-parameters used by the last fit
        (``learning_rate``, ``max_epochs``, ``batch_size``, ``freqm``,
        ``timem``, ``mixup``, ``max_length``, ``normalize``,
        ``warmup_steps``, ``lr_decay_start``, ``lr_decay_every``,
        ``lr_decay``, ``sampler``, ``weight_averaging``), whether set by
        ``recipe`` or by the parameters.

    history_ : list of dict
        One dict per epoch: ``epoch``, ``train_loss``, ``valid_loss``,
        ``valid_score`` (None without validation), ``learning_rate`` and
        ``seconds``.

    loss_curve_ : list of float
        The mean training loss of each epoch.

    validation_scores_ : list of float or None
        The validation score of each epoch with ``early_stopping``; else None.

    best_validation_score_ : float or None
        The best validation score, whose weights the model keeps, with
        ``early_stopping``; else None.

    n_iter_ : int
        Number of epochs run (including an interrupted one).

    See Also
    --------
    ASTFeaturizer : Embed clips with a frozen AST, for a scikit-learn model.
    sklearn.neural_network.MLPClassifier : The parameters ``early_stopping``,
        ``validation_fraction``, ``n_iter_no_change`` and ``tol`` work alike.

    Notes
    -----
    **Recipes.** The presets of the original repository
    (``egs/*/run*.sh``; ``frames`` is ``max_length``, the decay is
    ``lr_decay_start`` / ``lr_decay_every`` / ``lr_decay``):

    ==============  ======  ======  =====  =====  =====  =====  ======  =======  ============
    recipe          lr      epochs  batch  freqm  timem  mixup  frames  warm-up  decay
    ==============  ======  ======  =====  =====  =====  =====  ======  =======  ============
    esc50           1e-5    25      48     24     96     0      512     0        5 / 1 / 0.85
    speechcommands  2.5e-4  30      128    48     48     0.6    128     0        5 / 1 / 0.85
    audioset        1e-5    5       12     48     192    0.5    1024    1000     2 / 1 / 0.5
    ==============  ======  ======  =====  =====  =====  =====  ======  =======  ============

    Each also sets ``normalize`` to its dataset's statistics; ``audioset``
    also draws its clips with ``sampler="balanced"`` and averages the
    weights of epochs 1 to 5 (``weight_averaging=(1, 5)``), as the full
    set's recipe (the balanced set's averages epochs 6 to 25 of 25). With
    ``early_stopping``, the recipe leaves ``weight_averaging`` off: the fit
    keeps the best validation epoch's weights instead. A parameter equal to
    its default counts as unset: with ``recipe="speechcommands"``,
    ``learning_rate=1e-5`` (the default) becomes 2.5e-4. The recipes' Adam
    settings are the defaults. Not reproduced: the Speech Commands noise and
    time-shift augmentation, and the BCE loss the original uses for Speech
    Commands (single-label ``y`` trains with cross-entropy here).

    **Features and augmentation.** Training streams: each batch of an
    epoch's order is decoded when it is reached (in ``num_workers``
    DataLoader workers for files), and its normalised log-mel features are
    computed on the training device, then mixed up and masked there, so host
    memory does not grow with the number of clips and every epoch sees fresh
    augmentation, as the original's DataLoader does. The original mixes *waveforms* and computes
    the features of the mix; here the normalised features are mixed, which
    is not the same as mixing the sounds (a known departure from the
    recipe). As in the original, SpecAugment masks the mix, with the value a
    log-mel energy of 0 takes after normalisation.

    **Loss.** Single-label ``y``: cross-entropy against the (mixed) one-hot
    targets; multi-label ``y``: binary cross-entropy with logits, and
    ``predict_proba`` is a sigmoid per label.

    **Interrupting.** Ctrl-C during the epochs stops after the current batch
    (a second one at once) with a warning; the estimator is then fitted,
    with the weights of the best validation epoch if ``early_stopping`` has
    validated one, with ``weight_averaging`` the mean of the epochs of its
    range that ended before the interruption (the interrupted one is not
    averaged), else its current weights.

    **Reproducibility.** The same ``random_state`` on the same device gives
    the same model. On CUDA some kernels (attention's backward pass among
    them) are not deterministic.

    **What a fitted estimator keeps.** The weights (pickled as CPU tensors;
    loaded where its device is missing, it runs on the CPU with a warning),
    not the training clips nor, after ``fit``, the optimizer. After
    ``partial_fit`` the optimizer's state (Adam's two moments, twice the size
    of the trainable weights), the schedule and the step count are kept, so
    that the next call goes on; ``fit`` drops them.

    Clips may have any length: a waveform's length is not a feature count,
    so this classifier sets no ``n_features_in_``.

    Examples
    --------
    >>> import numpy as np
    >>> from skast import ASTClassifier
    >>> rng = np.random.default_rng(0)
    >>> t = np.arange(8000) / 16000                    # 0.5 s at 16 kHz
    >>> X = np.stack([np.sin(2 * np.pi * f * t) for f in [300, 320, 3000, 3200]])
    >>> y = ["low", "low", "high", "high"]
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> clf = ASTClassifier(model_config=tiny, learning_rate=1e-3, max_epochs=1,
    ...                     device="cpu", random_state=0).fit(X, y)
    >>> clf.classes_
    array(['high', 'low'], dtype='<U4')
    >>> clf.predict(X).shape, clf.predict_proba(X).shape
    ((4,), (4, 2))
    >>> sorted(clf.history_[0])
    ['epoch', 'learning_rate', 'seconds', 'train_loss', 'valid_loss', 'valid_score']
    """

    _parameter_constraints: dict = {
        **ASTBase._common_constraints,
        # a list: one worker per device (skast._spawned)
        "device": [None, str, torch.device, list, tuple],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "betas": [tuple, list],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "warmup_steps": [Interval(Integral, 0, None, closed="left")],
        "lr_decay_start": [Interval(Integral, 1, None, closed="left")],
        "lr_decay_every": [Interval(Integral, 1, None, closed="left")],
        "lr_decay": [Interval(Real, 0, 1, closed="right")],
        "freqm": [Interval(Integral, 0, None, closed="left")],
        "timem": [Interval(Integral, 0, None, closed="left")],
        "mixup": [Interval(Real, 0, 1, closed="both")],
        # the pair's values are checked by _check_training_params
        "patchout": [None, tuple, list],
        "class_weight": [None, dict, StrOptions({"balanced"})],
        "sampler": [None, StrOptions({"balanced"})],
        "freeze": [
            None,
            StrOptions({"encoder"}),
            Interval(Integral, 0, None, closed="left"),
        ],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "weight_averaging": [None, tuple, list],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "recipe": [None, StrOptions(set(RECIPES))],
        "window_aggregation": [StrOptions({"auto", "mean", "max"})],
        "snapshot_dir": [None, str, os.PathLike],
    }

    def __init__(
        self,
        checkpoint=None,
        *,
        model_config=None,
        max_length=None,
        window_hop=None,
        window_aggregation="auto",
        normalize="audioset",
        sample_rate=16000,
        learning_rate=1e-5,
        weight_decay=5e-7,
        betas=(0.95, 0.999),
        max_epochs=10,
        batch_size=16,
        warmup_steps=0,
        lr_decay_start=5,
        lr_decay_every=1,
        lr_decay=0.85,
        freqm=0,
        timem=0,
        mixup=0.0,
        patchout=None,
        class_weight=None,
        sampler=None,
        freeze=None,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=1e-4,
        weight_averaging=None,
        device=None,
        precision="auto",
        backend="torch",
        torch_compile=False,
        num_workers=0,
        random_state=None,
        warm_start=False,
        verbose=False,
        recipe=None,
        snapshot_dir=None,
    ):
        self.checkpoint = checkpoint
        self.model_config = model_config
        self.max_length = max_length
        self.window_hop = window_hop
        self.window_aggregation = window_aggregation
        self.normalize = normalize
        self.sample_rate = sample_rate
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = betas
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self.lr_decay_start = lr_decay_start
        self.lr_decay_every = lr_decay_every
        self.lr_decay = lr_decay
        self.freqm = freqm
        self.timem = timem
        self.mixup = mixup
        self.patchout = patchout
        self.class_weight = class_weight
        self.sampler = sampler
        self.freeze = freeze
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.weight_averaging = weight_averaging
        self.device = device
        self.precision = precision
        self.backend = backend
        self.torch_compile = torch_compile
        self.num_workers = num_workers
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.recipe = recipe
        self.snapshot_dir = snapshot_dir

    # ------------------------------------------------------------------ pretrained

    @classmethod
    def from_pretrained(cls, checkpoint, *, multilabel=None, **params):
        """A classifier fitted on arrival: the checkpoint's own head, as it is.

        It predicts as the published model does (the scores of transformers'
        ``pipeline("audio-classification")`` on the same checkpoint), and is
        fitted like one that ``fit`` returned: it pickles, has ``save`` and
        ``save_pretrained``, works inside :class:`sklearn.frozen.FrozenEstimator`,
        and trains further from its head (``warm_start=True`` with the same
        classes, or ``partial_fit``).

        Parameters
        ----------
        checkpoint : str or path-like
            A hub id, a Hugging Face directory or an original ``.pth`` file
            (as the ``checkpoint`` parameter), whose head is kept.

        multilabel : bool, default=None
            Whether the head is multi-label (a sigmoid per label, an
            indicator-matrix ``predict``) or single-label (a softmax, a label
            per clip). ``None`` guesses: the config's ``problem_type`` when it
            has one (``"multi_label_classification"`` is multi-label), else
            multi-label for an AudioSet head (527 outputs) and single-label
            for any other.

        **params
            Any parameter of ``ASTClassifier`` (``device``, ``precision``,
            ``batch_size``, ``max_length`` ...).

        Returns
        -------
        clf : ASTClassifier
            Fitted: ``n_iter_`` is 0 and ``history_`` empty.

        Notes
        -----
        ``classes_`` are the head's label names: ``id2label`` of a Hugging
        Face config; for an original ``.pth``, the AudioSet, Speech Commands
        or ESC-50 names, told by the head's size (527, 35 or 50; any other
        size is ``LABEL_0``, ``LABEL_1`` ...). A single-label head's classes
        are sorted (as ``fit`` sorts them; the head's outputs are reordered
        alike), a multi-label head's keep the head's order, one column per
        output. The features are normalised with the ``mean`` and ``std`` of
        the checkpoint's ``preprocessor_config.json`` when it has them (the
        ``normalize`` parameter is set to that pair), else with ``normalize``;
        ``normalize`` passed here wins, and ``"fit"`` is refused (there are no
        clips to fit it on).

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from skast import ASTClassifier
        >>> from skast._checkpoints import save_pretrained
        >>> from skast._model import AST, ASTConfig
        >>> cfg = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                 intermediate_size=64, max_length=64,
        ...                 id2label={0: "dog", 1: "cat", 2: "bird"})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_pretrained(AST(cfg), d)
        ...     clf = ASTClassifier.from_pretrained(d, device="cpu")
        >>> clf.classes_
        array(['bird', 'cat', 'dog'], dtype='<U4')
        >>> clf.predict_proba(np.zeros((2, 8000))).shape
        (2, 3)
        """
        if multilabel not in (None, True, False):
            raise ValueError(
                f"multilabel must be None, True or False, got {multilabel!r}"
            )
        clf = cls(checkpoint, **params)
        clf._validate_params()
        if clf.model_config:
            raise ValueError("model_config does not apply to from_pretrained")
        with clf._rollback_on_error():
            clf.recipe_params_ = clf._resolve_recipe()
            ckpt = _checkpoints.load_checkpoint(
                checkpoint, max_length=clf._setting("max_length")
            )
            n_outputs = ckpt.config.num_labels
            if not n_outputs:
                raise ValueError(f"'{checkpoint}' has no classification head")
            stats = _pretrained_normalization(ckpt.preprocessor)
            if "normalize" not in params and stats is not None:
                clf.normalize = stats
                clf.recipe_params_ = clf._resolve_recipe()
            if clf._resolve_normalization() is None:
                raise ValueError(
                    "normalize='fit' needs training clips; from_pretrained has none"
                )
            if multilabel is None:
                multilabel = guess_multilabel(n_outputs, ckpt.problem_type)
            clf.model_ = ckpt.model
            clf.classes_ = head_labels(clf.model_, sort=not multilabel)
            clf._multilabel = multilabel
            clf._y_dtype = np.dtype(np.int64) if multilabel else None
            clf._setup(None, keep_model=True)  # device, precision, checks
            clf.normalization_ = clf._resolve_normalization()
            clf._seed = clf._draw_seed()
            clf.history_, clf.loss_curve_ = [], []
            clf.validation_scores_ = clf.best_validation_score_ = None
            clf.n_iter_ = 0  # last: fitted from here on
        return clf

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fine-tune the model on labelled clips.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        y : array-like of shape (n_clips,) or (n_clips, n_labels)
            Class labels (strings or integers), or a multi-label indicator
            matrix of 0/1.

        Returns
        -------
        self : ASTClassifier
            The fitted classifier.
        """
        with self._rollback_on_error():  # a failed fit changes nothing
            return self._fit(X, y, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None):
        """Train for one epoch on these clips, going on from the last call.

        The first call builds the model (as ``fit`` does) and needs
        ``classes``; later calls keep the model, the optimizer and the
        learning-rate schedule (after ``fit``, which keeps no optimizer, the
        first call starts a new one). ``early_stopping`` and
        ``weight_averaging`` are not used; ``sampler`` draws from the clips
        of the call.

        Parameters
        ----------
        X : array-like of shape (n_clips, n_samples) or sequence of clips
            Waveforms at ``sample_rate``, 1-D arrays of any lengths, or paths
            of audio files.

        y : array-like of shape (n_clips,) or (n_clips, n_labels)
            Class labels, or a multi-label indicator matrix of 0/1.

        classes : array-like of shape (n_classes,), default=None
            Every class label of the whole data (for multi-label ``y``, one
            entry per column). Required on the first call, ignored after
            (but checked against ``classes_`` when given).

        Returns
        -------
        self : ASTClassifier
            The classifier, trained one more epoch.
        """
        with self._rollback_on_error():  # a failed call changes nothing
            return self._fit(X, y, incremental=True, classes=classes)

    def _fit(self, X, y, *, incremental, classes=None):
        if isinstance(self.device, (list, tuple)):  # one worker per device
            from skast import _spawned

            devices = _spawned.check_devices(self.device)
            method = "partial_fit" if incremental else "fit"
            kwargs = {"classes": classes} if incremental else {}
            return _spawned.fit_on_devices(self, devices, method, X, y, **kwargs)
        self._check_training_params(incremental)
        audio = _audio.check_audio_input(X, probe_files=True)
        fitted = self.__sklearn_is_fitted__()
        continuing = incremental and fitted  # a partial_fit after the first
        warm_starting = not incremental and self.warm_start and fitted
        keeps_model = continuing or warm_starting
        fitted_labels = (self.classes_, self._multilabel) if continuing else None
        targets = encode_targets(
            y,
            len(audio),
            fitted=fitted_labels,
            incremental=incremental,
            classes=classes,
        )
        if not keeps_model:
            self.__dict__.pop("n_iter_", None)  # unfitted until this fit succeeds
        if not continuing:
            self.recipe_params_ = self._resolve_recipe()
            _check_averaging(self.recipe_params_, self.early_stopping, incremental)
            self._seed = self._draw_seed()
        start = len(self.history_) if keeps_model else 0
        snapshots = None if incremental else self._snapshots(audio, targets, start)
        resumed = snapshots is not None and snapshots.snapshot is not None
        if resumed:
            self._seed = snapshots.snapshot.seed
        keeps_head = keeps_model and self._has_head_for(targets)
        class_weight = class_weights(self.class_weight, targets)
        device = _training_device(self.device)
        # clips are decoded as training reaches them: one that fails to load
        # restores a kept model's weights (the rest is _rollback_on_error's)
        kept = _kept_model(self.model_) if keeps_model else None
        with forked_rng(device), _restored_on_error(self, kept):
            if resumed:  # the weights are the snapshot's, its normalisation too
                self.normalization_ = snapshots.snapshot.normalization
                if not keeps_model:
                    self.model_ = self._build_model().eval()
            self._prepare(audio, keep_model=keeps_model or resumed)
            data = self._training_data(audio, targets.values)
            if not keeps_head:
                self._new_head(targets.classes, device)
            if not (keeps_head and targets.multilabel):  # labels' names stay
                self.classes_ = targets.classes
            self._multilabel, self._y_dtype = targets.multilabel, targets.y_dtype
            if not keeps_model:
                self.history_ = []
            if resumed:
                self.history_ = snapshots.snapshot.history
            config = self._training_config(device)
            state = self.__dict__.get("_partial_state") if incremental else None
            hooks = {}
            if snapshots is not None:
                snapshots.bind(self.model_, self._seed, self.normalization_)
                hooks = dict(resume=snapshots.restore, on_epoch_end=snapshots.write)
            result = train(
                self.model_, data, config, self.history_,
                class_weight=class_weight, optimizer_state=state, incremental=incremental,
                **hooks,
            )  # fmt: skip
        self._keep_training_result(result, incremental)
        return self

    def _snapshots(self, audio, targets, start):
        """The fit's :class:`skast._snapshots.SnapshotDir` (its latest
        snapshot read, checked to be of this fit), or None without
        ``snapshot_dir``."""
        if self.snapshot_dir is None:
            return None
        params = {**self.get_params(deep=False), **self.recipe_params_}
        key = _snapshots.fingerprint(
            params, targets.classes, audio, targets.values, start
        )
        snapshots = _snapshots.SnapshotDir(self.snapshot_dir, key)
        snapshots.latest()
        return snapshots

    def _draw_seed(self) -> int:
        """The seed of a fit's randomness, drawn from ``random_state``."""
        rng = check_random_state(self.random_state)
        return int(rng.randint(np.iinfo(np.int32).max))

    def _new_head(self, classes, device) -> None:
        """A new head for ``classes``, seeded; no optimizer state goes on."""
        seed_torch(derive_seed(self._seed, _HEAD_SEED), device)
        self.model_.reset_classifier({i: str(c) for i, c in enumerate(classes)})
        self.model_.eval()  # the new head too, as a model_ is kept
        self.__dict__.pop("_partial_state", None)

    def _training_config(self, device) -> TrainingConfig:
        return TrainingConfig.from_params(
            {**self.get_params(deep=False), **self.recipe_params_},
            multilabel=self._multilabel,
            normalization=self.normalization_,
            device=device,
            autocast_dtype=self._autocast,
            seed=self._seed,
        )

    def _keep_training_result(self, result, incremental) -> None:
        """The fitted attributes of a training; its warning if interrupted."""
        stopping = result.early_stopping
        self.validation_scores_ = None if stopping is None else stopping.scores
        self.best_validation_score_ = None if stopping is None else stopping.best_score
        if incremental:
            self._partial_state = result.optimizer_state
        else:
            self.__dict__.pop("_partial_state", None)
        self.loss_curve_ = [h["train_loss"] for h in self.history_]
        self.n_iter_ = len(self.history_)
        if result.interrupted:
            kept = "its current weights"
            if stopping is not None and stopping.best_state is not None:
                kept = (
                    f"the weights of its best validation epoch ({stopping.best_epoch})"
                )
            average = result.weight_average
            if average is not None and average.epochs:
                first, last = average.epochs[0], average.epochs[-1]
                epochs = f"epoch {first}" if first == last else f"epochs {first}-{last}"
                kept = f"the mean of its weights after {epochs} of this fit"
            warnings.warn(
                f"training was interrupted (KeyboardInterrupt) after "
                f"{self.n_iter_} epoch(s) counting the current one; the "
                f"classifier is fitted with {kept}.",
                UserWarning,
                stacklevel=5,  # the caller of fit (through _fit_context)
            )

    def _check_training_params(self, incremental):
        betas = self.betas
        if (
            len(betas) != 2
            or not all(isinstance(b, Real) and not isinstance(b, bool) for b in betas)
            or not all(0 <= b < 1 for b in betas)
        ):
            raise ValueError(
                f"betas must be a pair of floats in [0, 1), got {self.betas!r}"
            )
        check_patchout(self.patchout)
        if isinstance(self.freeze, bool):
            raise ValueError(
                f"freeze must be None, 'encoder' or an int, got {self.freeze!r}"
            )
        if incremental and self.snapshot_dir is not None:
            raise ValueError(
                "snapshot_dir is not supported by partial_fit (each call is one "
                "epoch, and the estimator keeps what the next call needs); use "
                "fit, or pickle the estimator between calls"
            )
        if incremental and isinstance(self.class_weight, str):
            raise ValueError(
                "class_weight='balanced' is not supported by partial_fit (the "
                "class frequencies of all the data are unknown); pass a dict"
            )

    def _resolve_recipe(self) -> dict:
        """The recipe's values for every recipe parameter left at its default."""
        keys = next(iter(RECIPES.values())).keys()
        params = {k: getattr(self, k) for k in keys}
        if self.recipe is None:
            return params
        defaults = inspect.signature(ASTClassifier.__init__).parameters
        for key, value in RECIPES[self.recipe].items():
            if key == "weight_averaging" and self.early_stopping:
                continue  # the best validation epoch's weights instead
            if _is_default(params[key], defaults[key].default):
                params[key] = value
        return params

    def _has_head_for(self, targets) -> bool:
        if targets.multilabel != getattr(self, "_multilabel", None):
            return False
        # an indicator matrix's columns are the head's outputs, in order,
        # whether classes_ names them (from_pretrained) or counts them
        if targets.multilabel:
            same = len(targets.classes) == len(self.classes_)
        else:
            same = equal(targets.classes, self.classes_)
        return same and self.model_.config.num_labels == len(targets.classes)

    # ------------------------------------------------------------------ model

    def _prepare(self, audio, *, keep_model):
        """ASTBase._setup, then the checks that need the model."""
        self._setup(audio, keep_model=keep_model)
        freeze = self.freeze
        n_layers = self.model_.config.num_hidden_layers
        if isinstance(freeze, Integral) and freeze > n_layers:
            raise ValueError(
                f"freeze={freeze} but the model has only {n_layers} blocks"
            )
        drop_counts(self.patchout, self.model_.config.grid)

    def _setting(self, name: str):
        return self.recipe_params_.get(name, getattr(self, name))

    def _init_seed(self) -> int:
        return self._seed

    def _statistics_group(self):
        # under torchrun, normalize="fit" reads each clip on one rank only
        return _distributed.current_group(_training_device(self.device))

    def _training_data(self, audio, values) -> TrainingData:
        """The fit's items, streamed (:class:`skast._training.TrainingData`):
        the clips with their targets ``values``, or with ``window_hop`` every
        window of the clips, each with its clip's target."""
        windows = self._windows(audio)
        if windows is not None:
            values = values[torch.tensor([clip for clip, _ in windows])]
        features = functools.partial(
            self._iter_features, audio, desc=None, windows=windows
        )
        return TrainingData(values, lambda batches: features(batches=batches))

    # ------------------------------------------------------------------ export

    def save_pretrained(self, directory):
        """Write the fine-tuned model in Hugging Face's format.

        transformers' ``ASTForAudioClassification.from_pretrained(directory)``
        loads it, with the class names in ``config.id2label``; the
        ``preprocessor_config.json`` records ``max_length`` and the
        normalisation for ``ASTFeatureExtractor``.

        Parameters
        ----------
        directory : str or path-like
            Created if missing; the files in it are overwritten.
        """
        check_is_fitted(self)
        _checkpoints.save_pretrained(
            self.model_, directory, normalization=self.normalization_
        )

    # ------------------------------------------------------------------ protocol

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = True
        tags.classifier_tags.multi_label = True
        tags.non_deterministic = False
        return tags

    def __sklearn_is_fitted__(self):
        # n_iter_ is set last: a fit that failed half-way is not fitted
        return hasattr(self, "n_iter_") and hasattr(self, "model_")


# --------------------------------------------------------------------------- helpers


def _pretrained_normalization(preprocessor) -> tuple[float, float] | None:
    """The ``(mean, std)`` a checkpoint's feature extractor normalises with,
    or None when its ``preprocessor_config.json`` does not say."""
    if not preprocessor:
        return None
    if preprocessor.get("do_normalize") is False:
        return (0.0, 0.5)  # (x - 0) / (2 * 0.5): the features as they are
    mean, std = preprocessor.get("mean"), preprocessor.get("std")
    if isinstance(mean, Real) and isinstance(std, Real):
        return (float(mean), float(std))
    return None


def _is_default(value, default) -> bool:
    """Whether a parameter is at its default (for the recipes)."""
    if value is default:
        return True
    if type(value) is not type(default):
        return False
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


def _check_averaging(params, early_stopping, incremental) -> None:
    """``weight_averaging`` (as resolved) is a range of the fit's epochs,
    without ``early_stopping``; ``partial_fit`` uses neither."""
    averaging = params["weight_averaging"]
    if averaging is None:
        return
    if (
        len(averaging) != 2
        or not all(
            isinstance(e, Integral) and not isinstance(e, bool) for e in averaging
        )
        or not 1 <= averaging[0] <= averaging[1]
    ):
        raise ValueError(
            "weight_averaging must be None or a pair of epochs (first, last) "
            f"with 1 <= first <= last, got {averaging!r}"
        )
    if incremental:
        return
    if averaging[0] > params["max_epochs"]:
        raise ValueError(
            f"weight_averaging={tuple(averaging)!r} starts after the last epoch "
            f"(max_epochs={params['max_epochs']}): no epoch would be averaged"
        )
    if early_stopping:
        raise ValueError(
            "weight_averaging cannot be combined with early_stopping: the fit "
            "ends with either the mean of a range of epochs' weights or the "
            "best validation epoch's; set one of them"
        )


def _kept_model(model) -> tuple:
    """What restores ``model`` in place after a failed fit: its config, its
    head module (a new head replaces it) and a host copy of its parameters
    and buffers (read directly: no state-dict hooks run)."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    return model.config, model.head, {k: v.detach().cpu().clone() for k, v in tensors}


@contextlib.contextmanager
def _restored_on_error(est, kept):
    """Put ``kept`` (see :func:`_kept_model`) back into ``est.model_`` when
    the block raises; a KeyboardInterrupt during training is a stop, not an
    error (:class:`skast._stopping.Interrupt`), and keeps the trained weights."""
    try:
        yield
    except BaseException:
        if kept is not None:
            model = est.model_
            model.config, model.head, saved = kept
            with torch.no_grad():
                for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                    tensor.copy_(saved[name])
        raise


def _training_device(spec) -> torch.device:
    """The device to train on, with its index (the current CUDA device;
    under torchrun, the rank's own GPU)."""
    device = _distributed.training_device(resolve_device(spec))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
