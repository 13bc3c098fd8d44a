"""Exclusive claims on the clips of the embedding cache, across processes.

Before embedding a clip that is missing from the cache, a worker claims it:
it creates ``<clip>.claim`` next to where ``<clip>.npy`` will be, with
``O_CREAT | O_EXCL``, which one creator wins on a local file system and on
NFS (v3 and later) alike. The file holds its owner: the host, the process id
and a random token of the claiming call. Workers that find a clip claimed do
not embed it: they wait for its ``.npy`` file to appear. The owner writes the
embedding, then removes the claim; if it fails (an exception, an unwritable
cache) it removes its claims all the same, and a waiting worker claims the
clips it left.

A worker that dies (killed, out of memory, its machine lost) cannot remove
its claims. A claim is *stale*, and taken over by the next worker to find it,
when

* its owner ran on this host (the same kernel boot and process id namespace)
  and that process is gone (or a zombie), or is this very process but not a
  live claim of another of its calls: at once;
* its modification time, which a live owner's heartbeat thread renews every
  ``timeout / 6`` seconds, is older than ``timeout`` seconds (60 by default),
  by this host's clock; or it has not changed for ``timeout`` seconds while
  watched, which needs no clock agreement between machines.

A stale claim is taken over by renaming it to a name of the taker's own, so
that two takers of one stale claim cannot both win, then claiming the clip
anew.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from skast._claims import Claims
>>> with tempfile.TemporaryDirectory() as folder:
...     claim = Path(folder) / "ab" / "abcd.claim"
...     with Claims() as mine, Claims() as theirs:
...         first, second = mine.acquire(claim), theirs.acquire(claim)
...         mine.release(claim)
...         third = theirs.acquire(claim)
...     print(first, second, third, claim.exists())
True False True False
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import threading
import time
from pathlib import Path

__all__ = ["Claims", "host_id"]

# A claim whose heartbeat has not been renewed for this long is stale, seconds.
CLAIM_TIMEOUT = 60.0
# Waiting for the clips other workers hold: the first pause, growing by half
# after each look that found nothing new, up to the last, seconds.
POLL_FIRST, POLL_LAST = 0.02, 1.0

# the tokens of this process's open Claims: its threads' claims are live
_LIVE: set[str] = set()


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This machine, as the claims name it: the host name, and on Linux the
    kernel's boot id and the process id namespace, so that containers sharing
    a host name do not take each other's process ids for their own.

    Examples
    --------
    >>> from skast._claims import host_id
    >>> host_id() == host_id() and "\\n" not in host_id()
    True
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "/".join(parts).replace("\n", " ")


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host has this id (kill with signal 0), and
    is not a zombie (dead, not yet reaped by its parent; Linux)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # another user's process, or we cannot tell: alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _create(path: Path) -> int:
    """``path`` created exclusively (its folder too, if missing): its fd."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as err:  # a file in the folder's place
            raise NotADirectoryError(*err.args) from err
        return os.open(path, flags, 0o644)


class Claims:
    """The claims of one call: taken, renewed while held, released.

    Parameters
    ----------
    timeout : float, default=60
        Seconds after which a claim whose heartbeat stopped is stale.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> from skast._claims import Claims
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with Claims() as claims:
    ...         claimed = claims.acquire(Path(folder) / "abcd.claim")
    ...         owner = (Path(folder) / "abcd.claim").read_text().split("\\n")
    ...     print(claimed, owner[1] == str(os.getpid()))
    True True
    """

    def __init__(self, *, timeout: float = CLAIM_TIMEOUT):
        self.timeout = float(timeout)
        self.token = secrets.token_hex(8)
        self.owner = f"{host_id()}\n{os.getpid()}\n{self.token}\n"
        self._held: dict[Path, int] = {}  # claim -> its inode
        self._watched: dict[Path, tuple[tuple, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        _LIVE.add(self.token)

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ taking

    def acquire(self, path: Path) -> bool:
        """Claim ``path``: ``True`` if this call now holds it (taken, or taken
        over from a dead owner) or if the folder cannot hold claims (a cache
        that cannot be written: nothing is exclusive then); ``False`` if a
        live owner holds it."""
        if path in self._held:
            return True
        for _ in range(4):  # a claim that vanishes or is taken over: again
            try:
                fd = _create(path)
            except FileExistsError:
                seen = self._stale(path)
                if seen is False:
                    return False
                if seen is not None and not self._take_over(path, seen):
                    return False
                continue
            except OSError:
                return True  # cannot be claimed, as it cannot be written
            try:
                os.write(fd, self.owner.encode())
                inode = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            with self._lock:
                self._held[path] = inode
                self._watched.pop(path, None)
                if self._beat is None:
                    self._beat = threading.Thread(
                        target=self._heartbeat, name="skast-claims", daemon=True
                    )
                    self._beat.start()
            return True
        return False

    def release(self, path: Path) -> None:
        """Remove this call's claim on ``path`` (nothing if it holds none)."""
        with self._lock:
            inode = self._held.pop(path, None)
        if inode is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # not taken over since
                os.unlink(path)

    def close(self) -> None:
        """Release every claim held and stop the heartbeat."""
        with self._lock:
            held = list(self._held)
        for path in held:
            self.release(path)
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        _LIVE.discard(self.token)

    # ------------------------------------------------------------------ staleness

    def _stale(self, path: Path):
        """The claim's signature if it is stale, ``False`` if it is live,
        ``None`` if it vanished while looked at."""
        try:  # opened, then its times read: NFS revalidates them on open
            with open(path, "rb") as f:
                st, raw = os.fstat(f.fileno()), f.read(4096)
        except FileNotFoundError:
            return None
        except OSError:  # unreadable: judged by its times alone
            try:
                st, raw = os.stat(path), b""
            except OSError:
                return None
        text = raw.decode("utf-8", "replace")
        sig = (st.st_ino, st.st_mtime_ns, text)
        host, pid, token = (text.split("\n") + ["", "", ""])[:3]
        if host == host_id() and pid.isdigit():
            if int(pid) == os.getpid():
                live = token in _LIVE and token != self.token  # another thread's
                return False if live else sig
            if not _pid_alive(int(pid)):
                return sig
        now = time.monotonic()
        with self._lock:
            first_sig, since = self._watched.setdefault(path, (sig, now))
            if first_sig != sig:  # renewed, or another owner: watch anew
                self._watched[path] = (sig, now)
                since = now
        if time.time() - st.st_mtime > self.timeout or now - since > self.timeout:
            return sig
        return False

    def _take_over(self, path: Path, sig: tuple) -> bool:
        """Remove the stale claim ``sig`` at ``path``; ``False`` if another
        worker took it over first, or it turned out to be another claim."""
        private = path.with_name(f"{path.name}.{self.token}")
        try:
            os.rename(path, private)
        except OSError:
            return False  # gone: taken over by another worker
        try:
            with open(private, "rb") as f:
                st, raw = os.fstat(f.fileno()), f.read(4096)
            now = (st.st_ino, st.st_mtime_ns, raw.decode("utf-8", "replace"))
        except OSError:
            now = sig
        if now != sig:
            # a live claim, made since it was judged: put it back unless the
            # clip was claimed again meanwhile
            with contextlib.suppress(OSError):
                os.link(private, path)
            with contextlib.suppress(OSError):
                os.unlink(private)
            return False
        with contextlib.suppress(OSError):
            os.unlink(private)
        with self._lock:
            self._watched.pop(path, None)
        return True

    # ------------------------------------------------------------------ heartbeat

    def _heartbeat(self) -> None:
        """Renew the modification time of every claim held until closed."""
        while not self._stop.wait(self.timeout / 6):
            with self._lock:
                held = list(self._held)
            for path in held:
                with contextlib.suppress(OSError):
                    os.utime(path)
