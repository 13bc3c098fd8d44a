"""
Grid search over the downstream classifier with the embedding cache
===================================================================

Embedding is the expensive step; the classifier on top is cheap. With
``cache=`` set, :class:`~skast.ASTFeaturizer` stores each clip's embedding
under a key made of the clip's content and the model, so a grid search over the
downstream classifier embeds every clip once, however many candidates and folds
it fits.
"""

# %%
import tempfile
import time

from _data import dataset, model_params
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skast import ASTFeaturizer

X, y, folds, names = dataset()
cache = tempfile.mkdtemp(prefix="skast-cache-")
# A cached embedding is keyed by the model *and* its normalisation. With
# ``normalize="fit"`` every training fold has statistics of its own, hence
# embeddings of its own, and the folds share nothing: fixed statistics (a
# preset, or a ``(mean, std)`` pair) let every fold and candidate share them.
params = model_params()
if params["normalize"] == "fit":
    params["normalize"] = "audioset"
pipe = Pipeline(
    [
        ("ast", ASTFeaturizer(**params, cache=cache)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=5000)),
    ]
)
search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0, 100.0]}, cv=LeaveOneGroupOut())

# %%
# The first search embeds each clip once; the second reads every embedding
# from the cache.
for run in ("first", "second"):
    start = time.perf_counter()
    search.fit(X, y, groups=folds)
    print(f"{run} search: {time.perf_counter() - start:.1f} s")
print("best C:", search.best_params_["clf__C"], f"accuracy {search.best_score_:.3f}")
