"""The fine-tuning loop of :class:`skast.ASTClassifier`, in one place.

The AST paper's recipe (reference/ast.md 2.5-2.6): Adam with weight decay
5e-7 and betas (0.95, 0.999), an optional step warm-up, a ``MultiStepLR``
decay stepped once per epoch, SpecAugment and mixup (:mod:`skast._augment`),
and for AudioSet the balanced sampler (:func:`skast._targets.balanced_sample`)
and weight averaging (:class:`skast._stopping.WeightAverage`). The data
streams (:class:`TrainingData`): each batch of an epoch's order is decoded,
turned into normalised log-mel features on the training device and augmented
there as it is needed, so host memory does not grow with the number of clips
and each epoch sees fresh augmentation, as the original's DataLoader does.

:func:`train` is the whole loop, as scikit-learn's ``_fit_stochastic`` of
the MLP is: epochs, validation, early stopping
(:class:`skast._stopping.EarlyStopping`),
Ctrl-C (:class:`skast._stopping.Interrupt`), freezing
(:func:`skast._freezing.frozen`). It takes one
:class:`TrainingConfig` and knows nothing of the estimator.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from skast import _augment, _distributed, _patchout
from skast._features import normalize
from skast._freezing import frozen, training_mode
from skast._runtime import autocast, evaluate, progress_bar, retry_halving_on_oom
from skast._stopping import (
    EarlyStopping,
    Interrupt,
    WeightAverage,
    split,
    validation_score,
)
from skast._targets import balanced_sample

__all__ = [
    "Trainer",
    "TrainingConfig",
    "TrainingData",
    "TrainingResult",
    "derive_seed",
    "forked_rng",
    "seed_torch",
    "train",
    "warmup_lr",
]

#: The original raises the warm-up learning rate every this many steps.
WARMUP_PERIOD = 50
#: ... and its MultiStepLR milestones are ``range(start, 1000, every)``.
LAST_MILESTONE = 1000
#: :func:`derive_seed` key of an epoch's seed (dropout, order, augmentation).
EPOCH_SEED = 2
#: ... and of the draw of its clips by the balanced sampler.
SAMPLER_SEED = 3


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


def forked_rng(device: torch.device):
    """A context in which the global generators of the CPU and ``device`` may
    be seeded: their states are restored on exit."""
    devices = [] if device.type == "cpu" else [device.index or 0]
    device_type = "cuda" if device.type == "cpu" else device.type
    return torch.random.fork_rng(devices=devices, device_type=device_type)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything a fit's loop reads: the classifier's resolved parameters
    (its recipe filled in) and what its set-up decided."""

    learning_rate: float
    weight_decay: float
    betas: tuple[float, float]
    max_epochs: int
    batch_size: int
    warmup_steps: int
    lr_decay_start: int
    lr_decay_every: int
    lr_decay: float
    freqm: int
    timem: int
    mixup: float
    freeze: str | int | None
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int
    tol: float
    sampler: str | None
    weight_averaging: tuple[int, int] | None
    verbose: bool
    # decided by the set-up
    multilabel: bool
    normalization: tuple[float, float]
    device: torch.device
    autocast_dtype: torch.dtype | None
    seed: int
    # (time, frequency) columns / rows of patches each batch drops (skast._patchout)
    patchout: tuple | None = None

    @classmethod
    def from_params(cls, params: Mapping, **decided) -> TrainingConfig:
        """The config of ``params`` (every parameter of the estimator; those
        that are not fields are left out) and the ``decided`` fields."""
        names = {f.name for f in dataclasses.fields(cls)} - set(decided)
        values = {k: v for k, v in params.items() if k in names}
        values["betas"] = tuple(values["betas"])
        if values["weight_averaging"] is not None:
            values["weight_averaging"] = tuple(values["weight_averaging"])
        values["verbose"] = bool(values["verbose"])
        values["patchout"] = _patchout.check_patchout(values.get("patchout"))
        return cls(**values, **decided)


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The items a fit trains on (clips, or the windows of clips), streamed.

    ``features(batches)`` yields ``(indices, x)`` for each list of item
    positions in ``batches``, in that order: ``x`` the normalised log-mel
    features of those items on the training device, computed when the batch
    is reached (its clips decoded then, in DataLoader workers for files), so
    that no more than a batch or two of features exist at a time.

    Examples
    --------
    >>> import torch
    >>> from skast._training import TrainingData
    >>> feats = torch.arange(5.0)[:, None]
    >>> data = TrainingData(
    ...     targets=torch.tensor([0, 1, 0, 1, 1]),
    ...     features=lambda batches: ((b, feats[b]) for b in batches),
    ... )
    >>> [(idx, x.ravel().tolist()) for idx, x in data.batches(torch.tensor([3, 0, 4]), 2)]
    [([3, 0], [3.0, 0.0]), ([4], [4.0])]
    """

    #: each item's target: a class index (single-label) or an indicator row
    targets: torch.Tensor
    features: Callable[[list[list[int]]], Iterable[tuple[Sequence[int], torch.Tensor]]]

    def __len__(self) -> int:
        return len(self.targets)

    def batches(
        self, order: torch.Tensor, batch_size: int, share=None
    ) -> Iterator[tuple[Sequence[int], torch.Tensor | None]]:
        """The items at ``order``, ``batch_size`` at a time; with ``share``
        (a batch's items -> this rank's), this rank's share of each batch,
        ``([], None)`` where it is empty."""
        order = order.tolist()
        chunks = [
            order[start : start + batch_size]
            for start in range(0, len(order), batch_size)
        ]
        if share is None:
            return iter(self.features(chunks))
        return _shares(self.features, [share(chunk) for chunk in chunks])


def _shares(features, shares):
    """``features`` of the non-empty ``shares``, with ``([], None)`` in the
    places of the empty ones."""
    computed = iter(features([s for s in shares if s]))
    for s in shares:
        yield next(computed) if s else ([], None)


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


def warmup_lr(step: int, warmup_steps: int, learning_rate: float) -> float | None:
    """The original warm-up's learning rate at ``step``, or None to leave it.

    src/traintest.py: every 50 steps up to ``warmup_steps``,
    ``lr = step / warmup_steps * learning_rate`` (so 0 for the first 50
    steps); also at ``warmup_steps`` itself, so that a count that is not a
    multiple of 50 still ends at the full rate.

    Examples
    --------
    >>> from skast._training import warmup_lr
    >>> [warmup_lr(s, 120, 1.0) for s in (0, 1, 50, 100, 119, 120, 150)]
    [0.0, None, 0.4166666666666667, 0.8333333333333334, None, 1.0, None]
    """
    if warmup_steps and step <= warmup_steps:
        if step % WARMUP_PERIOD == 0 or step == warmup_steps:
            return step / warmup_steps * learning_rate
    return None


# --------------------------------------------------------------------------- steps


class Trainer:
    """Adam, the warm-up, the learning-rate schedule, the augmentations and
    the optimizer steps of one fit.

    :meth:`state_dict` / :meth:`load_state_dict` carry the optimizer, the
    schedule and the step count between ``partial_fit`` calls (on the CPU).
    With a ``group`` (:class:`skast._distributed.Group`), this rank trains
    on its share of each batch and the steps are the ranks' together.
    """

    def __init__(
        self, model, parameters, config: TrainingConfig, class_weight=None, group=None
    ):
        self.model, self.config, self.group = model, config, group
        device = self.device = config.device
        self.loss_fn = binary_cross_entropy if config.multilabel else soft_cross_entropy
        self.class_weight = None if class_weight is None else class_weight.to(device)
        # SpecAugment's value: a log-mel energy of 0, normalised
        self.fill = float(normalize(torch.tensor(0.0), *config.normalization))
        # one fused kernel per step on CUDA and on the CPU (torch 2.4+): the
        # same update as the default implementation, to rounding; on the CPU
        # 0.04 s instead of 0.35 s a step for the base model's 86M
        # parameters on 2 threads
        self.optimizer = torch.optim.Adam(
            parameters,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            betas=config.betas,
            fused=device.type in ("cuda", "cpu"),
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer,
            list(range(config.lr_decay_start, LAST_MILESTONE, config.lr_decay_every)),
            gamma=config.lr_decay,
        )
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=config.autocast_dtype == torch.float16
        )
        self.global_step = 0
        # after a device out-of-memory error, the size of the pieces a batch is
        # split into (None: whole batches)
        self.micro_batch = None
        # the patches the current batch keeps (None: all of them)
        self.kept = None

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
        # a copy: the optimizer would update the CPU tensors of ``state`` in
        # place (load_state_dict keeps tensors already on the right device)
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = state["global_step"]

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer trains, in order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def reports(self) -> bool:
        """Whether this process shows progress (with ranks, rank 0 only)."""
        return self.config.verbose and (self.group is None or self.group.leader)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ training

    def run(self, data: TrainingData, order, generator, progress, interrupt) -> None:
        """Optimizer steps over the items of ``data`` at ``order``, a batch at
        a time, in training mode; stops after the batch during which an
        interrupt is requested."""
        config, device, size = self.config, self.device, self.config.batch_size
        n_classes = self.model.config.num_labels
        share = None if self.group is None else self.group.share
        batches = data.batches(order, size, share)
        with training_mode(self.model, config.freeze):
            for start, (idx, x) in zip(range(0, len(order), size), batches):
                total = min(size, len(order) - start)  # of all the ranks
                t = None
                if len(idx):
                    t = data.targets[list(idx)].to(device, non_blocking=True)
                    t = _dense(t, n_classes, config.multilabel)
                    x, t = self.augment(x, t, generator)
                progress.add(self.step(x, t, total), total)
                if interrupt.requested:  # with ranks: the one they agreed on
                    return

    def augment(
        self, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup, then SpecAugment on the mix, as the original dataloader
        (which mixes the waveforms, then masks the fbank of the mix); then the
        batch's patchout (:attr:`kept`, for every piece of its step)."""
        config = self.config
        if config.mixup > 0:
            x, t = _augment.mixup(x, t, config.mixup, generator=generator)
        if config.freqm or config.timem:
            x = _augment.spec_augment(
                x, config.freqm, config.timem, fill=self.fill, generator=generator
            )
        grid = self.model.config.grid
        self.kept = _patchout.draw_kept(config.patchout, grid, generator)
        return x, t

    def step(self, x: torch.Tensor, t: torch.Tensor, total: int | None = None) -> float:
        """One optimizer step on an augmented batch; the batch loss.

        A device out-of-memory error halves the pieces the batch is run in and
        retries: their gradients are accumulated (each loss weighted by its
        share of the batch), so the step is the same. Later steps start from
        the size that fitted (:attr:`micro_batch`). With ranks, ``x`` is this
        rank's share (None if empty) of a batch of ``total``: the pieces are
        weighted by their share of ``total``, the gradients summed over the
        ranks (:meth:`skast._distributed.Group.reduce_step`), and the loss is
        the whole batch's.
        """
        lr = warmup_lr(
            self.global_step, self.config.warmup_steps, self.config.learning_rate
        )
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        n = 0 if x is None else len(x)
        total = total or n

        def whole_batch(size):  # from zero: a failed piece may leave gradients
            self.optimizer.zero_grad(set_to_none=True)
            return sum(
                self._backward(x[i : i + size], t[i : i + size], total)
                for i in range(0, n, size)
            )

        loss = 0.0
        if n:
            first = min(n, self.micro_batch or n)
            loss, size = retry_halving_on_oom(whole_batch, first, self.device)
            if size != first:
                self.micro_batch = size
        else:  # an empty share: no forward, zeros to the gradients' sum
            self.optimizer.zero_grad(set_to_none=True)
            # float16: the scaler's scale must exist on a rank with no clip yet
            self.scaler.scale(torch.zeros((), device=self.device))
        if self.group is not None:
            loss = self.group.reduce_step(self.parameters, loss)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # a fused step writes the weights without bumping their version
        # counters on older torch (2.4's CPU kernel): bump them, so that what
        # was made from the old weights (skast._derived) is made again
        for p in self.parameters:
            torch.autograd.graph.increment_version(p)
        self.global_step += 1
        return loss

    def _backward(self, x: torch.Tensor, t: torch.Tensor, n: int) -> float:
        """Forward and backward of a piece of a batch of ``n``; its share of
        the batch loss. Frozen parameters require no gradient, so no graph is
        built through a frozen encoder."""
        with autocast(self.device, self.config.autocast_dtype):
            logits = self.model(x, patchout=self.kept)
        loss = self.loss_fn(logits.float(), t, self.class_weight)
        if len(x) != n:
            loss = loss * (len(x) / n)
        self.scaler.scale(loss).backward()
        return float(loss.detach())

    # ------------------------------------------------------------------ validation

    def validate(self, data: TrainingData, indices) -> tuple[float, float]:
        """``(loss, score)`` of the items at ``indices``, from their eval-mode
        float32 logits through the one evaluation loop; with ranks, each
        evaluates its share and all gather the logits."""
        multilabel, group = self.config.multilabel, self.group
        n, k = len(indices), self.model.config.num_labels
        truth = data.targets[indices]
        if group is not None:
            indices = indices[group.rank :: group.world]

        def batches():  # rows of the logits, in the order of ``indices``
            start = 0
            for idx, x in data.batches(indices, self.config.batch_size):
                yield range(start, start + len(idx)), x
                start += len(idx)

        logits = evaluate(
            self.model,
            self.model,
            batches(),
            len(indices),
            device=self.device,
            dtype=self.config.autocast_dtype,
        )
        logits = torch.zeros(0, k) if logits is None else torch.from_numpy(logits)
        if group is not None:
            logits = group.gather_rows(logits, n)
        cw = None if self.class_weight is None else self.class_weight.cpu()
        t = _dense(truth, logits.shape[1], multilabel)
        loss = float(self.loss_fn(logits, t, cw))
        return loss, validation_score(logits, truth, multilabel)


def _dense(targets: torch.Tensor, n_classes: int, multilabel) -> torch.Tensor:
    """Float targets for the loss: one-hot class indices, or the indicator."""
    return targets.float() if multilabel else F.one_hot(targets, n_classes).float()


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """What :func:`train` leaves besides the model and the history."""

    #: whether Ctrl-C (or a KeyboardInterrupt) ended the training
    interrupted: bool
    #: the early stopping of a fit with validation, else None
    early_stopping: EarlyStopping | None
    #: the weight averaging of a fit with one, else None
    weight_average: WeightAverage | None
    #: the optimizer, schedule and step count, for the next partial_fit
    optimizer_state: dict | None


def train(
    model,
    data: TrainingData,
    config: TrainingConfig,
    history: list,
    *,
    class_weight: torch.Tensor | None = None,
    optimizer_state: dict | None = None,
    incremental: bool = False,
    resume: Callable | None = None,
    on_epoch_end: Callable | None = None,
) -> TrainingResult:
    """Train ``model`` on the items of ``data``; append a record per epoch
    to ``history``.

    ``max_epochs`` epochs (one if ``incremental``, going on from
    ``optimizer_state``); with ``early_stopping`` (not incremental), on a
    stratified split, until the validation score stops improving, and the
    model ends with the best epoch's weights; with ``weight_averaging`` (not
    incremental), with the mean of the weights at the end of the epochs of
    its range that ran. Ctrl-C stops after the current batch; the model keeps
    its weights (the best ones with validation, the mean of the range's
    epochs that ended before the interruption with averaging).

    Under torchrun (or with an initialised process group of several ranks)
    every rank runs this with its :class:`skast._distributed.Group`: the
    same steps on its share of each batch, rank 0's weights to start from,
    and the same history, stopping and weights at the end on every rank.

    ``resume(trainer, stopping, average)`` puts the state of the end of an
    earlier epoch back (the model's weights too) and returns the first epoch
    of the fit to run; ``on_epoch_end(epoch, trainer, stopping, average,
    history, done)`` is called after each epoch that was not interrupted
    (``epoch`` counted from 1 in this fit, ``done`` whether early stopping
    ends the fit there): :class:`skast._snapshots.SnapshotDir`.
    """
    validate = config.early_stopping and not incremental
    average = None
    if config.weight_averaging is not None and not incremental:
        average = WeightAverage(*config.weight_averaging)
    group = _distributed.current_group(config.device)
    interrupt = Interrupt() if group is None else group.interrupt
    with frozen(model, config.freeze) as parameters, interrupt:
        trainer = Trainer(model, parameters, config, class_weight, group)
        if optimizer_state is not None:
            trainer.load_state_dict(optimizer_state)
        if group is not None:
            group.broadcast_module(model)
        train_idx = valid_idx = stopping = None
        if validate:
            train_idx, valid_idx = split(
                data.targets, config.validation_fraction, config.multilabel, config.seed
            )
            stopping = EarlyStopping(config.tol, config.n_iter_no_change)
        first = 1 if resume is None else resume(trainer, stopping, average)
        for fit_epoch in range(first, 2 if incremental else config.max_epochs + 1):
            epoch = len(history) + 1
            record = _epoch(trainer, data, train_idx, valid_idx, epoch, interrupt)
            if record is None:  # interrupted before a batch was done
                break
            done = False
            with interrupt.caught():  # a KeyboardInterrupt here ends the fit too
                history.append(record)
                if average is not None and not interrupt.requested:
                    average.update(fit_epoch, model)
                if trainer.reports:
                    _report(record)
                if stopping is not None and not interrupt.requested:
                    done = stopping.update(record["valid_score"], epoch, model)
            if group is not None and stopping is not None:
                done = group.agree(done)
            if on_epoch_end is not None and not interrupt.requested:
                with interrupt.caught():
                    on_epoch_end(fit_epoch, trainer, stopping, average, history, done)
            if done or interrupt.requested:
                break
    if stopping is not None and stopping.best_state is not None:
        model.load_state_dict(stopping.best_state)
    if average is not None:
        average.load_into(model)
    state = trainer.state_dict() if incremental else None
    return TrainingResult(interrupt.requested, stopping, average, state)


def _epoch(trainer, data, train_idx, valid_idx, epoch, interrupt) -> dict | None:
    """One epoch and its validation: its history record, or None if it was
    interrupted before a batch was done."""
    config, group = trainer.config, trainer.group
    seed = derive_seed(config.seed, EPOCH_SEED, epoch)  # every rank's order
    own = seed if group is None else group.own_seed(seed)
    seed_torch(own, config.device)  # dropout
    generator = torch.Generator().manual_seed(seed)  # order, augmentation
    clips = torch.arange(len(data)) if train_idx is None else train_idx
    if config.sampler == "balanced":
        draw = torch.Generator().manual_seed(
            derive_seed(config.seed, SAMPLER_SEED, epoch)
        )
        order = clips[balanced_sample(data.targets[clips], len(clips), draw)]
    else:
        order = clips[torch.randperm(len(clips), generator=generator)]
    if own != seed:  # another rank's augmentation is its own
        generator = torch.Generator().manual_seed(own)
    record = {
        "epoch": epoch,
        "train_loss": None,
        "valid_loss": None,
        "valid_score": None,
        "learning_rate": None,
        "seconds": None,
    }
    progress = _Progress(len(order), trainer.reports, f"epoch {epoch}")
    start = time.perf_counter()
    with interrupt.caught():
        with progress:
            trainer.run(data, order, generator, progress, interrupt)
        record["learning_rate"] = trainer.lr
        if not interrupt.requested:
            trainer.scheduler.step()  # once per epoch, as the original
            if valid_idx is not None:
                loss, score = trainer.validate(data, valid_idx)
                record.update(valid_loss=loss, valid_score=score)
    seconds = time.perf_counter() - start
    if group is not None:  # every rank's record alike
        seconds = group.end_epoch(seconds)
    if not progress.seen:
        return None
    record["train_loss"] = progress.mean_loss
    if record["learning_rate"] is None:
        record["learning_rate"] = trainer.lr
    record["seconds"] = seconds
    return record


class _Progress:
    """An epoch's running loss, and its progress bar (closed on exit)."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = progress_bar(total=total, enabled=enabled, desc=desc)
        self.total_loss, self.seen = 0.0, 0

    @property
    def mean_loss(self) -> float:
        return self.total_loss / self.seen if self.seen else float("nan")

    def add(self, loss: float, n: int) -> None:
        self.total_loss += loss * n
        self.seen += n
        self.bar.update(n)
        self.bar.set_postfix(loss=f"{self.mean_loss:.4f}", refresh=False)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _report(record: dict) -> None:
    from tqdm.auto import tqdm

    parts = [f"epoch {record['epoch']}", f"train_loss={record['train_loss']:.4f}"]
    if record["valid_score"] is not None:
        parts.append(f"valid_loss={record['valid_loss']:.4f}")
        parts.append(f"valid_score={record['valid_score']:.4f}")
    parts.append(f"lr={record['learning_rate']:.3g}")
    parts.append(f"{record['seconds']:.1f}s")
    tqdm.write(", ".join(parts))
