"""Structured patchout (``ASTClassifier(patchout=...)``, skast._patchout).

Seen through public seams: torch's global module forward pre-hook on the
transformer blocks (how many tokens each forward gives them, in training and
in eval mode), the fitted ``model_``'s position embedding before and after a
``partial_fit`` step (which positions got a gradient), torch's global
optimizer-step hook (each step's gradient), and the model's
``forward_features(x, patchout=...)`` itself (which inputs a kept token
depends on).
"""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

import skast
from skast._model import AST, ASTConfig, Block
from skast._patchout import Kept
from tests._helpers import assert_unchanged, classifier, clips, snapshot
from tests.conftest import FAST, TINY, randomize_

LABELS = np.array(["a", "b"] * 4)


class BlockInputs:
    """``(tokens, training)`` of every transformer block's input, recorded
    through torch's global forward pre-hook while the context is open."""

    def __init__(self):
        self.calls = []

    def __call__(self, module, args):
        if isinstance(module, Block):
            self.calls.append((args[0].shape[1], module.training))

    def __enter__(self):
        self.handle = register_module_forward_pre_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def tokens(self, training):
        return {n for n, mode in self.calls if mode == training}


# (model_config, patchout, tokens each training forward gives the blocks).
# TINY's grid is 12 x 5 (frequency x time; 10x10 strides, overlapping
# patches), FAST's 8 x 4 (16x16 strides).
CASES = [
    (TINY, (2, 3), 2 + (12 - 3) * (5 - 2)),
    (TINY, (0.5, 0.5), 2 + (12 - 6) * (5 - 3)),  # 2.5 -> 3 columns, 6 rows
    (TINY, (0, 11), 2 + 1 * 5),
    (FAST, (3, 0), 2 + 8 * 1),
    (FAST, (0.25, 0.4), 2 + (8 - 3) * (4 - 1)),  # 1 column, 3.2 -> 3 rows
]


@pytest.mark.parametrize("config, patchout, expected", CASES)
def test_training_sees_the_kept_patches_and_inference_all(config, patchout, expected):
    all_tokens = 2 + ASTConfig(**config).num_patches
    clf = classifier(
        model_config=config,
        patchout=patchout,
        max_epochs=2,
        batch_size=3,
        early_stopping=True,
        validation_fraction=0.25,
    )
    with BlockInputs() as seen:
        clf.fit(clips(8), LABELS)
    # every training forward of every batch (3 batches x 2 epochs x 2
    # blocks); the validation after each epoch sees every patch
    assert seen.tokens(training=True) == {expected}
    assert len([c for c in seen.calls if c[1]]) == 2 * 2 * 2
    assert seen.tokens(training=False) == {all_tokens}
    with BlockInputs() as seen:
        clf.predict_proba(clips(2))
    assert seen.tokens(training=False) == {all_tokens}
    assert seen.tokens(training=True) == set()


def test_without_patchout_training_sees_every_patch():
    with BlockInputs() as seen:
        classifier(max_epochs=1).fit(clips(8), LABELS)
    assert seen.tokens(training=True) == {2 + ASTConfig(**FAST).num_patches}


def test_patchout_does_not_change_prediction():
    X = clips(8)
    clf = classifier(max_epochs=1).fit(X, LABELS)
    before = clf.predict_proba(X)
    clf.set_params(patchout=(3, 7))
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def _updated_positions(clf, X, y, patchout):
    """Which patch position embeddings of the fitted ``clf`` one epoch of
    ``partial_fit`` with ``patchout`` moves, as an ``(f, t)`` bool grid.

    Without weight decay, Adam's first steps leave a weight whose gradient
    is exactly zero exactly as it is (its moments stay zero), and move one
    with a gradient by about the learning rate; ``partial_fit`` after
    ``fit`` starts a new optimizer.
    """
    before = clf.model_.pos_embed.detach().clone()
    clf.set_params(patchout=patchout, weight_decay=0.0).partial_fit(X, y)
    after = clf.model_.pos_embed.detach()
    moved = (after != before).any(-1)[0]
    assert moved[:2].all()  # the two special tokens' are always used
    return moved[2:].reshape(clf.model_.config.grid)


@pytest.mark.parametrize("config", [TINY, FAST], ids=["overlapping", "strided"])
def test_a_step_drops_whole_rows_and_columns(config):
    """One step (one batch): the positions it trained form the product of
    ``f - 3`` frequency rows and ``t - 2`` time columns of the grid."""
    X = clips(8)
    clf = classifier(model_config=config, max_epochs=1, batch_size=8).fit(X, LABELS)
    moved = _updated_positions(clf, X, LABELS, (2, 3))
    rows, cols = moved.any(1), moved.any(0)
    f, t = clf.model_.config.grid
    assert int(rows.sum()) == f - 3 and int(cols.sum()) == t - 2
    assert torch.equal(moved, rows[:, None] & cols[None, :])


def test_each_batch_draws_its_own_rows_and_columns():
    """Two steps (two batches) of an epoch train more positions than one
    step keeps: the draw is per batch, not per fit."""
    X = clips(8)
    clf = classifier(max_epochs=1, batch_size=4).fit(X, LABELS)
    moved = _updated_positions(clf, X, LABELS, (2, 3))
    f, t = clf.model_.config.grid
    assert int(moved.sum()) > (f - 3) * (t - 2)


@pytest.mark.parametrize("config", [TINY, FAST], ids=["overlapping", "strided"])
def test_kept_tokens_depend_only_on_their_patches(config):
    """A model given ``patchout`` computes the embeddings of exactly the kept
    patches: its tokens are those of the full forward at the kept positions,
    and input frames / mel bins that only dropped patches cover do not
    change its output, while those of a kept patch do."""
    cfg = ASTConfig(**config, id2label={0: "a", 1: "b"})
    model = randomize_(AST(cfg)).eval()
    f, t = cfg.grid
    kept = Kept(frequency=torch.tensor([0, 2, f - 1]), time=torch.tensor([0, t - 1]))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.max_length, cfg.num_mel_bins, generator=gen)
    with torch.no_grad():
        full = model.forward_features(x, layer=0)
        some = model.forward_features(x, layer=0, patchout=kept)
        index = torch.cat((torch.tensor([0, 1]), 2 + kept.token_index(t)))
        assert torch.equal(some, full[:, index])
        out = model(x, patchout=kept)

        def covered(indices, stride, size):
            mask = torch.zeros(size, dtype=torch.bool)
            for i in indices.tolist():
                mask[i * stride : i * stride + cfg.patch_size] = True
            return mask

        frames = covered(kept.time, cfg.time_stride, cfg.max_length)
        bins = covered(kept.frequency, cfg.frequency_stride, cfg.num_mel_bins)
        assert not frames.all() and not bins.all()
        for axis, mask in ((1, frames), (2, bins)):
            y = x.clone()
            y.index_fill_(axis, torch.nonzero(~mask)[:, 0], 7.0)
            assert torch.equal(model(y, patchout=kept), out)
            assert not torch.equal(model(y), model(x))
            z = x.clone()
            z.index_fill_(axis, torch.nonzero(mask)[:1, 0], 7.0)
            assert not torch.equal(model(z, patchout=kept), out)


def test_same_random_state_same_fit():
    X = clips(8)
    params = dict(max_epochs=2, batch_size=4, patchout=(1, 3), random_state=3)
    a, b = classifier(**params).fit(X, LABELS), classifier(**params).fit(X, LABELS)
    c = classifier(**{**params, "patchout": None}).fit(X, LABELS)
    sa, sb, sc = (m.model_.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["train_loss"] for h in a.history_] == [
        h["train_loss"] for h in b.history_
    ]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# float32 rounding of the gradient accumulated over the pieces of a batch:
# see GRAD_RTOL in tests/test_training.py
GRAD_RTOL = 2**12 * float(torch.finfo(torch.float32).eps)


def test_pieces_of_a_batch_share_its_patchout(oom):
    """After an out-of-memory error the batch runs in pieces; they all keep
    the batch's patches, so each step's position-embedding gradient is the
    whole batch's (zero at the same dropped positions)."""

    def fit_recording():
        grads = []

        def record(optimizer, args, kwargs):
            shape = (1, 2 + ASTConfig(**FAST).num_patches, FAST["hidden_size"])
            grads.extend(
                p.grad.detach().clone()
                for group in optimizer.param_groups
                for p in group["params"]
                if p.shape == shape
            )

        handle = register_optimizer_step_pre_hook(record)
        try:
            params = dict(batch_size=4, max_epochs=1, learning_rate=1e-9)
            classifier(**params, patchout=(1, 2)).fit(clips(8), LABELS)
        finally:
            handle.remove()
        return grads

    ref = fit_recording()
    oom.limit = 1
    got = fit_recording()
    oom.limit = None
    assert max(oom.sizes(ran=True)) == 1
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref):
        assert torch.equal(g == 0, r == 0)
        scale = float(r.abs().max())
        assert_allclose(g, r, rtol=0, atol=GRAD_RTOL * scale)


@pytest.mark.parametrize(
    "patchout",
    [(1,), (1, 2, 3), (-1, 0), (0, 1.0), (0.5, -0.1), (True, 0), ("1", 0), 3],
)
def test_bad_patchout_is_refused(patchout):
    clf = classifier(patchout=patchout)
    with pytest.raises(ValueError, match="patchout"):
        clf.fit(clips(8), LABELS)


@pytest.mark.parametrize(
    "config, patchout, what",
    [
        (TINY, (5, 0), "every time column of the model's 12 x 5 patch grid"),
        (TINY, (0, 12), "every frequency row of the model's 12 x 5 patch grid"),
        (FAST, (0.9, 0), "every time column of the model's 8 x 4 patch grid"),
        (FAST, (0, 100), "every frequency row"),
    ],
)
def test_patchout_dropping_every_column_or_row_is_refused(config, patchout, what):
    X = clips(8)
    clf = classifier(model_config=config, max_epochs=1).fit(X, LABELS)
    snap = snapshot(clf)
    for fit in (clf.set_params(patchout=patchout).fit, clf.partial_fit):
        with pytest.raises(ValueError, match=what):
            fit(X, LABELS)
    clf.set_params(patchout=None)
    assert_unchanged(clf, snap)


@pytest.mark.parametrize("patchout", [(1, 2), [0.5, 0.0]])
def test_patchout_is_saved_and_loaded(patchout, tmp_path):
    X = clips(8)
    clf = classifier(max_epochs=1, patchout=patchout).fit(X, LABELS)
    clf.save(tmp_path)
    loaded = skast.load(tmp_path)
    assert loaded.patchout == patchout and type(loaded.patchout) is type(patchout)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
