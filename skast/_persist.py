"""Saving fitted estimators in a format that runs no code when loaded.

``est.save(directory)`` writes two files:

* ``skast.json``: the format and its version, the estimator's class (a name
  from a fixed table), its parameters and fitted attributes as JSON in which
  every value carries its type (``{"type": "tuple", "items": [...]}``, numpy
  arrays with their dtype and shape ...), the model's configuration and the
  name of the weights file;
* ``model.safetensors``: the weights.

:func:`load` reads them back without unpickling and without importing any
name the files choose, and checks every value against what the estimator and
the model configuration allow before building anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path, PurePath

import numpy as np
import torch

from skast._typedjson import Invalid, decode, device_name, encode, short

__all__ = ["load", "save", "FORMAT_VERSION"]

FORMAT = "skast-estimator"
#: The version :func:`save` writes; :func:`load` reads this one and older ones.
FORMAT_VERSION = 1
MANIFEST = "skast.json"
WEIGHTS = "model.safetensors"
_TOP_KEYS = set(
    "format format_version skast_version estimator params fitted model_config "
    "weights".split()
)
_MAX_MANIFEST_BYTES = 64 * 2**20


def _estimators() -> dict:
    """The classes a file may name: a fixed table, never a name from the file."""
    from skast._classifier import ASTClassifier
    from skast._featurizer import ASTFeaturizer

    return {"ASTFeaturizer": ASTFeaturizer, "ASTClassifier": ASTClassifier}


# ---------------------------------------------------------------- what is saved


def _real(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, (bool, np.bool_))


def _int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, (bool, np.bool_))


def _reals(x) -> bool:
    return isinstance(x, list) and all(_real(v) for v in x)


def _epoch(h) -> bool:
    """One entry of history_: the documented keys, typed; others scalars."""
    return (
        isinstance(h, dict)
        and all(k in h and _CHECKS[spec][0](h[k], None) for k, spec in _EPOCH.items())
        and all(
            isinstance(k, str) and _CHECKS["scalar"][0](v, None) for k, v in h.items()
        )
    )


# spec -> (check(value, model config), what the value must be)
_CHECKS = {
    "str": (lambda v, c: isinstance(v, str), "a str"),
    "device": (
        lambda v, c: (
            isinstance(v, str)
            or (isinstance(v, list) and v and all(isinstance(d, str) for d in v))
        ),
        "a device name or a non-empty list of them",
    ),
    "bool": (lambda v, c: isinstance(v, bool), "a bool"),
    "int>=0": (lambda v, c: _int(v) and v >= 0, "an int >= 0"),
    "seed": (lambda v, c: _int(v) and 0 <= v < 2**31, "an int in [0, 2**31)"),
    "real": (lambda v, c: _real(v), "a float"),
    "real?": (lambda v, c: v is None or _real(v), "None or a float"),
    "scalar": (lambda v, c: v is None or _real(v) or isinstance(v, str), "a scalar"),
    "reals": (lambda v, c: _reals(v), "a list of floats"),
    "reals?": (lambda v, c: v is None or _reals(v), "None or a list of floats"),
    "dict": (lambda v, c: isinstance(v, dict), "a dict"),
    "history": (
        lambda v, c: isinstance(v, list) and all(map(_epoch, v)),
        "a list of one dict per epoch",
    ),
    "mean_std": (
        lambda v, c: (
            isinstance(v, tuple)
            and len(v) == 2
            and all(_real(x) and math.isfinite(x) for x in v)
            and v[1] > 0
        ),
        "a (mean, std) tuple of finite floats, std > 0",
    ),
    "hidden_size": (
        lambda v, c: _int(v) and v == c.hidden_size,
        "the model config's hidden_size",
    ),
    "labels": (
        lambda v, c: (
            isinstance(v, np.ndarray)
            and v.shape == (c.num_labels,)
            and v.dtype.kind in "biufUO"
        ),
        "a 1-D array with one entry per output of the model's head",
    ),
    "y_dtype": (
        lambda v, c: v is None or (isinstance(v, np.dtype) and v.kind in "biuf"),
        "None or a numeric numpy dtype",
    ),
    "output_config": (
        lambda v, c: (
            isinstance(v, dict) and all(isinstance(x, str) for x in [*v, *v.values()])
        ),
        "a dict of str",
    ),
}
_EPOCH = {
    "epoch": "int>=0",
    "train_loss": "real",
    "valid_loss": "real?",
    "valid_score": "real?",
    "learning_rate": "real",
    "seconds": "real",
}
# attribute -> spec: what fit sets and predict/transform read. Not saved:
# model_ (the weights file), _autocast and the featurizer's _fingerprint
# (derived on load, as unpickling does) and partial_fit's optimizer state.
_COMMON = {"device_": "device", "normalization_": "mean_std"}
_OPTIONAL = {"_sklearn_output_config": "output_config"}  # set by set_output
_FITTED = {
    "ASTFeaturizer": {**_COMMON, "_n_features_out": "hidden_size"},
    "ASTClassifier": {
        **_COMMON,
        "classes_": "labels",
        "_multilabel": "bool",
        "_y_dtype": "y_dtype",
        "recipe_params_": "dict",
        "_seed": "seed",
        "history_": "history",
        "loss_curve_": "reals",
        "validation_scores_": "reals?",
        "best_validation_score_": "real?",
        "n_iter_": "int>=0",
    },
}
_DERIVED = {"model_", "_autocast", "_fingerprint", "_partial_state"}


def _params(est) -> dict:
    params = est.get_params(deep=False)
    cache = params.get("cache")
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        params["cache"] = getattr(cache, "location", None)  # a joblib.Memory
        if params["cache"] is not None:
            params["cache"] = str(params["cache"])
    return params


# ---------------------------------------------------------------- save


def save(est, directory) -> None:
    """Write the fitted ``est`` to ``directory`` (see :meth:`ASTBase.save`).

    Examples
    --------
    >>> import os
    >>> import tempfile
    >>> import numpy as np
    >>> from skast import ASTFeaturizer
    >>> from skast._persist import save
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> X = np.zeros((1, 4000))
    >>> est = ASTFeaturizer(model_config=tiny, device="cpu").fit(X)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save(est, d)
    ...     sorted(os.listdir(d))
    ['model.safetensors', 'skast.json']
    """
    from safetensors.torch import save_file
    from sklearn.utils.validation import check_is_fitted

    import skast

    check_is_fitted(est)
    name = type(est).__name__
    if _estimators().get(name) is not type(est):
        raise ValueError(
            f"save writes ASTFeaturizer and ASTClassifier, not {type(est).__name__}"
        )
    params = _params(est)
    table = {**_FITTED[name], **_OPTIONAL}
    unknown = sorted(set(vars(est)) - set(params) - set(table) - _DERIVED)
    if unknown:
        raise ValueError(
            f"cannot save {name}: the format does not hold its attribute(s) {unknown}"
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "skast_version": skast.__version__,
        "estimator": name,
        "params": {k: encode(v, f"params.{k}") for k, v in params.items()},
        "fitted": {
            k: encode(getattr(est, k), f"fitted.{k}") for k in table if hasattr(est, k)
        },
        "model_config": est.model_.config.to_dict(),
        "weights": WEIGHTS,
    }
    text = json.dumps(manifest, indent=1, allow_nan=False, ensure_ascii=False)
    tensors = {
        k: v.detach().cpu().contiguous() for k, v in est.model_.state_dict().items()
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # no manifest while the weights change: an interrupted save leaves no
    # directory that loads (not an old manifest with new weights)
    (directory / MANIFEST).unlink(missing_ok=True)
    _replace(
        directory / WEIGHTS,
        lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
    )
    _replace(
        directory / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8")
    )


def _replace(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file (see :func:`replacing`), then
    moved over ``path``."""
    with replacing(path) as tmp:
        write(str(tmp))


@contextlib.contextmanager
def replacing(path: Path, *, sync: bool = False, folder=None):
    """Yield a temporary file's path in ``path``'s folder (or in ``folder``,
    on the same filesystem), moved over ``path`` when the block completes
    (a rename, which replaces a symlink at ``path``, never the file it points
    to), after an ``fsync`` of its data with ``sync``; removed if the block
    fails.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skast._persist import replacing
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with replacing(Path(d) / "a.txt") as tmp:
    ...         _ = tmp.write_text("done")
    ...     print(sorted(p.name for p in Path(d).iterdir()))
    ['a.txt']
    """
    fd, tmp = tempfile.mkstemp(
        dir=folder or path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- load


def load(directory):
    """Load an estimator written by ``save``, running no code from its files.

    Parameters
    ----------
    directory : str or path-like
        A directory written by :meth:`ASTFeaturizer.save
        <skast.ASTFeaturizer.save>` or :meth:`ASTClassifier.save
        <skast.ASTClassifier.save>` (or ``skast finetune -o DIR``).

    Returns
    -------
    estimator : ASTFeaturizer or ASTClassifier
        Fitted, on the device it was fitted on, or on the CPU with a warning
        where that device is missing here.

    Raises
    ------
    ValueError
        Naming the file and the key: a file of a newer format version, an
        unknown or missing key, a value of the wrong type or shape, a symlink
        or a path in a file name, weights missing, extra or of the wrong
        shape or dtype for the model configuration, a weights file that is
        not safetensors.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import skast
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> X = np.zeros((1, 4000))
    >>> est = skast.ASTFeaturizer(model_config=tiny, device="cpu").fit(X)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     est.save(d)
    ...     loaded = skast.load(d)
    >>> type(loaded).__name__, loaded.device_
    ('ASTFeaturizer', 'cpu')
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"'{directory}' is not a directory written by save()")
    path = _member(directory, MANIFEST, MANIFEST)
    manifest = _read_manifest(path)

    def invalid(key, msg):
        return ValueError(f"cannot load '{path}': {key}: {msg}")

    if manifest.get("format") != FORMAT:
        raise invalid(
            "format", f"expected {FORMAT!r}, got {short(manifest.get('format'))}"
        )
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise invalid("format_version", f"expected an int >= 1, got {short(version)}")
    if version > FORMAT_VERSION:
        raise invalid(
            "format_version",
            f"written in format version {version}, newer than this skast reads "
            f"({FORMAT_VERSION}); upgrade skast to load it",
        )
    for key in sorted(set(manifest) ^ _TOP_KEYS):
        raise invalid(key, "unknown key" if key in manifest else "missing")
    if not isinstance(manifest["skast_version"], str):
        raise invalid("skast_version", "expected a str")
    name = manifest["estimator"]
    classes = _estimators()
    if name not in classes:
        raise invalid(
            "estimator", f"expected one of {sorted(classes)}, got {short(name)}"
        )
    cls = classes[name]
    config = _config(manifest["model_config"], invalid)
    # a parameter added after the file was written takes its default, which
    # is what the writing version did (new parameters default to off)
    defaults = cls().get_params(deep=False)
    params = _decode_section(
        manifest["params"], "params", defaults, invalid, optional=defaults
    )
    params = {**defaults, **params}
    for key, value in params.items():
        if (msg := _param_error(cls, key, value)) is not None:
            raise invalid(f"params.{key}", msg)
    table = {**_FITTED[name], **_OPTIONAL}
    fitted = _decode_section(
        manifest["fitted"], "fitted", table, invalid, optional=_OPTIONAL
    )
    for key, value in fitted.items():
        check, what = _CHECKS[table[key]]
        if not check(value, config):
            raise invalid(f"fitted.{key}", f"expected {what}, got {short(value)}")
    if name == "ASTClassifier":
        _check_recipe(cls, fitted["recipe_params_"], invalid)
    try:
        names = fitted["device_"]
        for device in [names] if isinstance(names, str) else names:
            device_name(device)
    except Invalid as err:
        raise invalid("fitted.device_", str(err)) from None
    weights_name = manifest["weights"]
    state_dict = _read_weights(
        _member(directory, weights_name, "weights", path), config
    )
    return _build(cls, params, fitted, config, state_dict)


def _read_manifest(path: Path) -> dict:
    def no_constant(name):
        raise ValueError(f"'{name}' is not JSON")

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError("a key appears twice")
        return dict(items)

    # O_NOFOLLOW: a symlink swapped in after the check is not followed either
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_MAX_MANIFEST_BYTES + 1)
    try:
        if len(data) > _MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {_MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=pairs,
            parse_constant=no_constant,
        )
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"cannot load '{path}': not a skast manifest: {err}") from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"cannot load '{path}': not a skast manifest (not a JSON object)"
        )
    return manifest


def _member(directory: Path, name, key: str, manifest: Path | None = None) -> Path:
    """``directory / name``, a plain file name of a regular file, no symlink."""
    where = f"'{manifest}': {key}" if manifest else f"'{directory}'"
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or name != PurePath(name).name
        or any(c in name for c in "/\\\0")
        or ".." in name
    ):
        raise ValueError(f"cannot load {where}: {short(name)} is not a plain file name")
    path = directory / name
    if path.is_symlink():
        raise ValueError(
            f"cannot load {where}: '{path}' is a symlink; copy the file instead"
        )
    if not path.is_file():
        hint = "" if manifest else " (not a directory written by save()?)"
        raise ValueError(
            f"cannot load {where}: '{path}' is missing or not a file{hint}"
        )
    return path


def _decode_section(section, key, expected, invalid, optional=()) -> dict:
    if not isinstance(section, dict):
        raise invalid(key, f"expected a JSON object, got {short(section)}")
    for k in sorted(set(section) - set(expected)):
        raise invalid(f"{key}.{k}", "unknown key")
    for k in sorted(set(expected) - set(section) - set(optional)):
        raise invalid(f"{key}.{k}", "missing")
    out = {}
    for k, v in section.items():
        try:
            out[k] = decode(v)
        except Invalid as err:
            raise invalid(f"{key}.{k}", str(err)) from None
    return out


def _param_error(cls, key, value) -> str | None:
    """Why ``value`` is not a valid value of parameter ``key``, or None."""
    from sklearn.utils._param_validation import validate_parameter_constraints

    try:
        validate_parameter_constraints(
            {key: cls._parameter_constraints[key]},
            {key: value},
            caller_name=cls.__name__,
        )
    except (TypeError, ValueError) as err:  # InvalidParameterError is both
        return str(err)
    return None


def _check_recipe(cls, recipe_params, invalid) -> None:
    from skast._recipes import RECIPES

    keys = set(next(iter(RECIPES.values())))
    if set(recipe_params) != keys:
        raise invalid("fitted.recipe_params_", f"expected the keys {sorted(keys)}")
    for key, value in recipe_params.items():
        if (msg := _param_error(cls, key, value)) is not None:
            raise invalid(f"fitted.recipe_params_[{key!r}]", msg)


def _config(fields, invalid):
    """The :class:`ASTConfig` of the manifest, every field of its type."""
    from skast._model import ASTConfig

    if not isinstance(fields, dict):
        raise invalid("model_config", f"expected a JSON object, got {short(fields)}")
    defaults = {f.name: f.default for f in dataclasses.fields(ASTConfig)}
    for k in sorted(set(fields) - set(defaults)):
        raise invalid(f"model_config.{k}", "unknown key")
    for k, v in fields.items():
        if k == "id2label":
            ok = isinstance(v, dict) and list(v) == [str(i) for i in range(len(v))]
            if not (ok and all(isinstance(s, str) for s in v.values())):
                raise invalid("model_config.id2label", "expected {'0': name, '1': ...}")
        elif not _field_type_ok(v, defaults[k]):
            want = type(defaults[k]).__name__
            raise invalid(
                f"model_config.{k}", f"expected a value of type {want}, got {short(v)}"
            )
    try:
        return ASTConfig(**fields)
    except (TypeError, ValueError) as err:
        raise invalid("model_config", str(err)) from None


def _field_type_ok(value, default) -> bool:
    # an int serves (hidden_dropout_prob=0); None: an optional float
    # (classifier_layer_norm_eps; id2label is checked apart)
    if default is None or isinstance(default, float):
        return _real(value)
    return type(value) is type(default)


def _read_weights(path: Path, config) -> dict:
    """The tensors of ``path``: exactly the model's names, shapes and dtypes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from skast._model import AST

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"cannot load '{path}': not a readable safetensors file: {err}"
        ) from None
    with torch.device("meta"):
        expected = AST(config).state_dict()
    for key in sorted(set(tensors) ^ set(expected)):
        what = "not a weight of the model" if key in tensors else "missing"
        raise ValueError(f"cannot load '{path}': {key}: {what}")
    for key, ref in expected.items():
        got = tensors[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise ValueError(
                f"cannot load '{path}': {key}: {got.dtype} of shape "
                f"{tuple(got.shape)}, but the model config needs {ref.dtype} "
                f"of shape {tuple(ref.shape)}"
            )
    return tensors


def _build(cls, params, fitted, config, state_dict):
    """The fitted estimator, restored by the same code as an unpickled one
    (:meth:`skast._base.ASTBase.__setstate__`: the device fallback, the
    autocast dtype, the featurizer's cache fingerprint)."""
    est = cls.__new__(cls)
    packed = {"config": config.to_dict(), "state_dict": state_dict}
    est.__setstate__({**params, **fitted, "_packed_model": packed})
    return est
