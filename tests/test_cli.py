"""The ``skast`` command line: help, exit codes, embed / finetune / predict /
demo, and its bad input: unreadable audio files, an empty folder, bad model
files (each a one-line error, exit 1 or 2, no traceback).

Bad checkpoints through the command line are in tests/test_checkpoints.py.
"""

import re

import joblib
import numpy as np
import pytest
import soundfile as sf
import torch

from skast import ASTClassifier, ASTFeaturizer
from skast._checkpoints import save_pretrained
from skast._model import AST, ASTConfig
from skast.cli import main
from tests._helpers import clips, log_encoder_clips, logged_clips, write
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


def test_embed_with_a_saved_featurizer(folder, tiny_checkpoint, tmp_path, capsys):
    """--model DIR: a featurizer saved with ``save`` embeds as it did."""
    files = sorted(str(p) for p in folder.rglob("*.wav"))
    est = ASTFeaturizer(tiny_checkpoint, pooling="patch", device="cpu").fit(files)
    est.save(tmp_path / "feat")
    out = tmp_path / "emb.npy"
    assert (
        main(
            [
                "embed",
                str(folder),
                "-o",
                str(out),
                "--model",
                str(tmp_path / "feat"),
                "-q",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(out), est.transform(files))
    # the saved model brings its own settings: none of them may be given too
    capsys.readouterr()
    args = ["embed", str(folder), "-o", str(out), "--model", str(tmp_path / "feat")]
    assert main([*args, "--pooling", "cls"]) == 2
    assert "drop --pooling" in capsys.readouterr().err
    assert (
        main(
            [
                "embed",
                str(folder),
                "-o",
                str(out),
                "--model",
                str(folder / "low" / "0.wav"),
            ]
        )
        == 2
    )
    assert "directory written by ASTFeaturizer.save" in capsys.readouterr().err
    ASTClassifier(model_config=FAST, device="cpu", max_epochs=1).fit(
        files, ["a", "b"] * 4
    ).save(tmp_path / "clf")
    assert (
        main(["embed", str(folder), "-o", str(out), "--model", str(tmp_path / "clf")])
        == 1
    )
    assert "not an ASTFeaturizer" in capsys.readouterr().err


def test_tag_with_a_saved_classifier(folder, tmp_path, capsys):
    """--model DIR: a classifier saved with ``save`` tags with its own head."""
    files = sorted(str(p) for p in folder.rglob("*.wav"))
    clf = ASTClassifier(model_config=FAST, device="cpu", max_epochs=1).fit(
        files, ["high"] * 4 + ["low"] * 4
    )
    clf.save(tmp_path / "clf")
    capsys.readouterr()
    assert (
        main(
            ["tag", *files[:2], "--model", str(tmp_path / "clf"), "--top-k", "1", "-q"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    proba = clf.predict_proba(files[:2])
    best = [clf.classes_[j] for j in proba.argmax(1)]
    assert lines == [
        files[0],
        f"  {proba[0].max():.3f}  {best[0]}",
        files[1],
        f"  {proba[1].max():.3f}  {best[1]}",
    ]
    args = ["tag", files[0], "--model", str(tmp_path / "clf")]
    assert main([*args, "--checkpoint", "x"]) == 2
    assert "drop --checkpoint" in capsys.readouterr().err


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


def test_embed_on_a_list_of_devices(folder, tiny_checkpoint, tmp_path, capsys):
    args = ["embed", str(folder), "--checkpoint", str(tiny_checkpoint), "-q"]
    assert main([*args, "-o", str(tmp_path / "one.npy"), "--device", "cpu"]) == 0
    handle = log_encoder_clips(tmp_path)
    try:  # two replicas: each of the 8 files through one of them, once
        code = main([*args, "-o", str(tmp_path / "two.npy"), "--device", "cpu, cpu"])
    finally:
        handle.remove()
    assert code == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy")
    )
    assert sum(logged_clips(tmp_path).values()) == 8
    with pytest.raises(SystemExit) as exc:
        main([*args, "-o", str(tmp_path / "x.npy"), "--device", "cpu,"])
    assert exc.value.code == 2
    assert "one device between each comma" in capsys.readouterr().err


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


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, fitted_classifier):
    """A fitted classifier's checkpoint (``ckpt``) and model file
    (``model.joblib``)."""
    d = tmp_path_factory.mktemp("cli")
    save_pretrained(fitted_classifier.model_, d / "ckpt")
    joblib.dump(fitted_classifier, d / "model.joblib")
    return d


@pytest.mark.parametrize(
    "name", ["truncated.wav", "corrupt.flac", "notes.ogg", "empty.wav", "nan.wav"]
)
@pytest.mark.parametrize("command", ["embed", "predict", "finetune"])
def test_cli_bad_audio_files_exit_1_naming_the_file(
    command, name, audio_files, cli_model, tmp_path, capsys
):
    good, bad = audio_files / "good.wav", audio_files / name
    out = str(tmp_path / "out.csv")
    ckpt = ["--checkpoint", str(cli_model / "ckpt")]
    if command == "embed":
        argv = ["embed", str(good), str(bad), "-o", out, *ckpt]
    elif command == "predict":
        argv = ["predict", str(cli_model / "model.joblib"), str(bad)]
    else:
        root = tmp_path / "data"
        for label in ("a", "b"):
            (root / label).mkdir(parents=True)
            (root / label / "good.wav").write_bytes(good.read_bytes())
        (root / "b" / name).write_bytes(bad.read_bytes())
        argv = ["finetune", str(root), "-o", out, *ckpt, "--epochs", "1"]
    if command != "predict":  # predict runs where the model was fitted
        argv += ["--device", "cpu", "-q"]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("skast: error: clip ")
    assert re.search(re.escape(name), err)
    assert "Traceback" not in err


def test_cli_empty_folder_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "empty"), "-o", str(tmp_path / "x.npy")]) == 2
    assert "no audio files found in" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"\x80\x04\x95garbage", r"cannot load the model file '.*model\.joblib'"),
        ("not a model", r"'.*model\.joblib' does not hold a fitted classifier"),
        (None, r"No such file or directory: '.*model\.joblib'"),
    ],
)
def test_cli_predict_with_a_bad_model_file(content, pattern, tmp_path, capsys):
    model = tmp_path / "model.joblib"
    if isinstance(content, bytes):
        model.write_bytes(content)
    elif content is not None:
        joblib.dump({"model": content}, model)
    wav = write(tmp_path / "a.wav", clips(1)[0])
    assert main(["predict", str(model), str(wav)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("skast: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert re.search(pattern, err), err
