"""Dask: model selection on a local cluster through joblib's Dask backend
(the results of ``n_jobs=1``, each clip through an encoder once across all
workers, by the shared cache's claims), and skast.dask's embedding of bags
and dataframe columns (equal to ``transform``, the featurizer loaded once per
worker).

One cluster of two worker processes on 127.0.0.1 serves the module; it is
closed by the fixture's finalizer.
"""

import os
from collections import Counter

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

from skast import ASTFeaturizer
from tests._helpers import featurizer, log_encoder_clips, logged_clips, write
from tests.conftest import FAST

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")
db = pytest.importorskip("dask.bag")
pd = pytest.importorskip("pandas")

from skast.dask import transform_partitions  # noqa: E402

SR = 16000


# ---------------------------------------------------------------- the cluster

# the hooks this process installed (in a worker: through client.run)
_HOOKS = []


def _warm_up():
    """Import the stack once in a worker, so that tasks do not time it."""
    import torch

    import skast._featurizer  # noqa: F401

    torch.set_num_threads(1)
    return os.getpid()


def _count_clips(folder):
    _HOOKS.append(log_encoder_clips(folder))


def _stop_counting():
    while _HOOKS:
        _HOOKS.pop().remove()


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
    )
    try:
        with distributed.Client(cluster, timeout=120) as client:
            client.wait_for_workers(2, timeout=120)
            client.run(_warm_up)
            yield client
    finally:
        cluster.close(timeout=30)


@pytest.fixture
def count_clips(client, tmp_path):
    """``count_clips()`` starts counting the clips through any encoder, in
    the workers and here, and returns what gives the counts per process."""
    logs = tmp_path / "clips"

    def start():
        logs.mkdir()
        client.run(_count_clips, str(logs))
        _count_clips(str(logs))
        return lambda: logged_clips(logs)

    yield start
    _stop_counting()
    client.run(_stop_counting)


@pytest.fixture(scope="module")
def tone_files(tmp_path_factory):
    """Twelve files, a low and a high tone in noise, and their labels."""
    folder = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    paths, y = [], []
    for label, freq in enumerate((300.0, 3000.0)):
        for i in range(6):
            n = int(rng.integers(4000, 6000))
            wave = 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / SR)
            wave += 0.05 * rng.standard_normal(n)
            path = write(folder / f"{label}-{i}.wav", wave.astype(np.float32))
            paths.append(str(path))
            y.append(label)
    return paths, np.array(y)


def _pipe(cache):
    return make_pipeline(
        featurizer(cache=cache), LogisticRegression(C=100.0, max_iter=1000)
    )


def _scores(cv_results):
    return {k: v for k, v in cv_results.items() if "time" not in k}


# ---------------------------------------------------------------- model selection


def test_grid_search_on_a_cluster_embeds_each_clip_once(
    client, count_clips, tone_files, tmp_path
):
    X, y = tone_files
    grid = {"logisticregression__C": [0.01, 1.0, 100.0]}
    serial = GridSearchCV(_pipe(tmp_path / "serial"), grid, cv=3, n_jobs=1)
    serial.fit(X, y)
    counts = count_clips()
    search = GridSearchCV(_pipe(tmp_path / "shared"), grid, cv=3, n_jobs=-1)
    with joblib.parallel_backend("dask"):
        search.fit(X, y)
    counts = counts()
    workers = set(client.run(os.getpid).values())
    assert workers & set(counts)  # the folds ran on the cluster
    # 9 fits of 3 folds, each embedding its 8 training and 4 test clips, and
    # a refit on all: every clip went through an encoder once in all
    assert sum(counts.values()) == len(X)
    assert_equal_results(_scores(search.cv_results_), _scores(serial.cv_results_))
    assert search.best_params_ == serial.best_params_
    assert list((tmp_path / "shared").rglob("*.claim")) == []


def assert_equal_results(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_cross_val_score_on_a_cluster_embeds_each_clip_once(
    client, count_clips, tone_files, tmp_path
):
    X, y = tone_files
    serial = cross_val_score(_pipe(None), X, y, cv=4, n_jobs=1)
    counts = count_clips()
    with joblib.parallel_backend("dask"):
        scores = cross_val_score(_pipe(tmp_path / "shared"), X, y, cv=4, n_jobs=-1)
    counts = counts()
    assert set(client.run(os.getpid).values()) & set(counts)
    assert sum(counts.values()) == len(X)  # 4 folds, 9 + 3 clips each: once
    assert_array_equal(scores, serial)


# ---------------------------------------------------------------- collections


class CountingFeaturizer(ASTFeaturizer):
    """An ASTFeaturizer that notes each time it is unpickled: its process id,
    appended to the file ``unpickled_log_`` names."""

    def __setstate__(self, state):
        super().__setstate__(state)
        if "unpickled_log_" in state:
            with open(state["unpickled_log_"], "a") as f:
                f.write(f"{os.getpid()}\n")


def _counting(X, log):
    est = CountingFeaturizer(model_config=FAST, device="cpu", batch_size=4).fit(X)
    ref = est.transform(X)
    est.unpickled_log_ = str(log)
    return est, ref


def _unpickled(log):
    return Counter(int(pid) for pid in log.read_text().split())


# The partitions are embedded in other batches than the whole list: the same
# sums in another order, so equal to float32 rounding through a few layers.
ATOL = 1e-5


def test_a_bag_of_paths_embeds_as_transform_with_one_load_per_worker(
    client, tone_files, tmp_path
):
    X, _ = tone_files
    est, ref = _counting(X, tmp_path / "unpickled")
    bag = db.from_sequence(X, npartitions=6)
    embeddings = transform_partitions(est, bag)  # the current client's workers
    rows = embeddings.compute()
    assert len(rows) == len(X) and all(r.dtype == np.float32 for r in rows)
    assert_allclose(np.stack(rows), ref, atol=ATOL)
    workers = set(client.run(os.getpid).values())
    # sent to each worker once, not with each of the six partitions
    assert _unpickled(tmp_path / "unpickled") == {pid: 1 for pid in workers}


def test_a_dataframe_column_embeds_as_transform_with_one_load_per_worker(
    client, tone_files, tmp_path
):
    X, y = tone_files
    est, ref = _counting(X, tmp_path / "unpickled")
    frame = pd.DataFrame(
        {"path": X, "label": y}, index=[f"clip{i:02d}" for i in range(len(X))]
    )
    ddf = dd.from_pandas(frame, npartitions=4)
    out = transform_partitions(est, ddf["path"], client=client)
    assert out.npartitions == 4
    assert list(out.columns) == list(est.get_feature_names_out())
    got = out.compute()
    assert list(got.index) == list(frame.index)
    assert (got.dtypes == np.float32).all()
    assert_allclose(got.to_numpy(), ref, atol=ATOL)
    workers = set(client.run(os.getpid).values())
    assert _unpickled(tmp_path / "unpickled") == {pid: 1 for pid in workers}
    # joined back on the index, next to the labels
    assert_array_equal(ddf.join(out).compute()["label"], y)


def test_transform_partitions_rejects_what_it_cannot_embed(tone_files):
    X, _ = tone_files
    est = featurizer().fit(X[:1])
    frame = dd.from_pandas(pd.DataFrame({"path": X}), npartitions=2)
    with pytest.raises(TypeError, match="clips must be a dask.bag.Bag or a dask"):
        transform_partitions(est, frame)  # the dataframe, not its column
    with pytest.raises(TypeError, match="clips must be"):
        transform_partitions(est, X)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        transform_partitions(est, frame["path"], client="127.0.0.1:8786")
    with pytest.raises(NotFittedError):
        transform_partitions(featurizer(), frame["path"])
