"""skast._augment: SpecAugment and mixup as the original AST dataloader draws them."""

import pytest
import torch

from skast._augment import mixup, spec_augment


def masked_runs(mask):
    """Length of the masked run along a 1-D boolean mask, checking it is one run."""
    idx = torch.nonzero(mask).flatten()
    if len(idx):
        assert idx[-1] - idx[0] + 1 == len(idx)
    return len(idx)


def test_spec_augment():
    torch.manual_seed(0)
    x = torch.randn(16, 200, 128)
    before = x.clone()
    gen = torch.Generator().manual_seed(1)
    out = spec_augment(x, 48, 40, fill=-7.5, generator=gen)
    assert out.shape == x.shape
    assert torch.equal(x, before)
    masked = out == -7.5
    assert torch.equal(out[~masked], x[~masked])
    freq_widths, time_widths = [], []
    for m in masked:
        full_cols = m.all(dim=0)  # frequency bins masked in every frame
        full_rows = m.all(dim=1)  # frames masked in every bin
        assert torch.equal(m, full_cols[None, :] | full_rows[:, None])
        freq_widths.append(masked_runs(full_cols))
        time_widths.append(masked_runs(full_rows))
    assert max(freq_widths) < 48 and max(time_widths) < 40
    assert len(set(freq_widths)) > 1 and len(set(time_widths)) > 1  # per example

    again = spec_augment(x, 48, 40, fill=-7.5, generator=gen.manual_seed(1))
    assert torch.equal(again, out)
    other = spec_augment(x, 48, 40, fill=-7.5, generator=gen.manual_seed(2))
    assert not torch.equal(other, out)

    same = spec_augment(x, 0, 0, generator=gen)
    assert torch.equal(same, x) and same is not x


def test_spec_augment_draws_as_torchaudio():
    torchaudio = pytest.importorskip("torchaudio")
    x = torch.randn(8, 100, 128)
    torch.manual_seed(5)
    ours = spec_augment(x, 24, 30)
    torch.manual_seed(5)
    spec = x.transpose(1, 2)
    spec = torchaudio.transforms.FrequencyMasking(24, iid_masks=True)(spec)
    spec = torchaudio.transforms.TimeMasking(30, iid_masks=True)(spec)
    assert torch.equal(ours, spec.transpose(1, 2))


def test_spec_augment_validation():
    with pytest.raises(ValueError, match="freqm"):
        spec_augment(torch.zeros(1, 10, 128), -1, 0)
    with pytest.raises(TypeError, match="timem"):
        spec_augment(torch.zeros(1, 10, 128), 1, 2.5)
    with pytest.raises(ValueError, match="n_clips, n_frames, n_mels"):
        spec_augment(torch.zeros(10, 128), 1, 1)


def test_mixup():
    torch.manual_seed(0)
    x = torch.randn(32, 20, 128)
    y = torch.eye(32)[torch.randint(0, 32, (32,))]
    x0, y0 = x.clone(), y.clone()

    gen = torch.Generator().manual_seed(0)
    xm, ym = mixup(x, y, 0.5, generator=gen)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert xm.shape == x.shape and ym.shape == y.shape
    torch.testing.assert_close(ym.sum(dim=1), torch.ones(32))
    mixed = ~(xm == x).flatten(1).all(dim=1)
    assert 0 < int(mixed.sum()) < 32  # p = 0.5
    assert torch.equal(ym[~mixed], y[~mixed])

    xm2, ym2 = mixup(x, y, 0.5, generator=gen.manual_seed(0))
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)

    xi, yi = mixup(x, y, 0.0, generator=gen)
    assert torch.equal(xi, x) and torch.equal(yi, y) and xi is not x


def test_mixup_mixes_features_and_targets_alike():
    x = torch.randn(8, 5, 16)
    eye = torch.eye(8)  # each example its own class: ym says who was mixed
    xm, ym = mixup(x, eye, 1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(xm, torch.einsum("ij,jtf->itf", ym, x))
    lam = ym.diagonal()
    changed = lam < 1  # partner != self
    assert changed.any()
    assert torch.all((lam[changed] > 0) & (lam[changed] < 1))


def test_mixup_validation_and_int_targets():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="probability"):
        mixup(x, torch.eye(4), 1.5)
    with pytest.raises(ValueError, match="targets"):
        mixup(x, torch.eye(3), 0.5)
    _, y = mixup(x, torch.eye(4, dtype=torch.int64), 0.5)
    assert y.dtype == torch.float32
