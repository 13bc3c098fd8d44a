"""The ``skast`` command line: help, exit codes, embed / finetune / predict / demo."""

import numpy as np
import pytest
import soundfile as sf
import torch

from skast._checkpoints import save_pretrained
from skast._model import AST, ASTConfig
from skast.cli import main
from tests.conftest import FAST


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ckpt"
    save_pretrained(AST(ASTConfig(**FAST)), path)
    return path


@pytest.fixture
def folder(tmp_path, rng):
    root = tmp_path / "data"
    for label, freq in (("low", 300), ("high", 3000)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            t = np.arange(8000) / 16000
            wave = 0.5 * np.sin(2 * np.pi * (freq + 20 * i) * t)
            sf.write(root / label / f"{i}.wav", wave.astype(np.float32), 16000)
    return root


@pytest.mark.parametrize(
    "command", [[], ["demo"], ["embed"], ["finetune"], ["predict"]]
)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: skast" in capsys.readouterr().out


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["embed"])  # missing arguments: argparse's usage error
    assert exit_info.value.code == 2
    assert main(["embed", str(tmp_path / "nope.wav"), "-o", "x.npy"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "a.wav").write_bytes(b"")
    assert main(["embed", str(tmp_path / "a.wav"), "-o", str(tmp_path / "x.txt")]) == 2
    assert "must end in .npy, .csv or .parquet" in capsys.readouterr().err


def test_embed_writes_npy_and_csv(folder, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "-q"]
    assert main(["embed", str(folder), "-o", str(out), *args]) == 0
    embeddings = np.load(out)
    assert embeddings.shape == (8, FAST["hidden_size"])
    assert np.isfinite(embeddings).all()
    csv_out = tmp_path / "emb.csv"
    assert (
        main(["embed", str(folder / "low" / "0.wav"), "-o", str(csv_out), *args]) == 0
    )
    header, row = csv_out.read_text().strip().splitlines()
    assert header.startswith("file,astfeaturizer0")
    np.testing.assert_allclose(
        np.array(row.split(",")[1:], dtype=float), embeddings[4], atol=1e-6
    )


def test_embed_writes_parquet(folder, tiny_checkpoint, tmp_path):
    pd = pytest.importorskip("pandas")
    # a pyarrow that cannot load here (it needs a newer NumPy) is not at hand
    pytest.importorskip("pyarrow", exc_type=ImportError)
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "-q"]
    npy, parquet = tmp_path / "emb.npy", tmp_path / "emb.parquet"
    assert main(["embed", str(folder), "-o", str(npy), *args]) == 0
    assert main(["embed", str(folder), "-o", str(parquet), *args]) == 0
    frame = pd.read_parquet(parquet)
    assert list(frame.columns[:2]) == ["file", "astfeaturizer0"]
    assert frame.shape == (8, 1 + FAST["hidden_size"])
    assert frame["file"].str.endswith(".wav").all()
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), np.load(npy), atol=1e-6)


def test_corrupt_file_exits_1(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    code = main(
        [
            "embed",
            str(bad),
            "-o",
            str(tmp_path / "x.npy"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert code == 1
    assert "clip 0: cannot read audio file" in capsys.readouterr().err


def test_finetune_then_predict(folder, tiny_checkpoint, tmp_path, capsys):
    model = tmp_path / "model.joblib"
    code = main(
        [
            "finetune",
            str(folder),
            "-o",
            str(model),
            "--checkpoint",
            str(tiny_checkpoint),
            "--epochs",
            "2",
            "--learning-rate",
            "1e-3",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert code == 0 and model.is_file()
    assert "8 clips of 2 classes" in capsys.readouterr().out
    assert main(["predict", str(model), str(folder / "high")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert all(line.split("\t")[1] in ("low", "high") for line in lines)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(folder), "-o", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "file,high,low"


def test_finetune_needs_two_classes(tmp_path, capsys):
    (tmp_path / "only").mkdir()
    assert main(["finetune", str(tmp_path), "-o", str(tmp_path / "m.joblib")]) == 2
    assert "at least two class folders" in capsys.readouterr().err


def test_demo_runs(capsys):
    assert main(["demo", "--n-per-class", "6", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "ASTFeaturizer + LogisticRegression" in out and "chance level" in out
