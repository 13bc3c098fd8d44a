"""Embedding throughput: skast against transformers on the same clips.

Both sides embed the same random clips with the same full-size random-weight
AST (transformers: ``ASTFeatureExtractor`` + ``ASTModel`` with SDPA; skast:
``ASTFeaturizer``), in one process, alternating, several repeats; medians.

* 10 s clips at 1024 frames (the AudioSet models' input);
* 5 s clips (ESC-50's length): skast runs the position-adapted 512-frame model,
  transformers must pad to the checkpoint's 1024 frames;
* feature extraction alone;
* the share of ``transform``'s time that goes to its own feature path
  (checks, transfer to the device, log-mel, normalisation);
* the encoder's share of the machine's dense matmul throughput, measured in the
  same run (at ``--precision``, batch ``--batch-size``);
* with onnxruntime installed (``pip install "skast[onnx]"``), the same
  ``transform`` with ``backend="onnxruntime"`` in float32 and int8, in the same
  rounds: clips/s, speed-up against transformers and against skast on PyTorch,
  and the smallest cosine similarity and largest absolute difference of the
  embeddings against skast on PyTorch (the same weights; at 512 frames
  transformers embeds other input, its padded 1024 frames);
* ``--onnx-variants``: the exported encoder alone at 1024 frames under other
  ONNX Runtime settings (the exporter's graph without the fused operators
  skast adds, graph optimisation levels, intra-op threads, per-channel and
  static int8), to choose the settings of ``skast._onnx``.

``--precision`` is skast's; ``--transformers-precision`` lists the precisions
transformers runs at (default float32, its default), one row each. On a GPU::

    python benchmarks/bench_embed.py --device cuda --precision bfloat16 \
        --transformers-precision float32 bfloat16 --clips 256 --batch-size 64

Usage::

    python benchmarks/bench_embed.py [--clips 8] [--repeats 3] [--device cpu]
        [--precision float32] [--transformers-precision float32 ...]
        [--no-onnx] [--onnx-variants] [--json out.json]

On the CPU, run it with as many threads as cores given to it, e.g.
``OMP_NUM_THREADS=2 taskset -c 0,1``; ONNX Runtime takes torch's thread count.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    alternate,
    environment,
    markdown_table,
    matmul_tflops,
    random_hf_checkpoint,
    write_json,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", default="float32", choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument(
        "--transformers-precision",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16", "float16"],
    )
    parser.add_argument(
        "--no-onnx", action="store_true", help="skip the onnxruntime rows"
    )
    parser.add_argument(
        "--onnx-variants",
        action="store_true",
        help="also time ONNX Runtime settings on the encoder alone",
    )
    parser.add_argument(
        "--num-hidden-layers",
        type=int,
        default=12,
        help="blocks of the random model (12: the full size; fewer for a quick try)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    onnx = not args.no_onnx and importlib.util.find_spec("onnxruntime") is not None
    # the exports of this run, not a user's cache
    os.environ["SKAST_ONNX_DIR"] = tempfile.mkdtemp(prefix="skast-bench-onnx-")

    from transformers import ASTFeatureExtractor, ASTModel

    from skast import ASTFeaturizer, _audio, _features, _recipes
    from skast._runtime import autocast

    device = torch.device(args.device)
    dtypes = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = dtypes[args.precision]
    ckpt = random_hf_checkpoint(num_hidden_layers=args.num_hidden_layers)
    hf = {}
    for name in args.transformers_precision:
        model = ASTModel.from_pretrained(ckpt, attn_implementation="sdpa")
        model = model.to(device, dtypes[name] or torch.float32).eval()
        hf[name] = model
    fe = ASTFeatureExtractor()
    rng = np.random.default_rng(0)
    rows, results, onnx_rows = [], {}, []

    def hf_embed(clips, name):
        model, out = hf[name], []
        for i in range(0, len(clips), args.batch_size):
            batch = fe(
                clips[i : i + args.batch_size], sampling_rate=16000, return_tensors="pt"
            )
            x = batch["input_values"].to(device, model.dtype)
            with torch.inference_mode():
                out.append(model(x).pooler_output.float().cpu())
        return torch.cat(out)

    def skast_features(featurizer, clips):
        """transform's feature path alone: the normalised batches on the device."""
        audio = _audio.check_audio_input(clips)
        return [x for _, x in featurizer._iter_features(audio, desc="features")]

    def skast_encoder(featurizer, batches):
        """The encoder alone on features already on the device."""
        model = featurizer.model_
        with torch.inference_mode(), autocast(device, dtype):
            for x in batches:
                model.pool(model.forward_features(x))

    for seconds, frames in ((10.0, 1024), (5.0, 512)):
        clips = [
            (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
            for _ in range(args.clips)
        ]
        ours = ASTFeaturizer(
            str(ckpt),
            max_length=frames,
            batch_size=args.batch_size,
            device=str(device),
            precision=args.precision,
        ).fit(clips[:1])
        fns = {
            f"transformers {name}": (lambda name=name: hf_embed(clips, name))
            for name in hf
        }
        batches = skast_features(ours, clips)
        fns["skast"] = lambda: ours.transform(clips)
        backends = {}
        if onnx:
            for name in ("float32", "int8"):
                backends[name] = ours.__class__(**ours.get_params()).set_params(
                    backend="onnxruntime", precision=name
                )
                backends[name].fit(clips[:1])
                backends[name].transform(clips[:1])  # the export: not timed
                fns[f"onnxruntime {name}"] = lambda est=backends[name]: est.transform(
                    clips
                )
        fns["skast features"] = lambda: skast_features(ours, clips)
        fns["skast encoder"] = lambda: skast_encoder(ours, batches)
        med = alternate(fns, args.repeats, device)
        key = f"embed_{int(seconds)}s"
        eager = ours.transform(clips)
        for name, est in backends.items():
            got = est.transform(clips)
            cos = np.sum(got * eager, 1) / np.linalg.norm(got, axis=1)
            cos /= np.linalg.norm(eager, axis=1)
            base = med["transformers float32"] if "float32" in hf else np.nan
            results[f"{key}_onnxruntime_{name}"] = {
                "clips_per_s": args.clips / med[f"onnxruntime {name}"],
                "speedup_vs_transformers_float32": base / med[f"onnxruntime {name}"],
                "speedup_vs_skast_torch": med["skast"] / med[f"onnxruntime {name}"],
                "min_cosine_vs_torch": float(cos.min()),
                "max_abs_error_vs_torch": float(np.abs(got - eager).max()),
            }
            res = results[f"{key}_onnxruntime_{name}"]
            onnx_rows.append(
                [
                    f"embed {seconds:.0f} s clips",
                    f"{frames}",
                    f"onnxruntime {name}",
                    f"{res['clips_per_s']:.2f}",
                    f"{res['speedup_vs_transformers_float32']:.2f}x",
                    f"{res['speedup_vs_skast_torch']:.2f}x",
                    f"{res['min_cosine_vs_torch']:.5f}",
                    f"{res['max_abs_error_vs_torch']:.1e}",
                ]
            )
        onnx_rows.append(
            [
                f"embed {seconds:.0f} s clips",
                f"{frames}",
                "skast torch",
                f"{args.clips / med['skast']:.2f}",
                f"{med['transformers float32'] / med['skast']:.2f}x"
                if "float32" in hf
                else "",
                "1.00x",
                "1",
                "0",
            ]
        )
        results[key] = {
            "frames_skast": frames,
            "frames_transformers": 1024,
            "clips_per_s_skast": args.clips / med["skast"],
            "features_share_of_transform": med["skast features"] / med["skast"],
            "beyond_encoder_share_of_transform": 1
            - med["skast encoder"] / med["skast"],
        }
        for name in hf:
            base = med[f"transformers {name}"]
            results[key][f"clips_per_s_transformers_{name}"] = args.clips / base
            results[key][f"speedup_vs_{name}"] = base / med["skast"]
            rows.append(
                [
                    f"embed {seconds:.0f} s clips",
                    f"{frames} / 1024",
                    name,
                    f"{args.clips / base:.2f}",
                    f"{args.clips / med['skast']:.2f}",
                    f"{base / med['skast']:.2f}x",
                ]
            )
        if frames == 1024:
            waves = [torch.from_numpy(c).to(device) for c in clips]
            mean, std = _recipes.NORM_STATS["audioset"]
            med = alternate(
                {
                    "transformers": lambda: fe(
                        clips, sampling_rate=16000, return_tensors="pt"
                    ),
                    "skast": lambda: _features.normalize(
                        _features.fbank(waves, max_length=1024), mean, std
                    ),
                },
                args.repeats,
                device,
            )
            results["features_10s"] = {
                "clips_per_s_transformers": args.clips / med["transformers"],
                "clips_per_s_skast": args.clips / med["skast"],
                "speedup": med["transformers"] / med["skast"],
            }
            rows.append(
                [
                    "features only, 10 s",
                    "1024",
                    "float32",
                    f"{args.clips / med['transformers']:.1f}",
                    f"{args.clips / med['skast']:.1f}",
                    f"{med['transformers'] / med['skast']:.2f}x",
                ]
            )
            # the encoder alone, against the machine's matmul throughput
            x = torch.randn(args.batch_size, 1024, 128, device=device)
            sec = alternate(
                {"enc": lambda: skast_encoder(ours, [x])}, args.repeats, device
            )["enc"]
            achieved = ours.model_.flops_per_clip() * args.batch_size / sec / 1e12
            peak = matmul_tflops(device, dtype or torch.float32)
            results["encoder"] = {
                "tflops": achieved,
                "matmul_tflops": peak,
                "fraction": achieved / peak,
            }

    env = environment(device)
    print(
        f"\n## Embedding throughput ({env['device_name']}, {env['threads']} threads, "
        f"skast {args.precision}, batch {args.batch_size}, {args.clips} clips, "
        f"median of {args.repeats})\n"
    )
    print(
        markdown_table(
            [
                "task",
                "frames (skast / transformers)",
                "transformers precision",
                "transformers clips/s",
                "skast clips/s",
                "skast speed-up",
            ],
            rows,
        )
    )
    print()
    for seconds in (10, 5):
        res = results[f"embed_{seconds}s"]
        print(
            f"{seconds} s clips: the feature path alone (checks, transfer, log-mel, "
            f"normalisation) takes {100 * res['features_share_of_transform']:.1f}% "
            "of transform's time run alone; "
            f"{100 * res['beyond_encoder_share_of_transform']:.1f}% of transform's "
            "time is spent outside the encoder (the rest overlaps it)"
        )
    enc = results["encoder"]
    print(
        f"\nencoder: {enc['tflops'] * 1e3:.1f} GFLOP/s = {100 * enc['fraction']:.0f}% of "
        f"the measured {args.precision} matmul throughput ({enc['matmul_tflops'] * 1e3:.1f} GFLOP/s)"
    )
    if onnx_rows:
        print('\n### backend="onnxruntime" (CPUExecutionProvider)\n')
        header = [
            "task",
            "frames",
            "backend",
            "clips/s",
            "vs transformers float32",
            "vs skast torch",
            "min cosine vs torch",
            "max abs error vs torch",
        ]
        print(markdown_table(header, onnx_rows))
    if args.onnx_variants:
        from _onnx_variants import onnx_variants

        results["onnx_variants"] = onnx_variants(
            ckpt, args.batch_size, args.repeats, device
        )
    write_json(args.json, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
