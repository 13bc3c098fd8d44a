"""The Audio Spectrogram Transformer as a plain PyTorch module.

A ViT/DeiT over a 128-bin log-mel spectrogram (Gong, Chung & Glass, 2021): a
strided 16x16 patch embedding (a convolution's weights, computed as one matrix
product), ``[cls, dist, patches]`` tokens with learned
absolute position embeddings, pre-LN transformer blocks on
:func:`torch.nn.functional.scaled_dot_product_attention` with a fused qkv
projection, a final LayerNorm, the reference pooling ``(cls + dist) / 2`` and a
LayerNorm -> Linear head.

The configuration uses the field names of Hugging Face's ``ASTConfig`` so a
downloaded ``config.json`` loads as it is; parameter names follow the original
repository (timm's ViT): ``patch_embed.proj``, ``blocks.{i}.attn.qkv`` ...
This module knows nothing of scikit-learn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from skast._patches import PatchProjection
from skast._patchout import Kept, keep_tokens
from skast._recipes import POOLINGS

__all__ = ["ASTConfig", "AST", "POOLINGS"]


@dataclass
class ASTConfig:
    """Hyper-parameters of an AST, named as in Hugging Face's ``ASTConfig``.

    Parameters
    ----------
    hidden_size : int, default=768
        Width of the token embeddings.
    num_hidden_layers : int, default=12
        Number of transformer blocks.
    num_attention_heads : int, default=12
        Attention heads per block; must divide ``hidden_size``.
    intermediate_size : int, default=3072
        Width of the MLP inside each block.
    hidden_act : str, default="gelu"
        MLP activation: ``"gelu"`` (exact, erf) or ``"gelu_new"``/``"gelu_pytorch_tanh"``.
    hidden_dropout_prob : float, default=0.0
        Dropout after the embeddings, the attention output and the MLP.
    attention_probs_dropout_prob : float, default=0.0
        Dropout on the attention weights.
    initializer_range : float, default=0.02
        Standard deviation of the truncated normal initialisation.
    layer_norm_eps : float, default=1e-12
        Epsilon of the blocks' LayerNorms and the final one (transformers'
        default; the original repository's models use 1e-6, and an original
        ``.pth`` loads with it).
    patch_size : int, default=16
        Side of the square patches.
    qkv_bias : bool, default=True
        Whether the query/key/value projection has a bias.
    frequency_stride : int, default=10
        Patch stride along the mel axis.
    time_stride : int, default=10
        Patch stride along the time axis.
    max_length : int, default=1024
        Number of input frames (10 ms each).
    num_mel_bins : int, default=128
        Number of mel bins of the input.
    id2label : dict, default=None
        Class index -> label name; its length is the number of outputs of the
        head. ``None`` (or empty) means no head.
    classifier_layer_norm_eps : float, default=None
        Epsilon of the head's LayerNorm; ``None``: ``layer_norm_eps``. An
        original ``.pth`` has 1e-5 here (PyTorch's default) and 1e-6 in
        ``layer_norm_eps``. transformers keeps this field in a ``config.json``
        but its head uses ``layer_norm_eps``: it moves the head's normalised
        input by about ``(1e-5 - 1e-6) / (2 * var)`` relatively, ``var`` the
        variance of the pooled vector.

    Examples
    --------
    >>> from skast._model import ASTConfig
    >>> cfg = ASTConfig(max_length=128)
    >>> cfg.grid, cfg.num_patches
    ((12, 12), 144)
    >>> ASTConfig.from_dict({"hidden_size": 192, "model_type": "x"}).hidden_size
    192
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    patch_size: int = 16
    qkv_bias: bool = True
    frequency_stride: int = 10
    time_stride: int = 10
    max_length: int = 1024
    num_mel_bins: int = 128
    id2label: dict[int, str] | None = field(default=None)
    classifier_layer_norm_eps: float | None = None

    def __post_init__(self):
        if self.id2label:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        ints = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "patch_size",
            "frequency_stride",
            "time_stride",
            "max_length",
            "num_mel_bins",
        )
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) and name == "patch_size":
                if len(set(value)) != 1:
                    raise ValueError(f"only square patches are supported, got {value}")
                value = value[0]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config {name} must be a positive int, got {value!r}")
            setattr(self, name, value)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; "
                f"use one of {sorted(_ACTIVATIONS)}"
            )
        for name in ("layer_norm_eps", "classifier_layer_norm_eps"):
            value = getattr(self, name)
            if value is None and name.startswith("classifier"):
                continue
            if isinstance(value, bool) or not (
                isinstance(value, (int, float)) and value >= 0
            ):
                raise ValueError(
                    f"config {name} must be a non-negative number, got {value!r}"
                )
            setattr(self, name, float(value))
        if self.num_mel_bins < self.patch_size or self.max_length < self.patch_size:
            raise ValueError(
                f"num_mel_bins ({self.num_mel_bins}) and max_length "
                f"({self.max_length}) must be at least patch_size ({self.patch_size})"
            )

    @property
    def num_labels(self) -> int:
        """Number of outputs of the classification head (0: no head)."""
        return len(self.id2label) if self.id2label else 0

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(frequency, time)`` (no padding in the convolution)."""
        f = (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1
        t = (self.max_length - self.patch_size) // self.time_stride + 1
        return f, t

    @property
    def num_patches(self) -> int:
        """Number of patch tokens."""
        f, t = self.grid
        return f * t

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ASTConfig:
        """Build from a Hugging Face ``config.json`` dict, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        if not kwargs.get("id2label") and config.get("num_labels"):
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(config["num_labels"])}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``id2label`` keys as strings, as JSON has;
        ``classifier_layer_norm_eps`` only where it is set)."""
        out = dataclasses.asdict(self)
        if out["classifier_layer_norm_eps"] is None:
            out.pop("classifier_layer_norm_eps")
        if out["id2label"] is None:
            out.pop("id2label")
        else:
            out["id2label"] = {str(k): v for k, v in out["id2label"].items()}
        return out


_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}


class PatchEmbed(nn.Module):
    """The patch embedding, from a ``(B, T, F)`` spectrogram to ``(B, f*t, D)``:
    a strided convolution (:class:`PatchProjection`) on the ``(B, 1, F, T)``
    image.

    Tokens come in frequency-major order (index ``fi * t + ti``), as in the
    reference implementations.
    """

    def __init__(self, config: ASTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = PatchProjection(
            1,
            config.hidden_size,
            kernel_size=(p, p),
            stride=(config.frequency_stride, config.time_stride),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA."""

    def __init__(self, config: ASTConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = config.attention_probs_dropout_prob
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    """Two-layer MLP of a transformer block."""

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, config: ASTConfig):
        super().__init__()
        eps = config.layer_norm_eps
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AST(nn.Module):
    """Audio Spectrogram Transformer.

    Parameters
    ----------
    config : ASTConfig
        Architecture. ``config.num_labels`` outputs in the head; 0 means the
        head is the identity and :meth:`forward` returns the pooled embedding.

    Examples
    --------
    >>> import torch
    >>> from skast._model import AST, ASTConfig
    >>> cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                 intermediate_size=64, max_length=32, num_mel_bins=32,
    ...                 id2label={0: "a", 1: "b"})
    >>> model = AST(cfg).eval()
    >>> x = torch.zeros(3, 32, 32)            # (batch, frames, mel bins)
    >>> tokens = model.forward_features(x)
    >>> tokens.shape                          # 2 special tokens + 2 x 2 patches
    torch.Size([3, 6, 32])
    >>> model.pool(tokens, "mean").shape, model(x).shape
    (torch.Size([3, 32]), torch.Size([3, 2]))
    """

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 2, dim))
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            Block(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.head = self._make_head(config.num_labels)
        self.reset_parameters()

    @classmethod
    def from_state_dict(
        cls, config: ASTConfig, state_dict: dict[str, torch.Tensor]
    ) -> AST:
        """An AST on the CPU holding ``state_dict`` (all of its keys, strictly).

        The modules are built on the meta device, so no time goes into
        initialising weights that are overwritten at once (for the base model,
        about two seconds of a CPU's time).
        """
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        model.load_state_dict(state_dict)
        return model

    def _make_head(self, num_labels: int) -> nn.Module:
        if not num_labels:
            return nn.Identity()
        eps = self.config.classifier_layer_norm_eps
        eps = self.config.layer_norm_eps if eps is None else eps
        dim = self.config.hidden_size
        return nn.Sequential(nn.LayerNorm(dim, eps=eps), nn.Linear(dim, num_labels))

    def reset_parameters(self) -> None:
        """Initialise as transformers does: truncated normal weights, zero biases."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=std)

    def reset_classifier(self, id2label: dict[int, str] | None) -> None:
        """Replace the head by a freshly initialised one for ``id2label``."""
        self.config = dataclasses.replace(self.config, id2label=id2label)
        ref = self.norm.weight
        self.head = self._make_head(self.config.num_labels).to(ref.device, ref.dtype)
        std = self.config.initializer_range
        for module in self.head.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)

    def layer_index(self, layer: int | None) -> int:
        """The number of blocks that ``forward_features(x, layer)`` runs.

        Parameters
        ----------
        layer : int or None
            A hidden state as in transformers' ``hidden_states`` (0 = the
            embeddings, ``i`` = the output of block ``i``, negative counts
            from the end); ``None``: the last block's.

        Returns
        -------
        int
            In ``[0, num_hidden_layers]``.

        Raises
        ------
        ValueError
            If ``layer`` is outside ``[-num_hidden_layers - 1, num_hidden_layers]``.

        Examples
        --------
        >>> from skast._model import AST, ASTConfig
        >>> model = AST(ASTConfig(hidden_size=32, num_hidden_layers=2,
        ...                       num_attention_heads=2, intermediate_size=64))
        >>> model.layer_index(None), model.layer_index(-1), model.layer_index(0)
        (2, 2, 0)
        >>> model.layer_index(3)
        Traceback (most recent call last):
        ...
        ValueError: layer must be in [-3, 2] for a 2-layer model, got 3
        """
        n = self.config.num_hidden_layers
        if layer is None:
            return n
        idx = layer + n + 1 if layer < 0 else layer
        if not 0 <= idx <= n:
            raise ValueError(
                f"layer must be in [{-n - 1}, {n}] for a {n}-layer model, got {layer}"
            )
        return idx

    def forward_features(
        self,
        x: torch.Tensor,
        layer: int | None = None,
        *,
        patchout: Kept | None = None,
    ) -> torch.Tensor:
        """Token states for a ``(B, max_length, num_mel_bins)`` normalised input.

        Parameters
        ----------
        x : torch.Tensor of shape (batch, max_length, num_mel_bins)
        layer : int, default=None
            ``None``: the output of the last block after the final LayerNorm
            (transformers' ``last_hidden_state``). An int selects a hidden state
            as in transformers' ``hidden_states`` tuple (0 = embeddings, ``i`` =
            output of block ``i``, negative counts from the end) without the
            final LayerNorm; blocks after it are not run.
        patchout : skast._patchout.Kept, default=None
            Structured patchout: only the patches of these frequency rows and
            time columns of ``config.grid`` (with their position embeddings)
            go into the blocks, in frequency-major order after the two
            special tokens. ``None``: every patch. The training loop passes
            one per batch; inference never does.

        Returns
        -------
        torch.Tensor of shape (batch, 2 + num_patches, hidden_size)
            ``2 + patchout.num_patches`` tokens with ``patchout``.
        """
        stop = self.layer_index(layer)
        expected = (self.config.max_length, self.config.num_mel_bins)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected input of shape (batch, {expected[0]}, {expected[1]}), "
                f"got {tuple(x.shape)}"
            )
        patches, pos_embed = self.patch_embed(x), self.pos_embed
        if patchout is not None:
            patches, pos_embed = keep_tokens(
                patches, pos_embed, patchout, self.config.grid[1]
            )
        b = patches.shape[0]
        tokens = torch.cat(
            (
                self.cls_token.expand(b, -1, -1),
                self.dist_token.expand(b, -1, -1),
                patches,
            ),
            dim=1,
        )
        h = self.pos_drop(tokens + pos_embed)
        for block in self.blocks[:stop]:
            h = block(h)
        return self.norm(h) if layer is None else h

    @staticmethod
    def pool(tokens: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
        """Pool token states to one vector per clip.

        ``"mean"``: ``(cls + dist) / 2`` (the reference pooler); ``"cls"``,
        ``"dist"``: one of the two; ``"patch"``: the mean of the patch tokens.
        """
        if pooling == "mean":
            return (tokens[:, 0] + tokens[:, 1]) / 2
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "dist":
            return tokens[:, 1]
        if pooling == "patch":
            return tokens[:, 2:].mean(dim=1)
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

    def forward_head(
        self, tokens: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor:
        """The head on token states, as timm's ``forward_head``.

        Parameters
        ----------
        tokens : torch.Tensor of shape (batch, 2 + num_patches, hidden_size)
            The output of :meth:`forward_features`.
        pre_logits : bool, default=False
            Return the pooled vector (the reference pooling, ``(cls + dist) /
            2``, which the head was trained on) instead of the logits.

        Returns
        -------
        torch.Tensor of shape (batch, num_labels) or (batch, hidden_size)
            Raw logits (no sigmoid or softmax), or the pooled vector with
            ``pre_logits`` or a model without a head.
        """
        pooled = self.pool(tokens)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, *, patchout: Kept | None = None) -> torch.Tensor:
        """Logits (raw, no sigmoid/softmax) for a normalised spectrogram batch
        (``patchout``: the patches kept, as in :meth:`forward_features`)."""
        return self.forward_head(self.forward_features(x, patchout=patchout))

    def flops_per_clip(self) -> float:
        """Approximate forward FLOPs for one clip (2 per multiply-accumulate)."""
        c = self.config
        n, d = c.num_patches + 2, c.hidden_size
        per_block = 2 * n * (4 * d * d + 2 * d * c.intermediate_size) + 4 * n * n * d
        embed = 2 * c.num_patches * d * c.patch_size**2
        return float(c.num_hidden_layers * per_block + embed)


def adapt_position_embeddings(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Adapt a ``(1, 2 + f*t, D)`` position embedding to another patch grid.

    As the original AST does when it builds a model at another input length:
    along each axis, a smaller grid is cut from the middle
    (``[c - n // 2 : c - n // 2 + n]`` with ``c = old // 2``); a larger one is
    bilinearly interpolated (``align_corners=False``). The two token rows are
    kept.

    Examples
    --------
    >>> import torch
    >>> from skast._model import adapt_position_embeddings
    >>> pos = torch.randn(1, 2 + 12 * 101, 8)
    >>> adapt_position_embeddings(pos, (12, 101), (12, 50)).shape
    torch.Size([1, 602, 8])
    """
    (f0, t0), (f1, t1) = old_grid, new_grid
    if (f0, t0) == (f1, t1):
        return pos_embed.clone()
    special, patches = pos_embed[:, :2], pos_embed[:, 2:]
    d = pos_embed.shape[-1]
    grid = patches.transpose(1, 2).reshape(1, d, f0, t0).float()
    if t1 < t0:
        start = t0 // 2 - t1 // 2
        grid = grid[:, :, :, start : start + t1]
    elif t1 > t0:
        grid = F.interpolate(grid, size=(f0, t1), mode="bilinear")
    if f1 < f0:
        start = f0 // 2 - f1 // 2
        grid = grid[:, :, start : start + f1, :]
    elif f1 > f0:
        grid = F.interpolate(grid, size=(f1, t1), mode="bilinear")
    patches = grid.reshape(1, d, f1 * t1).transpose(1, 2).to(pos_embed.dtype)
    return torch.cat((special, patches), dim=1).contiguous()
