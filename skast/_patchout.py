"""Structured patchout (PaSST, Koutini et al. 2022) for fine-tuning.

In each training batch, whole time columns and whole frequency rows of the
``(frequency, time)`` patch grid are left out, with their position
embeddings, after the patch embedding and before the transformer blocks:
the blocks see ``(f - drop_f) * (t - drop_t)`` patch tokens instead of
``f * t``, so a step costs about that share of the matrix products and the
square of it in attention, and the model learns not to lean on any one part
of the spectrogram. Which columns and rows go is drawn per batch from the
training loop's generator, so a fit with an int ``random_state`` is
reproducible. Inference (eval mode, ``transform``, ``predict``) sees every
patch: only :mod:`skast._training` passes a draw to the model.

PaSST drops 40 of the 99 time columns and 4 of the 12 frequency rows of a
10 s clip, about 60 % of the patches.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import NamedTuple

import torch

__all__ = ["Kept", "check_patchout", "draw_kept", "drop_counts", "keep_tokens"]


class Kept(NamedTuple):
    """The frequency rows and time columns of the patch grid a batch keeps.

    Both are sorted 1-D int64 tensors of indices into the grid's axes.

    Examples
    --------
    >>> import torch
    >>> from skast._patchout import Kept
    >>> kept = Kept(frequency=torch.tensor([0, 2]), time=torch.tensor([1, 3]))
    >>> kept.token_index(time_size=4).tolist()   # frequency-major tokens
    [1, 3, 9, 11]
    >>> kept.num_patches
    4
    """

    frequency: torch.Tensor
    time: torch.Tensor

    @property
    def num_patches(self) -> int:
        """Number of patch tokens kept."""
        return len(self.frequency) * len(self.time)

    def token_index(self, time_size: int) -> torch.Tensor:
        """Indices of the kept patches among the frequency-major patch tokens
        (token ``fi * time_size + ti``) of a grid ``time_size`` columns wide."""
        return (self.frequency[:, None] * time_size + self.time[None, :]).flatten()


def check_patchout(patchout) -> tuple[int | float, int | float] | None:
    """``patchout`` as a ``(time, frequency)`` tuple, or None; a ValueError
    naming the parameter for anything else.

    Each entry is an int ``>= 0`` (a number of time columns / frequency rows
    of the patch grid) or a float in ``[0, 1)`` (a share of them).

    Examples
    --------
    >>> from skast._patchout import check_patchout
    >>> check_patchout([40, 4]), check_patchout((0.4, 0.33)), check_patchout(None)
    ((40, 4), (0.4, 0.33), None)
    >>> check_patchout((1.0, 0))
    Traceback (most recent call last):
    ...
    ValueError: patchout must be None or a pair (time, frequency), each an int >= 0 (a number of patch columns / rows to drop) or a float in [0, 1) (a share of them), got (1.0, 0)
    """
    if patchout is None:
        return None

    def valid(v) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, Integral):
            return v >= 0
        return isinstance(v, Real) and 0 <= v < 1

    if (
        not isinstance(patchout, (tuple, list))
        or len(patchout) != 2
        or not all(valid(v) for v in patchout)
    ):
        raise ValueError(
            "patchout must be None or a pair (time, frequency), each an int >= 0 "
            "(a number of patch columns / rows to drop) or a float in [0, 1) (a "
            f"share of them), got {patchout!r}"
        )
    return tuple(int(v) if isinstance(v, Integral) else float(v) for v in patchout)


def drop_counts(patchout, grid: tuple[int, int]) -> tuple[int, int]:
    """``(time columns, frequency rows)`` that ``patchout`` drops from a
    ``(frequency, time)`` patch grid; a share is rounded to the nearest count
    (halves up).

    Raises
    ------
    ValueError
        If it would drop every time column or every frequency row.

    Examples
    --------
    >>> from skast._patchout import drop_counts
    >>> drop_counts((40, 4), (12, 101)), drop_counts((0.4, 1 / 3), (12, 99))
    ((40, 4), (40, 4))
    >>> drop_counts((5, 0), (12, 5))
    Traceback (most recent call last):
    ...
    ValueError: patchout=(5, 0) would drop every time column of the model's 12 x 5 patch grid (frequency x time); drop at most 4
    """
    patchout = check_patchout(patchout)
    if patchout is None:
        return 0, 0
    f, t = grid
    drop = tuple(
        n if isinstance(n, int) else math.floor(n * size + 0.5)
        for n, size in zip(patchout, (t, f))
    )
    for n, size, what in zip(drop, (t, f), ("time column", "frequency row")):
        if n >= size:
            raise ValueError(
                f"patchout={patchout!r} would drop every {what} of the model's "
                f"{f} x {t} patch grid (frequency x time); drop at most {size - 1}"
            )
    return drop


def draw_kept(
    patchout, grid: tuple[int, int], generator: torch.Generator
) -> Kept | None:
    """A batch's random rows and columns to keep, drawn from ``generator``;
    None (and nothing drawn) when ``patchout`` drops nothing.

    Examples
    --------
    >>> import torch
    >>> from skast._patchout import draw_kept
    >>> kept = draw_kept((2, 1), (4, 6), torch.Generator().manual_seed(0))
    >>> len(kept.frequency), len(kept.time), kept.num_patches
    (3, 4, 12)
    >>> draw_kept((0, 0), (4, 6), torch.Generator()) is None
    True
    """
    drop_t, drop_f = drop_counts(patchout, grid)
    if not (drop_t or drop_f):
        return None
    f, t = grid
    time = torch.randperm(t, generator=generator)[: t - drop_t].sort().values
    frequency = torch.randperm(f, generator=generator)[: f - drop_f].sort().values
    return Kept(frequency=frequency, time=time)


def keep_tokens(
    patches: torch.Tensor, pos_embed: torch.Tensor, kept: Kept, time_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept patch tokens of ``(B, f*t, D)`` ``patches`` and the matching
    ``(1, 2 + kept, D)`` position embeddings (the two special tokens' first).

    Examples
    --------
    >>> import torch
    >>> from skast._patchout import Kept, keep_tokens
    >>> kept = Kept(torch.tensor([1]), torch.tensor([0, 2]))
    >>> patches, pos = torch.randn(3, 2 * 3, 8), torch.randn(1, 2 + 2 * 3, 8)
    >>> p, q = keep_tokens(patches, pos, kept, time_size=3)
    >>> p.shape, q.shape
    (torch.Size([3, 2, 8]), torch.Size([1, 4, 8]))
    >>> bool(torch.equal(p, patches[:, [3, 5]]))
    True
    """
    index = kept.token_index(time_size).to(patches.device)
    pos = torch.cat((pos_embed[:, :2], pos_embed[:, 2:].index_select(1, index)), 1)
    return patches.index_select(1, index), pos
