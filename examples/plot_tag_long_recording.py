"""
Tagging a long recording window by window
=========================================

:meth:`ASTClassifier.from_pretrained <skast.ASTClassifier.from_pretrained>`
gives a classifier that predicts with a checkpoint's own head, with no
training. With ``window_hop``, a recording longer than the model's input is cut
into windows of ``max_length`` frames every ``window_hop`` seconds, and
:meth:`~skast.ASTClassifier.predict_proba_windows` gives each window's scores
and start time.

With ``SKAST_ESC50`` set, the published AudioSet tagger is used as it is. By
default, a small model is first trained on the built-in sounds and written
with ``save_pretrained``, so that ``from_pretrained`` reads a checkpoint with
its own head, as it reads a published one.
"""

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from _data import CHECKPOINT, ESC50, TINY

from skast import ASTClassifier
from skast.datasets import make_sounds

sounds = make_sounds(n_per_class=12, n_classes=4, duration=1.0, random_state=0)
if ESC50:
    checkpoint = CHECKPOINT
else:
    tagger = ASTClassifier(
        model_config=TINY,
        max_length=64,
        normalize="fit",
        learning_rate=1e-3,
        max_epochs=8,
        device="cpu",
        random_state=0,
    ).fit(sounds.data, sounds.target)
    checkpoint = tempfile.mkdtemp()
    tagger.save_pretrained(checkpoint)

# %%
# A five-second recording: four sounds of the set, one after the other, with
# silence around them.
rng = np.random.default_rng(1)
names = sounds.target_names
picks = [int(np.flatnonzero(sounds.target == names[c])[0]) for c in rng.permutation(4)]
silence = np.zeros(8000, dtype=np.float32)
recording = np.concatenate(
    [silence, *[np.asarray(sounds.data[i], dtype=np.float32) for i in picks], silence]
)
print(
    "recording:",
    len(recording) / 16000,
    "s; sounds in order:",
    [str(sounds.target[i]) for i in picks],
)

# %%
# Windows every 0.25 s; each window's scores and start time.
clf = ASTClassifier.from_pretrained(checkpoint, window_hop=0.25, device="cpu")
(proba,), (starts,) = clf.predict_proba_windows([recording])
print("windows:", len(starts), "| labels:", [str(c) for c in clf.classes_])

top = np.argsort(-proba.mean(axis=0))[:4]
fig, ax = plt.subplots(figsize=(7, 3))
for j in top:
    ax.plot(starts, proba[:, j], marker=".", label=str(clf.classes_[j]))
ax.set_xlabel("window start (s)")
ax.set_ylabel("score")
ax.set_title("per-window scores")
ax.legend(loc="upper right", fontsize="small")
fig.tight_layout()
