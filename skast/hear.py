"""The HEAR 2021 API over :class:`skast.ASTFeaturizer`.

The three functions of the Holistic Evaluation of Audio Representations
benchmark's common API (hearbenchmark.com), so that ``hear-eval-kit`` and
``python -m hearvalidator.validate skast.hear --model CHECKPOINT`` can use any
checkpoint skast reads:

* :func:`load_model` -> a :class:`torch.nn.Module` with ``sample_rate``,
  ``scene_embedding_size`` and ``timestamp_embedding_size``;
* :func:`get_scene_embeddings` -> one vector per sound: the featurizer's
  ``transform``;
* :func:`get_timestamp_embeddings` -> one vector per time column of patches,
  with their times in milliseconds.

Examples
--------
A small random encoder (:data:`skast._recipes.TINY`, 16 x 16 strides) written
as a Hugging Face checkpoint and read back as HEAR reads models:

>>> import tempfile
>>> import torch
>>> from skast import hear
>>> from skast._checkpoints import save_pretrained
>>> from skast._model import AST, ASTConfig
>>> from skast._recipes import TINY
>>> with tempfile.TemporaryDirectory() as path:
...     save_pretrained(AST(ASTConfig(**TINY)), path)
...     model = hear.load_model(path, device="cpu")
>>> model.sample_rate, model.scene_embedding_size, model.timestamp_embedding_size
(16000, 64, 64)
>>> audio = torch.rand(2, 16000) * 2 - 1          # two 1 s sounds: 98 frames
>>> hear.get_scene_embeddings(audio, model).shape
torch.Size([2, 64])
>>> embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
>>> embeddings.shape, timestamps[0, :3]          # a column every 16 frames
(torch.Size([2, 7, 64]), tensor([ 87.5000, 247.5000, 407.5000]))
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from skast._features import FRAME_LENGTH, FRAME_SHIFT, fbank, normalize, num_frames
from skast._featurizer import ASTFeaturizer
from skast._recipes import CHECKPOINT, SAMPLE_RATE
from skast._runtime import evaluate, resolve_autocast

__all__ = [
    "HEARModel",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
]

_FRAME_MS = 1000 * FRAME_SHIFT / SAMPLE_RATE  # 10 ms between frames
_WINDOW_MS = 1000 * FRAME_LENGTH / SAMPLE_RATE  # 25 ms of samples per frame


class HEARModel(nn.Module):
    """A fitted :class:`~skast.ASTFeaturizer` as the module the HEAR API passes around.

    Build it with :func:`load_model`. The encoder is a registered submodule,
    so ``model.to(device)`` moves it, and the featurizer then runs on that
    device. Calling the module gives the scene embeddings.

    Parameters
    ----------
    featurizer : ASTFeaturizer
        A fitted featurizer.

    Attributes
    ----------
    featurizer : ASTFeaturizer
        The fitted featurizer the embeddings come from.
    encoder : torch.nn.Module
        Its encoder, ``featurizer.model_``.
    sample_rate : int
        16000: the rate the audio must have.
    scene_embedding_size : int
        The encoder's ``hidden_size``.
    timestamp_embedding_size : int
        The encoder's ``hidden_size``.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skast import ASTFeaturizer
    >>> from skast._recipes import TINY
    >>> from skast.hear import HEARModel
    >>> featurizer = ASTFeaturizer(model_config=TINY, device="cpu")
    >>> model = HEARModel(featurizer.fit(np.zeros((1, 16000)))).to("cpu")
    >>> model.scene_embedding_size, model(torch.zeros(2, 8000)).shape
    (64, torch.Size([2, 64]))
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, featurizer: ASTFeaturizer):
        super().__init__()
        self.featurizer = featurizer
        self.encoder = featurizer.model_
        size = int(featurizer.model_.config.hidden_size)
        self.scene_embedding_size = size
        self.timestamp_embedding_size = size

    def __getstate__(self):
        # the encoder is the featurizer's model: pickled once, with the
        # featurizer (whose pickling moves a CUDA model to a CPU-only machine)
        state = self.__dict__.copy()
        state["_modules"] = {
            k: v for k, v in self._modules.items() if v is not self.featurizer.model_
        }
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._modules["encoder"] = self.featurizer.model_

    def _apply(self, fn, *args, **kwargs):
        # .to / .cuda / .cpu: the featurizer follows its encoder's device
        out = super()._apply(fn, *args, **kwargs)
        device = self.encoder.pos_embed.device
        featurizer = self.featurizer
        if str(device) != featurizer.device_:
            featurizer.device_ = str(device)
            featurizer._autocast = resolve_autocast(featurizer.precision, device)
            featurizer._update_fingerprint()
        return out

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """:func:`get_scene_embeddings` of ``audio``."""
        return get_scene_embeddings(audio, self)


def load_model(model_file_path: str = "", **kwargs) -> HEARModel:
    """Load a checkpoint as a HEAR model.

    Parameters
    ----------
    model_file_path : str or path-like, default=""
        Any ``checkpoint`` :class:`~skast.ASTFeaturizer` reads: a Hugging Face
        hub id, a directory written by ``save_pretrained`` or an original
        ``.pth`` file. ``""`` is the AST paper's AudioSet model,
        :data:`skast._recipes.CHECKPOINT` (downloaded from the hub).
    **kwargs
        Parameters of :class:`~skast.ASTFeaturizer`: ``pooling`` and
        ``layer`` (which state the embeddings come from), ``device``,
        ``precision``, ``batch_size``, ``max_length``, ``normalize`` (a preset
        or a pair: there are no clips to fit statistics on), ``window_hop``
        (the scene embeddings of sounds longer than one window: the mean of
        windows every ``window_hop`` seconds; by default one window's length,
        windows side by side; ``None`` keeps the first window only) and any
        other parameter the featurizer has, passed to it as they are.

    Returns
    -------
    model : HEARModel
        A :class:`torch.nn.Module` holding the fitted featurizer, with the
        attributes the API defines: ``sample_rate`` (16000),
        ``scene_embedding_size`` and ``timestamp_embedding_size`` (both the
        encoder's ``hidden_size``).

    Raises
    ------
    ValueError
        With ``normalize="fit"``, or any error of the featurizer's ``fit``.

    See Also
    --------
    get_scene_embeddings : One vector per sound.
    get_timestamp_embeddings : One vector per time column of patches.

    Examples
    --------
    >>> import tempfile
    >>> from skast.hear import load_model
    >>> from skast._checkpoints import save_pretrained
    >>> from skast._model import AST, ASTConfig
    >>> cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                 intermediate_size=64, max_length=64)
    >>> with tempfile.TemporaryDirectory() as path:
    ...     save_pretrained(AST(cfg), path)
    ...     model = load_model(path, layer=1, pooling="cls", device="cpu")
    >>> model.featurizer.layer, model.featurizer.pooling
    (1, 'cls')
    """
    if isinstance(model_file_path, os.PathLike):
        model_file_path = os.fspath(model_file_path)
    checkpoint = model_file_path or CHECKPOINT
    featurizer = ASTFeaturizer(checkpoint, **kwargs)
    if isinstance(featurizer.normalize, str) and featurizer.normalize == "fit":
        raise ValueError(
            'normalize="fit" needs training clips, which load_model does not '
            "have: pass a preset name or a (mean, std) pair"
        )
    # fit loads the encoder; it reads no clip with a fixed normalisation
    featurizer.fit(np.zeros((1, SAMPLE_RATE), dtype=np.float32))
    if "window_hop" not in kwargs:  # scene embeddings: windows past one window
        window_seconds = featurizer.model_.config.max_length * FRAME_SHIFT / SAMPLE_RATE
        featurizer.set_params(window_hop=window_seconds)
    return HEARModel(featurizer)


def _check_audio(audio) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor):
        audio = torch.as_tensor(np.asarray(audio))
    if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(
            "audio must be a tensor of shape (n_sounds, n_samples) with at least "
            f"one sound and one sample, got shape {tuple(audio.shape)}"
        )
    if not audio.is_floating_point():
        raise TypeError(f"audio must hold floats in [-1, 1], got {audio.dtype}")
    return audio


def get_scene_embeddings(audio: torch.Tensor, model: HEARModel) -> torch.Tensor:
    """One embedding per sound: the featurizer's ``transform``.

    Parameters
    ----------
    audio : torch.Tensor of shape (n_sounds, n_samples)
        Float waveforms in [-1, 1] at 16 kHz, on any device.
    model : HEARModel
        From :func:`load_model`.

    Returns
    -------
    embeddings : torch.Tensor of shape (n_sounds, scene_embedding_size)
        float32, on ``audio``'s device: ``model.featurizer.transform`` of the
        rows (the encoder's state at ``layer`` pooled as ``pooling`` says;
        sounds longer than one window, ``max_length`` frames, as the
        featurizer treats them: the mean of their windows, every
        ``window_hop`` seconds, or their first window with
        ``window_hop=None``).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skast import ASTFeaturizer
    >>> from skast._recipes import TINY
    >>> from skast.hear import HEARModel, get_scene_embeddings
    >>> featurizer = ASTFeaturizer(model_config=TINY, pooling="cls", device="cpu")
    >>> model = HEARModel(featurizer.fit(np.zeros((1, 16000))))
    >>> audio = torch.rand(3, 8000) * 2 - 1
    >>> embeddings = get_scene_embeddings(audio, model)
    >>> embeddings.shape, embeddings.dtype
    (torch.Size([3, 64]), torch.float32)
    >>> np.array_equal(embeddings.numpy(), featurizer.transform(audio))
    True
    """
    audio = _check_audio(audio)
    embeddings = model.featurizer.transform(audio)
    return torch.from_numpy(embeddings).to(audio.device)


def get_timestamp_embeddings(
    audio: torch.Tensor, model: HEARModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """One embedding per time column of patches, with its time in milliseconds.

    The encoder cuts the log-mel spectrogram (one frame every 10 ms) into
    16 x 16 patches, ``time_stride`` frames apart along time. The patches
    that share their frames form a column; a column's embedding is the mean
    of its patch tokens over frequency, at the featurizer's ``layer`` (the
    last block after the final LayerNorm by default). Columns are the finest
    step at which the encoder's output changes along time: one every
    ``time_stride`` frames, 100 ms for the published checkpoints (10 x 10
    strides). There is no finer timestamp that the tokens tell apart, so
    none is interpolated.

    A column covers 16 frames, 160 ms of frame starts: the samples of frames
    ``s`` to ``s + 15``, from ``10 s`` ms to ``10 s + 175`` ms (each frame
    reads 25 ms). Its timestamp is the centre of that span, ``10 s + 87.5``
    ms, and the columns of a sound are ``10 * time_stride`` ms apart.

    Sounds longer than one window (``max_length`` frames) go through the
    encoder in windows of ``max_length`` frames that start every
    ``n_columns * time_stride`` frames, where ``n_columns`` is the number of
    columns of a window (1010 frames for the 1024-frame models, whose 101
    columns start every 10 frames; the last 14 frames of a window belong to
    no full column): consecutive windows' columns then continue each other,
    and the timestamps of the concatenated columns stay evenly spaced.
    Frames past the sound's end are zero-padded before normalisation, as
    ``transform`` pads them. Columns that start past the last frame see only
    padding and are dropped; the sounds of a batch have the same length, so
    they all keep the same columns.

    Parameters
    ----------
    audio : torch.Tensor of shape (n_sounds, n_samples)
        Float waveforms in [-1, 1] at 16 kHz, on any device.
    model : HEARModel
        From :func:`load_model`.

    Returns
    -------
    embeddings : torch.Tensor of shape (n_sounds, n_timestamps, timestamp_embedding_size)
        float32, on ``audio``'s device. ``n_timestamps`` is
        ``ceil(n_frames / time_stride)`` for the sounds' ``n_frames`` frames.
    timestamps : torch.Tensor of shape (n_sounds, n_timestamps)
        float32 milliseconds, the same for every sound, on ``audio``'s device.

    Examples
    --------
    With the 10 x 10 strides of the published models (a window of 64 frames
    here, for speed: 5 columns, windows 50 frames apart):

    >>> import tempfile
    >>> import torch
    >>> from skast._checkpoints import save_pretrained
    >>> from skast._model import AST, ASTConfig
    >>> from skast.hear import get_timestamp_embeddings, load_model
    >>> encoder = AST(ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...                         num_attention_heads=2, intermediate_size=64,
    ...                         max_length=64))
    >>> with tempfile.TemporaryDirectory() as path:
    ...     save_pretrained(encoder, path)
    ...     model = load_model(path, layer=-1, device="cpu")
    >>> audio = torch.rand(2, 32000) * 2 - 1           # 2 s: 198 frames
    >>> embeddings, timestamps = get_timestamp_embeddings(audio, model)
    >>> embeddings.shape                               # 4 windows of 5 columns
    torch.Size([2, 20, 32])
    >>> timestamps[0, :3], torch.diff(timestamps).unique()
    (tensor([ 87.5000, 187.5000, 287.5000]), tensor([100.]))
    """
    audio = _check_audio(audio)
    featurizer = model.featurizer
    encoder = featurizer.model_
    config = encoder.config
    n_freq, n_cols_window = config.grid
    hop = n_cols_window * config.time_stride  # frames between window starts
    n_frames = num_frames(audio.shape[1])
    n_cols = -(-n_frames // config.time_stride)  # columns starting in the sound
    n_windows = -(-n_cols // n_cols_window)
    batches = _windows(audio, featurizer, hop, n_windows)

    def columns(x: torch.Tensor) -> torch.Tensor:
        patches = encoder.forward_features(x, featurizer.layer)[:, 2:]
        b, _, d = patches.shape  # frequency-major patches: (f, t) grid
        return patches.reshape(b, n_freq, n_cols_window, d).mean(dim=1).flatten(1)

    out = evaluate(
        encoder,
        columns,
        batches,
        len(audio) * n_windows,
        device=encoder.pos_embed.device,  # the first of a device list
        dtype=featurizer._autocast,
    )
    d = config.hidden_size
    out = out.reshape(len(audio), n_windows * n_cols_window, d)[:, :n_cols]
    embeddings = torch.from_numpy(np.ascontiguousarray(out)).to(audio.device)
    starts = torch.arange(n_cols, dtype=torch.float64) * config.time_stride
    centre = (config.patch_size - 1) / 2 * _FRAME_MS + _WINDOW_MS / 2
    times = (starts * _FRAME_MS + centre).to(torch.float32)
    timestamps = times.repeat(len(audio), 1).to(audio.device)
    return embeddings, timestamps


def _windows(audio: torch.Tensor, featurizer, hop: int, n_windows: int):
    """Yield ``(indices, normalised windows (B, max_length, n_mels))`` on the
    featurizer's device, ``batch_size`` windows at most, in the order clip 0's
    windows, clip 1's ...; the log-mel features of a few clips at a time."""
    config = featurizer.model_.config
    length = config.max_length
    device = featurizer.model_.pos_embed.device  # the first of a device list
    span = (n_windows - 1) * hop + length  # frames the windows cover
    step = max(1, featurizer.batch_size // n_windows)  # clips per fbank pass
    for c0 in range(0, len(audio), step):
        waves = audio[c0 : c0 + step].to(device=device, dtype=torch.float32)
        feats = fbank(waves, num_mel_bins=config.num_mel_bins)
        # zeros past the end, as transform pads, then normalised as it does
        feats = nn.functional.pad(feats, (0, 0, 0, max(0, span - feats.shape[1])))
        feats = normalize(feats[:, :span], *featurizer.normalization_)
        windows = feats.unfold(1, length, hop).transpose(2, 3)
        windows = windows.reshape(-1, length, config.num_mel_bins)
        first = c0 * n_windows
        for w0 in range(0, len(windows), featurizer.batch_size):
            batch = windows[w0 : w0 + featurizer.batch_size]
            yield slice(first + w0, first + w0 + len(batch)), batch
