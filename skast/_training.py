"""The fine-tuning loop of :class:`skast.ASTClassifier`.

The AST paper's recipe (reference/ast.md 2.5-2.6): Adam with weight decay
5e-7 and betas (0.95, 0.999), an optional step warm-up, a ``MultiStepLR``
decay stepped once per epoch, SpecAugment and mixup. The features are
computed once per fit by the estimator and kept on the CPU; each batch is
moved to the device and augmented there. Nothing here knows of scikit-learn.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from skast import _features
from skast._model import AST
from skast._runtime import autocast, evaluate, retry_halving_on_oom

__all__ = [
    "Trainer",
    "derive_seed",
    "seed_torch",
    "set_trainable",
    "sigint_flag",
]

#: The original raises the warm-up learning rate every this many steps.
WARMUP_PERIOD = 50
#: ... and its MultiStepLR milestones are ``range(start, 1000, every)``.
LAST_MILESTONE = 1000


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 31-bit seed for ``keys`` (the head, an epoch...)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] >> 1)


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's global generators of the CPU and of ``device`` (dropout,
    initialisation), and no others."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


# --------------------------------------------------------------------------- freezing


def _frozen_modules(model: AST, freeze) -> list[torch.nn.Module]:
    if freeze is None:
        return []
    if freeze == "encoder":
        return [m for name, m in model.named_children() if name != "head"]
    return [model.patch_embed, model.pos_drop, *model.blocks[:freeze]]


def set_trainable(model: AST, freeze) -> list[torch.nn.Parameter]:
    """Freeze what ``freeze`` says; return the parameters left to train.

    ``None``: nothing; ``"encoder"``: all but the head; an int ``k``: the
    patch embedding, the two tokens, the position embedding and the first
    ``k`` blocks.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    frozen = [p for m in _frozen_modules(model, freeze) for p in m.parameters()]
    if freeze is not None:
        frozen += [model.cls_token, model.dist_token, model.pos_embed]
    for p in frozen:
        p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _train_mode(model: AST, freeze) -> None:
    """Training mode, with the frozen modules in eval mode (no dropout)."""
    model.train()
    for m in _frozen_modules(model, freeze):
        m.eval()


# --------------------------------------------------------------------------- Ctrl-C


@contextlib.contextmanager
def sigint_flag() -> Iterator[dict]:
    """Turn the first Ctrl-C into a flag (``state["hit"]``) the loop checks.

    A second Ctrl-C raises :class:`KeyboardInterrupt` at once. Only in the
    main thread (signal handlers cannot be set elsewhere); the previous
    handler is restored on exit.
    """
    state = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["hit"]:
            raise KeyboardInterrupt
        state["hit"] = True

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


# --------------------------------------------------------------------------- losses


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weight: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy against (mixup-)soft targets, each example weighted by
    its target's class weights, averaged over the batch."""
    per_example = -(targets * F.log_softmax(logits, dim=1)).sum(1)
    if class_weight is not None:
        per_example = per_example * (targets * class_weight).sum(1)
    return per_example.mean()


def binary_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weight=None
) -> torch.Tensor:
    """Multi-label loss: BCE with logits, averaged over examples and labels."""
    return F.binary_cross_entropy_with_logits(logits, targets)


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Adam, the warm-up, the learning-rate schedule and the augmentations.

    One :meth:`epoch` is one pass over the training clips in a random order.
    :meth:`state_dict` / :meth:`load_state_dict` carry the optimizer, the
    schedule and the step count between ``partial_fit`` calls (on the CPU).
    """

    def __init__(
        self,
        model: AST,
        *,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        multilabel: bool,
        class_weight: torch.Tensor | None,
        learning_rate: float,
        weight_decay: float,
        betas: tuple[float, float],
        warmup_steps: int,
        lr_decay_start: int,
        lr_decay_every: int,
        lr_decay: float,
        batch_size: int,
        freqm: int,
        timem: int,
        mixup: float,
        fill: float,
        freeze,
    ):
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.multilabel = multilabel
        self.loss_fn = binary_cross_entropy if multilabel else soft_cross_entropy
        self.class_weight = None if class_weight is None else class_weight.to(device)
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.batch_size = batch_size
        self.freqm, self.timem, self.mixup, self.fill = freqm, timem, mixup, fill
        self.freeze = freeze
        params = set_trainable(model, freeze)
        # one fused kernel per step on CUDA: the same update as the default
        # for-each implementation, to rounding
        self.optimizer = torch.optim.Adam(
            params,
            lr=learning_rate,
            weight_decay=weight_decay,
            betas=tuple(betas),
            fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer,
            list(range(lr_decay_start, LAST_MILESTONE, lr_decay_every)),
            gamma=lr_decay,
        )
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=autocast_dtype == torch.float16
        )
        self.global_step = 0
        # after a device out-of-memory error, the size of the pieces a batch is
        # split into (None: whole batches)
        self.micro_batch = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        def to_cpu(obj):
            if isinstance(obj, torch.Tensor):
                return obj.detach().cpu().clone()
            if isinstance(obj, dict):
                return {k: to_cpu(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [to_cpu(v) for v in obj]
            return obj

        return {
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "global_step": self.global_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = state["global_step"]

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ training

    def _warm_up(self) -> None:
        """The original warm-up (src/traintest.py): every 50 steps up to
        ``warmup_steps``, ``lr = step / warmup_steps * learning_rate`` (so 0
        for the first 50 steps). Also at ``warmup_steps`` itself, so that a
        count that is not a multiple of 50 still ends at the full rate."""
        step, total = self.global_step, self.warmup_steps
        if total and step <= total and (step % WARMUP_PERIOD == 0 or step == total):
            for group in self.optimizer.param_groups:
                group["lr"] = step / total * self.learning_rate

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.freeze == "encoder":  # no graph through the frozen encoder
            with torch.no_grad():
                tokens = model.forward_features(x)
            return model.forward_head(tokens)
        return model(x)

    def augment(
        self, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup, then SpecAugment on the mix, as the original dataloader
        (which mixes the waveforms, then masks the fbank of the mix)."""
        if self.mixup > 0:
            x, t = _features.mixup(x, t, self.mixup, generator=generator)
        if self.freqm or self.timem:
            x = _features.spec_augment(
                x, self.freqm, self.timem, fill=self.fill, generator=generator
            )
        return x, t

    def step(self, x: torch.Tensor, t: torch.Tensor) -> float:
        """One optimizer step on an augmented batch; the batch loss.

        A device out-of-memory error halves the pieces the batch is run in and
        retries: their gradients are accumulated (each loss weighted by its
        share of the batch), so the step is the same. Later steps start from
        the size that fitted (:attr:`micro_batch`).
        """
        self._warm_up()
        n = len(x)

        def whole_batch(size):  # from zero: a failed piece may leave gradients
            self.optimizer.zero_grad(set_to_none=True)
            return sum(
                self._backward(x[i : i + size], t[i : i + size], n)
                for i in range(0, n, size)
            )

        first = min(n, self.micro_batch or n)
        loss, size = retry_halving_on_oom(whole_batch, first, self.device)
        if size != first:
            self.micro_batch = size
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        return loss

    def _backward(self, x: torch.Tensor, t: torch.Tensor, n: int) -> float:
        """Forward and backward of a piece of a batch of ``n``; its share of
        the batch loss."""
        with autocast(self.device, self.autocast_dtype):
            logits = self._forward(x)
        loss = self.loss_fn(logits.float(), t, self.class_weight)
        if len(x) != n:
            loss = loss * (len(x) / n)
        self.scaler.scale(loss).backward()
        return float(loss.detach())

    def epoch(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator,
        *,
        indices: torch.Tensor | None = None,
        stop: dict,
        bar=None,
    ) -> tuple[float, int, bool]:
        """One pass over ``features`` (CPU, normalised) in a random order.

        ``targets`` are class indices (single-label) or an indicator matrix;
        ``indices`` selects the training clips (``None``: all), so that a
        validation split needs no copy of the features. Returns
        ``(mean loss, examples seen, interrupted)``; an interruption
        (``stop["hit"]`` set by Ctrl-C, or a :class:`KeyboardInterrupt`) ends
        the epoch after the current batch. The schedule is not stepped.
        """
        _train_mode(self.model, self.freeze)
        n_classes = self.model.config.num_labels
        if indices is None:
            order = torch.randperm(len(features), generator=generator)
        else:
            order = indices[torch.randperm(len(indices), generator=generator)]
        total, seen, interrupted = 0.0, 0, False
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                x = features[idx].to(self.device, non_blocking=True)
                t = targets[idx].to(self.device, non_blocking=True)
                if self.multilabel:
                    t = t.float()
                else:
                    t = F.one_hot(t, n_classes).float()
                x, t = self.augment(x, t, generator)
                loss = self.step(x, t)
                total += loss * len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.update(len(idx))
                    bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
                if stop["hit"]:
                    interrupted = True
                    break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.model.eval()
        return (total / seen if seen else float("nan")), seen, interrupted

    def end_epoch(self) -> None:
        """Step the schedule, as the original does after each epoch."""
        self.scheduler.step()

    def logits(self, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Eval-mode float32 logits (on the CPU) of the CPU features at
        ``indices``, through the one evaluation loop."""
        batches = (
            (
                range(start, min(start + self.batch_size, len(indices))),
                features[indices[start : start + self.batch_size]].to(self.device),
            )
            for start in range(0, len(indices), self.batch_size)
        )
        out = evaluate(
            self.model,
            self.model,
            batches,
            len(indices),
            device=self.device,
            dtype=self.autocast_dtype,
        )
        return torch.from_numpy(out)

    def validation_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        if self.multilabel:
            t = targets.float()
        else:
            t = F.one_hot(targets, logits.shape[1]).float()
        cw = None if self.class_weight is None else self.class_weight.cpu()
        return float(self.loss_fn(logits, t, cw))
