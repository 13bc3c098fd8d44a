"""Clips as the Hugging Face ``datasets`` library gives them: audio records.

A record is one item of an ``Audio`` column:

* a dict ``{"array": samples, "sampling_rate": rate}``, ``"path"`` optional
  (what ``datasets`` decoded to before its 4.0 release, and what users build);
* a dict ``{"path": path}`` or ``{"bytes": data, "path": name}`` (an
  undecoded column, ``datasets.Audio(decode=False)``): the file, or its bytes,
  is decoded by :func:`skast._decode.load_audio`;
* a decoder object with ``get_all_samples()`` returning samples of shape
  ``(n_channels, n_samples)`` and their ``sample_rate`` (``datasets`` 4.0 and
  later decode through torchcodec and give torchcodec ``AudioDecoder``
  objects).

Each record carries its own sample rate.
"""

from __future__ import annotations

import collections.abc
import os

from skast._decode import check_rate, clip_prefix

__all__ = ["is_record", "record_source"]

_KEYS = (
    "an audio dict needs 'array' and 'sampling_rate' (samples and their rate), "
    "or 'path' or 'bytes' (a file to decode)"
)


def is_record(item) -> bool:
    """Whether ``item`` is an audio record: a mapping, or a decoder object.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._records import is_record
    >>> is_record({"array": np.zeros(3), "sampling_rate": 8000}), is_record("a.wav")
    (True, False)
    """
    return isinstance(item, collections.abc.Mapping) or callable(
        getattr(item, "get_all_samples", None)
    )


def record_source(item, index=None, *, decode=True):
    """What a record holds, without checking the samples.

    Parameters
    ----------
    item : mapping or decoder object
        An audio record (:func:`is_record`).
    index : int, default=None
        The clip's index in ``X``, to name it in error messages.
    decode : bool, default=True
        Decode a decoder object's samples; ``False`` returns
        ``("decoder", item, None)`` for it, decoding nothing.

    Returns
    -------
    kind : {"samples", "file", "decoder"}
        ``"samples"``: in-memory samples; ``"file"``: a path or bytes to
        decode; ``"decoder"``: a decoder object, with ``decode=False``.
    value : array-like, torch.Tensor, str, os.PathLike or bytes
        The samples (mono: a decoder's channels are averaged), the path or
        the bytes.
    rate_or_name : int, str or None
        The samples' rate; for a file, how errors name it (its ``"path"``
        for bytes, else ``None``).

    Raises
    ------
    ValueError
        A dict with none of the keys needed, ``"array"`` without
        ``"sampling_rate"``, an invalid rate, a decoder that fails.
    TypeError
        A ``"path"`` that is not a ``str`` or :class:`os.PathLike`, or
        ``"bytes"`` that are not bytes.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._records import record_source
    >>> record_source({"array": np.zeros(2), "sampling_rate": 8000.0})
    ('samples', array([0., 0.]), 8000)
    >>> record_source({"path": "dog.wav", "bytes": None})
    ('file', 'dog.wav', None)
    >>> record_source({"audio": [0.0]}, index=2)
    Traceback (most recent call last):
    ...
    ValueError: clip 2: an audio dict needs 'array' and 'sampling_rate' ... got keys ['audio']
    """
    prefix = clip_prefix(index)
    if not isinstance(item, collections.abc.Mapping):
        if not decode:
            return "decoder", item, None
        try:
            samples = item.get_all_samples()
            data, rate = samples.data, samples.sample_rate
        except Exception as err:
            raise ValueError(f"{prefix}cannot decode the audio: {err}") from err
        if getattr(data, "ndim", None) != 2:
            raise ValueError(
                f"{prefix}get_all_samples() must give samples of shape "
                f"(n_channels, n_samples), got {type(data).__name__}"
            )
        return (
            "samples",
            data.mean(0) if data.shape[0] > 1 else data[0],
            _rate(rate, prefix),
        )
    if item.get("array") is not None:
        if item.get("sampling_rate") is None:
            raise ValueError(
                f"{prefix}an audio dict with 'array' needs its 'sampling_rate'"
            )
        return "samples", item["array"], _rate(item["sampling_rate"], prefix)
    path, data = item.get("path"), item.get("bytes")
    if data is not None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"{prefix}an audio dict's 'bytes' must be bytes, got "
                f"{type(data).__name__}"
            )
        return "file", data, None if path is None else str(path)
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"{prefix}an audio dict's 'path' must be a str or os.PathLike, got "
                f"{type(path).__name__}"
            )
        return "file", path, None
    raise ValueError(f"{prefix}{_KEYS}; got keys {sorted(map(str, item))}")


def _rate(rate, prefix: str) -> int:
    try:
        return check_rate(rate)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{prefix}{err} (the clip's 'sampling_rate')") from None
