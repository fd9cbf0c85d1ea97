"""The bundled GLUE `evaluate` metric module (no Hub needed) and a `compute_metrics` for the Trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["GLUE_METRIC_PATH", "glue_compute_metrics", "load_metric", "metric_names"]

GLUE_METRIC_PATH = str(Path(__file__).parent / "glue_metric" / "glue_metric.py")


def load_metric(config_name: str, **kwargs):
    """``evaluate.load`` of the bundled GLUE metric script (a local file: works offline)."""
    import evaluate

    return evaluate.load(GLUE_METRIC_PATH, config_name, **kwargs)


def metric_names(config_name: str) -> list[str]:
    """The keys `glue_compute_metrics` returns for a metric config (``combined_score`` where there are several)."""
    if config_name == "cola":
        return ["matthews_correlation"]
    if config_name in ("stsb", "regression"):
        return ["pearson", "spearmanr", "combined_score"]
    if config_name in ("mrpc", "qqp"):
        return ["accuracy", "f1", "combined_score"]
    return ["accuracy"]


def glue_compute_metrics(config_name: str, *, is_regression: bool = False):
    """A ``compute_metrics`` for `transformers.Trainer`: logits -> predictions -> the task's metrics.

    Adds ``combined_score`` (the mean of the metrics) when there is more than one, as transformers'
    ``run_glue.py`` does.
    """
    metric = load_metric(config_name)

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        preds = np.squeeze(logits, axis=-1) if is_regression else np.argmax(logits, axis=-1)
        result = metric.compute(predictions=preds, references=eval_pred.label_ids)
        if len(result) > 1:
            result["combined_score"] = float(np.mean(list(result.values())))
        return result

    return compute_metrics
