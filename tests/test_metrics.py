"""The bundled `evaluate` GLUE metric module: offline loading and agreement with scikit-learn/scipy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import EvalPrediction

from recipes.metrics import GLUE_METRIC_PATH, glue_compute_metrics, load_metric

RNG = np.random.default_rng(0)
Y_TRUE = RNG.integers(0, 2, 200)
Y_PRED = np.where(RNG.random(200) < 0.7, Y_TRUE, 1 - Y_TRUE)
Y3_TRUE, Y3_PRED = RNG.integers(0, 3, 150), RNG.integers(0, 3, 150)
S_TRUE = RNG.uniform(0, 5, 300)
S_PRED = S_TRUE + RNG.normal(0, 1.5, 300)


@pytest.mark.parametrize("config", ["sst2", "rte", "qnli", "wnli", "mnli", "accuracy"])
def test_accuracy_tasks(config):
    result = load_metric(config).compute(predictions=Y_PRED, references=Y_TRUE)
    assert result == {"accuracy": pytest.approx(accuracy_score(Y_TRUE, Y_PRED))}


def test_cola_mrpc_stsb_and_custom():
    assert load_metric("cola").compute(predictions=Y_PRED, references=Y_TRUE) == {
        "matthews_correlation": pytest.approx(matthews_corrcoef(Y_TRUE, Y_PRED))
    }
    assert load_metric("mrpc").compute(predictions=Y_PRED, references=Y_TRUE) == {
        "accuracy": pytest.approx(accuracy_score(Y_TRUE, Y_PRED)),
        "f1": pytest.approx(f1_score(Y_TRUE, Y_PRED)),
    }
    stsb = load_metric("stsb").compute(predictions=S_PRED, references=S_TRUE)
    assert stsb["pearson"] == pytest.approx(pearsonr(S_PRED, S_TRUE)[0], rel=1e-5)
    assert stsb["spearmanr"] == pytest.approx(spearmanr(S_PRED, S_TRUE)[0], rel=1e-5)
    custom = load_metric("classification").compute(predictions=Y3_PRED, references=Y3_TRUE)
    assert custom["f1"] == pytest.approx(f1_score(Y3_TRUE, Y3_PRED, average="macro"))


def test_unknown_config_fails():
    with pytest.raises(KeyError, match="Unknown config"):
        load_metric("sst3")


def test_compute_metrics_for_the_trainer():
    logits = np.stack([1 - Y_PRED, Y_PRED], axis=1).astype(np.float32)
    result = glue_compute_metrics("mrpc")(EvalPrediction(predictions=logits, label_ids=Y_TRUE))
    assert result["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert result["combined_score"] == pytest.approx((result["accuracy"] + result["f1"]) / 2)
    reg = glue_compute_metrics("stsb", is_regression=True)(
        EvalPrediction(predictions=S_PRED[:, None].astype(np.float32), label_ids=S_TRUE)
    )
    assert reg["pearson"] == pytest.approx(pearsonr(S_PRED, S_TRUE)[0], rel=1e-5)


@pytest.mark.slow  # a subprocess
def test_metric_script_loads_by_path_offline_in_a_fresh_process(tmp_path):
    """The metric is the recipes' (not installed with tb_hf): loaded by its path, offline, in a fresh process."""
    root = Path(__file__).resolve().parents[1]
    assert GLUE_METRIC_PATH == str(root / "recipes" / "metrics" / "glue_metric" / "glue_metric.py")
    check = (
        "import numpy as np; from recipes.metrics import load_metric; "
        "print(load_metric('sst2').compute(predictions=np.array([1, 0, 1, 1]), references=np.array([1, 0, 0, 1])))"
    )
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "{'accuracy': 0.75}"
    # evaluate's import scanner misreads "import a, b": one import per line.
    script = Path(GLUE_METRIC_PATH).read_text().splitlines()
    assert not [line for line in script if line.startswith("import ") and "," in line]
