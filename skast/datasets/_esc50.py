"""ESC-50: :func:`load_esc50` reads the official layout from disk,
:func:`fetch_esc50` downloads it once into scikit-learn's data home."""

from __future__ import annotations

import csv
import functools
import os
from numbers import Integral

import numpy as np
from sklearn.datasets import get_data_home
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, validate_params

from skast import _decode
from skast.datasets import _download

#: Where :func:`fetch_esc50` downloads ESC-50 from: GitHub's archive of the
#: ``master`` branch of the official repository (about 600 MB).
ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"

#: The SHA-256 of the archive at :data:`ESC50_URL`, or ``None`` when it is not
#: pinned. GitHub builds branch archives on the fly, so no hash of it is
#: published; :func:`fetch_esc50` then skips the check and logs the hash of
#: what it downloaded, which can be passed as ``sha256`` to later downloads.
ESC50_SHA256 = None

# <data_home>/skast_esc50/ESC-50-master
_ESC50_SUBDIR = "skast_esc50"
_ESC50_TOP = "ESC-50-master"
_ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10")
# Clips decoded (and resampled) together by load_esc50(as_waveforms=True).
_DECODE_BATCH = 64


# ------------------------------------------------------------------ load_esc50

_ESC50_DESCR = """\
ESC-50: Dataset for Environmental Sound Classification
------------------------------------------------------

2000 clips of 5 s (44.1 kHz, mono) in 50 classes of 40 clips each: animals,
natural soundscapes and water sounds, human non-speech sounds, interior/domestic
sounds, exterior/urban noises. ESC-10 (column ``esc10``) is a subset of 10
classes (400 clips).

The clips are arranged in 5 folds, made so that fragments of the same original
recording are in a single fold. Report 5-fold cross-validation over these
folds: ``LeaveOneGroupOut()`` with ``groups=folds``, or
``PredefinedSplit(folds - 1)``; a shuffled ``KFold`` leaks across recordings.

Source: https://github.com/karolpiczak/ESC-50, by Karol J. Piczak, licensed
under Creative Commons Attribution-NonCommercial (the clips come from
freesound.org).

Reference: K. J. Piczak. ESC: Dataset for Environmental Sound Classification.
Proceedings of the 23rd Annual ACM Conference on Multimedia, 2015.
"""


def _parse_bool(value):
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _read_esc50_csv(csv_path):
    """The columns of ``meta/esc50.csv`` as lists, typed and checked."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{csv_path} is empty; expected a header line")
        columns = [c.strip() for c in reader.fieldnames]
        missing = [c for c in _ESC50_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{csv_path} lacks the column(s) {', '.join(missing)}; ESC-50's "
                f"header is filename,fold,target,category,esc10,src_file,take "
                f"(found {','.join(columns)})"
            )
        reader.fieldnames = columns
        table = {c: [] for c in columns}
        parsers = {"fold": int, "target": int, "esc10": _parse_bool}
        for row in reader:
            for c in columns:
                value = row[c]
                if value is None:
                    raise ValueError(
                        f"{csv_path}, line {reader.line_num}: too few fields"
                    )
                value = value.strip()
                try:
                    value = parsers.get(c, str)(value)
                except ValueError:
                    raise ValueError(
                        f"{csv_path}, line {reader.line_num}: {c} must be "
                        f"{'a boolean' if c == 'esc10' else 'an integer'}, "
                        f"got {value!r}"
                    ) from None
                table[c].append(value)
            if table["fold"][-1] < 1 or table["target"][-1] < 0:
                raise ValueError(
                    f"{csv_path}, line {reader.line_num}: folds count from 1 "
                    "and targets from 0, got fold="
                    f"{table['fold'][-1]}, target={table['target'][-1]}"
                )
    if not table["filename"]:
        raise ValueError(f"{csv_path} lists no clips")
    return table


def _target_names(targets, categories, csv_path):
    names = {}
    for t, c in zip(targets, categories):
        if names.setdefault(t, c) != c:
            raise ValueError(f"{csv_path}: target {t} is both {names[t]!r} and {c!r}")
    # ids missing from the csv (a subset of the classes) get an empty name
    return np.asarray([names.get(i, "") for i in range(max(names) + 1)])


def _read_wave(path):
    try:
        return _decode.read(path)
    except ValueError as err:  # say "decode", with soundfile's own message
        raise ValueError(f"cannot decode {path}: {err.__cause__}") from err.__cause__


def _decode_files(paths, sample_rate):
    """Decode ``paths`` to mono float32, resampled to ``sample_rate`` if given."""
    waves, rates = [], set()
    for start in range(0, len(paths), _DECODE_BATCH):
        batch = [_read_wave(p) for p in paths[start : start + _DECODE_BATCH]]
        rates.update(rate for _, rate in batch)
        if sample_rate is not None:
            waves.extend(_decode.resample_clips(batch, sample_rate))
        else:
            waves.extend(w for w, _ in batch)
    if sample_rate is None:
        if len(rates) > 1:
            raise ValueError(
                f"the clips have different sample rates {sorted(rates)}; pass "
                "sample_rate= to resample them to one"
            )
        sample_rate = rates.pop()
    return waves, sample_rate


@validate_params(
    {
        "root": [str, os.PathLike],
        "as_waveforms": ["boolean"],
        "sample_rate": [Interval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)
def load_esc50(root, *, as_waveforms=False, sample_rate=None):
    """Load the ESC-50 environmental sound clips from a directory.

    Reads the layout of the official repository: ``root/meta/esc50.csv``
    (columns ``filename, fold, target, category, esc10, src_file, take``) and
    ``root/audio/*.wav``. To download it, see :func:`fetch_esc50`.

    Parameters
    ----------
    root : str or path-like
        The ESC-50 directory, the one holding ``meta/`` and ``audio/``
        (``ESC-50-master`` in the official archive).

    as_waveforms : bool, default=False
        If False, ``data`` lists the paths of the audio files, which skast's
        estimators decode themselves (in parallel, with ``num_workers``). If
        True, the files are decoded here into mono float32 waveforms.

    sample_rate : int, default=None
        Only with ``as_waveforms=True``: resample the waveforms to this rate
        (with :func:`torchaudio.functional.resample`). ``None`` keeps the
        files' own rate (44.1 kHz for ESC-50).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : list of str, or list of ndarray
            One entry per row of the csv, in its order: the absolute path of
            each audio file or, with ``as_waveforms=True``, its 1-D float32
            waveform.
        target : ndarray of shape (n_clips,)
            The class id of each clip (int, 0 to 49).
        target_names : ndarray of shape (n_classes,)
            The class names, indexed by class id (ids missing from the csv
            have an empty name).
        folds : ndarray of shape (n_clips,)
            The predefined fold of each clip (int, 1 to 5).
        esc10 : ndarray of shape (n_clips,)
            Whether each clip belongs to the ESC-10 subset (bool).
        frame : pandas.DataFrame or dict
            The whole metadata table: a DataFrame when pandas is installed,
            else a dict of column arrays.
        sample_rate : int
            Only with ``as_waveforms=True``: the sample rate of ``data``.
        DESCR : str
            A description of ESC-50.

    Raises
    ------
    FileNotFoundError
        ``root``, ``meta/esc50.csv``, ``audio/`` or a listed audio file is
        missing.
    ValueError
        The csv lacks a column or holds a malformed value, an audio file
        cannot be decoded, or ``sample_rate`` is given without
        ``as_waveforms=True``.

    See Also
    --------
    fetch_esc50 : Download ESC-50 and load it.
    make_sounds : A synthetic sound set, made in memory.

    Notes
    -----
    Cross-validate with the predefined folds, which keep fragments of one
    recording together: ``cross_val_score(est, esc.data, esc.target,
    groups=esc.folds, cv=LeaveOneGroupOut())``.

    Examples
    --------
    A one-clip tree with ESC-50's layout:

    >>> import os, shutil, tempfile
    >>> import numpy as np
    >>> import soundfile as sf
    >>> from skast.datasets import load_esc50
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "meta"))
    >>> os.makedirs(os.path.join(root, "audio"))
    >>> with open(os.path.join(root, "meta", "esc50.csv"), "w") as f:
    ...     _ = f.write("filename,fold,target,category,esc10,src_file,take\\n"
    ...                 "1-100032-A-0.wav,1,0,dog,True,100032,A\\n")
    >>> sf.write(os.path.join(root, "audio", "1-100032-A-0.wav"),
    ...          np.zeros(44100), 44100)
    >>> esc = load_esc50(root)
    >>> os.path.basename(esc.data[0]), esc.target, esc.folds
    ('1-100032-A-0.wav', array([0]), array([1]))
    >>> esc.target_names.tolist(), esc.esc10
    (['dog'], array([ True]))
    >>> esc = load_esc50(root, as_waveforms=True, sample_rate=16000)
    >>> esc.data[0].shape, esc.data[0].dtype, esc.sample_rate
    ((16000,), dtype('float32'), 16000)
    >>> shutil.rmtree(root)
    """
    if sample_rate is not None and not as_waveforms:
        raise ValueError(
            "sample_rate is only used with as_waveforms=True; file paths are "
            "resampled by the estimator that reads them"
        )
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ESC-50 directory {root} does not exist")
    csv_path = os.path.join(root, "meta", "esc50.csv")
    if not os.path.isfile(csv_path):
        hint = "root must be the ESC-50 directory holding meta/ and audio/"
        inner = os.path.join(root, _ESC50_TOP)
        if os.path.isfile(os.path.join(inner, "meta", "esc50.csv")):
            hint = f"did you mean {inner}?"
        raise FileNotFoundError(f"no meta/esc50.csv under {root}; {hint}")
    audio_dir = os.path.join(root, "audio")
    if not os.path.isdir(audio_dir):
        raise FileNotFoundError(f"no audio/ directory under {root}")

    table = _read_esc50_csv(csv_path)
    paths = [os.path.join(audio_dir, name) for name in table["filename"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(os.path.basename(p) for p in missing[:3])
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} audio files listed in "
            f"{csv_path} are missing from {audio_dir} (e.g. {shown})"
        )
    target = np.asarray(table["target"], dtype=np.int64)
    folds = np.asarray(table["fold"], dtype=np.int64)
    esc10 = np.asarray(table["esc10"], dtype=bool)
    target_names = _target_names(table["target"], table["category"], csv_path)

    typed = {"fold": folds, "target": target, "esc10": esc10}
    columns = {c: typed.get(c, np.asarray(v, dtype=object)) for c, v in table.items()}
    try:
        import pandas as pd
    except ImportError:
        frame = columns
    else:
        frame = pd.DataFrame(columns)

    bunch = Bunch(
        data=paths,
        target=target,
        target_names=target_names,
        folds=folds,
        esc10=esc10,
        frame=frame,
        DESCR=_ESC50_DESCR,
    )
    if as_waveforms:
        bunch.data, bunch.sample_rate = _decode_files(paths, sample_rate)
    return bunch


# ----------------------------------------------------------------- fetch_esc50


@validate_params(
    {
        "data_home": [str, os.PathLike, None],
        "download_if_missing": ["boolean"],
        "url": [str],
        "sha256": [str, None],
        "as_waveforms": ["boolean"],
        "sample_rate": [Interval(Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
    },
    prefer_skip_nested_validation=True,
)
def fetch_esc50(
    data_home=None,
    *,
    download_if_missing=True,
    url=ESC50_URL,
    sha256=ESC50_SHA256,
    as_waveforms=False,
    sample_rate=None,
    verbose=True,
):
    """Load ESC-50, downloading it first if it is not in the data home.

    The dataset is kept in ``<data_home>/skast_esc50/ESC-50-master`` and read
    with :func:`load_esc50`. The first call downloads the official archive
    (about 600 MB; 900 MB unpacked) and unpacks it there; later calls only
    read it.

    A download goes to a temporary file next to its destination, is checked
    and unpacked into a temporary directory, and is moved into place with a
    single rename: an interrupted download, a wrong checksum or a corrupt
    archive leave nothing behind, and the next call starts over.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Where datasets are kept, as in scikit-learn's ``fetch_*`` functions:
        ``None`` is ``$SCIKIT_LEARN_DATA`` or ``~/scikit_learn_data``
        (see :func:`sklearn.datasets.get_data_home`).

    download_if_missing : bool, default=True
        If False, raise an :class:`OSError` when ESC-50 is not in the data
        home instead of downloading it.

    url : str, default=ESC50_URL
        Where to download the zip archive from. Its top folder must be
        ``ESC-50-master/`` (or its only folder must hold the ESC-50 layout).

    sha256 : str, default=ESC50_SHA256
        The expected SHA-256 hex digest of the archive; a download that does
        not match is removed and raises :class:`OSError`. The default is
        ``None``: GitHub builds branch archives on the fly and publishes no
        hash, so the check is skipped and the hash of what was downloaded is
        logged (pass it here to pin later downloads).

    as_waveforms : bool, default=False
        Decode the clips instead of returning their paths; see
        :func:`load_esc50`.

    sample_rate : int, default=None
        With ``as_waveforms=True``, resample to this rate; see
        :func:`load_esc50`.

    verbose : bool, default=True
        Show a progress bar while downloading.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        What :func:`load_esc50` returns: ``data`` (file paths or waveforms),
        ``target``, ``target_names``, ``folds``, ``esc10``, ``frame`` and
        ``DESCR``.

    Raises
    ------
    OSError
        ESC-50 is missing and ``download_if_missing=False``; or the download
        failed, was interrupted, does not match ``sha256``, or is not a zip
        archive holding ESC-50.

    See Also
    --------
    load_esc50 : Load an ESC-50 directory that is already on disk.
    make_sounds : A synthetic sound set, made in memory.

    Notes
    -----
    ESC-50 is licensed under Creative Commons Attribution-NonCommercial.
    Requests time out after 60 s without data; proxies are taken from the
    usual ``http_proxy``/``https_proxy`` environment variables.

    Examples
    --------
    >>> from skast.datasets import fetch_esc50
    >>> esc = fetch_esc50()  # doctest: +SKIP
    >>> len(esc.data), esc.target_names.size, sorted(set(esc.folds))  # doctest: +SKIP
    (2000, 50, [1, 2, 3, 4, 5])

    Cross-validate over the predefined folds:

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from skast import ASTFeaturizer  # doctest: +SKIP
    >>> pipe = make_pipeline(
    ...     ASTFeaturizer("MIT/ast-finetuned-audioset-10-10-0.4593"),
    ...     LogisticRegression(max_iter=1000),
    ... )  # doctest: +SKIP
    >>> scores = cross_val_score(pipe, esc.data, esc.target, groups=esc.folds,
    ...                          cv=LeaveOneGroupOut())  # doctest: +SKIP
    """
    base = os.path.join(get_data_home(data_home), _ESC50_SUBDIR)
    root = os.path.join(base, _ESC50_TOP)
    if not os.path.isdir(root):
        if not download_if_missing:
            raise OSError(
                f"ESC-50 not found; it is expected at {root}. Pass "
                f"download_if_missing=True to download it from {url}, or "
                "unpack the official archive there."
            )
        _download.fetch_tree(
            url,
            root,
            sha256=sha256,
            top=_ESC50_TOP,
            check=load_esc50,
            name="ESC-50",
            progress=functools.partial(
                _download.progress_bar, desc="ESC-50", verbose=verbose
            ),
        )
    return load_esc50(root, as_waveforms=as_waveforms, sample_rate=sample_rate)
