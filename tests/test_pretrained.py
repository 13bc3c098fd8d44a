"""ASTClassifier.from_pretrained: a published head used as it is, equal to
transformers' audio-classification pipeline, and fitted like any classifier."""

import inspect
import pickle

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from skast import ASTClassifier
from skast._labels import label_table
from skast._model import AST, ASTConfig
from skast._recipes import NORM_STATS, SAMPLE_RATE
from tests._helpers import log_encoder_clips, logged_clips
from tests.conftest import TINY, randomize_

transformers = pytest.importorskip("transformers")

NAMES = {0: "dog", 1: "cat", 2: "bird", 3: "car"}
MEAN_STD = (-3.5, 4.0)


def save_hf(path, problem_type=None, id2label=NAMES, seed=0):
    """A tiny ASTForAudioClassification and its feature extractor, saved by
    transformers (the pipeline reads both)."""
    cfg = transformers.ASTConfig(
        **TINY, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    cfg.problem_type = problem_type
    torch.manual_seed(seed)
    model = randomize_(transformers.ASTForAudioClassification(cfg).eval(), seed)
    with torch.no_grad():  # weights large enough that each clip scores its own
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(1)
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(5)
    model.save_pretrained(path)
    transformers.ASTFeatureExtractor(
        max_length=TINY["max_length"], num_mel_bins=TINY["num_mel_bins"],
        mean=MEAN_STD[0], std=MEAN_STD[1],
    ).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory):
    return save_hf(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def multi_dir(tmp_path_factory):
    return save_hf(tmp_path_factory.mktemp("multi"), "multi_label_classification")


def clips(seconds=(0.3, 0.64, 1.5), seed=0):
    """Float32 tones in noise at 16 kHz, shorter than, about and longer than
    the model's 64 frames, each of another pitch and loudness."""
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * SAMPLE_RATE)) / SAMPLE_RATE
        tone = np.sin(2 * np.pi * (300 + 1700 * i) * t) * 0.3**i
        out.append((tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def pipeline_scores(path, X, labels, function):
    """transformers' pipeline scores of every label, in the order of ``labels``."""
    pipe = transformers.pipeline("audio-classification", model=str(path), device="cpu")
    kwargs = {"function_to_apply": function}
    if (
        "function_to_apply"
        not in inspect.signature(pipe._sanitize_parameters).parameters
    ):
        # older transformers: the pipeline has only its softmax, and would
        # ignore the argument silently
        if function != "softmax":
            pytest.skip(f"this transformers' pipeline has no {function!r}")
        kwargs = {}
    out = []
    for clip in X:
        ranked = pipe({"raw": clip, "sampling_rate": SAMPLE_RATE}, top_k=None, **kwargs)
        scores = {d["label"]: d["score"] for d in ranked}
        assert sorted(scores) == sorted(labels)
        out.append([scores[label] for label in labels])
    return np.array(out)


# float32 forward passes of two implementations of the same model: rounding
# of a few 1e-7 relative in the logits, far below 1e-4 after softmax/sigmoid
ATOL = 1e-4


def test_single_label_head_equals_the_pipeline(single_dir):
    clf = ASTClassifier.from_pretrained(single_dir, device="cpu")
    X = clips()
    assert_array_equal(clf.classes_, sorted(NAMES.values()))
    assert clf.normalization_ == MEAN_STD
    proba = clf.predict_proba(X)
    assert_allclose(
        proba, pipeline_scores(single_dir, X, clf.classes_, "softmax"), atol=ATOL
    )
    assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(1)])


def test_multi_label_head_equals_the_pipeline(multi_dir):
    clf = ASTClassifier.from_pretrained(multi_dir, device="cpu")
    X = clips()
    assert_array_equal(clf.classes_, list(NAMES.values()))  # the head's order
    proba = clf.predict_proba(X)
    assert_allclose(
        proba, pipeline_scores(multi_dir, X, clf.classes_, "sigmoid"), atol=ATOL
    )
    predicted = clf.predict(X)
    assert predicted.shape == (3, 4)
    assert_array_equal(predicted, (proba > 0.5).astype(int))


def test_the_parameter_overrides_the_guess(single_dir, multi_dir):
    X = clips()
    clf = ASTClassifier.from_pretrained(single_dir, multilabel=True, device="cpu")
    assert_allclose(
        clf.predict_proba(X),
        pipeline_scores(single_dir, X, clf.classes_, "sigmoid"),
        atol=ATOL,
    )
    clf = ASTClassifier.from_pretrained(multi_dir, multilabel=False, device="cpu")
    assert_allclose(clf.predict_proba(X).sum(1), 1, rtol=1e-6)
    assert clf.predict(X).ndim == 1


def test_without_a_preprocessor_config_normalize_applies(hf_tiny_dir):
    clf = ASTClassifier.from_pretrained(hf_tiny_dir, device="cpu")
    assert clf.normalization_ == NORM_STATS["audioset"]
    assert_array_equal(clf.classes_, ["LABEL_0", "LABEL_1", "LABEL_2"])
    clf = ASTClassifier.from_pretrained(hf_tiny_dir, normalize="esc50", device="cpu")
    assert clf.normalization_ == NORM_STATS["esc50"]


def test_explicit_normalize_wins_and_fit_is_refused(single_dir):
    clf = ASTClassifier.from_pretrained(single_dir, normalize=(0, 1), device="cpu")
    assert clf.normalization_ == (0.0, 1.0)
    with pytest.raises(ValueError, match="normalize='fit' needs training clips"):
        ASTClassifier.from_pretrained(single_dir, normalize="fit", device="cpu")


def test_any_parameter_passes_and_bad_ones_are_refused(single_dir):
    clf = ASTClassifier.from_pretrained(
        single_dir, device="cpu", batch_size=2, max_length=128, precision="float32"
    )
    assert clf.batch_size == 2 and clf.model_.config.max_length == 128
    assert clf.predict_proba(clips()).shape == (3, 4)
    with pytest.raises(ValueError, match="batch_size"):
        ASTClassifier.from_pretrained(single_dir, batch_size=0)
    with pytest.raises(TypeError):
        ASTClassifier.from_pretrained(single_dir, no_such_parameter=1)


def test_a_model_without_a_head_is_refused(tmp_path):
    transformers.ASTModel(transformers.ASTConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no classification head"):
        ASTClassifier.from_pretrained(tmp_path, device="cpu")


def original_pth(path, n_outputs):
    """An original-layout .pth of the tiny model with an ``n_outputs`` head."""
    config = ASTConfig(**dict(TINY, num_attention_heads=1), id2label=None)
    model = randomize_(AST(config))
    model.reset_classifier({i: str(i) for i in range(n_outputs)})
    sd = {}
    for k, v in model.state_dict().items():
        sd["module.mlp_head." + k[5:] if k.startswith("head.") else "module.v." + k] = v
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "name, n, multilabel",
    [
        ("audioset_10_10_x.pth", 527, True),
        ("speechcommands_10_10_x.pth", 35, False),
        ("esc50_10_10_x.pth", 50, False),
    ],
)
def test_an_original_head_is_named_by_its_size(tmp_path, name, n, multilabel):
    clf = ASTClassifier.from_pretrained(original_pth(tmp_path / name, n), device="cpu")
    names = list(label_table(n).values())
    assert clf.predict(clips()).ndim == (2 if multilabel else 1)
    assert_array_equal(clf.classes_, names if multilabel else sorted(names))
    assert clf.predict_proba(clips()).shape == (3, n)


def test_the_sorted_head_predicts_as_the_checkpoint(tmp_path, single_dir):
    """Sorting classes_ reorders the head's outputs with them."""
    X = clips()
    clf = ASTClassifier.from_pretrained(single_dir, device="cpu")
    hf = transformers.ASTForAudioClassification.from_pretrained(single_dir).eval()
    fe = transformers.ASTFeatureExtractor.from_pretrained(single_dir)
    with torch.no_grad():
        logits = hf(**fe(X, sampling_rate=SAMPLE_RATE, return_tensors="pt")).logits
    order = [list(NAMES.values()).index(c) for c in clf.classes_]
    assert_allclose(clf.decision_function(X), logits[:, order].numpy(), atol=1e-4)


def test_frozen_in_a_pipeline_pickles_and_saves_pretrained(single_dir, tmp_path):
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = clips()
    clf = ASTClassifier.from_pretrained(single_dir, device="cpu")
    expected = clf.predict_proba(X)
    pipe = make_pipeline(FunctionTransformer(), FrozenEstimator(clf))
    pipe.fit(X, ["dog", "cat", "car"])  # nothing is trained
    assert_array_equal(pipe.predict_proba(X), expected)
    assert clf.n_iter_ == 0
    assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), expected)
    clf.save_pretrained(tmp_path / "out")
    again = ASTClassifier.from_pretrained(tmp_path / "out", device="cpu")
    assert_array_equal(again.classes_, clf.classes_)
    assert_allclose(again.predict_proba(X), expected, atol=1e-6)
    assert_allclose(
        pipeline_scores(tmp_path / "out", X, clf.classes_, "softmax"),
        expected,
        atol=ATOL,
    )


def head(clf):
    return clf.model_.head[-1].weight.detach().clone()


def test_warm_start_goes_on_from_the_pretrained_head(single_dir):
    X = clips(seed=1) * 2
    y = ["dog", "cat", "bird", "car", "dog", "cat"]
    clf = ASTClassifier.from_pretrained(
        single_dir, device="cpu", warm_start=True, max_epochs=1, learning_rate=1e-6,
        random_state=0,
    )  # fmt: skip
    before = head(clf)
    clf.fit(X, y)
    # one step of Adam moves each weight by about the learning rate; a new
    # head would be random
    assert_allclose(head(clf), before, atol=1e-5)
    assert clf.n_iter_ == 1 and len(clf.history_) == 1
    # other classes: a new head, as fit does
    clf.fit(X, ["a", "b"] * 3)
    assert_array_equal(clf.classes_, ["a", "b"])


def test_partial_fit_goes_on_from_the_pretrained_head(single_dir, multi_dir):
    X = clips(seed=2)
    clf = ASTClassifier.from_pretrained(single_dir, device="cpu", learning_rate=1e-6)
    before = head(clf)
    clf.partial_fit(X, ["dog", "cat", "dog"])
    assert_allclose(head(clf), before, atol=1e-5)
    assert clf.n_iter_ == 1

    clf = ASTClassifier.from_pretrained(multi_dir, device="cpu", learning_rate=1e-6)
    names, before = clf.classes_.copy(), head(clf)
    clf.partial_fit(X, np.eye(3, 4, dtype=int))
    assert_array_equal(clf.classes_, names)  # the labels keep their names
    assert_allclose(head(clf), before, atol=1e-5)
    assert clf.predict(X).shape == (3, 4)


# ---------------------------------------------------------------- skast tag


@pytest.fixture(scope="module")
def wav_folder(tmp_path_factory):
    import soundfile as sf

    folder = tmp_path_factory.mktemp("wavs")
    for i, clip in enumerate(clips(seed=3)):
        sf.write(folder / f"clip{i}.wav", clip, SAMPLE_RATE, subtype="FLOAT")
    return folder


def expected_tags(checkpoint, files, k, **params):
    clf = ASTClassifier.from_pretrained(checkpoint, device="cpu", **params)
    proba = clf.predict_proba([str(f) for f in files])
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [[(clf.classes_[j], p[j]) for j in o] for p, o in zip(proba, order)]


def tag(*args):
    from skast.cli import main

    return main(["tag", *map(str, args), "--device", "cpu", "-q"])


def test_tag_prints_the_top_k(single_dir, wav_folder, capsys):
    assert tag(wav_folder, "--checkpoint", single_dir, "--top-k", 2) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(wav_folder.glob("*.wav"))
    expected = []
    for f, tags in zip(files, expected_tags(single_dir, files, 2)):
        expected += [str(f)] + [f"  {s:.3f}  {label}" for label, s in tags]
    assert lines == expected


def test_tag_window_hop_aggregates_the_windows(single_dir, wav_folder, capsys):
    # the 1.5 s clip is longer than the model's 64 frames: tagged by windows
    assert tag(wav_folder, "--checkpoint", single_dir, "--window-hop", 0.2) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(wav_folder.glob("*.wav"))
    windowed = expected_tags(single_dir, files, 5, window_hop=0.2)
    assert windowed != expected_tags(single_dir, files, 5)  # the long clip
    clf = ASTClassifier.from_pretrained(single_dir, device="cpu", window_hop=0.2)
    per_window, starts = clf.predict_proba_windows([str(f) for f in files])
    expected = []
    for f, tags, p, st in zip(files, windowed, per_window, starts):
        expected += [str(f)] + [f"  {s:.3f}  {label}" for label, s in tags]
        for start, row in zip(st, p):
            expected.append(f"  window at {start:.2f} s")
            best = np.argsort(-row, kind="stable")[:5]
            expected += [f"    {row[j]:.3f}  {clf.classes_[j]}" for j in best]
    assert lines == expected
    assert sum(len(st) for st in starts) > len(files)  # the long clip: windows


def test_tag_window_hop_runs_each_window_once(single_dir, wav_folder, tmp_path, capsys):
    files = sorted(wav_folder.glob("*.wav"))
    clf = ASTClassifier.from_pretrained(single_dir, device="cpu", window_hop=0.2)
    _, starts = clf.predict_proba_windows([str(f) for f in files])
    handle = log_encoder_clips(tmp_path)
    try:
        assert tag(wav_folder, "--checkpoint", single_dir, "--window-hop", 0.2) == 0
    finally:
        handle.remove()
    assert sum(logged_clips(tmp_path).values()) == sum(len(st) for st in starts)


def test_tag_window_hop_writes_windows_to_json_and_csv(
    single_dir, wav_folder, tmp_path
):
    import csv
    import json

    files = sorted(wav_folder.glob("*.wav"))
    clf = ASTClassifier.from_pretrained(single_dir, device="cpu", window_hop=0.2)
    per_window, starts = clf.predict_proba_windows([str(f) for f in files])
    args = [wav_folder, "--checkpoint", single_dir, "--window-hop", 0.2, "--top-k", 2]
    assert tag(*args, "-o", tmp_path / "t.json") == 0
    records = json.loads((tmp_path / "t.json").read_text())
    assert [r["file"] for r in records] == [str(f) for f in files]
    for r, st in zip(records, starts):
        assert [w["start"] for w in r["windows"]] == pytest.approx(st.tolist())
        assert all(len(w["tags"]) == 2 for w in r["windows"])
    assert tag(*args, "-o", tmp_path / "t.csv") == 0
    with open(tmp_path / "t.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["file", "start", "rank", "label", "score"]
    n_windows = sum(len(st) for st in starts)
    assert len(table) == 1 + 2 * (len(files) + n_windows)


def test_tag_writes_csv_and_json(multi_dir, wav_folder, tmp_path, capsys):
    import csv
    import json

    files = sorted(wav_folder.glob("*.wav"))
    expected = expected_tags(multi_dir, files, 3)
    out = tmp_path / "tags.csv"
    assert tag(*files, "--checkpoint", multi_dir, "--top-k", 3, "-o", out) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["file"], int(r["rank"]), r["label"]) for r in rows] == [
        (str(f), rank, label)
        for f, tags in zip(files, expected)
        for rank, (label, _) in enumerate(tags, 1)
    ]
    assert_allclose(
        [float(r["score"]) for r in rows],
        [s for tags in expected for _, s in tags],
        rtol=1e-6,
    )
    out = tmp_path / "tags.json"
    assert tag(*files, "--checkpoint", multi_dir, "--top-k", 3, "-o", out) == 0
    records = json.loads(out.read_text())
    assert [r["file"] for r in records] == [str(f) for f in files]
    for record, tags in zip(records, expected):
        assert [t["label"] for t in record["tags"]] == [label for label, _ in tags]
        assert_allclose([t["score"] for t in record["tags"]], [s for _, s in tags])
    assert "wrote the top 3 tags of 3 files" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "tags.npy"], "must end in .csv or .json"),
        (["--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_tag_usage_errors(single_dir, wav_folder, args, message, capsys):
    assert tag(wav_folder, "--checkpoint", single_dir, *args) == 2
    assert message in capsys.readouterr().err


def test_tag_a_checkpoint_without_a_head_exits_1(tmp_path, wav_folder, capsys):
    transformers.ASTModel(transformers.ASTConfig(**TINY)).save_pretrained(tmp_path)
    assert tag(wav_folder, "--checkpoint", tmp_path) == 1
    assert "has no classification head" in capsys.readouterr().err


def test_names_that_are_not_unique_are_refused_single_label(tmp_path):
    path = save_hf(tmp_path, id2label={0: "dog", 1: "dog", 2: "cat"})
    with pytest.raises(ValueError, match="not unique; pass multilabel=True"):
        ASTClassifier.from_pretrained(path, device="cpu")
    clf = ASTClassifier.from_pretrained(path, multilabel=True, device="cpu")
    assert_array_equal(clf.classes_, ["dog", "dog", "cat"])
