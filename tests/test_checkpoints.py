"""skast._checkpoints: parity with transformers, round trips, original files,
safety; and bad checkpoints (truncated, of the wrong shapes, not checkpoints,
pickles carrying code) through the estimators and the command line: a clear
error naming the file, the estimator as it was, no code run.
"""

import json
import pickle
import re

import pytest
import torch

from skast._checkpoints import load_checkpoint, save_pretrained
from skast._model import AST, ASTConfig
from skast.cli import main
from tests._helpers import (
    assert_unchanged,
    classifier,
    clips,
    featurizer,
    snapshot,
    write,
)
from tests.conftest import TINY, randomize_

transformers = pytest.importorskip("transformers")


def hf_logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _original_state_dict(sd):
    """The original repository's layout, built from a transformers checkpoint's
    on-disk tensors with the key map of transformers' conversion script, inverted
    (reference/ast.md 1.11)."""
    out = {}
    rename = [
        ("audio_spectrogram_transformer.embeddings.cls_token", "module.v.cls_token"),
        (
            "audio_spectrogram_transformer.embeddings.distillation_token",
            "module.v.dist_token",
        ),
        (
            "audio_spectrogram_transformer.embeddings.position_embeddings",
            "module.v.pos_embed",
        ),
        (
            "audio_spectrogram_transformer.embeddings.patch_embeddings.projection",
            "module.v.patch_embed.proj",
        ),
        ("audio_spectrogram_transformer.layernorm", "module.v.norm"),
        ("classifier.layernorm", "module.mlp_head.0"),
        ("classifier.dense", "module.mlp_head.1"),
    ]
    layer = re.compile(r"audio_spectrogram_transformer\.encoder\.layer\.(\d+)\.(.+)")
    qkv = {}
    for key, value in sd.items():
        m = layer.match(key)
        if m:
            i, rest = m.groups()
            q = re.match(
                r"attention\.attention\.(query|key|value)\.(weight|bias)", rest
            )
            if q:
                qkv.setdefault((i, q.group(2)), {})[q.group(1)] = value
                continue
            rest = (
                rest.replace("attention.output.dense", "attn.proj")
                .replace("intermediate.dense", "mlp.fc1")
                .replace("output.dense", "mlp.fc2")
                .replace("layernorm_before", "norm1")
                .replace("layernorm_after", "norm2")
            )
            out[f"module.v.blocks.{i}.{rest}"] = value.clone()
            continue
        for old, new in rename:
            if key.startswith(old):
                out[new + key[len(old) :]] = value.clone()
                break
        else:
            raise AssertionError(key)
    for (i, kind), parts in qkv.items():
        out[f"module.v.blocks.{i}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]]
        )
    # the unused DeiT heads the original files carry
    d = out["module.v.cls_token"].shape[-1]
    out["module.v.head.weight"] = torch.randn(1000, d)
    out["module.v.head.bias"] = torch.randn(1000)
    out["module.v.head_dist.weight"] = torch.randn(1000, d)
    out["module.v.head_dist.bias"] = torch.randn(1000)
    return out


def _hf_on_disk(tmp_path, model):
    model.save_pretrained(tmp_path)
    return transformers.ASTForAudioClassification.from_pretrained(tmp_path).eval()


@pytest.fixture(scope="module", params=["audioset", "speechcommands"])
def full_size(request, tmp_path_factory):
    """Full-size random models saved by transformers, with an original .pth too."""
    if request.param == "audioset":
        cfg = transformers.ASTConfig(num_labels=527)
        pth = "audioset_10_10_0.4593.pth"
    else:
        cfg = transformers.ASTConfig(num_labels=35, max_length=128)
        pth = "speechcommands_10_10_0.9812.pth"
    torch.manual_seed(0)
    hf = randomize_(transformers.ASTForAudioClassification(cfg).eval())
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path / "hf")
    from safetensors.torch import load_file

    # transformers 5 keeps other names in memory: take the on-disk ones
    on_disk = load_file(str(path / "hf" / "model.safetensors"))
    torch.save(_original_state_dict(on_disk), path / pth)
    x = torch.randn(2, cfg.max_length, 128, generator=torch.Generator().manual_seed(1))
    return hf, path, pth, x


def test_full_size_parity_with_transformers(full_size):
    hf, path, _, x = full_size
    ours = load_checkpoint(path / "hf").model
    logits = hf_logits(hf, x)
    with torch.no_grad():
        tokens = ours.forward_features(x)
        pooled = ours.pool(tokens)
        ours_logits = ours.forward_head(tokens)
        ref = hf.audio_spectrogram_transformer(x)
    assert ours_logits.shape == logits.shape
    assert logits.abs().max() > 1e-2  # the comparison is not between zeros
    torch.testing.assert_close(ours_logits, logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-4, rtol=0)
    torch.testing.assert_close(tokens, ref.last_hidden_state, atol=1e-4, rtol=0)


def test_original_pth_loads_to_the_same_logits(full_size):
    hf, path, pth, x = full_size
    ckpt = load_checkpoint(path / pth)
    assert ckpt.config.max_length == hf.config.max_length
    assert ckpt.config.num_labels == hf.config.num_labels
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), hf_logits(hf, x), atol=1e-4, rtol=0)


def test_skast_to_transformers_round_trip(tmp_path):
    cfg = ASTConfig(**TINY, id2label={0: "dog", 1: "rain", 2: "siren"})
    model = randomize_(AST(cfg)).eval()
    save_pretrained(model, tmp_path)
    hf = transformers.ASTForAudioClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)
    assert hf.config.id2label == {0: "dog", 1: "rain", 2: "siren"}
    fe = transformers.ASTFeatureExtractor.from_pretrained(tmp_path)
    assert fe.max_length == 64 and fe.mean == pytest.approx(-4.2677393)


def test_transformers_to_skast_round_trip(hf_tiny_dir):
    hf = transformers.ASTForAudioClassification.from_pretrained(hf_tiny_dir).eval()
    ckpt = load_checkpoint(hf_tiny_dir)
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), hf(x).logits, atol=1e-5, rtol=0)
    assert ckpt.preprocessor is None or "mean" in ckpt.preprocessor


def test_bare_ast_model_checkpoint(tmp_path):
    cfg = transformers.ASTConfig(**TINY)
    torch.manual_seed(0)
    hf = randomize_(transformers.ASTModel(cfg).eval())
    hf.save_pretrained(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        ref = hf(x).pooler_output
        torch.testing.assert_close(ckpt.model(x), ref, atol=1e-5, rtol=0)
    # and back: a head-less model is written as a bare ASTModel
    save_pretrained(ckpt.model, tmp_path / "back")
    back = transformers.ASTModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x).pooler_output, ref, atol=1e-5, rtol=0)


def test_load_at_shorter_length_cuts_the_middle(hf_tiny_dir):
    full = load_checkpoint(hf_tiny_dir).model
    short = load_checkpoint(hf_tiny_dir, max_length=32).model
    f, t = full.config.grid
    f2, t2 = short.config.grid
    assert (f2, t2) == (f, (32 - 16) // 10 + 1)
    pos = full.pos_embed[0, 2:].reshape(f, t, -1)
    start = t // 2 - t2 // 2
    expected = pos[:, start : start + t2].reshape(f2 * t2, -1)
    assert torch.equal(short.pos_embed[0, 2:], expected)
    assert torch.equal(short.pos_embed[0, :2], full.pos_embed[0, :2])
    # every other weight is untouched
    for (k, a), (_, b) in zip(full.state_dict().items(), short.state_dict().items()):
        if k != "pos_embed":
            assert torch.equal(a, b), k


# the ESC-50 recipe cuts the 1024-frame AudioSet model
@pytest.mark.parametrize("full_size", ["audioset"], indirect=True)
def test_1024_checkpoint_at_512_frames(full_size):
    hf, path, pth, _ = full_size
    model = load_checkpoint(path / pth, max_length=512).model
    assert model.pos_embed.shape == (1, 602, 768)
    pos = hf.audio_spectrogram_transformer.embeddings.position_embeddings.detach()
    grid = pos[0, 2:].reshape(12, 101, 768)
    assert torch.equal(model.pos_embed[0, 2:], grid[:, 25:75].reshape(600, 768))


def test_other_strides(hf_tiny_dir):
    model = load_checkpoint(hf_tiny_dir, frequency_stride=16, time_stride=16).model
    assert model.config.grid == (8, 4)
    assert model(torch.randn(1, 64, 128)).shape == (1, 3)


def test_truncated_files_give_a_clear_error(hf_tiny_dir, tmp_path):
    data = (hf_tiny_dir / "model.safetensors").read_bytes()
    bad = tmp_path / "hf"
    bad.mkdir()
    (bad / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(bad)
    model = AST(ASTConfig(**TINY))
    torch.save(
        {"module.v." + k: v for k, v in model.state_dict().items()}, tmp_path / "a.pth"
    )
    raw = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "audioset_10_10_x.pth").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "audioset_10_10_x.pth")


def test_config_that_disagrees_with_the_weights(hf_tiny_dir, tmp_path):
    for name in ("model.safetensors",):
        (tmp_path / name).write_bytes((hf_tiny_dir / name).read_bytes())
    config = json.loads((hf_tiny_dir / "config.json").read_text())
    config["hidden_size"] = 64
    config["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its config.*wrong shapes"):
        load_checkpoint(tmp_path)
    config = json.loads((hf_tiny_dir / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(tmp_path)


class _Payload:
    """Unpickling it creates a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("name", ["audioset_10_10_0.4593.pth", "hf/pytorch_model.bin"])
def test_pickle_carrying_code_is_refused(tmp_path, hf_tiny_dir, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    if name.startswith("hf/"):
        (path.parent / "config.json").write_text(
            (hf_tiny_dir / "config.json").read_text()
        )
    torch.save({"module.v.cls_token": torch.zeros(1), "x": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(path.parent if name.startswith("hf/") else path)
    assert not marker.exists()
    # the payload is real: unpickling without the guard creates the file
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_sources(tmp_path, monkeypatch):
    with pytest.raises(OSError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="config.json"):
        load_checkpoint(tmp_path / "empty")
    # a hub id without huggingface_hub
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"skast\[hub\]"):
        load_checkpoint("MIT/ast-finetuned-audioset-10-10-0.4593")


def test_offline_hub_gives_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not get 'MIT/ast-x'.*offline"):
        load_checkpoint("MIT/ast-x")


def test_original_file_without_strides_in_its_name(tmp_path):
    model = AST(
        ASTConfig(
            hidden_size=128,
            num_attention_heads=2,
            num_hidden_layers=1,
            intermediate_size=64,
            max_length=128,
        )
    )
    torch.save(
        {"module.v." + k: v for k, v in model.state_dict().items()}, tmp_path / "m.pth"
    )
    with pytest.raises(ValueError, match="strides"):
        load_checkpoint(tmp_path / "m.pth")
    ckpt = load_checkpoint(tmp_path / "m.pth", frequency_stride=10, time_stride=10)
    assert ckpt.config.max_length == 128 and ckpt.config.num_labels == 0


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A minimal Hugging Face hub on 127.0.0.1 serving one tiny AST repository."""
    constants = pytest.importorskip("huggingface_hub.constants")
    file_download = pytest.importorskip("huggingface_hub.file_download")
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    model = randomize_(AST(ASTConfig(**TINY, id2label={0: "a", 1: "b"}))).eval()
    save_pretrained(model, tmp_path / "repo")
    files = {p.name: p.read_bytes() for p in (tmp_path / "repo").iterdir()}
    sha = "0123456789abcdef0123456789abcdef01234567"
    requests = []

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body=b"", headers=(), head=False):
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, head):
            requests.append(self.path)
            path = self.path.split("?")[0]
            if path.startswith("/api/models/org/ast-tiny/tree/"):
                listing = [
                    {
                        "type": "file",
                        "path": n,
                        "size": len(b),
                        "oid": hashlib.sha1(b).hexdigest(),
                    }
                    for n, b in files.items()
                ]
                return self._send(200, json.dumps(listing).encode(), head=head)
            if path.startswith("/api/models/org/ast-tiny/revision/"):
                info = {
                    "id": "org/ast-tiny",
                    "sha": sha,
                    "siblings": [{"rfilename": n} for n in files],
                }
                return self._send(200, json.dumps(info).encode(), head=head)
            name = path.rsplit("/", 1)[-1]
            if path.startswith("/org/ast-tiny/resolve/") and name in files:
                body = files[name]
                etag = '"' + hashlib.sha256(body).hexdigest() + '"'
                headers = [("X-Repo-Commit", sha), ("ETag", etag)]
                return self._send(200, body, headers, head=head)
            return self._send(
                404, headers=[("X-Error-Code", "RepoNotFound")], head=head
            )

        def do_GET(self):
            self._route(head=False)

        def do_HEAD(self):
            self._route(head=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    # huggingface_hub < 1.0 read its own copy of the template at import
    monkeypatch.setattr(
        file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub < 1.0 keeps a session per thread, made offline by an
    # earlier test that set HF_HUB_OFFLINE: start from a new one
    hub_utils = pytest.importorskip("huggingface_hub.utils")
    getattr(hub_utils, "reset_sessions", lambda: None)()
    yield model, requests
    server.shutdown()


def test_hub_id_downloads_from_the_hub(local_hub):
    model, requests = local_hub
    ckpt = load_checkpoint("org/ast-tiny")
    downloads = [r for r in requests if "/resolve/" in r]
    assert any(r.endswith("/model.safetensors") for r in downloads)
    assert ckpt.config.id2label == {0: "a", 1: "b"}
    assert ckpt.preprocessor["max_length"] == 64
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), model(x), atol=0, rtol=0)
    with pytest.raises(OSError, match="could not get 'org/missing'"):
        load_checkpoint("org/missing")


# ---------------------------------------------------------------- estimators, CLI


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, hf_tiny_dir):
    """name -> (path, pattern of the error, which names the path)."""
    d = tmp_path_factory.mktemp("checkpoints")
    sd = {"module.v." + k: v for k, v in AST(ASTConfig(**TINY)).state_dict().items()}
    out = {}

    def add(name, path, pattern):
        out[name] = (path, pattern)

    torch.save(sd, d / "audioset_10_10_good.pth")
    raw = (d / "audioset_10_10_good.pth").read_bytes()
    (d / "truncated.pth").write_bytes(raw[: len(raw) // 3])
    add("truncated .pth", d / "truncated.pth", r"truncated\.pth' is not a readable")
    hf = d / "truncated_hf"
    hf.mkdir()
    (hf / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    data = (hf_tiny_dir / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
    add("truncated safetensors", hf, r"truncated_hf.*truncated or corrupt")
    wrong = dict(sd, **{"module.v.blocks.0.mlp.fc1.weight": torch.zeros(10, 32)})
    torch.save(wrong, d / "audioset_10_10_wrong.pth")
    add("wrong shapes", d / "audioset_10_10_wrong.pth", r"wrong\.pth.*wrong shapes")
    (d / "text.pth").write_text("this is not a checkpoint")
    add("text file named .pth", d / "text.pth", r"text\.pth' is not a readable")
    add("missing file", d / "missing.pth", r"no such checkpoint file.*missing\.pth")
    marker = d / "pwned"
    evil = dict(sd, extra=_Payload(str(marker)))
    torch.save(evil, d / "audioset_10_10_evil.pth")
    add("pickle with code (.pth)", d / "audioset_10_10_evil.pth", r"refusing.*evil")
    evil_hf = d / "evil_hf"
    evil_hf.mkdir()
    (evil_hf / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    torch.save(evil, evil_hf / "pytorch_model.bin")
    add("pickle with code (.bin)", evil_hf, r"refusing to load .*evil_hf")
    (d / "plain_evil.pth").write_bytes(pickle.dumps(_Payload(str(marker))))
    add("plain pickle with code", d / "plain_evil.pth", r"plain_evil\.pth' is not a")
    (d / "bytes.pth").write_bytes(b"garbage\x00\x01" * 10)
    add("random bytes", d / "bytes.pth", r"bytes\.pth' is not a readable")
    (d / "empty.bin").write_bytes(b"")
    add("empty file", d / "empty.bin", r"empty\.bin' is not a readable.*EOFError")
    return out, marker


CHECKPOINT_CASES = [
    "truncated .pth",
    "truncated safetensors",
    "wrong shapes",
    "text file named .pth",
    "missing file",
    "pickle with code (.pth)",
    "pickle with code (.bin)",
    "plain pickle with code",
    "random bytes",
    "empty file",
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoints_through_the_estimators_and_the_cli(
    case, checkpoints, tmp_path, capsys
):
    (cases, marker), X = checkpoints, clips(8)
    path, pattern = cases[case]
    error = OSError if case == "missing file" else ValueError
    for est in (
        featurizer(checkpoint=path, model_config=None),
        classifier(checkpoint=path, model_config=None),
    ):
        params = dict(est.__dict__)
        with pytest.raises(error, match=pattern):
            est.fit(X, ["a", "b"] * 4)
        assert est.__dict__ == params
    # a fitted estimator pointed at it keeps its model
    est = featurizer(batch_size=4).fit(X)
    est.set_params(checkpoint=path, model_config=None)
    snap = snapshot(est)
    with pytest.raises(error, match=pattern):
        est.fit(X)
    assert_unchanged(est, snap)
    # the command line: exit code 1 and a one-line message naming the file
    wav = write(tmp_path / "a.wav", X[0])
    argv = ["embed", str(wav), "-o", str(tmp_path / "x.npy"), "--checkpoint"]
    capsys.readouterr()
    assert main([*argv, str(path), "--device", "cpu", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("skast: error: ") and path.name in err
    assert "Traceback" not in err
    assert not marker.exists()  # the code in the pickles never ran


def test_the_payload_is_real(tmp_path):
    """Unpickled without the guard, the payload creates its file: the
    tests above would notice if the guard were gone."""
    marker = tmp_path / "made"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pth", weights_only=False)["x"].close()
    assert marker.exists()
