"""The code paths meant for GPUs, checked on the CPU: the patch embedding as
one matrix product, the low-precision copy of the weights made once for
inference, and ``torch_compile`` of the blocks.

Tolerances: float32 has a 24-bit significand (unit roundoff u = 2**-24),
bfloat16 an 8-bit one (u = 2**-8). A sum of n products computed in another
order is within ``gamma_n * sum |terms|`` of the exact sum, ``gamma_n = n u /
(1 - n u)`` (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), so
two orders are within twice that of each other.
"""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.utils._param_validation import InvalidParameterError
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from skast._inference import CAST_LAYERS
from skast._model import AST, ASTConfig, PatchEmbed
from tests._helpers import classifier, clips, featurizer
from tests.conftest import FAST, SHORT, TINY, randomize_

U32, U16 = 2.0**-24, 2.0**-8


def gamma(n, u=U32):
    return n * u / (1 - n * u)


# ---------------------------------------------------------------- patch embedding


def conv_reference(embed, x, absolute=False):
    """The strided convolution the patch embedding stands for, in float64
    (of the absolute values with ``absolute``: the sum of |terms|)."""
    w, b = embed.proj.weight.double(), embed.proj.bias.double()
    image = x.double().unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
    if absolute:
        image, w, b = image.abs(), w.abs(), b.abs()
    out = F.conv2d(image, w, b, stride=embed.proj.stride)
    return out.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("fields", [TINY, FAST], ids=["strides-10x10", "16x16"])
def test_patch_embedding_is_the_strided_convolution(fields):
    cfg = ASTConfig(**fields)
    embed = randomize_(PatchEmbed(cfg))
    x = torch.randn(3, cfg.max_length, cfg.num_mel_bins)
    out = embed(x)
    assert out.shape == (3, cfg.num_patches, cfg.hidden_size)
    assert out.dtype == torch.float32
    # p*p products and the bias, summed in float32 in some order
    bound = gamma(cfg.patch_size**2 + 1) * conv_reference(embed, x, absolute=True)
    assert ((out.double() - conv_reference(embed, x)).abs() <= bound).all()
    # and against torch's own float32 convolution: two orders, twice the bound
    conv = F.conv2d(
        x.unsqueeze(1).transpose(2, 3), embed.proj.weight, embed.proj.bias,
        stride=embed.proj.stride,
    ).flatten(2).transpose(1, 2)  # fmt: skip
    assert ((out - conv).abs().double() <= 2 * bound).all()


def test_patch_embedding_under_autocast_rounds_as_the_convolution_does():
    cfg = ASTConfig(**TINY)
    embed = randomize_(PatchEmbed(cfg))
    x = torch.randn(2, cfg.max_length, cfg.num_mel_bins)
    with torch.autocast("cpu", torch.bfloat16):
        out = embed(x)
    assert out.dtype == torch.bfloat16
    # the same bfloat16 inputs as autocast's convolution: the exact sum of
    # their products, accumulated in float32, rounded once to bfloat16
    rounded = PatchEmbed(cfg)
    with torch.no_grad():
        for mine, theirs in zip(rounded.parameters(), embed.parameters()):
            mine.copy_(theirs.bfloat16().float())
    x16 = x.bfloat16().float()
    exact = conv_reference(rounded, x16)
    bound = U16 * exact.abs() + gamma(257) * conv_reference(rounded, x16, True)
    assert ((out.double() - exact).abs() <= bound).all()


def test_patch_embedding_keeps_the_convolution_weights():
    """The checkpoints' names and shapes: ``patch_embed.proj`` a Conv2d."""
    cfg = ASTConfig(**TINY)
    shapes = {k: tuple(v.shape) for k, v in AST(cfg).state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (32, 1, 16, 16)
    assert shapes["patch_embed.proj.bias"] == (32,)
    assert [k for k in shapes if k.startswith("patch_embed.")] == [
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
    ]
    assert isinstance(AST(cfg).patch_embed.proj, torch.nn.Conv2d)


def test_hooks_on_the_patch_convolution_see_its_input_and_output():
    cfg = ASTConfig(**TINY)
    embed = randomize_(PatchEmbed(cfg))
    x = torch.randn(2, cfg.max_length, cfg.num_mel_bins)
    seen = []
    embed.proj.register_forward_hook(lambda m, args, out: seen.append((args, out)))
    tokens = embed(x)
    (image,), out = seen[0]
    assert image.shape == (2, 1, cfg.num_mel_bins, cfg.max_length)
    assert out.shape == (2, cfg.hidden_size, *cfg.grid)  # (B, D, f, t)
    assert torch.equal(out.flatten(2).transpose(1, 2), tokens)
    bound = gamma(cfg.patch_size**2 + 1) * conv_reference(embed, x, absolute=True)
    assert ((tokens.double() - conv_reference(embed, x)).abs() <= bound).all()


# ---------------------------------------------------------------- weight copies


class Casts(TorchDispatchMode):
    """Counts the conversions of ``tensors`` (by storage) to bfloat16."""

    def __init__(self, tensors):
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr() for t in tensors}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            src = args[0]
            if (
                kwargs.get("dtype") == torch.bfloat16
                and src.untyped_storage().data_ptr() in self.storages
            ):
                self.count += 1
        return func(*args, **kwargs)


def cast_weights(model):
    """The parameters autocast casts to the lower precision."""
    return [
        p
        for m in model.modules()
        if isinstance(m, CAST_LAYERS)
        for p in m.parameters(recurse=False)
    ]


def casts_during(model, fn):
    with Casts(model.parameters()) as casts:
        result = fn()
    return casts.count, result


def autocast_reference(est, X):
    """What plain autocast over the float32 weights gives for ``transform``:
    the model run on the inputs ``transform`` gave it (caught by a forward
    pre-hook on the patch embedding), batch by batch."""
    inputs = []
    handle = est.model_.patch_embed.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0].clone())
    )
    try:
        est.transform(X)
    finally:
        handle.remove()
    model = est.model_
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        rows = [model.pool(model.forward_features(x)).float() for x in inputs]
    return torch.cat(rows).numpy()


def all_float32_parameters(model):
    return all(
        isinstance(p, torch.nn.Parameter) and p.dtype == torch.float32
        for _, p in model.named_parameters()
    )


def test_bfloat16_inference_casts_the_weights_once_and_gives_autocasts_result():
    X = clips(5)
    est = featurizer(precision="bfloat16", batch_size=2).fit(X)
    n_cast = len(cast_weights(est.model_))
    first_casts, first = casts_during(est.model_, lambda: est.transform(X))
    second_casts, second = casts_during(est.model_, lambda: est.transform(X))
    assert first_casts == n_cast  # each weight once, not once per batch (3)
    assert second_casts == 0
    assert all_float32_parameters(est.model_)
    # the cast copy holds what autocast's own casts give: the same bfloat16
    # values in the same kernels, so the same outputs, exactly
    assert_array_equal(first, second)
    assert_array_equal(first, autocast_reference(est, X))


def test_changed_weights_are_cast_again():
    X = clips(4)
    est = featurizer(precision="bfloat16").fit(X)
    before = est.transform(X)
    other = randomize_(AST(est.model_.config), seed=1).state_dict()
    est.model_.load_state_dict(other)  # in place: the same parameters
    casts, after = casts_during(est.model_, lambda: est.transform(X))
    assert casts == len(cast_weights(est.model_))
    assert not np.array_equal(before, after)
    assert_array_equal(after, autocast_reference(est, X))
    # a refit builds another model: its weights are cast for it
    est.fit(X)
    casts, _ = casts_during(est.model_, lambda: est.transform(X))
    assert casts == len(cast_weights(est.model_))


def test_partial_fit_invalidates_the_copy():
    X, y = clips(4), ["a", "b"] * 2
    clf = classifier(model_config=SHORT, precision="bfloat16", max_epochs=1)
    clf.partial_fit(X, y, classes=["a", "b"])
    before = clf.decision_function(X)
    assert casts_during(clf.model_, lambda: clf.decision_function(X))[0] == 0
    clf.partial_fit(X, y)  # Adam updates the weights in place
    casts, after = casts_during(clf.model_, lambda: clf.decision_function(X))
    assert casts == len(cast_weights(clf.model_))
    assert not np.array_equal(before, after)


def test_pickle_after_inference_holds_the_float32_weights_only():
    X = clips(3)
    est = featurizer(precision="bfloat16").fit(X)
    size = len(pickle.dumps(est))
    embeddings = est.transform(X)
    assert len(pickle.dumps(est)) == size
    loaded = pickle.loads(pickle.dumps(est))
    assert all_float32_parameters(loaded.model_)
    assert_array_equal(loaded.transform(X), embeddings)


def test_an_error_during_inference_puts_the_float32_weights_back():
    X = clips(4)
    est = featurizer(precision="bfloat16", batch_size=2).fit(X)
    expected = est.transform(X)
    calls = []

    def fail_second(module, args):
        calls.append(args[0].dtype)
        if len(calls) == 2:
            raise RuntimeError("injected")

    handle = est.model_.blocks[0].register_forward_pre_hook(fail_second)
    with pytest.raises(RuntimeError, match="injected"):
        est.transform(X)
    handle.remove()
    assert all_float32_parameters(est.model_)
    assert_array_equal(est.transform(X), expected)


def test_float32_inference_makes_no_copy():
    X = clips(3)
    est = featurizer(precision="float32").fit(X)
    assert casts_during(est.model_, lambda: est.transform(X))[0] == 0


# ---------------------------------------------------------------- torch_compile

# aot_eager: dynamo's capture and AOT autograd without code generation, so
# that the tests need no C compiler and compile in seconds; the default
# backend (inductor) is measured by benchmarks/bench_gpu.py
AOT = {"backend": "aot_eager"}


def graphs():
    return counters["stats"]["unique_graphs"]


def test_torch_compile_matches_eager_and_compiles_once():
    X = clips(4)
    eager = featurizer(batch_size=2).fit(X)
    est = featurizer(batch_size=2, torch_compile=AOT).fit(X)
    start = graphs()
    first = est.transform(X)
    compiled = graphs() - start
    assert compiled >= 1  # the blocks ran compiled
    second = est.transform(X)
    assert graphs() - start == compiled  # no recompilation
    assert_array_equal(first, second)
    # LayerNorm sums over 32 features: each of the five (two per block, the
    # final one) may sum in another order; the pooled output is O(1)
    expected = eager.transform(X)
    assert_allclose(first, expected, rtol=0, atol=5 * 2 * gamma(32) * 4)


def test_torch_compile_pickles_without_the_compiled_code():
    X = clips(2)
    est = featurizer(torch_compile=AOT).fit(X)
    embeddings = est.transform(X)
    loaded = pickle.loads(pickle.dumps(est))
    assert loaded.torch_compile == AOT
    # the loaded blocks are compiled again: dynamo traces a hook added to one
    traced = []
    loaded.model_.blocks[0].register_forward_hook(
        lambda *_: traced.append(torch.compiler.is_compiling())
    )
    assert_allclose(loaded.transform(X), embeddings, rtol=0, atol=40 * gamma(32))
    assert any(traced)


def test_torch_compile_trains_the_same_first_step():
    X, y = clips(4), ["a", "b"] * 2
    params = dict(model_config=SHORT, max_epochs=1, batch_size=4)
    eager = classifier(**params).fit(X, y)
    # dynamo's capture of the training graphs, run by torch's eager kernels
    start = graphs()
    compiled = classifier(**params, torch_compile={"backend": "eager"}).fit(X, y)
    assert graphs() > start
    # one step: its loss is the forward pass before any update
    loss, expected = compiled.history_[0]["train_loss"], eager.history_[0]["train_loss"]
    assert abs(loss - expected) <= 1e-5 * abs(expected)


def broken_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


def test_torch_compile_falls_back_with_a_warning_where_it_cannot_run():
    X = clips(2)
    expected = featurizer().fit(X).transform(X)
    est = featurizer(torch_compile={"backend": broken_backend})
    with pytest.warns(UserWarning, match="torch.compile does not run on cpu here"):
        est.fit(X)
    start = graphs()
    assert_array_equal(est.transform(X), expected)
    assert graphs() == start


def test_torch_compile_is_validated():
    X = clips(1)
    with pytest.raises(ValueError, match="torch_compile=.*unknown keyword 'mod'"):
        featurizer(torch_compile={"mod": "max-autotune"}).fit(X)
    with pytest.raises(InvalidParameterError, match="torch_compile"):
        featurizer(torch_compile="yes").fit(X)
    with pytest.raises(ValueError, match="torch_compile=.*torch.compile refuses"):
        featurizer(torch_compile={"backend": "no-such-backend"}).fit(X)


# ---------------------------------------------------------------- benchmark


def test_bench_gpu_runs_its_rows(tmp_path):
    """benchmarks/bench_gpu.py --smoke: every lever's row, on a tiny model
    (the fine-tuning rows are left out here: they train two models)."""
    script = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--no-finetune", "--precision", "bfloat16", "--json", out]
    subprocess.run([sys.executable, script, *argv], check=True, timeout=600)
    rows = json.loads(out.read_text())["results"]["bfloat16"]["encoder"]["rows"]
    assert list(rows) == [
        "baseline (conv, per-call casts, eager)",
        "patch matmul",
        "weight copy",
        "torch.compile",
        "all three",
    ]
    assert all(r["ms"] > 0 and r["fraction"] > 0 for r in rows.values())
