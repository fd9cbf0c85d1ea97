"""Tests for tb_hf.blocks and tb_hf.layers: block finder, units, LoRA effective weights, optimizer groups.

Tiny random models built in-process from configs (hidden 32, 2 layers, vocab 100); no Hub access.
"""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from torch import nn
from transformers import Trainer

from tb_hf.blocks import find_blocks
from tb_hf.engine import unit_matrices
from tb_hf.layers import Partition, partition_model, unit_weights
from tb_hf.optim import build_param_groups
from tb_hf.options import UNIT_KINDS
from tb_hf.spectral import MatrixKey, analyze
from tb_hf.testing import ARCHS, stack_blocks

LR = 1e-3
WD = 0.1
GROUP_KEYS = {"params", "lr", "weight_decay", "tb_unit", "tb_base_lr", "tb_factor", "tb_base_wd"}


def _decay_names(model: nn.Module) -> list[str]:
    return Trainer.get_decay_parameter_names(None, model)  # does not use `self`


def _check_groups(model: nn.Module, partition: Partition) -> list[dict]:
    """Build the groups and check the invariants every model must satisfy."""
    groups = build_param_groups(
        model, partition, learning_rate=LR, weight_decay=WD, decay_parameter_names=_decay_names(model)
    )
    assert groups[0]["tb_unit"] is None
    assert groups[0]["tb_factor"] == 1.0
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == set(trainable), "a trainable parameter is in no group (or a frozen one in a group)"
    unit_names = {u.name for u in partition.units}
    decay = set(_decay_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    for i, g in enumerate(groups):
        assert set(g) == GROUP_KEYS | ({"tb_groups"} if i == 0 else set())
        assert g["lr"] == g["tb_base_lr"] == LR and g["tb_factor"] == 1.0
        assert g["params"] or i == 0, "only group 0 may be empty"
        assert g["tb_unit"] is None or g["tb_unit"] in unit_names
        assert g["weight_decay"] in (WD, 0.0)
        assert all((names[id(p)] in decay) == (g["weight_decay"] == WD) for p in g["params"])
    torch.optim.AdamW(groups)  # the optimizer accepts the layout
    return groups


# --------------------------------------------------------------------------------------------------
# Architectures


def test_blocks_found(arch):
    _, model, blocks, _, _ = arch
    found = find_blocks(model)
    assert [path for path, _ in found] == blocks
    assert all(model.get_submodule(path) is block for path, block in found)


def test_block_units(arch):
    _, model, blocks, mats, _ = arch
    partition = partition_model(model)
    assert partition.blocks == tuple(blocks)
    assert [u.name for u in partition.units] == blocks
    for unit, tails in zip(partition.units, mats, strict=True):
        assert unit.matrices == tuple(f"{unit.name}.{t}" for t in tails)
        assert all(p.startswith(unit.name + ".") for p in unit.params)
        assert set(unit.matrices) <= set(unit.params)  # nothing frozen in a plain model
    # everything else (embeddings, final norm, head) is outside
    in_blocks = {n for n, _ in model.named_parameters() if any(n.startswith(b + ".") for b in blocks)}
    assert set(partition.outside) == {n for n, _ in model.named_parameters()} - in_blocks
    assert len(partition.params) == len(set(partition.params)) == len(list(model.parameters()))


def test_block_groups(arch):
    _, model, blocks, _, _ = arch
    groups = _check_groups(model, partition_model(model))
    # outside decay + no-decay, then (decay, no-decay) per block
    assert [g["tb_unit"] for g in groups] == [None, None] + [b for b in blocks for _ in range(2)]


def test_matrix_units(arch):
    name, model, blocks, mats, per_block = arch
    partition = partition_model(model, unit="matrix")
    matrices = [m for u in partition.units for m in u.matrices]
    assert matrices == [f"{b}.{t}" for b, tails in zip(blocks, mats, strict=True) for t in tails]
    if per_block is not None:
        assert len(partition.units) == per_block * len(blocks)
    for unit in partition.units:
        assert all(m.startswith(unit.name + ".") for m in unit.matrices)
        assert all(p.startswith(unit.name + ".") for p in unit.params)
        assert all(p.rsplit(".", 1)[0] == unit.name for p in unit.params)  # its weights and biases only
    # parameters inside blocks but in no matrix unit (norms) are outside in matrix mode
    units = {u.name for u in partition.units}
    loose = [
        n for n, _ in model.named_parameters() if n.startswith(blocks[0] + ".") and n.rsplit(".", 1)[0] not in units
    ]
    assert loose and set(loose) <= set(partition.outside)
    _check_groups(model, partition)


def test_unit_weights_count_full_shapes_also_under_zero3():
    torch.manual_seed(0)
    model = peft.get_peft_model(ARCHS["llama"][0](), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    partition = partition_model(model, unit="matrix")
    params = dict(model.named_parameters())
    weights = unit_weights(model, partition)
    assert list(weights) == [u.name for u in partition.units]
    assert weights == {u.name: float(sum(params[p].numel() for p in u.params)) for u in partition.units}
    assert weights["base_model.model.model.layers.0.self_attn.q_proj"] == 4 * 32 + 32 * 4  # lora_A, lora_B
    zero3 = copy.deepcopy(model)  # ZeRO-3: each local tensor empty, the full shape in ds_shape
    for p in zero3.parameters():
        p.ds_shape = p.shape
        p.data = torch.empty(0)
    assert unit_weights(zero3, partition) == weights


def test_t5_and_mixtral_matrix_units():
    t5 = ARCHS["t5"][0]()
    partition = partition_model(t5, unit="matrix")
    assert len(partition.units) == 2 * 6 + 2 * 10
    assert not any("relative_attention_bias" in m for u in partition.units for m in u.matrices)
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in partition.outside
    partition = partition_model(t5)
    assert not any("relative_attention_bias" in m for u in partition.units for m in u.matrices)
    # the (trainable) relative attention bias still takes its block's factor
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in partition.units[0].params

    mixtral = ARCHS["mixtral"][0]()
    partition = partition_model(mixtral, unit="matrix")
    experts = next(u for u in partition.units if u.name == "model.layers.0.mlp.experts")
    assert experts.matrices == ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj")
    matrices = unit_matrices(mixtral, partition)
    assert matrices["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 128, 32)
    results = analyze({k: v for k, v in matrices.items() if k.startswith("model.layers.0.mlp.experts")})
    assert set(results) >= {MatrixKey("model.layers.0.mlp.experts.gate_up_proj", e) for e in range(4)}


# --------------------------------------------------------------------------------------------------
# Models without blocks, nesting, errors


class _Nested(nn.Module):
    """Blocks holding lists themselves: only the outer list is found."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"heads": nn.ModuleList(nn.Linear(8, 8) for _ in range(3)), "norm": nn.LayerNorm(8)})
            for _ in range(2)
        )


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Conv1d(4, 4, 1)])  # two classes
        self.single = nn.ModuleList([nn.Linear(4, 4)])  # too short
        self.norms = nn.ModuleList([nn.LayerNorm(4), nn.LayerNorm(4)])  # no matrix


def test_nested_lists():
    model = _Nested()
    assert [p for p, _ in find_blocks(model)] == ["layers.0", "layers.1"]
    partition = partition_model(model)
    assert partition.units[0].matrices == tuple(f"layers.0.heads.{i}.weight" for i in range(3))
    assert partition.outside == ("embed.weight",)
    assert len(partition_model(model, unit="matrix").units) == 6


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), _Mixed()])
def test_no_blocks(model):
    with pytest.raises(ValueError, match="looks for an nn.ModuleList of transformer layers") as info:
        find_blocks(model)
    assert type(model).__name__ in str(info.value)
    assert "train it with the plain Trainer" in str(info.value)  # says what to do instead
    with pytest.raises(ValueError, match="no transformer blocks"):
        partition_model(model)


def test_bad_arguments():
    model = _Nested()
    with pytest.raises(ValueError, match="unit must be one of"):
        partition_model(model, unit="layer")
    assert UNIT_KINDS == ("block", "matrix")
    with pytest.raises(ValueError, match="lora_view must be one of"):
        unit_matrices(model, partition_model(model), lora_view="both")


def test_frozen_and_stale():
    model = ARCHS["llama"][0]()
    for name, p in model.named_parameters():
        p.requires_grad_(".layers." in name and not name.startswith("model.layers.1."))
    partition = partition_model(model)
    assert [u.name for u in partition.units] == ["model.layers.0"]  # frozen block 1 is dropped
    assert partition.outside == ()
    groups = _check_groups(model, partition)
    assert groups[0]["params"] == [] and groups[0]["tb_unit"] is None  # placeholder keeps group 0 unscaled
    optimizer = torch.optim.AdamW(groups)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model.lm_head.weight.requires_grad_(True)  # changed after partitioning
    with pytest.raises(ValueError, match="does not match"):
        build_param_groups(model, partition, learning_rate=LR, weight_decay=WD, decay_parameter_names=[])


def test_one_trainable_unit_left_after_freezing_warns(caplog):
    """Two blocks, one frozen: the one unit left always gets factor 1. A one-block model already said so; this was
    silent (issue 18 B)."""
    import logging

    model = ARCHS["bert"][0]()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("bert.encoder.layer.0."))
    with caplog.at_level(logging.WARNING):
        partition = partition_model(model)
    assert [u.name for u in partition.units] == ["bert.encoder.layer.1"]
    assert "single trainable unit" in caplog.text and "factor 1" in caplog.text and "tb_unit='matrix'" in caplog.text
    assert "bert.encoder.layer.1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(partition_model(model, "matrix").units) == 6  # the suggested fix: several units again
    assert "single trainable unit" not in caplog.text
    # matrix units, and only one of them trainable: the same warning, with the advice that applies
    model = ARCHS["llama"][0]()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.1.self_attn.q_proj."))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [u.name for u in partition_model(model, "matrix").units] == ["model.layers.1.self_attn.q_proj"]
    assert "single trainable unit" in caplog.text and "tb_unit='matrix'" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(partition_model(ARCHS["bert"][0]()).units) == 2  # two trainable units: no warning
    assert "single trainable unit" not in caplog.text


# --------------------------------------------------------------------------------------------------
# peft LoRA


def _randomize_lora_b(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()


def _lora_layers(model: nn.Module) -> dict[str, peft.tuners.lora.LoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}


def _check_lora_matrices(model: nn.Module, partition: Partition, scaling: float, fan_in_fan_out: bool = False):
    effective = unit_matrices(model, partition)
    delta = unit_matrices(model, partition, lora_view="delta")
    layers = _lora_layers(model)
    assert layers and set(delta) == {f"{n}.base_layer.weight" for n in layers}
    for name, layer in layers.items():
        assert layer.scaling["default"] == pytest.approx(scaling)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected = (b @ a).T if fan_in_fan_out else b @ a
        base = layer.base_layer.weight
        key = f"{name}.base_layer.weight"
        assert effective[key].shape == base.shape
        torch.testing.assert_close(delta[key], expected * scaling)
        torch.testing.assert_close(effective[key], base + expected * scaling)
        assert delta[key].abs().max() > 0.1
    return effective, delta


def test_lora_roberta_seq_cls():
    torch.manual_seed(0)
    base = ARCHS["roberta"][0]()
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    model = peft.get_peft_model(base, config)
    _randomize_lora_b(model)
    blocks = stack_blocks("base_model.model.roberta.encoder.layer")
    assert [p for p, _ in find_blocks(model)] == blocks
    assert [p for p, _ in find_blocks(model.base_model)] == stack_blocks("model.roberta.encoder.layer")  # LoraModel

    partition = partition_model(model)
    assert [u.name for u in partition.units] == blocks
    unit = partition.units[0]
    prefix = f"{blocks[0]}.attention.self"
    assert f"{prefix}.query.base_layer.weight" in unit.matrices and len(unit.matrices) == 6
    assert not any("lora_" in m for m in unit.matrices)
    assert set(unit.params) == {f"{prefix}.{m}.lora_{ab}.default.weight" for m in ("query", "value") for ab in "AB"}
    # the classifier's trainable copy is outside; the frozen original is nowhere
    assert set(partition.outside) == {
        f"base_model.model.classifier.modules_to_save.default.{n}"
        for n in ("dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias")
    }
    _check_groups(model, partition)
    _check_lora_matrices(model, partition, scaling=8 / 4)

    matrix = partition_model(model, unit="matrix")
    assert [u.name for u in matrix.units] == [f"{b}.attention.self.{m}" for b in blocks for m in ("query", "value")]
    assert matrix.units[0].matrices == (f"{prefix}.query.base_layer.weight",)
    assert set(matrix.units[0].params) == {f"{prefix}.query.lora_{ab}.default.weight" for ab in "AB"}
    _check_groups(model, matrix)


def test_lora_llama_rslora_merge_disable():
    torch.manual_seed(0)
    base = ARCHS["llama"][0]()
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        use_rslora=True,
        modules_to_save=["o_proj"],  # inside the blocks: the trainable copy is analysed, not the original
    )
    model = peft.get_peft_model(base, config)
    _randomize_lora_b(model)
    blocks = stack_blocks("base_model.model.model.layers")
    partition = partition_model(model)
    assert [u.name for u in partition.units] == blocks
    assert len(partition.units[0].matrices) == 7
    o_proj = f"{blocks[0]}.self_attn.o_proj"
    assert f"{o_proj}.modules_to_save.default.weight" in partition.units[0].matrices
    assert f"{o_proj}.modules_to_save.default.weight" in partition.units[0].params
    assert not any("original_module" in m for u in partition.units for m in u.matrices)
    assert partition.outside == ()
    groups = _check_groups(model, partition)
    assert groups[0]["params"] == []
    effective, delta = _check_lora_matrices(model, partition, scaling=8 / math.sqrt(4))

    # merged: the base weight already holds ΔW, so the effective weight is unchanged
    model.merge_adapter()
    for key, w in unit_matrices(model, partition).items():
        torch.testing.assert_close(w, effective[key])
    for key, w in unit_matrices(model, partition, lora_view="delta").items():
        torch.testing.assert_close(w, delta[key])
    model.unmerge_adapter()

    # disabled: the forward pass uses W₀ only
    params = dict(model.named_parameters())
    with model.disable_adapter():
        for key, w in unit_matrices(model, partition).items():
            torch.testing.assert_close(w, params[key])
        assert all(not w.any() for w in unit_matrices(model, partition, lora_view="delta").values())


def test_lora_gpt2_fan_in_fan_out():
    torch.manual_seed(0)
    base = ARCHS["gpt2"][0]()
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    model = peft.get_peft_model(base, config)
    _randomize_lora_b(model)
    partition = partition_model(model)
    assert [u.name for u in partition.units] == stack_blocks("base_model.model.transformer.h")
    effective, _ = _check_lora_matrices(model, partition, scaling=1.0, fan_in_fan_out=True)
    assert effective["base_model.model.transformer.h.0.attn.c_attn.base_layer.weight"].shape == (32, 96)  # in×out


def test_lora_mixtral_target_parameters():
    """LoRA on 3-D expert tensors (peft's nested ParamWrapper): W₀ + ΔW equals what merging writes."""
    torch.manual_seed(0)
    base = ARCHS["mixtral"][0]()
    targets = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], target_parameters=targets)
    model = peft.get_peft_model(base, config)
    _randomize_lora_b(model)
    experts = "base_model.model.model.layers.0.mlp.experts"
    partition = partition_model(model, unit="matrix")
    unit = next(u for u in partition.units if u.name == experts)
    assert unit.matrices == tuple(f"{experts}.base_layer.base_layer.{p}" for p in ("gate_up_proj", "down_proj"))
    assert len(unit.params) == 4  # lora_A and lora_B of both wrappers
    _check_groups(model, partition)

    effective = unit_matrices(model, partition)
    delta = unit_matrices(model, partition, lora_view="delta")
    assert set(delta) == set(effective)  # every matrix unit here has LoRA
    assert effective[unit.matrices[0]].shape == (4, 128, 32)
    params = dict(model.named_parameters())
    model.merge_adapter()
    for name in unit.matrices:
        torch.testing.assert_close(params[name], effective[name])
        torch.testing.assert_close(unit_matrices(model, partition)[name], effective[name])
