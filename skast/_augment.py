"""The training augmentations of the AST recipe: SpecAugment and mixup.

Both follow the original AST training dataloader (``src/dataloader.py`` of
YuanGongND/ast), batched, on the features' device. Only the fine-tuning loop
(:mod:`skast._training`) uses them; inference never augments.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np
import torch

__all__ = ["mixup", "spec_augment"]


def _rand(n: int, generator, device) -> torch.Tensor:
    """``n`` uniform float32 numbers from ``generator`` (or the global RNG of
    ``device``), returned on ``device``."""
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _check_param(value, name: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a non-negative int, got {type(value).__name__}"
        ) from None
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return value


def spec_augment(
    features: torch.Tensor,
    freqm: int,
    timem: int,
    *,
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment of the original AST dataloader, per example of a batch.

    Each example gets one frequency mask and one time mask, drawn as
    ``torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True)`` then
    ``TimeMasking(timem, iid_masks=True)`` draw them: width
    ``floor(U * param)`` (so smaller than ``param``), first bin
    ``floor(U' * (size - U * param))``. With ``generator=None`` and features on
    one device, the result equals those two transforms applied to
    ``features.transpose(1, 2)`` after the same ``torch.manual_seed``.

    Parameters
    ----------
    features : torch.Tensor of shape (n_clips, n_frames, n_mels)
        Log-mel features (any device).
    freqm : int
        Frequency masks are narrower than ``freqm`` bins; 0 disables them.
    timem : int
        Time masks are shorter than ``timem`` frames; 0 disables them.
    fill : float, default=0.0
        Value of the masked bins. The original masks with log-mel 0 before
        normalising; on normalised features pass ``normalize(0, mean, std)``.
    generator : torch.Generator, default=None
        Source of randomness, on the features' device or the CPU; ``None``
        uses torch's global generator of the features' device.

    Returns
    -------
    torch.Tensor of shape (n_clips, n_frames, n_mels)
        A new tensor; ``features`` is not modified.

    Examples
    --------
    >>> import torch
    >>> from skast._augment import spec_augment
    >>> x = torch.zeros(2, 100, 128)
    >>> gen = torch.Generator().manual_seed(0)
    >>> y = spec_augment(x, freqm=48, timem=20, fill=-1.0, generator=gen)
    >>> y.shape, bool((y == -1.0).any()), bool((x == 0).all())
    (torch.Size([2, 100, 128]), True, True)
    """
    freqm = _check_param(freqm, "freqm")
    timem = _check_param(timem, "timem")
    if features.ndim != 3:
        raise ValueError(
            "features must be (n_clips, n_frames, n_mels), got shape "
            f"{tuple(features.shape)}"
        )
    out = features.clone()
    n_clips = features.shape[0]
    device = features.device
    for axis, param in ((2, freqm), (1, timem)):  # torchaudio's order: freq, time
        if param < 1:
            continue
        size = features.shape[axis]
        width = _rand(n_clips, generator, device) * param
        start = _rand(n_clips, generator, device) * (size - width)
        first = start.long()[:, None]
        last = first + width.long()[:, None]
        idx = torch.arange(size, device=device)
        mask = (idx >= first) & (idx < last)  # (B, size)
        mask = mask[:, None, :] if axis == 2 else mask[:, :, None]
        out.masked_fill_(mask, fill)
    return out


def mixup(
    features: torch.Tensor,
    targets: torch.Tensor,
    p: float,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mixup of the original AST recipe.

    With probability ``p`` per example, example ``i`` becomes
    ``lam * x[i] + (1 - lam) * x[j]`` with a partner ``j`` drawn uniformly
    from the batch (``i`` included, as the original does) and
    ``lam ~ Beta(10, 10)``; its target becomes ``lam * y[i] + (1 - lam) * y[j]``.
    The other examples are returned unchanged. Partners are taken from the
    batch before mixing.

    Parameters
    ----------
    features : torch.Tensor of shape (n_clips, ...)
        Normalised log-mel features.
    targets : torch.Tensor of shape (n_clips, n_classes)
        One-hot or multi-hot targets, cast to float32 if not floating-point.
    p : float
        Probability, in [0, 1], that an example is mixed (the ``mixup``
        parameter of the original recipes: 0.5 for AudioSet, 0.6 for Speech
        Commands, 0 for ESC-50).
    generator : torch.Generator, default=None
        Source of randomness (any device); ``None`` uses torch's global CPU
        generator. The draws are made with numpy from a seed taken from it.

    Returns
    -------
    features : torch.Tensor
        The mixed features, a new tensor.
    targets : torch.Tensor
        The mixed float targets, a new tensor.

    Notes
    -----
    The original mixes waveforms (both mean-removed, the partner cut or padded
    to the first's length, the mix mean-removed again) and computes the fbank
    of the mix. Here the normalised log-mel features are mixed instead,
    because they are computed once per ``fit``; mixing in the log domain is
    not the same as mixing the sounds, a known departure from the recipe.

    Examples
    --------
    >>> import torch
    >>> from skast._augment import mixup
    >>> x, y = torch.randn(4, 10, 128), torch.eye(4)
    >>> gen = torch.Generator().manual_seed(0)
    >>> xm, ym = mixup(x, y, p=1.0, generator=gen)
    >>> xm.shape, ym.shape, torch.allclose(ym.sum(1), torch.ones(4))
    (torch.Size([4, 10, 128]), torch.Size([4, 4]), True)
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if targets.ndim != 2 or targets.shape[0] != features.shape[0]:
        raise ValueError(
            f"targets must be (n_clips, n_classes) with n_clips={features.shape[0]}, "
            f"got shape {tuple(targets.shape)}"
        )
    if not targets.is_floating_point():
        targets = targets.to(torch.float32)
    n_clips = features.shape[0]
    if p == 0 or n_clips == 0:
        return features.clone(), targets.clone()

    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    else:
        seed = int(
            torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        )
    rng = np.random.default_rng(seed)
    apply = rng.random(n_clips) < p
    partner = rng.integers(0, n_clips, size=n_clips)
    lam = rng.beta(10.0, 10.0, size=n_clips)

    def mix(t: torch.Tensor) -> torch.Tensor:
        shape = (n_clips,) + (1,) * (t.ndim - 1)
        lam_t = torch.as_tensor(lam, dtype=t.dtype, device=t.device).reshape(shape)
        mixed = lam_t * t + (1 - lam_t) * t[torch.as_tensor(partner, device=t.device)]
        keep = torch.as_tensor(~apply, device=t.device).reshape(shape)
        return torch.where(keep, t, mixed)

    return mix(features), mix(targets)
