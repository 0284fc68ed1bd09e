"""The training profile: what training stores for monitoring, computed on the held-out test split.

Permutation importances weight the drift share by what the model uses; the calibration map
estimates live performance before labels (CBPE, ``pipelines.estimation``). ``pipelines.monitoring``
re-exports ``training_profile``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines import estimation, modeling
from pipelines.config import Dataset

# Rows of the test split used for permutation importance: enough for stable ranks, fast to score.
IMPORTANCE_ROWS = 5_000
IMPORTANCE_REPEATS = 3


def training_profile(
    model: Any, test: pd.DataFrame, dataset: Dataset, threshold: float, seed: int
) -> dict[str, Any]:
    """What monitoring needs from training, computed on the held-out test split.

    - ``importances``: permutation importance of each feature (drop in ROC AUC when it is
      shuffled, clipped at 0), so drift is weighted by what the model uses;
    - ``calibration``: the isotonic map from the model's probability to the observed rate, for
      estimating live performance before labels come (CBPE);
    - ``estimated_test_roc_auc``: that estimate on the test split itself, the reference of the
      estimated drop until the champion has a live baseline.
    """
    from sklearn.inspection import permutation_importance

    x, y = modeling.features_and_label(test, dataset)
    proba = model.predict_proba(x)[:, 1]
    calibration = estimation.Calibration.fit(proba, y)
    rows = np.random.default_rng(seed).permutation(len(x))[:IMPORTANCE_ROWS]
    importances: dict[str, float] = {}
    if len(np.unique(y[rows])) == 2:
        found = permutation_importance(
            model, x.iloc[rows], y[rows], scoring="roc_auc", n_repeats=IMPORTANCE_REPEATS,
            random_state=seed, n_jobs=1,
        )  # fmt: skip
        importances = {c: max(float(v), 0.0) for c, v in zip(x.columns, found.importances_mean, strict=True)}
    return {
        "importances": importances,
        "calibration": calibration.to_dict(),
        "estimated_test_roc_auc": estimation.expected_roc_auc(calibration(proba)),
        "threshold": threshold,
        "test_rows": len(x),
    }
