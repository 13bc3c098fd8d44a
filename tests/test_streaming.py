"""Fine-tuning streams its clips (issue: AudioSet-scale fitting): the peak
host memory of a fit on files does not grow with the number of files.

Each fit runs in a fresh spawned process, so that its peak resident set size
is its own; a fit on 600 ten-second files is compared with one on 150.
"""

import multiprocessing
import os
import resource
import sys

import numpy as np
import pytest
import torch

from skast import ASTClassifier
from skast._recipes import SAMPLE_RATE
from tests._helpers import write
from tests.conftest import FAST

#: the issue's setting: the tiny model at 1024 frames, ten-second clips
FRAMES, SECONDS = 1024, 10


def _peak_rss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


def _fit_in_a_fresh_process(paths, queue):
    torch.set_num_threads(1)
    y = np.arange(len(paths)) % 2
    clf = ASTClassifier(
        model_config=dict(FAST, max_length=FRAMES),
        device="cpu",
        max_epochs=1,
        batch_size=16,
        random_state=0,
    )
    clf.fit(paths, y)
    queue.put((_peak_rss_bytes(), clf.n_iter_, len(clf.classes_)))


def _peak_of_a_fit(paths):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fit_in_a_fresh_process, args=(paths, queue))
    proc.start()
    try:
        peak, n_iter, n_classes = queue.get(timeout=300)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0 and n_iter == 1 and n_classes == 2
    return peak


@pytest.fixture(scope="module")
def ten_second_files(tmp_path_factory):
    """600 ten-second WAV files (hard links of 8 distinct ones)."""
    d = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    originals = [
        write(
            d / f"source{k}.wav",
            (0.1 * rng.standard_normal(SECONDS * SAMPLE_RATE)).astype(np.float32),
        )
        for k in range(8)
    ]
    paths = []
    for i in range(600):
        path = d / f"clip{i:03d}.wav"
        os.link(originals[i % 8], path)
        paths.append(str(path))
    return paths


def test_peak_memory_of_fit_does_not_grow_with_the_files(ten_second_files):
    small = _peak_of_a_fit(ten_second_files[:150])
    large = _peak_of_a_fit(ten_second_files)
    # the features of the 450 more clips, were they kept, would be
    # 450 x 1024 x 128 float32: 236 MB
    kept_features = 450 * FRAMES * 128 * 4
    assert kept_features > 200e6
    assert large - small < 100e6, (small, large)
