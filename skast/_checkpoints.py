"""Read and write AST checkpoints.

Three sources load into :class:`skast._model.AST`:

* a Hugging Face model directory (``config.json`` with ``model.safetensors`` or
  ``pytorch_model.bin``), as written by transformers' ``save_pretrained``;
* a hub id such as ``"MIT/ast-finetuned-audioset-10-10-0.4593"`` (needs the
  ``hub`` extra, ``huggingface_hub``);
* an original ``YuanGongND/ast`` ``.pth`` file (a ``DataParallel`` state dict
  with ``module.v.*`` keys and a fused ``qkv``), with the original code's
  LayerNorm epsilons (1e-6, and 1e-5 in the head).

Weights are read with :mod:`safetensors` or ``torch.load(weights_only=True)``:
loading never runs code from a file. A checkpoint can be loaded at another
``max_length`` or other strides; its position embeddings are then adapted as
the original recipe does (:func:`skast._model.adapt_position_embeddings`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skast._labels import label_table
from skast._model import AST, ASTConfig, adapt_position_embeddings
from skast._recipes import NORM_STATS, NUM_MEL_BINS, SAMPLE_RATE

__all__ = ["load_checkpoint", "save_pretrained", "Checkpoint"]

HF_PREFIX = "audio_spectrogram_transformer."
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

# Hugging Face's parameter names and ours (timm's and the original
# repository's), as pairs of name prefixes, read from left to right and
# written from right to left. "{}" is a block's index; a block is
# "encoder.layer.{}" in transformers 4.x and on disk, "layers.{}" in
# transformers 5.x's memory, and both are read. Where several Hugging Face
# names give one of ours (5.x's in-memory names after the on-disk one), the
# first is written.
_KEYS = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.distillation_token", "dist_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{}.attention.output.dense.", "blocks.{}.attn.proj."),
    ("encoder.layer.{}.attention.o_proj.", "blocks.{}.attn.proj."),
    ("encoder.layer.{}.intermediate.dense.", "blocks.{}.mlp.fc1."),
    ("encoder.layer.{}.mlp.fc1.", "blocks.{}.mlp.fc1."),
    ("encoder.layer.{}.output.dense.", "blocks.{}.mlp.fc2."),
    ("encoder.layer.{}.mlp.fc2.", "blocks.{}.mlp.fc2."),
    ("encoder.layer.{}.layernorm_before.", "blocks.{}.norm1."),
    ("encoder.layer.{}.layernorm_after.", "blocks.{}.norm2."),
    ("layernorm.", "norm."),
    ("classifier.layernorm.", "head.0."),
    ("classifier.dense.", "head.1."),
)
# Our fused qkv is Hugging Face's query, key and value, stacked on dim 0 in
# this order: their names in 4.x (written) and in 5.x's memory.
_QKV = "blocks.{}.attn.qkv."
_HF_QKV = (
    tuple(
        f"encoder.layer.{{}}.attention.attention.{p}."
        for p in ("query", "key", "value")
    ),
    tuple(f"encoder.layer.{{}}.attention.{p}_proj." for p in "qkv"),
)
_HF_BLOCK = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.")
_OUR_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _template(name: str, block: re.Pattern, prefix: str) -> tuple[str, str | None]:
    """``name`` with its block index as "{}" (and the block prefix as
    ``prefix``), and the index; ``(name, None)`` outside the blocks."""
    m = block.match(name)
    if m is None:
        return name, None
    return prefix + "{}." + name[m.end() :], m.group(1)


@dataclass
class Checkpoint:
    """A loaded model with what its files said about it.

    Attributes
    ----------
    model : AST
        The module, in eval mode, on the CPU, float32.
    source : str
        Where it came from (a path or a hub id).
    preprocessor : dict or None
        The ``preprocessor_config.json`` of a Hugging Face checkpoint (mean,
        std, max_length...), if there was one.
    problem_type : str or None
        The ``problem_type`` of a Hugging Face config
        (``"multi_label_classification"`` ...), if it had one.
    """

    model: AST
    source: str
    preprocessor: dict[str, Any] | None = None
    problem_type: str | None = None

    @property
    def config(self) -> ASTConfig:
        return self.model.config


class CheckpointUnavailableError(OSError):
    """A checkpoint that cannot be found or downloaded."""


# --------------------------------------------------------------------------- reading


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors / torch file, never running code from it."""
    if not path.is_file():
        raise CheckpointUnavailableError(f"no such checkpoint file: '{path}'")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"'{path}' is not a readable safetensors file (truncated or "
                f"corrupt?): {err}"
            ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a pickle of objects: garbage
            raise ValueError(
                f"'{path}' is not a readable PyTorch checkpoint (truncated or "
                "corrupt?): torch.load could not parse it"
            ) from err
        raise ValueError(
            f"refusing to load '{path}': it holds Python objects other than "
            "tensors, and loading them could run code. Save a plain state_dict "
            "(torch.save(model.state_dict(), path)) or use safetensors."
        ) from err
    except Exception as err:
        # RuntimeError, EOFError, BadZipFile; and a text or other non-torch file
        # read as a legacy torch file raises KeyError, IndexError...
        raise ValueError(
            f"'{path}' is not a readable PyTorch checkpoint (truncated or "
            f"corrupt?): {str(err) or type(err).__name__}"
        ) from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise ValueError(f"'{path}' does not hold a state_dict of tensors")
    return obj


def _from_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names (with or without the base-model prefix) -> ours."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in sd.items():
        name = key[len(HF_PREFIX) :] if key.startswith(HF_PREFIX) else key
        name, i = _template(name, _HF_BLOCK, "encoder.layer.")
        part = _qkv_part(name)
        if part is not None:
            j, rest = part
            qkv.setdefault((i, rest), {})[j] = value
            continue
        hf, ours = next(((h, o) for h, o in _KEYS if name.startswith(h)), (None, None))
        if hf is None:
            raise ValueError(
                f"unexpected key in a Hugging Face AST checkpoint: {key!r}"
            )
        out[ours.format(i) + name[len(hf) :]] = value
    for (i, rest), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(
                f"layer {i}: query, key and value {rest} are not all there"
            )
        out[_QKV.format(i) + rest] = torch.cat([parts[j] for j in range(3)])
    return out


def _qkv_part(name: str) -> tuple[int, str] | None:
    """Which of query, key and value a Hugging Face name template is (0, 1 or 2),
    and the rest of its name (``weight`` or ``bias``); ``None`` for others."""
    for spelling in _HF_QKV:
        for j, hf in enumerate(spelling):
            if name.startswith(hf) and name[len(hf) :] in ("weight", "bias"):
                return j, name[len(hf) :]
    return None


def _to_hf_state_dict(model: AST) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' on-disk names (``ASTForAudioClassification``
    with a head, bare ``ASTModel`` without)."""
    prefix = HF_PREFIX if model.config.num_labels > 0 else ""
    d = model.config.hidden_size
    written = {}  # ours -> the first Hugging Face name of it
    for hf, ours in _KEYS:
        written.setdefault(ours, hf)
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu", torch.float32)
        name, i = _template(key, _OUR_BLOCK, "blocks.")
        if name.startswith(_QKV):
            rest = name[len(_QKV) :]
            for j, hf in enumerate(_HF_QKV[0]):
                out[prefix + hf.format(i) + rest] = value[j * d : (j + 1) * d].clone()
            continue
        ours = next((o for o in written if name.startswith(o)), None)
        if ours is None:
            raise ValueError(f"no Hugging Face name for the parameter {key!r}")
        hf = written[ours].format(i) + name[len(ours) :]
        if not hf.startswith("classifier."):  # the head is outside the base model
            hf = prefix + hf
        out[hf] = value.clone()
    return out


def _from_original_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original repository names (``module.v.*``, ``module.mlp_head.*``) -> ours.

    The unused DeiT heads (``v.head``, ``v.head_dist``) are dropped.
    """
    out = {}
    for key, value in sd.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith(("v.head.", "v.head_dist.")):
            continue
        if name.startswith("v."):
            out[name[2:]] = value
        elif name.startswith("mlp_head."):
            out["head." + name[len("mlp_head.") :]] = value
        else:
            raise ValueError(f"unexpected key in an original AST checkpoint: {key!r}")
    return out


# The original repository's LayerNorm epsilons: timm 0.4.5's ViT builds its
# blocks' and final LayerNorms with eps=1e-6, and ast_models.py's mlp_head with
# PyTorch's default, 1e-5 (transformers' ASTConfig defaults to 1e-12).
ORIGINAL_LAYER_NORM_EPS = 1e-6
ORIGINAL_HEAD_LAYER_NORM_EPS = 1e-5


def _infer_original_config(
    sd: dict[str, torch.Tensor],
    name: str,
    max_length: int | None,
    frequency_stride: int | None,
    time_stride: int | None,
) -> ASTConfig:
    """Architecture of an original ``.pth`` from its tensors and file name.

    Strides come from the caller or from the file name (``audioset_10_10_...``);
    the stored input length is the one of the 128-bin grid that fits the
    position embedding (1024 for AudioSet, 128 for Speech Commands). The
    LayerNorm epsilons are the original code's (``ORIGINAL_LAYER_NORM_EPS``,
    ``ORIGINAL_HEAD_LAYER_NORM_EPS``).
    """
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"):
        if key not in sd:
            raise ValueError(f"original AST checkpoint '{name}' has no {key!r}")
    m = re.search(r"_(\d+)_(\d+)_", name)
    fs = frequency_stride or (int(m.group(1)) if m else None)
    ts = time_stride or (int(m.group(2)) if m else None)
    if fs is None or ts is None:
        raise ValueError(
            f"cannot tell the strides of '{name}': pass frequency_stride and "
            "time_stride, or keep the original file name (e.g. audioset_10_10_0.4593.pth)"
        )
    hidden = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    num_mel_bins = NUM_MEL_BINS
    f = (num_mel_bins - patch) // fs + 1
    n_patches = sd["pos_embed"].shape[1] - 2
    if n_patches % f:
        raise ValueError(
            f"'{name}': a position embedding of {n_patches} patches does not fit "
            f"{num_mel_bins} mel bins at frequency stride {fs}"
        )
    t = n_patches // f
    lengths = range((t - 1) * ts + patch, t * ts + patch)
    stored = next((n for n in lengths if n % 64 == 0), lengths[0])
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    head = sd.get("head.1.weight")
    return ASTConfig(
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0],
        patch_size=patch,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        frequency_stride=fs,
        time_stride=ts,
        max_length=stored,
        num_mel_bins=num_mel_bins,
        layer_norm_eps=ORIGINAL_LAYER_NORM_EPS,
        classifier_layer_norm_eps=ORIGINAL_HEAD_LAYER_NORM_EPS,
        # the published heads' names by their size (AudioSet, Speech Commands,
        # ESC-50): the file itself names none
        id2label=(
            label_table(head.shape[0])
            or {i: f"LABEL_{i}" for i in range(head.shape[0])}
        )
        if head is not None
        else None,
    )


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError(
            f"loading '{repo_id}' from the Hugging Face hub needs huggingface_hub: "
            "pip install 'skast[hub]'. Or download the model directory and pass "
            "its path."
        ) from err
    try:
        path = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["config.json", "preprocessor_config.json", *WEIGHT_FILES],
        )
    except Exception as err:  # offline, unknown repo, network errors ...
        raise CheckpointUnavailableError(
            f"could not get '{repo_id}' from the Hugging Face hub ({type(err).__name__}:"
            f" {err}). If this machine is offline, download the model directory "
            "elsewhere (huggingface-cli download ...) and pass its path."
        ) from err
    return Path(path)


def _read_hf_directory(
    path: Path,
) -> tuple[ASTConfig, dict[str, torch.Tensor], dict | None, str | None]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointUnavailableError(
            f"'{path}' is not a Hugging Face model directory: it has no config.json"
        )
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"'{config_file}' is not valid JSON: {err}") from err
    model_type = raw.get("model_type", "audio-spectrogram-transformer")
    if model_type != "audio-spectrogram-transformer":
        raise ValueError(f"'{path}' holds a {model_type!r} model, not an AST")
    config = ASTConfig.from_dict(raw)
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise CheckpointUnavailableError(f"'{path}' has neither of {WEIGHT_FILES}")
    sd = _from_hf_state_dict(_read_weights(weights))
    pre_file = path / "preprocessor_config.json"
    preprocessor = json.loads(pre_file.read_text()) if pre_file.is_file() else None
    problem_type = raw.get("problem_type")
    return (
        config,
        sd,
        preprocessor,
        problem_type if isinstance(problem_type, str) else None,
    )


def _build(config: ASTConfig, sd: dict[str, torch.Tensor], source: str) -> AST:
    """An AST for ``config`` holding the weights ``sd`` read from ``source``."""
    with torch.device("meta"):  # shapes only
        expected = AST(config).state_dict()
    # A bare encoder checkpoint (no head): the head is freshly initialised.
    bare = "head.1.weight" not in sd and config.num_labels
    if bare:
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [
        f"{k}: file {tuple(sd[k].shape)}, config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:5]))
        raise ValueError(
            f"the weights of '{source}' do not match its config: " + ", ".join(parts)
        )
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    if not bare:
        return AST.from_state_dict(config, sd)
    model = AST.from_state_dict(dataclasses.replace(config, id2label=None), sd)
    model.reset_classifier(config.id2label)
    return model


def load_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    max_length: int | None = None,
    frequency_stride: int | None = None,
    time_stride: int | None = None,
    revision: str | None = None,
) -> Checkpoint:
    """Load an AST from a Hugging Face directory, a hub id or an original ``.pth``.

    Parameters
    ----------
    checkpoint : str or os.PathLike
        A directory with ``config.json`` and ``model.safetensors`` or
        ``pytorch_model.bin``; a ``.pth``/``.pt``/``.bin``/``.safetensors`` file
        with the original repository's keys; or a hub id (``"org/name"``) when
        no such path exists.
    max_length : int, default=None
        Input frames to build the model for. ``None`` keeps the checkpoint's.
    frequency_stride, time_stride : int, default=None
        Patch strides. ``None`` keeps the checkpoint's (for an original file:
        from its name, as ``audioset_10_10_0.4593.pth``).
    revision : str, default=None
        Hub revision (branch, tag or commit) for a hub id.

    Returns
    -------
    Checkpoint
        ``.model`` is an :class:`~skast._model.AST` in eval mode on the CPU.

    Raises
    ------
    ValueError
        Corrupt or truncated files, pickles holding code, weights that disagree
        with the config.
    OSError
        A path or hub id that cannot be found or downloaded.
    ImportError
        A hub id without ``huggingface_hub`` installed.

    Examples
    --------
    >>> import tempfile
    >>> from skast._checkpoints import load_checkpoint, save_pretrained
    >>> from skast._model import AST, ASTConfig
    >>> cfg = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                 intermediate_size=64, max_length=64, num_mel_bins=32)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_pretrained(AST(cfg), d)
    ...     ckpt = load_checkpoint(d, max_length=32)
    >>> ckpt.config.max_length, tuple(ckpt.model.pos_embed.shape)
    (32, (1, 6, 32))
    """
    source = os.fspath(checkpoint)
    path = Path(source).expanduser()
    preprocessor = problem_type = None
    if path.is_dir():
        config, sd, preprocessor, problem_type = _read_hf_directory(path)
    elif path.is_file():
        sd = _read_weights(path)
        if any(k.startswith(("module.", "v.")) for k in sd):
            sd = _from_original_state_dict(sd)
            config = _infer_original_config(
                sd, path.name, max_length, frequency_stride, time_stride
            )
        else:
            raise ValueError(
                f"'{path}' is not an original AST checkpoint (no 'module.v.*' keys); "
                "for a Hugging Face checkpoint pass the directory holding config.json"
            )
    elif _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        path = _hub_snapshot(source, revision)
        config, sd, preprocessor, problem_type = _read_hf_directory(path)
    else:
        raise CheckpointUnavailableError(
            f"no such checkpoint file or directory: '{source}'"
        )

    model = _build(config, sd, source)
    target = dataclasses.replace(
        config,
        max_length=max_length or config.max_length,
        frequency_stride=frequency_stride or config.frequency_stride,
        time_stride=time_stride or config.time_stride,
    )
    if target != config:
        model = _rebuild(model, target)
    return Checkpoint(
        model=model.eval(),
        source=source,
        preprocessor=preprocessor,
        problem_type=problem_type,
    )


def _rebuild(model: AST, config: ASTConfig) -> AST:
    """The same weights for another input length or strides."""
    sd = model.state_dict()
    sd["pos_embed"] = adapt_position_embeddings(
        sd["pos_embed"], model.config.grid, config.grid
    )
    return AST.from_state_dict(config, sd)


def save_pretrained(
    model: AST, directory: str | os.PathLike, *, normalization=None
) -> None:
    """Write ``model`` in the Hugging Face layout that transformers loads.

    ``config.json`` (with ``id2label``/``label2id``), ``model.safetensors`` with
    transformers' parameter names, and ``preprocessor_config.json`` for
    ``ASTFeatureExtractor``. A model with a head is written as
    ``ASTForAudioClassification``, one without as ``ASTModel``. The config
    holds the LayerNorm epsilons: ``layer_norm_eps`` and, where the head's
    differs (an original ``.pth``), ``classifier_layer_norm_eps``, which skast
    reads back and transformers keeps but does not use (its head takes
    ``layer_norm_eps``; see :class:`~skast._model.ASTConfig`).

    Parameters
    ----------
    model : AST
    directory : str or os.PathLike
        Created if missing; files in it are overwritten.
    normalization : tuple of float, default=None
        ``(mean, std)`` to record for the feature extractor; ``None`` records
        the AudioSet statistics.

    Examples
    --------
    >>> import os, tempfile
    >>> from skast._checkpoints import save_pretrained
    >>> from skast._model import AST, ASTConfig
    >>> cfg = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                 intermediate_size=64, max_length=32, num_mel_bins=32)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_pretrained(AST(cfg), d)
    ...     sorted(os.listdir(d))
    ['config.json', 'model.safetensors', 'preprocessor_config.json']
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    has_head = model.config.num_labels > 0
    config.update(
        model_type="audio-spectrogram-transformer",
        architectures=["ASTForAudioClassification" if has_head else "ASTModel"],
    )
    if has_head:
        config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    mean, std = normalization if normalization is not None else NORM_STATS["audioset"]
    preprocessor = {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "num_mel_bins": model.config.num_mel_bins,
        "max_length": model.config.max_length,
        "do_normalize": True,
        "mean": float(mean),
        "std": float(std),
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor, indent=2) + "\n"
    )
    save_file(
        _to_hf_state_dict(model),
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
