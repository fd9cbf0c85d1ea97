"""tb_hf.analysis: the per-matrix table, the report files and the factors `tb-hf analyze` shows (the command line
itself is tested in tests/test_cli.py)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from tb_hf import TempBalanceArguments
from tb_hf.analysis import analyze_model, print_table, write_report
from tb_hf.layers import unit_weights
from tb_hf.testing import ARCHS


def test_table_and_report_hold_every_matrix_with_its_unit_and_factor(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    tb = TempBalanceArguments(tb_min_evals=8)
    analysis = analyze_model(model, tb)
    rows = analysis.rows
    assert len(rows) == 12 and {r.unit for r in rows} == {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    assert sorted(analysis.factors.values()) == [0.5, 1.5]  # the linear map over two blocks
    buffer = io.StringIO()
    print_table(rows, file=buffer)
    text = buffer.getvalue()
    assert "attention.self.query" in text and text.count("\n") >= len(rows)
    write_report(rows, tmp_path, meta={"model": "tiny-bert"}, analysis=analysis)
    written = {p.name for p in tmp_path.iterdir()}
    assert written, "the report wrote nothing"
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert "tiny-bert" in json.dumps(data)


def test_analyze_normalizes_with_the_unit_weights_training_uses():
    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    for name, p in model.named_parameters():  # blocks of different sizes: k_proj and gate_proj train in block 0 only
        p.requires_grad_(not name.endswith(("k_proj.weight", "gate_proj.weight")) or ".layers.0." in name)
    tb = TempBalanceArguments(tb_min_evals=8, tb_normalize=True)
    analysis = analyze_model(model, tb)
    weights = unit_weights(model, analysis.partition)
    assert len(set(weights.values())) > 1 and len(set(analysis.factors.values())) > 1
    mean = sum(analysis.factors[u] * w for u, w in weights.items()) / sum(weights.values())
    assert mean == pytest.approx(1.0)


def test_analyze_gives_the_factors_training_would_for_every_map_and_balance():
    """tb-hf analyze once failed with mapping='se' (it did not pass the fits' standard errors) and showed no
    weight-decay ratios: it computes the factors as training does (`tb_hf.balancing.balance`)."""
    from tb_hf.balancing import balance
    from tb_hf.engine import SpectralEngine
    from tb_hf.layers import partition_model

    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    tb = TempBalanceArguments(tb_min_evals=8, tb_mapping="se", tb_se_threshold=0.5, tb_lr_min=0.5, tb_lr_max=2.0,
                              tb_balance="both")  # fmt: skip
    analysis = analyze_model(model, tb)
    partition = partition_model(model)
    result = SpectralEngine(model, partition, tb).run(model)
    expected = balance(result.metrics, tb, alphas=result.alphas, alpha_se=result.alpha_se,
                       weights=unit_weights(model, partition))  # fmt: skip
    assert analysis.factors == expected.factors and analysis.wd_factors == expected.wd_factors
    assert set(analysis.wd_factors.values()) == {0.5, 1.5}
