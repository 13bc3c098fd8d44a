"""ONNX Runtime settings tried on skast's exported encoder (bench_embed.py
``--onnx-variants``): what ``skast._onnx.make_session``, the export's fusions
and the int8 path keep comes from this table."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import alternate, markdown_table


def onnx_variants(
    ckpt, batch_size: int, repeats: int, device, frames: int = 1024
) -> dict:
    """Time the exported ``frames``-frame encoder (pooled output) under each
    setting, against eager PyTorch on the same batch; print a table."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from skast._checkpoints import load_checkpoint
    from skast._onnx import INPUT_NAME, _quiet_logging, export_onnx, make_session

    model = load_checkpoint(ckpt, max_length=frames).model.eval()
    config = model.config
    threads = torch.get_num_threads()

    def embed(x):
        return model.pool(model.forward_features(x))

    gen = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(batch_size, frames, config.num_mel_bins, generator=gen)
    feed = {INPUT_NAME: x.numpy()}
    with torch.inference_mode():
        eager = embed(x).numpy()
    folder = Path(tempfile.mkdtemp(prefix="skast-onnx-variants-"))
    fp32 = export_onnx(model, embed, folder / "fp32.onnx", output_name="embedding")
    files = {"float32": fp32}
    with _quiet_logging():
        quantize_dynamic(fp32, folder / "int8.onnx", weight_type=QuantType.QInt8)
        files["int8 dynamic"] = folder / "int8.onnx"
        quantize_dynamic(
            fp32,
            folder / "int8pc.onnx",
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        files["int8 dynamic per-channel"] = folder / "int8pc.onnx"
        # what skast exports is fused (skast._onnx.fuse_for_onnxruntime);
        # the exporter's own graph of standard operators, for comparison
        plain = export_onnx(
            model, embed, folder / "plain.onnx", output_name="embedding", fuse=False
        )
        files["float32, standard operators (no fusion)"] = plain
        quantize_dynamic(plain, folder / "plain8.onnx", weight_type=QuantType.QInt8)
        files["int8 dynamic, standard operators (no fusion)"] = folder / "plain8.onnx"

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(
                    {
                        INPUT_NAME: (
                            0.5 * torch.randn(1, frames, 128, generator=gen)
                        ).numpy()
                    }
                    for _ in range(4)
                )

            def get_next(self):
                return next(self.batches, None)

        try:
            quantize_static(
                fp32,
                folder / "static.onnx",
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
            files["int8 static (QDQ, 4 calibration clips)"] = folder / "static.onnx"
        except Exception as err:
            print(f"static quantisation failed: {type(err).__name__}: {err}")

    levels = ort.GraphOptimizationLevel
    sessions = {}
    for name, path in files.items():
        sessions[f"{name}, all optimisations, {threads} threads"] = make_session(path)
    for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(levels, level)
        sessions[f"float32, {level}, {threads} threads"] = ort.InferenceSession(
            str(fp32), options, providers=["CPUExecutionProvider"]
        )
    if threads > 1:
        sessions["float32, all optimisations, 1 thread"] = make_session(fp32, 1)

    fns = {"eager torch": lambda: torch.inference_mode()(embed)(x)}
    fns.update({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()})
    med = alternate(fns, repeats, device)
    rows, results = [], {}
    for name, session in sessions.items():
        (got,) = session.run(None, feed)
        cos = np.sum(got * eager, 1) / np.linalg.norm(got, axis=1)
        cos /= np.linalg.norm(eager, axis=1)
        results[name] = {
            "seconds": med[name],
            "speedup_vs_torch": med["eager torch"] / med[name],
            "min_cosine": float(cos.min()),
            "max_abs_error": float(np.abs(got - eager).max()),
        }
        r = results[name]
        rows.append(
            [
                name,
                f"{med[name]:.3f}",
                f"{r['speedup_vs_torch']:.2f}x",
                f"{r['min_cosine']:.5f}",
                f"{r['max_abs_error']:.1e}",
            ]
        )
    print(
        f"\n### ONNX Runtime settings: the encoder alone, {frames} frames, batch "
        f"{batch_size}; eager torch {med['eager torch']:.3f} s\n"
    )
    header = ["setting", "seconds", "vs eager torch", "min cosine", "max abs error"]
    print(markdown_table(header, rows))
    return results
