"""Verified downloads: a file checked against its SHA-256, a zip archive of a
directory tree unpacked and moved into place with one rename.

Whatever fails or is interrupted (a lost connection, a wrong checksum, a
corrupt archive, Ctrl-C) leaves nothing behind: everything is written under
temporary names next to its destination and renamed at the end.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
import zlib

logger = logging.getLogger(__name__)

__all__ = ["fetch_file", "fetch_tree", "progress_bar", "unzip"]

#: Seconds without data before a download is abandoned.
TIMEOUT = 60
#: Bytes read from the connection at a time.
CHUNK_SIZE = 1 << 20


def progress_bar(total, *, desc="download", verbose=True):
    """A tqdm bar counting bytes, for the ``progress`` of :func:`fetch_file`.

    Parameters
    ----------
    total : int or None
        The size of the download in bytes, ``None`` when unknown.
    desc : str, default="download"
        The bar's label.
    verbose : bool, default=True
        ``False`` gives a bar that shows nothing.

    Returns
    -------
    tqdm.tqdm
        A context manager with ``update(n_bytes)``.

    Examples
    --------
    >>> from skast.datasets._download import progress_bar
    >>> with progress_bar(2048, desc="data", verbose=False) as bar:
    ...     bar.update(1024)
    >>> bar.total, bar.disable
    (2048, True)
    """
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not verbose,
        leave=False,
    )


def _stream(url, file, timeout, chunk_size, progress) -> str:
    """Write the body of ``url`` to ``file``; return its SHA-256 hex digest."""
    request = urllib.request.Request(url, headers={"User-Agent": "skast"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.strip().isdigit() else None
        with progress(total) as bar:
            while True:
                try:
                    chunk = response.read(chunk_size)
                except http.client.HTTPException as err:
                    raise OSError(
                        f"the download of {url} was interrupted after "
                        f"{received} bytes ({err!r})"
                    ) from err
                if not chunk:
                    break
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" rather than raising when the server closes the
    # connection before Content-Length bytes arrived.
    if total is not None and received != total:
        raise OSError(
            f"the download of {url} was interrupted: received {received} of "
            f"{total} bytes"
        )
    return digest.hexdigest()


def _check_digest(url, digest, sha256) -> None:
    if sha256 is None:
        logger.warning(
            "The checksum of %s was not verified (sha256=None); the SHA-256 "
            "of the downloaded file is %s. Pass sha256=... to verify "
            "future downloads.",
            url,
            digest,
        )
    elif digest != sha256.lower():
        raise OSError(
            f"the file downloaded from {url} has SHA-256 {digest}, not "
            f"the expected {sha256.lower()}; it was removed"
        )


def _remove(path) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def fetch_file(
    url,
    path,
    *,
    sha256=None,
    timeout=TIMEOUT,
    chunk_size=CHUNK_SIZE,
    progress=progress_bar,
):
    """Download ``url`` to ``path``, checked against its SHA-256.

    The body is streamed to a temporary file next to ``path``, hashed on the
    way, and renamed to ``path`` once complete and checked. On any error or
    interrupt the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    url : str
        What to download (``http_proxy`` / ``https_proxy`` are honoured).
    path : str or os.PathLike
        Where to put it; its directory must exist.
    sha256 : str, default=None
        The expected SHA-256 hex digest (any case). ``None`` skips the check
        and logs the digest of what was downloaded.
    timeout : float, default=60
        Seconds without data before the download is abandoned.
    chunk_size : int, default=1048576
        Bytes read from the connection at a time.
    progress : callable, default=progress_bar
        Called with the size in bytes (``None`` when the server does not say
        it); returns a context manager whose ``update(n)`` is called with the
        bytes of each chunk.

    Returns
    -------
    str
        The SHA-256 hex digest of the file.

    Raises
    ------
    OSError
        The server cannot be reached or answers with an error, the connection
        is lost before the whole body arrived, or the digest is not
        ``sha256``.

    See Also
    --------
    fetch_tree : Download a zip archive and put the tree it holds in place.

    Examples
    --------
    >>> import os, tempfile
    >>> from skast.datasets._download import fetch_file
    >>> folder = tempfile.mkdtemp()
    >>> source = os.path.join(folder, "source.txt")
    >>> with open(source, "w") as f:
    ...     _ = f.write("hello")
    >>> url = "file://" + source.replace(os.sep, "/")
    >>> digest = fetch_file(url, os.path.join(folder, "copy.txt"),
    ...                     sha256="2CF24DBA5FB0A30E26E83B2AC5B9E29E"
    ...                            "1B161E5C1FA7425E73043362938B9824",
    ...                     progress=lambda total: progress_bar(total, verbose=False))
    >>> digest[:8], sorted(os.listdir(folder))
    ('2cf24dba', ['copy.txt', 'source.txt'])
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    fd, part = tempfile.mkstemp(prefix=f".{name}-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            digest = _stream(url, file, timeout, chunk_size, progress)
        _check_digest(url, digest, sha256)
        os.replace(part, path)
    finally:
        _remove(part)
    return digest


def unzip(archive, into, *, top=None, url=None):
    """Unpack a zip archive of one directory tree; return the tree's path.

    Parameters
    ----------
    archive : str or os.PathLike
        The zip file. Each member's CRC is checked as it is unpacked.
    into : str or os.PathLike
        The directory to unpack into (created if missing).
    top : str, default=None
        The tree's top folder in the archive. An archive without it is
        accepted when it has a single top folder (as GitHub's archives of a
        tag or fork).
    url : str, default=None
        Where the archive came from, to name it in errors.

    Returns
    -------
    str
        ``into/<top folder>``.

    Raises
    ------
    OSError
        Not a valid zip archive (corrupt, truncated, a CRC that does not
        match), or one without ``top`` and with more than one top folder.

    Examples
    --------
    >>> import os, tempfile, zipfile
    >>> from skast.datasets._download import unzip
    >>> folder = tempfile.mkdtemp()
    >>> archive = os.path.join(folder, "a.zip")
    >>> with zipfile.ZipFile(archive, "w") as zf:
    ...     zf.writestr("data-1.0/readme.txt", "hi")
    >>> tree = unzip(archive, os.path.join(folder, "out"), top="data-main")
    >>> os.path.relpath(tree, folder), os.listdir(tree)
    ('out/data-1.0', ['readme.txt'])
    """
    source = url if url is not None else os.fspath(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            tops = {name.split("/", 1)[0] for name in zf.namelist()}
            if top not in tops:
                if len(tops) != 1:
                    raise OSError(
                        f"the archive from {source} has no single top folder"
                        + (f" (expected {top}/)" if top else "")
                    )
                top = tops.pop()
            # CRCs are checked as each member is read
            zf.extractall(into)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise OSError(f"{source} did not give a valid zip archive: {err}") from err
    return os.path.join(into, top)


def fetch_tree(
    url,
    root,
    *,
    sha256=None,
    top=None,
    check=None,
    name="the data set",
    timeout=TIMEOUT,
    progress=progress_bar,
):
    """Download a zip archive of a directory tree and put the tree at ``root``.

    The archive is downloaded (:func:`fetch_file`) and unpacked
    (:func:`unzip`) in a temporary directory next to ``root``, the tree is
    checked, and it is moved to ``root`` with a single rename. On any error
    or interrupt the temporary files are removed, and so is the parent of
    ``root`` if this call created it. If another process puts a tree at
    ``root`` first, that one is kept.

    Parameters
    ----------
    url : str
        Where the zip archive is.
    root : str or os.PathLike
        Where the tree goes; it must not exist yet.
    sha256 : str, default=None
        The expected SHA-256 of the archive; see :func:`fetch_file`.
    top : str, default=None
        The tree's top folder in the archive; see :func:`unzip`.
    check : callable, default=None
        Called with the unpacked tree's path before the rename; a
        :class:`ValueError` or :class:`FileNotFoundError` it raises rejects
        the archive.
    name : str, default="the data set"
        What the tree is, for error messages.
    timeout : float, default=60
        See :func:`fetch_file`.
    progress : callable, default=progress_bar
        See :func:`fetch_file`.

    Raises
    ------
    OSError
        The download failed (see :func:`fetch_file`), the archive is not a
        valid zip, or ``check`` rejected the tree.

    Examples
    --------
    An archive whose tree must hold a ``data.csv``, served from a folder:

    >>> import os, pathlib, tempfile, zipfile
    >>> from skast.datasets._download import fetch_tree
    >>> def check(tree):
    ...     if not os.path.isfile(os.path.join(tree, "data.csv")):
    ...         raise FileNotFoundError(f"no data.csv in {tree}")
    >>> served = pathlib.Path(tempfile.mkdtemp())
    >>> with zipfile.ZipFile(served / "ok.zip", "w") as zf:
    ...     zf.writestr("data-main/data.csv", "x,y")
    >>> with zipfile.ZipFile(served / "bad.zip", "w") as zf:
    ...     zf.writestr("data-main/readme.txt", "no data")
    >>> home = pathlib.Path(tempfile.mkdtemp())
    >>> quiet = lambda total: progress_bar(total, verbose=False)
    >>> fetch_tree((served / "bad.zip").as_uri(), home / "data", top="data-main",
    ...            check=check, progress=quiet)
    Traceback (most recent call last):
    ...
    OSError: the archive from file:///.../bad.zip does not hold the data set
    under data-main/: no data.csv in data-main
    >>> os.listdir(home)
    []
    >>> fetch_tree((served / "ok.zip").as_uri(), home / "data", top="data-main",
    ...            check=check, progress=quiet)
    >>> os.listdir(home), os.listdir(home / "data")
    (['data'], ['data.csv'])
    """
    root = os.fspath(root)
    base = os.path.dirname(os.path.abspath(root))
    created_base = not os.path.isdir(base)
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}-", dir=base)
    try:
        archive = os.path.join(work, "archive.zip")
        fetch_file(url, archive, sha256=sha256, timeout=timeout, progress=progress)
        tree = unzip(archive, os.path.join(work, "tree"), top=top, url=url)
        if check is not None:
            _check_tree(check, tree, url, name)
        try:
            os.replace(tree, root)
        except OSError:
            if not os.path.isdir(root):
                raise
            # another process put its tree in place first: keep theirs
    finally:
        _remove(work)
        if created_base and not os.path.isdir(root):
            try:
                os.rmdir(base)
            except OSError:
                pass


def _check_tree(check, tree, url, name) -> None:
    try:
        check(tree)
    except (ValueError, FileNotFoundError) as err:
        top = os.path.basename(tree)
        # name the tree as in the archive, not by its temporary path
        reason = str(err).replace(tree, top)
        raise OSError(
            f"the archive from {url} does not hold {name} under {top}/: {reason}"
        ) from err
