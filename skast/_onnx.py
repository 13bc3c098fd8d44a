"""Inference through ONNX Runtime: the encoder exported once, run on the CPU.

With ``backend="onnxruntime"``, what ``transform`` / ``predict`` evaluate (the
pooled hidden state of the featurizer, the classifier's logits) is exported
with :func:`torch.onnx.export` (the ``torch.export``-based exporter, a dynamic
batch axis) and run by ONNX Runtime's ``CPUExecutionProvider``; with
``precision="int8"``, by its dynamically quantised copy
(``onnxruntime.quantization.quantize_dynamic``, int8 weights). The features
are skast's as for PyTorch (:meth:`skast._base.ASTBase._iter_features`); only
the model's evaluation changes, inside the one loop
(:func:`skast._runtime.evaluate`).

The exported files are kept in :func:`onnx_dir`, one folder per
:func:`model_key` (a hash of the weights, the architecture and what is
exported), written atomically: a model is exported once for the same weights,
whichever estimator or process asks. The ONNX Runtime session lives beside the
model, never in the estimator (so pickles and ``save`` do not hold it) and is
rebuilt lazily, when the weights have changed or after loading.

onnxruntime is optional: ``pip install "skast[onnx]"``. ``skast export
--onnx`` writes the same file for use without skast (:mod:`skast._deploy`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from skast._cache import model_fingerprint
from skast._derived import Derived
from skast._persist import _replace
from skast._recipes import BACKENDS

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "check_backend",
    "torch_precision",
    "onnx_dir",
    "model_key",
    "export_onnx",
    "fuse_for_onnxruntime",
    "cached_onnx",
    "import_onnxruntime",
    "make_session",
    "onnx_fn",
]

#: The exported graph's input: normalised log-mel features.
INPUT_NAME = "features"
#: Its output, by what is exported.
OUTPUT_NAMES = {"embedding": "embedding", "logits": "logits"}
#: torch.onnx.export's exporter: the torch.export-based one, its default
#: since torch 2.9 (it needs onnxscript); the TorchScript one before.
_DYNAMO = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 9)
#: The ONNX opset of the export (the dynamo exporter's default in torch 2.9;
#: 17 for the TorchScript exporter, whose tested range ends there).
OPSET = 18 if _DYNAMO else 17
#: Bumped when the exported graph changes for the same weights (2: ONNX
#: Runtime's fused operators, :func:`fuse_for_onnxruntime`).
_EXPORT_VERSION = 2
_FILES = {"float32": "model.onnx", "int8": "model.int8.onnx"}
_INSTALL = 'pip install "skast[onnx]"'


def check_backend(backend, precision) -> None:
    """Refuse a ``backend`` / ``precision`` pair that cannot run.

    Parameters
    ----------
    backend : str
        ``"torch"`` or ``"onnxruntime"``.
    precision : str
        The estimator's ``precision``.

    Raises
    ------
    ValueError
        An unknown backend, ``"int8"`` without ONNX Runtime, or a half
        precision with it (ONNX Runtime runs float32 or int8 here).

    Examples
    --------
    >>> from skast._onnx import check_backend
    >>> check_backend("onnxruntime", "int8")
    >>> check_backend("torch", "int8")
    Traceback (most recent call last):
    ...
    ValueError: precision='int8' runs through ONNX Runtime: set backend='onnxruntime' (pip install "skast[onnx]"), or choose precision 'auto', 'float32', 'bfloat16' or 'float16' for backend='torch'
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" and precision == "int8":
        raise ValueError(
            "precision='int8' runs through ONNX Runtime: set backend='onnxruntime' "
            f"({_INSTALL}), or choose precision 'auto', 'float32', 'bfloat16' or "
            "'float16' for backend='torch'"
        )
    if backend == "onnxruntime" and precision in ("bfloat16", "float16"):
        raise ValueError(
            f"backend='onnxruntime' runs the encoder in float32 or int8, not "
            f"precision={precision!r}: choose precision 'auto', 'float32' or 'int8'"
        )


def torch_precision(precision: str) -> str:
    """The precision PyTorch runs at (a classifier's training, or the torch
    backend) for an estimator's ``precision``: ``"int8"`` is ONNX Runtime's
    inference precision, so PyTorch runs at ``"auto"`` then.

    Examples
    --------
    >>> from skast._onnx import torch_precision
    >>> torch_precision("int8"), torch_precision("bfloat16")
    ('auto', 'bfloat16')
    """
    return "auto" if precision == "int8" else precision


def onnx_precision(precision: str) -> str:
    """The exported model's precision: ``"int8"`` or ``"float32"``."""
    return "int8" if precision == "int8" else "float32"


def onnx_dir() -> Path:
    """The folder of the exported models.

    ``$SKAST_ONNX_DIR`` when set, else ``skast/onnx`` under the user's cache
    (``$XDG_CACHE_HOME``, default ``~/.cache``).

    Examples
    --------
    >>> import os
    >>> from skast._onnx import onnx_dir
    >>> os.environ["SKAST_ONNX_DIR"] = "exported"
    >>> onnx_dir().as_posix()
    'exported'
    >>> del os.environ["SKAST_ONNX_DIR"]
    """
    folder = os.environ.get("SKAST_ONNX_DIR")
    if folder:
        return Path(folder)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "skast" / "onnx"


def model_key(model: torch.nn.Module, output: tuple) -> str:
    """The folder name of ``model``'s export computing ``output``: a hash of
    its weights, its config and ``output`` (what is exported, such as
    ``("embedding", layer, pooling)``), not of its device.

    Examples
    --------
    >>> from skast._model import AST, ASTConfig
    >>> from skast._onnx import model_key
    >>> model = AST(ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...                       num_attention_heads=2, intermediate_size=64))
    >>> len(model_key(model, ("logits",)))
    64
    """
    exporter = ("dynamo" if _DYNAMO else "torchscript", OPSET)
    return model_fingerprint(model, ("onnx", _EXPORT_VERSION, *exporter, *output))


class _Exported(torch.nn.Module):
    """``fn`` of ``model`` as a module, for the exporter."""

    def __init__(self, model: torch.nn.Module, fn: Callable):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


def export_onnx(model, fn, path, *, output_name: str, fuse: bool = True) -> Path:
    """Export ``fn`` (normalised features -> (B, k)) of the AST ``model`` to
    ``path`` with a dynamic batch axis, atomically (a temporary file in the
    same folder, then :func:`os.replace`).

    Parameters
    ----------
    model : skast._model.AST
        The encoder; exported in eval mode (its mode is restored after).
    fn : callable
        What the graph computes from a ``(B, max_length, num_mel_bins)``
        float32 input named :data:`INPUT_NAME`.
    path : str or path-like
        The ``.onnx`` file; its folder is created if missing.
    output_name : str
        The graph's output name.
    fuse : bool, default=True
        Rewrite the graph with ONNX Runtime's fused operators
        (:func:`fuse_for_onnxruntime`); ``False`` keeps the exporter's graph
        of standard ONNX operators. If the rewrite fails, the standard graph
        is written, with a ``RuntimeWarning`` saying why.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> import onnx
    >>> from skast._model import AST, ASTConfig
    >>> from skast._onnx import export_onnx
    >>> model = AST(ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...                       num_attention_heads=2, intermediate_size=64,
    ...                       max_length=32, num_mel_bins=32))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = export_onnx(model, model, f"{d}/m.onnx", output_name="logits")
    ...     graph = onnx.load(path).graph
    >>> graph.input[0].name, graph.output[0].name
    ('features', 'logits')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    param = next(model.parameters())
    example = torch.zeros(
        2, config.max_length, config.num_mel_bins, device=param.device
    )
    was_training = model.training
    module = _Exported(model, fn).eval()

    def write(tmp):
        # the exporter reports its steps on stdout and warns (through
        # logging) of optional packages, such as torchvision, it needs not here
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
            _quiet_logging(),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            if _DYNAMO:
                exporter = {
                    "dynamo": True,
                    "dynamic_shapes": {"x": {0: torch.export.Dim("batch")}},
                    "external_data": False,
                }
            else:  # torch before 2.9: its TorchScript exporter, then the default
                axes = {0: "batch"}
                exporter = {"dynamic_axes": {INPUT_NAME: axes, output_name: axes}}
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                opset_version=OPSET,
                **exporter,
            )
            if fuse:
                try:
                    fuse_for_onnxruntime(tmp)
                except Exception as err:  # the plain graph still computes fn
                    failed.append(err)

    failed: list[Exception] = []
    try:
        _replace(path, write)
    finally:
        model.train(was_training)
    if failed:
        warnings.warn(
            "skast: ONNX Runtime's fused operators could not be applied to the "
            f"exported graph ({type(failed[0]).__name__}: {failed[0]}); {path} "
            "runs with standard operators, slower (attention is not fused); "
            "remove it to export again",
            RuntimeWarning,
            stacklevel=2,
        )
    return path


def fuse_for_onnxruntime(path) -> dict:
    """Rewrite the ONNX file ``path`` with ONNX Runtime's fused operators, by
    onnxscript's ``optimize_for_ort`` (atomically: on an error the file is
    left as it was); return the count of each fusion applied.

    The exporter writes attention as its parts (MatMul, Softmax, MatMul), so
    that ONNX Runtime holds every ``(heads, tokens, tokens)`` score matrix,
    1214 x 1214 per head at 1024 frames; the rewrite makes each block's
    attention one ``com.microsoft.MultiHeadAttention``, which the CPU provider
    runs as a tiled (flash) attention, and fuses the residual adds with their
    LayerNorms (``SkipLayerNormalization``) and the MLP's bias with its GELU
    (``BiasGelu``). The attention rewrite matches the graph of the
    ``torch.export``-based exporter (torch 2.9 and later); in the TorchScript
    exporter's graph only the LayerNorm and GELU fusions apply. The file then
    needs ONNX Runtime (its ``com.microsoft`` operators), not any ONNX
    runtime.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from skast._model import AST, ASTConfig
    >>> from skast._onnx import export_onnx, fuse_for_onnxruntime, make_session
    >>> model = AST(ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...                       num_attention_heads=2, intermediate_size=64,
    ...                       max_length=32, num_mel_bins=32))
    >>> x = {"features": np.ones((2, 32, 32), dtype=np.float32)}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = export_onnx(model, model, f"{d}/m.onnx", output_name="logits",
    ...                        fuse=False)
    ...     (plain,) = make_session(path).run(None, x)
    ...     counts = fuse_for_onnxruntime(path)  # what export_onnx does
    ...     (fused,) = make_session(path).run(None, x)
    >>> counts["skip_layer_normalization"]  # the block's two residual adds
    2
    >>> bool(np.allclose(plain, fused, rtol=0, atol=1e-5))
    True
    """
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    path = Path(path)
    model = ir.load(str(path))
    model, counts = optimize_for_ort(model)
    # written beside it, then renamed: a failure leaves ``path`` as it was
    _replace(path, lambda tmp: ir.save(model, str(tmp)))
    return {name: n for name, n in counts.items() if n}


@contextlib.contextmanager
def _quiet_logging():
    """Warnings of the exporter and the quantiser through :mod:`logging`
    (below ERROR) silenced while the block runs."""
    before = logging.root.manager.disable
    logging.disable(max(before, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(before)


def quantize_int8(source, path) -> Path:
    """``onnxruntime.quantization.quantize_dynamic`` of ``source`` (int8
    weights, QInt8) to ``path``, atomically."""
    import_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp):
        with _quiet_logging():  # its advice to pre-process, on the root logger
            quantize_dynamic(str(source), tmp, weight_type=QuantType.QInt8)

    path = Path(path)
    _replace(path, write)
    return path


def cached_onnx(model, fn, output: tuple, precision: str = "float32") -> Path:
    """The exported file of ``fn`` of ``model`` at ``precision`` (``"float32"``
    or ``"int8"``), from :func:`onnx_dir` when it is there, else exported
    (and quantised) first.

    ``output`` names what ``fn`` computes (its first item, ``"embedding"`` or
    ``"logits"``, is the graph's output name) and is part of the key.
    """
    folder = onnx_dir() / model_key(model, output)
    fp32 = folder / _FILES["float32"]
    if not fp32.exists():
        export_onnx(model, fn, fp32, output_name=OUTPUT_NAMES[output[0]])
    if precision == "float32":
        return fp32
    int8 = folder / _FILES["int8"]
    if not int8.exists():
        quantize_int8(fp32, int8)
    return int8


def import_onnxruntime():
    """The ``onnxruntime`` module, or an ``ImportError`` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"backend='onnxruntime' needs onnxruntime: {_INSTALL}"
        ) from err
    return onnxruntime


def make_session(path, threads: int | None = None):
    """An ONNX Runtime session of ``path`` on the CPU provider.

    ``threads``: intra-op threads (default :func:`torch.get_num_threads`, so
    that both backends use the same number); one inter-op thread; every graph
    optimisation (``ORT_ENABLE_ALL``).
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Runner:
    """A session as ``fn`` of :func:`skast._runtime.evaluate`: a torch batch in
    (on any device), float32 CPU rows out."""

    def __init__(self, session):
        self.session = session
        self.output = session.get_outputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feats = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (out,) = self.session.run([self.output], {INPUT_NAME: feats})
        return torch.from_numpy(out)


# model -> its sessions, by output and precision: kept while its weights
# (and the thread count) are the same, never pickled with the estimator
_RUNNERS = Derived()


def onnx_fn(model, fn, output: tuple, precision: str) -> Callable:
    """``fn`` of ``model`` as ONNX Runtime runs it (see :func:`cached_onnx`),
    for :func:`skast._runtime.evaluate`; the session is made once per model,
    output and precision, and again when the weights change.

    Parameters
    ----------
    model : skast._model.AST
    fn : callable
        What is exported (normalised features -> (B, k)).
    output : tuple
        What ``fn`` computes: ``("embedding", layer, pooling)`` or
        ``("logits",)``.
    precision : str
        The estimator's ``precision`` (``"int8"``, or float32 for the others).

    Returns
    -------
    callable
        ``x (torch.Tensor) -> torch.Tensor`` of float32 on the CPU.
    """
    ort_precision = onnx_precision(precision)

    def make():
        import_onnxruntime()  # before any export work
        return _Runner(make_session(cached_onnx(model, fn, output, ort_precision)))

    return _RUNNERS.get(
        model, (output, ort_precision), make, extra=torch.get_num_threads()
    )
