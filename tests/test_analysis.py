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
    expected = balance(result.metrics, tb.tb_options, alphas=result.alphas, alpha_se=result.alpha_se,
                       weights=unit_weights(model, partition))  # fmt: skip
    assert analysis.factors == expected.factors and analysis.wd_factors == expected.wd_factors
    assert set(analysis.wd_factors.values()) == {0.5, 1.5}


@pytest.mark.parametrize("preset", ["tempbalance", "model-balancing", "llrd", "llrd-alpha", "se", "alphadecay"])
def test_analyze_shows_what_a_real_trainer_does_at_step_0_for_every_preset(tmp_path, preset):
    """`tb-hf analyze` showed α factors without the depth profile (llrd-alpha), 1.000 everywhere and no weight decay
    for alphadecay (outside probe): its per-unit learning-rate scale and weight-decay ratio are the trainer's."""
    import copy

    from transformers import TrainerCallback

    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import dataset_for, tiny_training_args

    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    spectral = {} if preset == "llrd" else {"tb_min_evals": 8, "tb_update_steps": "once"}
    analysis = analyze_model(copy.deepcopy(model), TempBalanceArguments(tb_preset=preset, **spectral))

    class FirstStep(TrainerCallback):
        groups = None

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            if self.groups is None:
                self.groups = [dict(g, params=None) for g in optimizer.param_groups]

    seen = FirstStep()
    args = tiny_training_args(
        tmp_path,
        learning_rate=1e-2,
        weight_decay=0.1,
        lr_scheduler_type="constant",
        max_steps=1,
        tb_preset=preset,
        **{"tb_update_steps": None, "tb_min_evals": None, **spectral},
    )
    TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model), callbacks=[seen]).train()
    units = [g for g in seen.groups if g["tb_unit"] is not None]
    assert units and {g["tb_unit"] for g in units} == set(analysis.lr_scales)
    for g in units:
        assert g["lr"] / 1e-2 == pytest.approx(analysis.lr_scales[g["tb_unit"]], rel=1e-12)
        if g["tb_base_wd"]:
            assert g["weight_decay"] / 0.1 == pytest.approx(analysis.wd_factors.get(g["tb_unit"], 1.0), rel=1e-12)
    if preset == "llrd-alpha":  # depth × α: both visible
        assert analysis.lr_scales != analysis.factors
    if preset == "alphadecay":
        assert set(analysis.lr_scales.values()) == {1.0} and len(set(analysis.wd_factors.values())) == 2
    buffer = io.StringIO()
    print_table(analysis.rows, file=buffer, weight_decay=analysis.options.balance.balances_wd)
    assert "lr ×" in buffer.getvalue() and (("wd ×" in buffer.getvalue()) == (preset == "alphadecay"))


def test_figure_titles_name_the_map_in_use(tmp_path, monkeypatch):
    """factors.png said "sigmoid map" for every map but the linear one (outside probe: tb_mapping='se')."""
    from tb_hf import plotting
    from tb_hf.analysis import write_figures

    titles = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: titles.append(fig.axes[0].get_title()) or path)
    torch.manual_seed(0)
    analysis = analyze_model(ARCHS["bert"][0](), TempBalanceArguments(tb_preset="se", tb_min_evals=8))
    write_figures(analysis, tmp_path, label="tiny")
    assert "standard-error map 0.5-2, 2 SE" in titles[-1] and "sigmoid" not in titles[-1]
    titles.clear()
    analysis = analyze_model(ARCHS["bert"][0](), TempBalanceArguments(tb_preset="alphadecay", tb_min_evals=8))
    write_figures(analysis, tmp_path, label="tiny")
    assert "no α map" in titles[-2] and "weight decay" in titles[-1]
