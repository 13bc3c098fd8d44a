"""JSON whose every value records its type, read back strictly.

``encode`` turns the values an estimator holds (None, bools, ints, floats,
strings, lists, tuples, dicts with any scalar keys, paths, torch devices,
numpy arrays, scalars and dtypes, a ``RandomState``) into JSON objects such
as ``{"type": "tuple", "items": [...]}``; ``decode`` turns them back and
raises :class:`Invalid` on anything else: an unknown type, an unknown key, a
value of the wrong kind, a dtype outside a fixed list. Nothing is imported or
called by name from the data.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePath

import numpy as np
import torch

__all__ = ["Invalid", "encode", "decode", "device_name", "short"]

_MAX_DEPTH = 32
_MAX_ARRAY_BYTES = 2**28  # what a JSON array may expand to (wide string dtypes)
# dtypes of arrays and numpy scalars: numbers, bools, fixed-width strings, objects
_DTYPE = re.compile(r"\|b1|[<|][iu][1248]|<f[248]|<U[0-9]{1,6}|\|O")


class Invalid(Exception):
    """A value is not one the format allows."""


def _num(x):
    """A float as JSON holds it: non-finite values as strings."""
    x = float(x)
    return x if math.isfinite(x) else repr(x)  # 'nan', 'inf', '-inf'


def _float(v) -> float:
    if isinstance(v, float) or v in ("nan", "inf", "-inf"):
        return float(v)
    raise Invalid(f"expected a float, got {v!r}")


def encode(value, where: str = "value"):
    """``value`` as JSON that records its type (``where`` names it in errors).

    Examples
    --------
    >>> from skast._typedjson import decode, encode
    >>> encode((1, "a"))
    {'type': 'tuple', 'items': [{'type': 'int', 'value': 1}, {'type': 'str', 'value': 'a'}]}
    >>> decode(encode({"x": [0.5, None]}))
    {'x': [0.5, None]}
    """
    if value is None:
        return {"type": "none"}
    for kind in (bool, int, str):  # bool first: a bool is an int
        if isinstance(value, kind):
            return {"type": kind.__name__, "value": kind(value)}
    if isinstance(value, float):
        return {"type": "float", "value": _num(value)}
    if isinstance(value, (list, tuple)):
        items = [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"type": type(value).__name__, "items": items}
    if isinstance(value, dict):
        pairs = [
            [encode(k, where), encode(v, f"{where}[{k!r}]")] for k, v in value.items()
        ]
        return {"type": "dict", "items": pairs}
    if isinstance(value, np.ndarray):
        return _encode_array(value, where)
    if isinstance(value, np.generic):
        arr = _encode_array(np.asarray(value), where)
        return {"type": "numpy", "dtype": arr["dtype"], "value": arr["data"][0]}
    if isinstance(value, np.dtype):
        return {
            "type": "dtype",
            "value": _encode_array(np.empty(0, value), where)["dtype"],
        }
    if isinstance(value, PurePath):
        return {"type": "path", "value": str(value)}
    if isinstance(value, torch.device):
        return {"type": "device", "value": str(value)}
    if isinstance(value, np.random.RandomState):
        state = value.get_state(legacy=False)
        return {
            "type": "random_state",
            "key": state["state"]["key"].tolist(),
            "pos": int(state["state"]["pos"]),
            "has_gauss": int(state["has_gauss"]),
            "gauss": _num(state["gauss"]),
        }
    raise ValueError(
        f"cannot save {where}: a {type(value).__name__} is not one of the types "
        "the format holds (None, bool, int, float, str, list, tuple, dict, path, "
        "torch.device, numpy arrays, scalars and dtypes, RandomState)"
    )


def _encode_array(arr: np.ndarray, where: str) -> dict:
    dtype = arr.dtype.str
    if not _DTYPE.fullmatch(dtype):
        raise ValueError(
            f"cannot save {where}: numpy dtype {arr.dtype} is not supported"
        )
    flat = arr.reshape(-1)
    if arr.dtype.kind == "O":
        data = [encode(v, where) for v in flat]
        if any(d["type"] not in _SCALARS for d in data):
            raise ValueError(f"cannot save {where}: an object array of non-scalars")
    elif arr.dtype.kind == "f":
        data = [_num(v) for v in flat]
    else:
        data = flat.tolist()
    return {"type": "ndarray", "dtype": dtype, "shape": list(arr.shape), "data": data}


_SCALARS = {"none", "bool", "int", "float", "str", "numpy"}
_FIELDS = {  # the keys of each type's JSON object, besides "type"
    "none": set(),
    "bool": {"value"},
    "int": {"value"},
    "float": {"value"},
    "str": {"value"},
    "list": {"items"},
    "tuple": {"items"},
    "dict": {"items"},
    "ndarray": {"dtype", "shape", "data"},
    "numpy": {"dtype", "value"},
    "dtype": {"value"},
    "path": {"value"},
    "device": {"value"},
    "random_state": {"key", "pos", "has_gauss", "gauss"},
}


def decode(obj, depth: int = 0):
    """The value :func:`encode` wrote, checked; :class:`Invalid` if malformed.

    Examples
    --------
    >>> from skast._typedjson import decode
    >>> decode({"type": "ndarray", "dtype": "<U1", "shape": [2], "data": ["a", "b"]})
    array(['a', 'b'], dtype='<U1')
    """
    if depth > _MAX_DEPTH:
        raise Invalid("values nested too deeply")
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind not in _FIELDS:
        raise Invalid(f"expected a typed value {{'type': ...}}, got {short(obj)}")
    if set(obj) != {"type", *_FIELDS[kind]}:
        extra = sorted(set(obj) - {"type", *_FIELDS[kind]})
        raise Invalid(f"a {kind!r} value has keys {extra or sorted(obj)}")
    if kind == "none":
        return None
    if kind in ("bool", "int", "str", "path", "device"):
        want = {"bool": bool, "int": int}.get(kind, str)
        v = obj["value"]
        if type(v) is not want:
            raise Invalid(f"a {kind!r} value must hold a {want.__name__}, got {v!r}")
        if kind == "path":
            return Path(v)
        return torch.device(device_name(v)) if kind == "device" else v
    if kind == "float":
        return _float(obj["value"])
    if kind in ("list", "tuple", "dict"):
        items = _list(obj["items"], "items")
        if kind == "dict":
            pairs = [_list(p, "a dict item") for p in items]
            if any(len(p) != 2 for p in pairs):
                raise Invalid("a dict item must be a [key, value] pair")
            keys = [decode(k, depth + 1) for k, _ in pairs]
            if any(k["type"] not in _SCALARS for k, _ in pairs):
                raise Invalid("a dict key must be a scalar")
            return dict(zip(keys, (decode(v, depth + 1) for _, v in pairs)))
        values = [decode(v, depth + 1) for v in items]
        return values if kind == "list" else tuple(values)
    if kind == "ndarray":
        return _decode_array(obj, depth)
    if kind == "numpy":
        shape = {"dtype": obj["dtype"], "shape": [1], "data": [obj["value"]]}
        return _decode_array(shape, depth)[0]
    if kind == "dtype":
        return _dtype(obj["value"])
    return _random_state(obj)


def _decode_array(obj, depth) -> np.ndarray:
    dtype = _dtype(obj["dtype"])
    shape = _list(obj["shape"], "shape")
    if len(shape) > 8 or not all(type(s) is int and s >= 0 for s in shape):
        raise Invalid(f"an array shape must be at most 8 sizes >= 0, got {shape!r}")
    data = _list(obj["data"], "data")
    if len(data) != math.prod(shape):
        raise Invalid(f"an array of shape {shape} holds {len(data)} values")
    if dtype.kind == "O":
        out = np.empty(len(data), dtype=object)
        for i, v in enumerate(data):
            if not isinstance(v, dict) or v.get("type") not in _SCALARS:
                raise Invalid("an object array must hold typed scalars")
            out[i] = decode(v, depth + 1)
        return out.reshape(shape)
    want = {"b": bool, "i": int, "u": int, "U": str, "f": float}[dtype.kind]
    if dtype.kind == "f":
        data = [_float(v) for v in data]
    elif not all(type(v) is want for v in data):
        raise Invalid(f"an array of dtype {dtype} must hold {want.__name__} values")
    if dtype.itemsize * len(data) > _MAX_ARRAY_BYTES:
        raise Invalid(f"an array of {len(data)} values of {dtype} is too large")
    if dtype.kind == "U" and any(len(v) > dtype.itemsize // 4 for v in data):
        raise Invalid(f"a string longer than its dtype {dtype} allows")
    try:
        return np.array(data, dtype=dtype).reshape(shape)
    except OverflowError as err:
        raise Invalid(f"a value out of the range of {dtype}: {err}") from None


def _dtype(name) -> np.dtype:
    if not isinstance(name, str) or not _DTYPE.fullmatch(name):
        raise Invalid(f"numpy dtype {short(name)} is not one the format allows")
    return np.dtype(name)


def _random_state(obj) -> np.random.RandomState:
    key, pos, has_gauss = obj["key"], obj["pos"], obj["has_gauss"]
    if (
        not isinstance(key, list)
        or len(key) != 624
        or not all(type(k) is int and 0 <= k < 2**32 for k in key)
        or type(pos) is not int
        or not 0 <= pos <= 624
        or has_gauss not in (0, 1)
        or type(has_gauss) is not int
    ):
        raise Invalid("a malformed RandomState")
    state = ("MT19937", np.array(key, dtype=np.uint32), pos, has_gauss)
    rs = np.random.RandomState()
    rs.set_state((*state, _float(obj["gauss"])))
    return rs


def _list(v, what):
    if not isinstance(v, list):
        raise Invalid(f"{what} must be a JSON list, got {short(v)}")
    return v


def short(v) -> str:
    """``repr(v)``, cut to 80 characters (for error messages).

    Examples
    --------
    >>> from skast._typedjson import short
    >>> short("x" * 100)[-5:]
    'xx...'
    """
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def device_name(name: str) -> str:
    """``name`` if it is a torch device name, else :class:`Invalid`.

    Examples
    --------
    >>> from skast._typedjson import device_name
    >>> device_name("cuda:1")
    'cuda:1'
    """
    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise Invalid(f"{name!r} is not a torch device") from None
    return name
