"""The synthetic sound set, the ESC-50 loader, the ESC-50 download and the
verified downloads it is built on.

Downloads are served by a local HTTP server on 127.0.0.1; nothing here
touches the network beyond it.
"""

import _thread
import csv
import hashlib
import http.server
import io
import os
import threading
import zipfile

import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skast.datasets import fetch_esc50, load_esc50, make_sounds
from skast.datasets._download import fetch_file, progress_bar

HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
CLASSES = {0: "dog", 1: "rooster"}
RATE = 44100
CLIP = 11025  # 0.25 s


# ---------------------------------------------------------------- make_sounds


def test_make_sounds_shapes_and_types():
    sounds = make_sounds(3, n_classes=4, duration=0.5, sample_rate=8000, random_state=0)
    assert sounds.data.shape == (12, 4000)
    assert sounds.data.dtype == np.float32
    assert sounds.target.shape == (12,)
    assert sounds.target_names.tolist() == ["tone", "chirp", "noise", "clicks"]
    assert sorted(set(sounds.target)) == sorted(sounds.target_names)
    assert all(isinstance(t, str) for t in sounds.target.tolist())
    assert (np.unique(sounds.target, return_counts=True)[1] == 3).all()
    assert sounds.sample_rate == 8000
    assert "clicks" in sounds.DESCR
    assert np.isfinite(sounds.data).all()
    assert np.abs(sounds.data).max() <= 1.0

    X, y = make_sounds(2, random_state=0, return_X_y=True)
    assert X.shape == (12, 16000) and y.shape == (12,)

    ordered = make_sounds(2, n_classes=3, random_state=0, shuffle=False)
    assert ordered.target.tolist() == ["tone"] * 2 + ["chirp"] * 2 + ["noise"] * 2


@pytest.mark.parametrize("duration", [0.05, 0.3])
def test_make_sounds_every_clip_sounds(duration):
    # without noise, each clip peaks at its random amplitude, 0.3 to 0.8
    sounds = make_sounds(
        10, n_classes=8, duration=duration, sample_rate=8000, noise=0.0, random_state=1
    )
    assert len(set(sounds.target_names)) == 8
    peaks = np.abs(sounds.data).max(axis=1)
    assert (peaks >= 0.3 - 1e-6).all() and (peaks <= 0.8 + 1e-6).all()


def test_make_sounds_clipped_to_unit_range():
    sounds = make_sounds(5, n_classes=8, duration=0.3, noise=1.0, random_state=1)
    assert sounds.data.min() >= -1.0 and sounds.data.max() <= 1.0
    assert np.isclose(np.abs(sounds.data).max(), 1.0)


def test_make_sounds_deterministic():
    a = make_sounds(3, duration=0.25, random_state=42)
    b = make_sounds(3, duration=0.25, random_state=42)
    c = make_sounds(3, duration=0.25, random_state=43)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.target, b.target)
    assert not np.allclose(a.data, c.data)
    rng = np.random.RandomState(0)
    assert not np.allclose(
        make_sounds(2, duration=0.1, random_state=rng).data,
        make_sounds(2, duration=0.1, random_state=rng).data,
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_classes": 1}, "n_classes"),
        ({"n_classes": 9}, "n_classes"),
        ({"n_per_class": 0}, "n_per_class"),
        ({"duration": 0.0}, "duration"),
        ({"sample_rate": 4000}, "sample_rate"),
        ({"noise": -0.1}, "noise"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_make_sounds_validation(kwargs, name):
    with pytest.raises(ValueError, match=f"'{name}' parameter"):
        make_sounds(**kwargs)


def band_energies(X, sample_rate, n_bands=32):
    """Log energies of the clips' spectra in log-spaced bands."""
    power = np.abs(np.fft.rfft(X, axis=1)) ** 2
    freqs = np.fft.rfftfreq(X.shape[1], 1.0 / sample_rate)
    edges = np.geomspace(50, sample_rate / 2, n_bands + 1)
    bands = [
        power[:, (freqs >= lo) & (freqs < hi)].mean(axis=1)
        for lo, hi in zip(edges[:-1], edges[1:])
    ]
    return np.log10(np.stack(bands, axis=1) + 1e-10)


def test_make_sounds_classes_are_distinguishable():
    sounds = make_sounds(20, n_classes=8, random_state=0)
    features = band_energies(sounds.data, sounds.sample_rate)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = cross_val_score(model, features, sounds.target, cv=cv)
    assert scores.mean() > 0.9, scores


# ------------------------------------------------------------------ load_esc50


def write_esc50(root, *, n_folds=5, stereo_first=True):
    """A tiny ESC-50 tree: one clip per class and fold, the real csv header."""
    os.makedirs(root / "meta")
    os.makedirs(root / "audio")
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(1, n_folds + 1):
        for target, category in CLASSES.items():
            src = f"{100000 + 10 * fold + target}"
            name = f"{fold}-{src}-A-{target}.wav"
            wave = 0.1 * rng.standard_normal(CLIP)
            if stereo_first and not rows:
                wave = np.stack([wave, wave], axis=1)
            sf.write(root / "audio" / name, wave, RATE)
            rows.append([name, fold, target, category, target == 0, src, "A"])
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return root


@pytest.fixture
def esc50_root(tmp_path):
    return write_esc50(tmp_path / "ESC-50-master")


def test_load_esc50(esc50_root):
    esc = load_esc50(esc50_root)
    assert len(esc.data) == 10
    assert all(isinstance(p, str) and os.path.isfile(p) for p in esc.data)
    assert all(os.path.isabs(p) for p in esc.data)
    assert [os.path.basename(p) for p in esc.data] == list(esc.frame["filename"])
    np.testing.assert_array_equal(esc.target, [0, 1] * 5)
    np.testing.assert_array_equal(esc.folds, np.repeat([1, 2, 3, 4, 5], 2))
    np.testing.assert_array_equal(esc.esc10, [True, False] * 5)
    assert esc.target.dtype.kind == "i" and esc.folds.dtype.kind == "i"
    assert esc.esc10.dtype == bool
    assert esc.target_names.tolist() == ["dog", "rooster"]
    assert list(esc.frame.columns) == HEADER
    assert esc.frame["src_file"].iloc[0] == "100010"
    assert "sample_rate" not in esc
    assert "ESC-50" in esc.DESCR
    # the paths are what the csv says, in its order
    assert os.path.basename(esc.data[3]) == "2-100021-A-1.wav"
    # str and path-like roots alike
    assert load_esc50(str(esc50_root)).data == esc.data


def test_load_esc50_without_pandas(esc50_root, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("no pandas here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    esc = load_esc50(esc50_root)
    assert isinstance(esc.frame, dict)
    assert list(esc.frame) == HEADER
    np.testing.assert_array_equal(esc.frame["fold"], esc.folds)


def test_load_esc50_waveforms(esc50_root):
    esc = load_esc50(esc50_root, as_waveforms=True)
    assert esc.sample_rate == RATE
    assert len(esc.data) == 10
    for wave in esc.data:
        assert wave.shape == (CLIP,) and wave.dtype == np.float32
    # the first file is stereo: mixed down to mono
    stereo, _ = sf.read(load_esc50(esc50_root).data[0], dtype="float32")
    assert stereo.shape == (CLIP, 2)
    np.testing.assert_allclose(esc.data[0], stereo.mean(axis=1))

    esc16 = load_esc50(esc50_root, as_waveforms=True, sample_rate=16000)
    assert esc16.sample_rate == 16000
    for wave in esc16.data:
        assert wave.shape == (CLIP * 16000 // RATE,) and wave.dtype == np.float32
    np.testing.assert_array_equal(esc16.target, esc.target)
    # same rate as the files: no resampling
    same = load_esc50(esc50_root, as_waveforms=True, sample_rate=RATE)
    np.testing.assert_array_equal(same.data[3], esc.data[3])


def test_load_esc50_sample_rate_needs_waveforms(esc50_root):
    with pytest.raises(ValueError, match="as_waveforms=True"):
        load_esc50(esc50_root, sample_rate=16000)


def rewrite_csv(root, edit):
    path = root / "meta" / "esc50.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(edit(rows))


def test_load_esc50_broken_layouts(tmp_path, esc50_root):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_esc50(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no meta/esc50.csv under"):
        load_esc50(tmp_path)  # the parent of the ESC-50 directory
    os.rename(esc50_root, tmp_path / "ESC-50-master")
    with pytest.raises(FileNotFoundError, match="did you mean .*ESC-50-master"):
        load_esc50(tmp_path)
    os.rename(tmp_path / "ESC-50-master", esc50_root)

    os.rename(esc50_root / "audio", esc50_root / "sounds")
    with pytest.raises(FileNotFoundError, match="no audio/ directory"):
        load_esc50(esc50_root)
    os.rename(esc50_root / "sounds", esc50_root / "audio")

    os.remove(esc50_root / "audio" / "3-100031-A-1.wav")
    with pytest.raises(FileNotFoundError, match=r"1 of the 10 .* 3-100031-A-1\.wav"):
        load_esc50(esc50_root)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda rows: [], "is empty"),
        (lambda rows: [r[:3] + r[4:] for r in rows], "lacks the column.*category"),
        (lambda rows: rows[:1], "lists no clips"),
        (
            lambda rows: rows[:2] + [rows[2][:1] + ["two"] + rows[2][2:]],
            "line 3: fold must be an integer",
        ),
        (
            lambda rows: rows[:2] + [rows[2][:4] + ["maybe"] + rows[2][5:]],
            "esc10 must be a boolean",
        ),
        (
            lambda rows: rows[:2] + [rows[2][:1] + ["0"] + rows[2][2:]],
            "folds count from 1",
        ),
        (lambda rows: rows[:2] + [rows[2][:2]], "too few fields"),
        (
            lambda rows: rows + [rows[1][:3] + ["cat"] + rows[1][4:]],
            "target 0 is both 'dog' and 'cat'",
        ),
    ],
)
def test_load_esc50_bad_csv(esc50_root, edit, match):
    rewrite_csv(esc50_root, edit)
    with pytest.raises(ValueError, match=match):
        load_esc50(esc50_root)


def test_load_esc50_subset_of_classes(esc50_root):
    # a csv keeping some classes only (ids with gaps) still maps ids to names
    rewrite_csv(
        esc50_root, lambda rows: [rows[0]] + [r for r in rows[1:] if r[2] == "1"]
    )
    esc = load_esc50(esc50_root)
    assert esc.target_names.tolist() == ["", "rooster"]
    assert esc.target_names[esc.target].tolist() == ["rooster"] * 5


def test_load_esc50_mixed_sample_rates(esc50_root):
    sf.write(esc50_root / "audio" / "1-100010-A-0.wav", np.zeros(8000), 16000)
    with pytest.raises(ValueError, match=r"different sample rates \[16000, 44100\]"):
        load_esc50(esc50_root, as_waveforms=True)
    esc = load_esc50(esc50_root, as_waveforms=True, sample_rate=16000)
    assert esc.data[0].shape == (8000,)  # already at 16 kHz
    assert esc.data[1].shape == (CLIP * 16000 // RATE,)


def test_load_esc50_csv_with_bom(esc50_root):
    path = esc50_root / "meta" / "esc50.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_esc50(esc50_root).target_names.tolist() == ["dog", "rooster"]


def test_load_esc50_undecodable(esc50_root):
    (esc50_root / "audio" / "1-100010-A-0.wav").write_bytes(b"not a wav file")
    assert len(load_esc50(esc50_root).data) == 10  # paths are not decoded
    with pytest.raises(ValueError, match="cannot decode .*1-100010-A-0.wav"):
        load_esc50(esc50_root, as_waveforms=True)


# ----------------------------------------------------------------- fetch_esc50


def zip_tree(root, top="ESC-50-master", compression=zipfile.ZIP_DEFLATED):
    """The bytes of a zip of ``root`` under ``top/``, like GitHub's archives."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr(f"{top}/", "")
        for dirpath, _, filenames in sorted(os.walk(root)):
            rel = os.path.relpath(dirpath, root)
            if rel != ".":
                zf.writestr(f"{top}/{rel}/", "")
            for name in sorted(filenames):
                arc = name if rel == "." else f"{rel}/{name}"
                zf.write(os.path.join(dirpath, name), f"{top}/{arc}")
    return buf.getvalue()


class Server:
    """A local HTTP server; ``body`` and ``mode`` say what it answers.

    In mode ``"pause"`` it sends half the body, sets ``paused`` and sends the
    rest once ``resume`` is set.
    """

    def __init__(self):
        self.body = b""
        self.mode = "ok"
        self.requests = []
        self.paused, self.resume = threading.Event(), threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.body
                if server.mode == "missing":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                if server.mode == "short":
                    # promise more than is sent, then close the connection
                    self.send_header("Content-Length", str(len(body) + 4096))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode in ("raise", "pause"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if server.mode == "raise":
                        raise ConnectionAbortedError("server gave up mid-stream")
                    server.paused.set()
                    server.resume.wait(10)
                    body = body[len(body) // 2 :]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = (
            f"http://127.0.0.1:{self.httpd.server_address[1]}/ESC-50/archive/master.zip"
        )


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.resume.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def archive(tmp_path_factory):
    src = write_esc50(tmp_path_factory.mktemp("src") / "tree")
    body = zip_tree(src)
    return body, hashlib.sha256(body).hexdigest()


def contents(path):
    """Everything under ``path``, relative to it, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), path))
    return sorted(found)


def test_fetch_downloads_once(tmp_path, server, archive):
    server.body, digest = archive
    home = tmp_path / "home"
    esc = fetch_esc50(home, url=server.url, sha256=digest, verbose=False)
    assert len(server.requests) == 1
    assert server.requests[0] == "/ESC-50/archive/master.zip"
    root = home / "skast_esc50" / "ESC-50-master"
    assert esc.data[0].startswith(str(root))
    np.testing.assert_array_equal(esc.folds, np.repeat([1, 2, 3, 4, 5], 2))
    assert esc.target_names.tolist() == ["dog", "rooster"]
    # only the dataset is left: no temporary file or directory
    assert os.listdir(home / "skast_esc50") == ["ESC-50-master"]
    assert sorted(os.listdir(root)) == ["audio", "meta"]

    again = fetch_esc50(home, url=server.url, sha256=digest, verbose=False)
    assert len(server.requests) == 1
    assert again.data == esc.data
    waves = fetch_esc50(home, url=server.url, as_waveforms=True, sample_rate=16000)
    assert len(server.requests) == 1
    assert waves.data[1].shape == (CLIP * 16000 // RATE,)
    assert fetch_esc50(home, download_if_missing=False).data == esc.data


def test_fetch_data_home_from_environment(tmp_path, server, archive, monkeypatch):
    server.body = archive[0]
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "env_home"))
    fetch_esc50(url=server.url, verbose=False)
    assert os.path.isdir(
        tmp_path / "env_home" / "skast_esc50" / "ESC-50-master" / "audio"
    )


def test_fetch_without_checksum_logs_it(tmp_path, server, archive, caplog):
    server.body, digest = archive
    with caplog.at_level("WARNING", logger="skast.datasets"):
        esc = fetch_esc50(tmp_path, url=server.url, sha256=None, verbose=False)
    assert len(esc.data) == 10
    assert digest in caplog.text and "not verified" in caplog.text


def test_fetch_progress_bar(tmp_path, server, archive, capsys):
    server.body = archive[0]
    fetch_esc50(tmp_path, url=server.url, verbose=True)
    assert "ESC-50" in capsys.readouterr().err


def test_fetch_missing_without_download(tmp_path, server):
    with pytest.raises(OSError, match="ESC-50 not found.*download_if_missing=True"):
        fetch_esc50(tmp_path, download_if_missing=False, url=server.url)
    assert server.requests == []
    assert contents(tmp_path) == []


def test_fetch_wrong_checksum_leaves_nothing(tmp_path, server, archive):
    server.body = archive[0]
    with pytest.raises(OSError, match="not the expected 0000"):
        fetch_esc50(tmp_path, url=server.url, sha256="0" * 64, verbose=False)
    assert contents(tmp_path) == []
    # the next call starts over
    fetch_esc50(tmp_path, url=server.url, sha256=archive[1].upper(), verbose=False)
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", ["short", "raise"])
def test_fetch_interrupted_leaves_nothing(tmp_path, server, archive, mode):
    server.body, digest = archive
    server.mode = mode
    with pytest.raises(OSError, match="interrupted"):
        fetch_esc50(tmp_path, url=server.url, sha256=digest, verbose=False)
    assert contents(tmp_path) == []


def test_fetch_http_error_leaves_nothing(tmp_path, server):
    server.mode = "missing"
    with pytest.raises(OSError, match="404"):
        fetch_esc50(tmp_path, url=server.url, verbose=False)
    assert contents(tmp_path) == []


def flip_bytes_of_first_wav(body):
    """Damage the data of the first wav in a zip; the zip still opens."""
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".wav"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    body = bytearray(body)
    for i in range(start + 100, start + 140):
        body[i] ^= 0xFF
    return bytes(body)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("garbage", "did not give a valid zip archive"),
        ("truncated", "did not give a valid zip archive"),
        ("deflate", "did not give a valid zip archive.*decompressing"),
        ("crc", "did not give a valid zip archive.*CRC"),
        ("no_csv", "does not hold ESC-50 under ESC-50-master/: no meta/esc50.csv"),
        ("two_tops", "no single top folder"),
    ],
)
def test_fetch_bad_archive_leaves_nothing(tmp_path, server, archive, damage, match):
    src = write_esc50(tmp_path / "src")
    if damage == "garbage":
        body = b"<html>not a zip</html>" * 100
    elif damage == "truncated":
        body = archive[0][: len(archive[0]) // 2]
    elif damage == "deflate":
        body = flip_bytes_of_first_wav(archive[0])
    elif damage == "crc":
        body = flip_bytes_of_first_wav(zip_tree(src, compression=zipfile.ZIP_STORED))
    elif damage == "no_csv":
        os.remove(src / "meta" / "esc50.csv")
        body = zip_tree(src)
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("a/readme.txt", "a")
            zf.writestr("b/readme.txt", "b")
        body = buf.getvalue()
    server.body = body
    home = tmp_path / "home"
    with pytest.raises(OSError, match=match):
        fetch_esc50(home, url=server.url, verbose=False)
    assert contents(home) == []


def test_fetch_other_top_folder(tmp_path, server, archive):
    # an archive of a tag or fork has another single top folder: accepted
    src = write_esc50(tmp_path / "src")
    server.body = zip_tree(src, top="ESC-50-2.0")
    esc = fetch_esc50(tmp_path / "home", url=server.url, verbose=False)
    assert os.path.isdir(tmp_path / "home" / "skast_esc50" / "ESC-50-master")
    assert len(esc.data) == 10


def test_fetch_keyboard_interrupt_while_downloading(tmp_path, server, archive):
    # Ctrl-C (the main thread's KeyboardInterrupt) with half the archive received
    server.body = archive[0]
    server.mode = "pause"

    def press_ctrl_c():
        if server.paused.wait(10):
            _thread.interrupt_main()
        server.resume.set()

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        fetch_esc50(tmp_path, url=server.url, verbose=False)
    assert server.paused.is_set()
    assert contents(tmp_path) == []


def test_fetch_keyboard_interrupt_while_unzipping(
    tmp_path, server, archive, monkeypatch
):
    server.body = archive[0]
    real_open = zipfile.ZipFile.open
    opened = []

    def interrupting_open(self, name, *args, **kwargs):
        opened.append(name)
        if len(opened) == 4:
            raise KeyboardInterrupt
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", interrupting_open)
    with pytest.raises(KeyboardInterrupt):
        fetch_esc50(tmp_path, url=server.url, verbose=False)
    assert len(opened) == 4  # some files were already unpacked
    assert contents(tmp_path) == []


def test_fetch_keeps_existing_data_home_entries(tmp_path, server, archive):
    # a failed download removes only what it wrote
    (tmp_path / "skast_esc50").mkdir()
    (tmp_path / "skast_esc50" / "notes.txt").write_text("mine")
    (tmp_path / "other_dataset").mkdir()
    server.body = b"garbage"
    with pytest.raises(OSError):
        fetch_esc50(tmp_path, url=server.url, verbose=False)
    assert contents(tmp_path) == [
        "other_dataset",
        "skast_esc50",
        os.path.join("skast_esc50", "notes.txt"),
    ]


def test_fetch_another_process_finished_first(tmp_path, server, archive, monkeypatch):
    # ESC-50 appears in place while this call unpacks: the first copy is kept
    server.body = archive[0]
    root = tmp_path / "skast_esc50" / "ESC-50-master"
    real_replace = os.replace

    def racing_replace(src, dst):
        write_esc50(root)
        (root / "winner").write_text("first")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing_replace)
    esc = fetch_esc50(tmp_path, url=server.url, verbose=False)
    assert len(esc.data) == 10
    assert (root / "winner").read_text() == "first"
    assert os.listdir(tmp_path / "skast_esc50") == ["ESC-50-master"]


def test_fetch_uses_existing_tree_without_network(tmp_path):
    write_esc50(tmp_path / "skast_esc50" / "ESC-50-master")
    # a URL nothing listens on: it must not be requested
    esc = fetch_esc50(tmp_path, url="http://127.0.0.1:9/none.zip", verbose=False)
    assert len(esc.data) == 10


def test_fetch_validation(tmp_path):
    with pytest.raises(ValueError, match="'url' parameter"):
        fetch_esc50(tmp_path, url=None)
    with pytest.raises(ValueError, match="'download_if_missing' parameter"):
        fetch_esc50(tmp_path, download_if_missing="no")


# ------------------------------------------------------------ verified downloads


def quiet(total):
    return progress_bar(total, verbose=False)


class Recorder:
    """A ``progress`` for fetch_file that records what it is told and turns
    its ``interrupt_at``-th update into a Ctrl-C."""

    def __init__(self, interrupt_at=None):
        self.total, self.updates, self.interrupt_at = None, [], interrupt_at

    def __call__(self, total):
        self.total = total
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.updates.append(n)
        if len(self.updates) == self.interrupt_at:
            raise KeyboardInterrupt


def test_fetch_file_streams_in_chunks_and_checks(tmp_path, server, archive):
    server.body, digest = archive
    path = tmp_path / "a.zip"
    progress = Recorder()
    got = fetch_file(
        server.url, path, sha256=digest.upper(), chunk_size=1024, progress=progress
    )
    assert got == digest and path.read_bytes() == server.body
    assert progress.total == len(server.body) == sum(progress.updates)
    assert max(progress.updates) == 1024 and len(progress.updates) > 2
    assert contents(tmp_path) == ["a.zip"]
    # a wrong checksum: the file already there is left as it was
    with pytest.raises(OSError, match="not the expected 0000.*removed"):
        fetch_file(server.url, path, sha256="0" * 64, progress=quiet)
    assert contents(tmp_path) == ["a.zip"] and path.read_bytes() == server.body


def test_fetch_file_keyboard_interrupt_leaves_nothing(tmp_path, server, archive):
    server.body = archive[0]
    progress = Recorder(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        fetch_file(server.url, tmp_path / "a.zip", chunk_size=1024, progress=progress)
    assert len(progress.updates) == 2
    assert contents(tmp_path) == []


def test_fetch_file_stalled_server_times_out(tmp_path, server, archive):
    server.body = archive[0]
    server.mode = "pause"  # never resumed: half the body, then silence
    with pytest.raises(OSError, match="timed out"):
        fetch_file(server.url, tmp_path / "a.zip", timeout=0.2, progress=quiet)
    assert server.paused.is_set()
    assert contents(tmp_path) == []
