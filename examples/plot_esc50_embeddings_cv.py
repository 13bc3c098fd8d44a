"""
ESC-50 cross-validation with AST embeddings
===========================================

Embed every clip with :class:`~skast.ASTFeaturizer` and fit a logistic
regression on the embeddings, scored with ESC-50's five predefined folds
(``LeaveOneGroupOut`` over the fold numbers, never a shuffled split: clips cut
from the same recording share a fold).
"""

# %%
# The data: the built-in sound set, or ESC-50 when ``SKAST_ESC50`` is set.
from _data import dataset, model_params
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skast import ASTFeaturizer

X, y, folds, names = dataset()
print(f"{len(X)} clips, {len(names)} classes, folds {sorted(set(folds.tolist()))}")

# %%
# A pipeline: embeddings, scaling, a linear probe.
pipe = make_pipeline(
    ASTFeaturizer(**model_params()),
    StandardScaler(),
    LogisticRegression(max_iter=5000),
)
scores = cross_val_score(pipe, X, y, groups=folds, cv=LeaveOneGroupOut())
print("accuracy per fold:", scores.round(3))
print(f"mean accuracy: {scores.mean():.3f}")
