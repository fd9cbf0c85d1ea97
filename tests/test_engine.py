"""tb_hf.engine: the spectral pass (plan, this rank's share, matrices, analysis, exchange), single-process here; the
multi-process runs are in tests/test_distributed.py."""

from __future__ import annotations

import peft
import pytest
import torch

import tb_hf.distributed as tbd
from tb_hf import TempBalanceArguments, partition_model
from tb_hf.distributed import Split, assign_by_cost, is_distributed, sharding_kind
from tb_hf.engine import SpectralEngine, unit_matrices
from tb_hf.spectral import analyze
from tb_hf.testing import ARCHS, same, same_spectra


def test_the_split_is_made_once_per_engine_and_every_pass_uses_it(monkeypatch):
    torch.manual_seed(0)
    model = ARCHS["mixtral"][0]()
    engine = SpectralEngine(model, partition_model(model, "matrix"), TempBalanceArguments(tb_min_evals=8))
    split = engine.split
    assert split.tasks == tuple(engine.tasks) and (split.rank, split.world) == (0, 1)
    assert split.owners == (0,) * len(engine.tasks) and split.mine == list(engine.tasks)  # alone: every task
    costs = [t.cost for t in engine.tasks]
    second = Split(split.tasks, tuple(assign_by_cost(costs, 2)), rank=1, world=2)
    assert second.mine == [t for t, o in zip(engine.tasks, assign_by_cost(costs, 2), strict=True) if o == 1]
    assert 0 < len(second.mine) < len(engine.tasks)

    calls = []
    monkeypatch.setattr(tbd, "assign_by_cost", lambda *a: calls.append(a) or [0] * len(a[0]))
    sync = engine.run(model)
    both = engine.run(model, by_block=True)
    async_ = engine.finish(engine.compute(engine.snapshot(model)))
    assert calls == []  # no pass splits the plan again
    assert same_spectra(sync.spectra, both.spectra) and same_spectra(sync.spectra, async_.spectra)
    with pytest.raises(RuntimeError, match="injected"):  # alone, the error of `compute` itself
        engine.finish(None, RuntimeError("injected"))
    with pytest.raises(KeyError):
        split.shared(lambda: {}["missing"])


@pytest.mark.parametrize("name", ["llama", "mixtral", "gpt2"])
def test_single_process_pass_is_the_plain_pass(name):
    assert not is_distributed()
    torch.manual_seed(0)
    model = ARCHS[name][0]()
    partition = partition_model(model, "matrix")
    assert sharding_kind(model) is None
    expected = analyze(unit_matrices(model, partition), min_evals=8)
    engine = SpectralEngine(model, partition, TempBalanceArguments(tb_min_evals=8, tb_unit="matrix"))
    assert same_spectra(engine.run(model).spectra, expected)
    assert same_spectra(engine.run(model, by_block=True).spectra, expected)  # block by block: the same numbers
    blocks = list(engine._blocks(model, engine.tasks))
    assert [share[0].block for share, _ in blocks] == list(partition.blocks)
    gathered = {str(k): v for _, mats in blocks for k, v in mats.items()}
    if name == "mixtral":  # 3-D expert weights come as one matrix per expert, named as analyze names them
        assert "model.layers.0.mlp.experts.down_proj[3]" in gathered
    assert set(gathered) == {str(k) for k in expected}


def test_lora_views_go_through_unchanged():
    torch.manual_seed(0)
    model = peft.get_peft_model(ARCHS["llama"][0](), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    partition = partition_model(model, "block")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    for view in ("effective", "delta"):
        expected = analyze(unit_matrices(model, partition, lora_view=view), min_evals=4)
        engine = SpectralEngine(model, partition, TempBalanceArguments(tb_min_evals=4, tb_lora_view=view))
        got = engine.run(model).spectra
        assert [k.param for k in got] == list(expected)
        matrices = unit_matrices(model, partition, lora_view=view)  # what the pass analyses, tensor for tensor
        built = {k: m for _, mats in engine._blocks(model, engine.tasks) for k, m in mats.items()}
        assert [k.param for k in built] == list(matrices)
        assert all(torch.equal(m, matrices[k.param]) and not m.requires_grad for k, m in built.items())
        assert all(same(got[k].alpha, expected[k.param].alpha) for k in got)
        if view == "delta":  # labelled as the update ΔW of the LoRA layer, and rank 4: no fit of round-off
            assert [s.name for s in got.values()][:2] == [
                "base_model.model.model.layers.0.self_attn.q_proj.ΔW",
                "base_model.model.model.layers.0.self_attn.v_proj.ΔW",
            ]
            assert {s.status for s in got.values()} == {"rank_deficient"}


def test_unit_matrices_plain(arch):
    _, model, _, _, _ = arch
    partition = partition_model(model)
    matrices = unit_matrices(model, partition)
    params = dict(model.named_parameters())
    assert list(matrices) == [m for u in partition.units for m in u.matrices]
    for name, w in matrices.items():
        assert not w.requires_grad
        assert torch.equal(w, params[name])
    assert unit_matrices(model, partition, lora_view="delta") == {}  # no LoRA, no deltas
