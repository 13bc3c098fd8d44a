"""int8 dynamic quantization of the encoder on the CPU: speed and fidelity.

``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``
(int8 weights, activations quantized per call; every Linear of the blocks)
against the float32 encoder it was made from: clips/s of ``forward_features``
+ ``pool`` on the same normalised log-mel features (fbank of random clips),
alternating, several repeats, medians; and the cosine similarity of the
pooled embeddings (per clip: the minimum and the mean).

Random weights decide how much the quantization error shows, so two sets are
measured:

* ``init``: the model's own initialisation (transformers': truncated normal
  0.02, LayerNorms 1 / 0), where each block adds little to the residual stream
  and the embedding is dominated by the patch and position embeddings (this
  flatters the quantized model);
* ``unit-gain``: weights of standard deviation ``1/sqrt(fan_in)``, LayerNorm
  gains ``1 + N(0, 0.1)``, biases ``N(0, 0.1)``: every block changes the
  residual stream as much as a trained one does; closer to a real checkpoint,
  though without a trained model's activation outliers, which are what hurts
  int8 activations most.

``torch.ao.quantization`` is deprecated in favour of torchao (not a
dependency); its warnings are silenced here. The library has no option for
this: the figures decide whether it gets one.

Usage::

    python benchmarks/bench_quantize.py [--frames 1024] [--batch-size 4]
        [--repeats 3] [--weights init unit-gain] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    alternate,
    environment,
    markdown_table,
    matmul_tflops,
    write_json,
)


def unit_gain_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights of std ``1/sqrt(fan_in)``, LayerNorm gains near 1, small biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                w = module.weight
                fan_in = math.prod(w.shape[1:])
                w.copy_(torch.randn(w.shape, generator=gen) / math.sqrt(fan_in))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(
                    1 + 0.1 * torch.randn(module.weight.shape, generator=gen)
                )
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        for p in (model.cls_token, model.dist_token, model.pos_embed):
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--weights",
        nargs="+",
        default=["init", "unit-gain"],
        choices=["init", "unit-gain"],
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from skast import _features, _recipes
    from skast._model import AST, ASTConfig

    device = torch.device("cpu")
    rng = np.random.default_rng(0)
    waves = [
        torch.from_numpy(
            (0.1 * rng.standard_normal(args.frames * 160)).astype(np.float32)
        )
        for _ in range(args.batch_size)
    ]
    x = _features.normalize(
        _features.fbank(waves, max_length=args.frames),
        *_recipes.NORM_STATS["audioset"],
    )
    # a sine sweep and silence as well: inputs unlike the noise
    t = torch.arange(args.frames * 160) / 16000
    sweep = torch.sin(2 * math.pi * (200 + 3000 * t / t[-1]) * t) * 0.3
    extra = _features.normalize(
        _features.fbank([sweep, torch.zeros_like(sweep)], max_length=args.frames),
        *_recipes.NORM_STATS["audioset"],
    )
    x_fidelity = torch.cat([x, extra])

    results, rows = {}, []
    for kind in args.weights:
        torch.manual_seed(0)
        fp32 = AST(ASTConfig(max_length=args.frames)).eval()
        if kind == "unit-gain":
            unit_gain_(fp32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            int8 = torch.ao.quantization.quantize_dynamic(
                fp32, {nn.Linear}, dtype=torch.qint8
            )

        def embed(model, inputs):
            with torch.inference_mode():
                return model.pool(model.forward_features(inputs))

        med = alternate(
            {"float32": lambda: embed(fp32, x), "int8": lambda: embed(int8, x)},
            args.repeats,
            device,
        )
        a, b = embed(fp32, x_fidelity), embed(int8, x_fidelity)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        rel = ((a - b).norm(dim=1) / a.norm(dim=1)).max()
        speedup = med["float32"] / med["int8"]
        results[kind] = {
            "clips_per_s_float32": args.batch_size / med["float32"],
            "clips_per_s_int8": args.batch_size / med["int8"],
            "speedup": speedup,
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            "max_relative_error": float(rel),
            "meets_bar": bool(speedup >= 1.5 and float(cos.min()) >= 0.99),
        }
        rows.append(
            [
                kind,
                f"{args.batch_size / med['float32']:.3f}",
                f"{args.batch_size / med['int8']:.3f}",
                f"{speedup:.2f}x",
                f"{float(cos.min()):.4f} / {float(cos.mean()):.4f}",
                f"{float(rel):.3f}",
                "yes" if results[kind]["meets_bar"] else "no",
            ]
        )
    results["matmul_tflops_float32"] = matmul_tflops(device)

    env = environment(device)
    env["quantized_engine"] = torch.backends.quantized.engine
    print(
        f"\n## int8 dynamic quantization ({env['device_name']}, {env['threads']} "
        f"threads, engine {env['quantized_engine']}, base AST at {args.frames} "
        f"frames, batch {args.batch_size}, median of {args.repeats})\n"
    )
    print(
        markdown_table(
            [
                "weights",
                "float32 clips/s",
                "int8 clips/s",
                "speed-up",
                "cosine min / mean",
                "max rel. error",
                ">= 1.5x and >= 0.99",
            ],
            rows,
        )
    )
    print(
        f"\ncosine over {len(x_fidelity)} clips ({args.batch_size} noise, a sweep, "
        "silence); speed on the noise batch"
    )
    write_json(args.json, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
