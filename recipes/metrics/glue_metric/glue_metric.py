"""GLUE metrics as an `evaluate.Metric` that ships with the recipes and works without the Hugging Face Hub.

Load it with ``evaluate.load(recipes.metrics.GLUE_METRIC_PATH, config_name)`` (or ``recipes.metrics.load_metric``).
Config names: the GLUE tasks (``cola, sst2, mrpc, qqp, stsb, mnli, mnli_matched, mnli_mismatched, qnli, rte,
wnli, hans, ax``) with the metrics of the official GLUE metric, plus ``accuracy``, ``classification`` (accuracy
and macro-F1) and ``regression`` (Pearson, Spearman) for custom tasks. Computed with scikit-learn and scipy.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_DESCRIPTION = "GLUE metrics (accuracy, F1, Matthews correlation, Pearson/Spearman) computed with scikit-learn/scipy."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (or floats for stsb/regression).
    references: gold class ids (or floats for stsb/regression).
Returns: depending on the config, accuracy, f1, matthews_correlation, pearson, spearmanr.
Examples:
    >>> metric = evaluate.load(GLUE_METRIC_PATH, "mrpc")
    >>> metric.compute(predictions=[0, 1], references=[0, 1])
    {'accuracy': 1.0, 'f1': 1.0}
"""

_ACCURACY = ("accuracy", "sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "hans", "ax")
_CONFIGS = (*_ACCURACY, "cola", "mrpc", "qqp", "stsb", "classification", "regression")


class GlueMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in _CONFIGS:
            raise KeyError(f"Unknown config {self.config_name!r}; use one of {list(_CONFIGS)}.")
        kind = "float32" if self.config_name in ("stsb", "regression") else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(kind), "references": datasets.Value(kind)}),
            format="numpy",
        )

    def _compute(self, predictions, references):
        preds = np.asarray(predictions)
        refs = np.asarray(references)
        name = self.config_name
        if name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}
        if name in ("stsb", "regression"):
            return {"pearson": float(pearsonr(preds, refs)[0]), "spearmanr": float(spearmanr(preds, refs)[0])}
        if name in ("mrpc", "qqp"):
            return {"accuracy": float(accuracy_score(refs, preds)), "f1": float(f1_score(refs, preds))}
        if name == "classification":
            return {
                "accuracy": float(accuracy_score(refs, preds)),
                "f1": float(f1_score(refs, preds, average="macro")),
            }
        return {"accuracy": float(accuracy_score(refs, preds))}
