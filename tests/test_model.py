"""The AST module: shapes, pooling, layers and position-embedding adaptation."""

import pytest
import torch
import torch.nn.functional as F

from skast._model import AST, ASTConfig, adapt_position_embeddings
from tests.conftest import TINY, randomize_


def tiny(**kw):
    return ASTConfig(**{**TINY, **kw})


def test_config_grid_matches_reference_table():
    # reference/ast.md 1.3
    assert ASTConfig().grid == (12, 101) and ASTConfig().num_patches == 1212
    assert ASTConfig(frequency_stride=12, time_stride=12).num_patches == 850
    assert ASTConfig(frequency_stride=16, time_stride=16).num_patches == 512
    assert ASTConfig(max_length=128).num_patches == 144
    assert ASTConfig(max_length=512).num_patches == 600


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(hidden_size=30, num_attention_heads=4), "multiple"),
        (dict(hidden_act="swish"), "hidden_act"),
        (dict(max_length=0), "max_length"),
        (dict(patch_size=[16, 8]), "square"),
        (dict(num_mel_bins=8), "patch_size"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        ASTConfig(**kw)


def test_config_from_dict_round_trip():
    cfg = tiny(id2label={0: "dog", 1: "cat"})
    back = ASTConfig.from_dict({**cfg.to_dict(), "architectures": ["x"]})
    assert back == cfg and back.num_labels == 2
    assert ASTConfig.from_dict({"num_labels": 3}).num_labels == 3


def test_forward_shapes_and_pooling():
    model = randomize_(AST(tiny(id2label={0: "a", 1: "b", 2: "c"}))).eval()
    x = torch.randn(4, 64, 128)
    tokens = model.forward_features(x)
    f, t = model.config.grid
    assert tokens.shape == (4, 2 + f * t, 32)
    torch.testing.assert_close(
        model.pool(tokens, "mean"), (tokens[:, 0] + tokens[:, 1]) / 2
    )
    torch.testing.assert_close(model.pool(tokens, "cls"), tokens[:, 0])
    torch.testing.assert_close(model.pool(tokens, "dist"), tokens[:, 1])
    torch.testing.assert_close(model.pool(tokens, "patch"), tokens[:, 2:].mean(1))
    assert model(x).shape == (4, 3)
    with pytest.raises(ValueError, match="pooling"):
        model.pool(tokens, "max")
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 63, 128))


def test_layer_selection_matches_manual_forward():
    model = randomize_(AST(tiny())).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        h = model.patch_embed(x)
        h = torch.cat(
            (model.cls_token.expand(2, -1, -1), model.dist_token.expand(2, -1, -1), h),
            1,
        )
        h0 = h + model.pos_embed
        h1 = model.blocks[0](h0)
        h2 = model.blocks[1](h1)
        torch.testing.assert_close(model.forward_features(x, layer=0), h0)
        torch.testing.assert_close(model.forward_features(x, layer=1), h1)
        torch.testing.assert_close(model.forward_features(x, layer=-1), h2)
        torch.testing.assert_close(model.forward_features(x, layer=-3), h0)
        torch.testing.assert_close(model.forward_features(x), model.norm(h2))
    for bad in (3, -4):
        with pytest.raises(ValueError, match="layer"):
            model.forward_features(x, layer=bad)
        with pytest.raises(ValueError, match=r"layer must be in \[-3, 2\]"):
            model.layer_index(bad)
    assert [model.layer_index(i) for i in (None, 0, 1, 2, -1, -3)] == [2, 0, 1, 2, 2, 0]


def test_forward_head_takes_tokens_as_timm():
    model = randomize_(AST(tiny(id2label={0: "a", 1: "b", 2: "c"}))).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, model.pool(tokens, "mean"), atol=0, rtol=0)
        logits = model.forward_head(tokens)
        torch.testing.assert_close(logits, model.head(pooled), atol=0, rtol=0)
        torch.testing.assert_close(model(x), logits, atol=0, rtol=0)


def test_attention_equals_explicit_softmax():
    model = randomize_(AST(tiny())).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 7, 32)
    qkv = attn.qkv(x).view(2, 7, 3, 2, 16).permute(2, 0, 3, 1, 4)
    q, k, v = qkv
    w = torch.softmax(q @ k.transpose(-1, -2) / 16**0.5, dim=-1)
    expected = attn.proj((w @ v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_no_head_returns_pooled_and_reset_classifier():
    model = AST(tiny()).eval()
    x = torch.randn(1, 64, 128)
    assert model(x).shape == (1, 32)
    model.reset_classifier({0: "x", 1: "y"})
    assert model(x).shape == (1, 2) and model.config.num_labels == 2


def test_middle_cut_matches_original_slicing():
    d = 4
    pos = torch.randn(1, 2 + 12 * 101, d)
    out = adapt_position_embeddings(pos, (12, 101), (12, 50))
    grid = pos[0, 2:].reshape(12, 101, d)  # frequency-major tokens
    # the original: [50 - int(50 / 2) : 50 - int(50 / 2) + 50] along time
    expected = grid[:, 25:75].reshape(12 * 50, d)
    assert torch.equal(out[0, :2], pos[0, :2])
    assert torch.equal(out[0, 2:], expected)
    # frequency cut, odd sizes
    out = adapt_position_embeddings(pos, (12, 101), (9, 33))
    expected = grid[6 - 4 : 6 - 4 + 9, 50 - 16 : 50 - 16 + 33].reshape(-1, d)
    assert torch.equal(out[0, 2:], expected)


def test_interpolation_when_growing():
    pos = torch.randn(1, 2 + 12 * 12, 3)
    out = adapt_position_embeddings(pos, (12, 12), (12, 101))
    grid = pos[0, 2:].reshape(12, 12, 3).permute(2, 0, 1)[None]
    expected = F.interpolate(grid, size=(12, 101), mode="bilinear")
    assert torch.allclose(out[0, 2:], expected[0].permute(1, 2, 0).reshape(-1, 3))
    assert torch.equal(adapt_position_embeddings(pos, (12, 12), (12, 12)), pos)
