"""``skast export --onnx``: a fitted estimator's model as ``model.onnx`` and
``model.json``, to run with ONNX Runtime without skast.

The ONNX file is the one :func:`skast._onnx.cached_onnx` exports (and
caches) for ``backend="onnxruntime"``; ``model.json`` (:func:`describe`) names
its input and output and says how to compute its input: torchaudio's kaldi
fbank with :data:`FBANK_ARGS`, padded or truncated to ``max_length`` frames,
normalised as ``(x - mean) / (2 * std)``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np

from skast._onnx import INPUT_NAME, OPSET, OUTPUT_NAMES, cached_onnx, import_onnxruntime
from skast._persist import _replace

__all__ = ["FBANK_ARGS", "describe", "export_estimator"]

#: The ``torchaudio.compliance.kaldi.fbank`` arguments of skast's features
#: (:func:`skast._features.fbank` equals that call to float32 rounding).
FBANK_ARGS = {"sample_frequency": 16000, "window_type": "hanning"}


def describe(est, precision: str) -> dict:
    """What a deployment needs to run the exported model of the fitted
    ``est`` without skast: the graph's input and output (names, shapes,
    dtype), the features (the fbank call, ``max_length``, the normalisation)
    and, for a classifier, the class names and the output's activation.

    Examples
    --------
    >>> import numpy as np
    >>> from skast import ASTFeaturizer
    >>> from skast._deploy import describe
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> est = ASTFeaturizer(model_config=tiny, device="cpu").fit(np.zeros((1, 800)))
    >>> info = describe(est, "float32")
    >>> info["input"]
    {'name': 'features', 'shape': ['batch', 64, 128], 'dtype': 'float32'}
    >>> info["output"]["name"], info["output"]["shape"]
    ('embedding', ['batch', 32])
    """
    import skast

    config = est.model_.config
    _, output = est._graph()
    mean, std = est.normalization_
    classifier = output[0] == "logits"
    width = len(est.classes_) if classifier else config.hidden_size
    info = {
        "format": "skast-onnx",
        "format_version": 1,
        "skast_version": skast.__version__,
        "estimator": type(est).__name__,
        "precision": precision,
        "opset": OPSET,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", config.max_length, config.num_mel_bins],
            "dtype": "float32",
        },
        "output": {
            "name": OUTPUT_NAMES[output[0]],
            "shape": ["batch", width],
            "dtype": "float32",
        },
        "features": {
            "sample_rate": FBANK_ARGS["sample_frequency"],
            "fbank": {**FBANK_ARGS, "num_mel_bins": config.num_mel_bins},
            "max_length": config.max_length,
            "padding": "frames past a clip's end are 0.0 before normalisation; "
            "a longer clip keeps its first max_length frames",
            "normalization": {"mean": mean, "std": std},
            "normalize": "(fbank - mean) / (2 * std)",
            # seconds between the windows of a long clip (None: its first)
            "window_hop": est.window_hop,
        },
    }
    if classifier:
        multilabel = bool(est._multilabel)
        info["output"]["activation"] = "sigmoid" if multilabel else "softmax"
        info["classes"] = np.asarray(est.classes_).tolist()
    else:
        info["output"]["pooling"] = est.pooling
        info["output"]["layer"] = est.layer
    return info


def export_estimator(est, directory, *, int8: bool = False) -> tuple[Path, Path]:
    """Write the fitted ``est``'s model to ``directory`` for use without
    skast: ``model.onnx`` (int8 weights with ``int8``) and ``model.json``
    (:func:`describe`). The export comes from (and goes to) the cache of
    :func:`cached_onnx`; both files are written atomically.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The two files.

    Examples
    --------
    >>> import json
    >>> import tempfile
    >>> import numpy as np
    >>> from skast import ASTFeaturizer
    >>> from skast._deploy import export_estimator
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> est = ASTFeaturizer(model_config=tiny, device="cpu").fit(np.zeros((1, 800)))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     onnx_path, json_path = export_estimator(est, d)
    ...     json.loads(json_path.read_text())["output"]["name"]
    'embedding'
    """
    import_onnxruntime()  # the int8 copy needs it; fail before any work
    precision = "int8" if int8 else "float32"
    fn, output = est._graph()
    source = cached_onnx(
        est.model_, functools.partial(fn, est.model_), output, precision
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(describe(est, precision), indent=2) + "\n"
    onnx_path, json_path = directory / "model.onnx", directory / "model.json"

    def shipped(write):  # readable by all (a temporary file is 0600)
        def run(tmp):
            write(tmp)
            os.chmod(tmp, 0o644)

        return run

    _replace(onnx_path, shipped(lambda tmp: shutil.copyfile(source, tmp)))
    _replace(json_path, shipped(lambda tmp: Path(tmp).write_text(text, "utf-8")))
    return onnx_path, json_path
