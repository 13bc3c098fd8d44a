"""What a fit trains: freezing the encoder, or its first blocks.

Both contexts restore on exit exactly what they changed, so a fitted
``model_`` ends as it began: every parameter requiring gradients, every
module in its mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["frozen", "training_mode"]


def _frozen_modules(model, freeze) -> list[torch.nn.Module]:
    if freeze is None:
        return []
    if freeze == "encoder":
        return [m for name, m in model.named_children() if name != "head"]
    return [model.patch_embed, model.pos_drop, *model.blocks[:freeze]]


@contextlib.contextmanager
def frozen(model, freeze) -> Iterator[list[torch.nn.Parameter]]:
    """Freeze what ``freeze`` says; yield the parameters left to train.

    ``None``: nothing; ``"encoder"``: all but the head; an int ``k``: the
    patch embedding, the two tokens, the position embedding and the first
    ``k`` blocks. The frozen parameters stop requiring gradients, so no graph
    is built through them; on exit each parameter's ``requires_grad`` is
    what it was.

    Examples
    --------
    >>> from skast._freezing import frozen
    >>> from skast._model import AST, ASTConfig
    >>> from skast._recipes import TINY
    >>> model = AST(ASTConfig(**TINY))
    >>> model.reset_classifier({0: "no", 1: "yes"})  # a LayerNorm and a Linear
    >>> with frozen(model, "encoder") as trained:
    ...     len(trained), model.blocks[0].attn.qkv.weight.requires_grad
    (4, False)
    >>> all(p.requires_grad for p in model.parameters())
    True
    """
    parameters = [p for m in _frozen_modules(model, freeze) for p in m.parameters()]
    if freeze is not None:
        parameters += [model.cls_token, model.dist_token, model.pos_embed]
    before = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p in parameters:
            p.requires_grad_(False)
        yield [p for p in model.parameters() if p.requires_grad]
    finally:
        for p, requires_grad in before:
            p.requires_grad_(requires_grad)


@contextlib.contextmanager
def training_mode(model, freeze) -> Iterator[None]:
    """Training mode, with the frozen modules in eval mode (no dropout);
    each module's mode is restored on exit."""
    before = [(m, m.training) for m in model.modules()]
    model.train()
    for m in _frozen_modules(model, freeze):
        m.eval()
    try:
        yield
    finally:
        for m, training in before:
            m.training = training
