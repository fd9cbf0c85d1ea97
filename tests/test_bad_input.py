"""Inputs that used to give silently wrong results or unclear crashes in the library (issue: no silent wrong
answers). Each test failed before its fix."""

from __future__ import annotations

import logging
import math

import peft
import pytest
import torch
import transformers as tf
from torch import nn

from tb_hf import TempBalanceArguments, analyze, esd, find_blocks, fit_power_law, partition_model, unit_matrices
from tb_hf.engine import SpectralEngine, plan
from tb_hf.testing import ARCHS

SMALL = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4)


# --------------------------------------------------------------------------------------------------
# Round-off never enters a fit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_rank_matrix_is_rank_deficient_not_fitted(dtype):
    """A rank-8 ΔW has 8 non-zero eigenvalues; the rest (1e-14..1e-10) used to be fitted (xmin ≈ 1e-13, α ≈ 1.2)."""
    torch.manual_seed(0)
    delta = (torch.randn(256, 8, dtype=dtype) @ torch.randn(8, 256, dtype=dtype)) * 1e-3
    for method in ("median", "ks"):
        fit = fit_power_law(esd(delta, dtype=dtype), xmin_method=method)
        assert fit.status == "rank_deficient" and math.isnan(fit.alpha), method
    # A full-rank matrix of the same size is fitted as before, and so is a rank-120 one with the tail above noise.
    assert fit_power_law(esd(torch.randn(256, 256, dtype=dtype), dtype=dtype)).ok
    wide = torch.randn(256, 120, dtype=dtype) @ torch.randn(120, 256, dtype=dtype)
    fit = fit_power_law(esd(wide, dtype=dtype), xmin_method="ks")
    assert fit.ok and fit.xmin > 1e-6 * fit.spectral_norm


def test_lora_delta_view_gives_factor_one_not_noise(tmp_path):
    torch.manual_seed(0)
    model = peft.get_peft_model(ARCHS["llama"][0](), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    partition = partition_model(model)
    result = SpectralEngine(model, partition, TempBalanceArguments(tb_lora_view="delta", tb_min_evals=8)).run(model)
    assert {s.status for s in result.spectra.values()} == {"rank_deficient"}
    assert all(math.isnan(v) for v in result.metrics.values())  # → factor 1, with a warning naming the status
    assert all(s.name.endswith(("q_proj.ΔW", "v_proj.ΔW")) for s in result.spectra.values())


def test_effective_weight_is_formed_in_float32_for_bf16_models():
    """W₀ + ΔW in bf16 rounded away most of a small ΔW (85% of its norm); it is formed in float32 now."""
    torch.manual_seed(0)
    model = peft.get_peft_model(
        ARCHS["llama"][0]().to(torch.bfloat16), peft.LoraConfig(r=4, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-4)  # a small update, as early in training
    partition = partition_model(model)
    mats = unit_matrices(model, partition)
    name = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    w0 = layer.base_layer.weight.float()
    delta = (layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float()) * layer.scaling[
        "default"
    ]
    assert mats[name].dtype == torch.float32
    recovered = mats[name] - w0
    assert torch.linalg.norm(recovered - delta) <= 1e-3 * torch.linalg.norm(delta)
    bf16_sum = (layer.base_layer.weight + delta.to(torch.bfloat16)).float() - w0
    assert torch.linalg.norm(bf16_sum - delta) > 0.5 * torch.linalg.norm(delta)  # what the old bf16 sum lost


def test_quantized_weights_get_a_status_not_a_fit(caplog):
    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    q = model.model.layers[0].self_attn.q_proj
    packed = torch.randint(0, 255, q.weight.shape, dtype=torch.uint8)
    q.weight = nn.Parameter(packed, requires_grad=False)  # packed bytes, as bitsandbytes stores them
    partition = partition_model(model)
    with caplog.at_level(logging.WARNING):
        engine = SpectralEngine(model, partition, TempBalanceArguments(tb_min_evals=8))
    result = engine.run(model)
    assert result.spectra[plan(model, partition)[0].key].status == "quantized"
    assert "quantized" in caplog.text and "cannot dequantize" in caplog.text
    assert math.isfinite(result.metrics["model.layers.0"])  # the block's other matrices still set its α


# --------------------------------------------------------------------------------------------------
# Which tensors are matrices, which lists are blocks


def test_mamba_and_rwkv_raw_parameters_are_not_matrices():
    torch.manual_seed(0)
    mamba = tf.MambaForCausalLM(tf.MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=8))
    analysed = [n for u in partition_model(mamba).units for n in u.matrices]
    assert not any("conv1d" in n or "A_log" in n for n in analysed)  # a C×1×K kernel is not C matrices
    assert "backbone.layers.0.mixer.in_proj.weight" in analysed
    rwkv = tf.RwkvForCausalLM(
        tf.RwkvConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32)
    )
    analysed = [n for u in partition_model(rwkv).units for n in u.matrices]
    assert analysed and not any("time_" in n for n in analysed)  # time_mix_*, time_decay, time_first


def test_hybrid_stack_is_one_block_list():
    torch.manual_seed(0)
    config = tf.JambaConfig(
        **SMALL, num_hidden_layers=4, num_key_value_heads=2, num_experts=2, expert_layer_period=2,
        expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, mamba_expand=2,
        mamba_dt_rank=4,
    )  # fmt: skip
    model = tf.JambaForCausalLM(config)
    assert [p for p, _ in find_blocks(model)] == [f"model.layers.{i}" for i in range(4)]
    units = partition_model(model).units
    assert len(units) == 4
    assert "model.layers.1.feed_forward.experts.gate_up_proj" in units[1].matrices  # 3-D experts
    assert "model.layers.1.feed_forward.router.weight" in units[1].matrices
    assert not any("A_log" in n or "conv1d" in n for n in units[0].matrices)


@pytest.mark.parametrize("kind", ["albert", "one_layer_bert"])
def test_single_block_models_are_one_unit_with_a_warning(kind, caplog):
    torch.manual_seed(0)
    if kind == "albert":
        model = tf.AlbertModel(tf.AlbertConfig(**SMALL, embedding_size=16, num_hidden_layers=4))
        expected = ["encoder.albert_layer_groups.0"]
    else:
        model = tf.BertModel(tf.BertConfig(**SMALL, num_hidden_layers=1))
        expected = ["encoder.layer.0"]
    with caplog.at_level(logging.WARNING):
        assert [p for p, _ in find_blocks(model)] == expected
    assert "single transformer block" in caplog.text and "tb_unit='matrix'" in caplog.text
    assert len(partition_model(model, "matrix").units) >= 4  # per-matrix balancing still has several units


# --------------------------------------------------------------------------------------------------
# FARMS windows that do not fit


def test_farms_window_larger_than_the_matrix_says_so(caplog):
    torch.manual_seed(0)
    mats = {"small": torch.randn(40, 48), "big": torch.randn(300, 300)}
    with caplog.at_level(logging.WARNING):
        res = analyze(mats, estimator="farms", farms_window=64, min_evals=10)
    assert res["small"].estimator == "plain" and res["small"].num_windows == 1
    assert res["big"].estimator == "farms" and res["big"].num_windows > 1
    assert "small (40x48" in caplog.text and "tb_farms_window=64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        res = analyze({"square": torch.randn(96, 96)}, estimator="farms", farms_window=64, farms_aspect_ratio=2.0)
    assert res["square"].estimator == "plain" and "tb_farms_aspect_ratio=2" in caplog.text


def test_farms_uses_one_window_for_the_whole_model():
    """FARMS (Hu et al.) use one window size per model; q (32×32) and k/v (16×32) are windowed alike."""
    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    engine = SpectralEngine(model, partition_model(model), TempBalanceArguments(tb_estimator="farms", tb_min_evals=8))
    assert engine.spectral.farms_window is None  # half of 16 is below the 32-row minimum: analysed whole
    big = tf.LlamaForCausalLM(
        tf.LlamaConfig(vocab_size=100, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1)
    )  # fmt: skip
    engine = SpectralEngine(big, partition_model(big), TempBalanceArguments(tb_estimator="farms", tb_min_evals=8))
    assert engine.spectral.farms_window == 32  # k/v are 64×256: half of 64, for q (256×256) too
    spectra = engine.run(big).spectra
    assert {s.estimator for s in spectra.values()} == {"farms"}


# --------------------------------------------------------------------------------------------------
# Issue 18: one bad matrix, one unit left, options


def test_zero_size_matrix_is_its_own_status_not_a_failed_pass(tmp_path):
    """A zero-size nn.Linear(32, 0) in each block made `analyze` raise, so the whole pass failed and every unit kept
    factor 1 for the whole run. Now that matrix alone is "too_small"; the others fit and training balances."""
    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import dataset_for, tiny_training_args

    torch.manual_seed(0)
    res = analyze({"empty": torch.zeros(0, 32), "wide": torch.zeros(32, 0), "fine": torch.randn(64, 64)})
    assert {k: r.status for k, r in res.items()} == {"empty": "too_small", "wide": "too_small", "fine": "ok"}
    assert res["empty"].num_evals == 0 and math.isnan(res["empty"].alpha) and res["empty"].shape == (0, 32)
    farms = analyze({"empty": torch.zeros(0, 32), "fine": torch.randn(64, 64)}, estimator="farms", farms_window=32)
    assert farms["empty"].status == "too_small" and farms["fine"].ok
    experts = analyze({"experts": torch.zeros(2, 0, 8)})
    assert [r.status for r in experts.values()] == ["too_small", "too_small"]
    from tb_hf.engine import model_farms_window

    assert model_farms_window([(0, 32), (64, 256)], 1.0) == 32  # the empty matrix does not shrink FARMS's window

    model = ARCHS["bert"][0]()
    for layer in model.bert.encoder.layer:
        layer.pruned = nn.Linear(32, 0)  # e.g. every head of a projection pruned away
    args = tiny_training_args(tmp_path, tb_update_steps="once")
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
    trainer.train()
    pruned = [t.key for t in trainer.tempbalance.balancer.engine.tasks if "pruned" in t.key.param]
    result = trainer.tempbalance.balancer.engine.run(model, esd_keys=pruned)
    spectra = result.spectra
    assert all(result.esds[k].numel() == 0 for k in pruned)  # for figures: no eigenvalues, no error
    assert {s.status for k, s in spectra.items() if "pruned" in k.param} == {"too_small"}
    assert all(s.ok for k, s in spectra.items() if "pruned" not in k.param)
    factors = sorted(g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"])
    assert factors[0] == pytest.approx(0.5) and factors[-1] == pytest.approx(1.5)  # balanced, not all 1


def test_delta_view_without_lora_says_why(tmp_path, caplog):
    """tb_lora_view='delta' on a model without LoRA: every factor 1, and the warning named no reason (issue 18 C)."""
    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import dataset_for, tiny_training_args

    torch.manual_seed(0)
    model = ARCHS["distilbert"][0]()
    args = tiny_training_args(tmp_path, tb_lora_view="delta", tb_update_steps="2")
    with caplog.at_level(logging.WARNING):
        trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
        trainer.train()
    assert caplog.text.count("has no LoRA adapters") == 1  # said once, at set-up, not at every pass
    assert "tb_lora_view='delta' has nothing to analyse" in caplog.text and "tb_lora_view='effective'" in caplog.text
    assert "no LoRA-adapted matrix" in caplog.text  # and the units kept at factor 1 say why
    assert all(g["tb_factor"] == 1.0 for g in trainer.optimizer.param_groups)
