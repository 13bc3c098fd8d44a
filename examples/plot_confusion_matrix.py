"""
Which sounds get confused?
==========================

Cross-validated predictions of the embedding pipeline, shown as a confusion
matrix.
"""

# %%
import matplotlib.pyplot as plt
from _data import dataset, model_params
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skast import ASTFeaturizer

X, y, folds, names = dataset()
pipe = make_pipeline(
    ASTFeaturizer(**model_params()),
    StandardScaler(),
    LogisticRegression(max_iter=5000),
)
y_pred = cross_val_predict(pipe, X, y, groups=folds, cv=LeaveOneGroupOut())
print(f"cross-validated accuracy: {(y_pred == y).mean():.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 6))
ConfusionMatrixDisplay.from_predictions(
    y, y_pred, ax=ax, xticks_rotation="vertical", colorbar=False
)
ax.set_title("Cross-validated confusion matrix")
fig.tight_layout()
plt.show()
