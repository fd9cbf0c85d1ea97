"""tb_hf.distributed: cost-balanced assignment, the shared spectral pass, sharded weights, DeepSpeed checks.

The multi-process tests launch 2 real CPU processes (gloo) with ``torchrun --standalone`` (a free port is chosen
by the rendezvous) running ``tests/dist_train.py``; each rank writes a JSON file that the test compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from tb_hf import (
    TempBalanceTrainer,
)
from tb_hf.checks import DEEPSPEED_OPTIMIZER_MESSAGE, validate
from tb_hf.distributed import (
    FSDP1_MESSAGE,
    assign_by_cost,
    deepspeed_config_sections,
    matrix_cost,
)
from tb_hf.testing import ARCHS, dataset_for, history, same, tiny_training_args

HERE = Path(__file__).parent
LLAMA_7B_BLOCK = [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008)]


# --------------------------------------------------------------------------------------------------
# In-process


def test_cost_is_gram_eigensolve_plus_product():
    assert matrix_cost((768, 768)) == 768**3 + 768 * 768 * 768
    assert matrix_cost((4096, 11008)) == matrix_cost((11008, 4096)) == 4096**3 + 4096 * 11008 * 4096
    assert matrix_cost((8, 4, 3, 3)) == 9 * (4**3 + 8 * 4 * 4)
    assert matrix_cost((4096, 11008)) > 200 * matrix_cost((768, 768))  # balance by cost, not by count
    farms = matrix_cost((256, 512), estimator="farms", farms_window=64, farms_grid_size=3)
    assert farms == 9 * (64**3 + 64 * 64 * 64)
    with pytest.raises(ValueError, match="2-D or 4-D"):
        matrix_cost((4, 4, 4))


def test_assignment_is_lpt_balanced_and_deterministic():
    # One LLaMA-7B-shaped block and twelve small matrices: by count the split would be 10/10 but very unequal.
    shapes = LLAMA_7B_BLOCK + [(768, 768)] * 12 + [(32, 4096)]
    costs = [matrix_cost(s) for s in shapes]
    for world in (1, 2, 3, 4, 8):
        owners = assign_by_cost(costs, world)
        assert owners == assign_by_cost(costs, world)  # a pure function: every rank computes the same
        assert set(owners) <= set(range(world))
        loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(world)]
        # LPT bound: max load <= 4/3 of the optimum, and the optimum >= max(mean load, largest task).
        assert max(loads) <= 4 / 3 * max(sum(costs) / world, max(costs)) + 1e-9
    owners = assign_by_cost(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(2)]
    assert max(loads) / min(loads) < 1.2
    assert assign_by_cost([], 2) == []
    assert assign_by_cost([1, 1, 1, 1], 2) == [0, 1, 0, 1]
    with pytest.raises(ValueError):
        assign_by_cost([1], 0)


def test_deepspeed_config_with_its_own_optimizer_fails_clearly(tmp_path):
    config = {"zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    assert deepspeed_config_sections(SimpleNamespace(deepspeed=config)) == {"zero_optimization", "optimizer"}
    assert deepspeed_config_sections(SimpleNamespace(deepspeed=str(path))) == {"zero_optimization", "optimizer"}
    hf = SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config={"scheduler": {}}), deepspeed=None)
    assert deepspeed_config_sections(hf) == {"scheduler"}
    assert deepspeed_config_sections(SimpleNamespace(deepspeed=None)) == set()
    assert deepspeed_config_sections(None) == set()

    # What the callback sees under DeepSpeed with an "optimizer" section: DeepSpeed's optimizer, no TempBalance groups.
    ds_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="DeepSpeed config that defines its own 'optimizer'") as err:
        validate(args=SimpleNamespace(deepspeed=config), optimizer=ds_optimizer)
    assert str(err.value) == DEEPSPEED_OPTIMIZER_MESSAGE
    # A "scheduler" section would give every group DeepSpeed's one learning rate: refused too.
    tb_optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "tb_unit": "u"}])
    with pytest.raises(ValueError, match="DeepSpeed"):
        validate(args=SimpleNamespace(deepspeed={"scheduler": {}}), optimizer=tb_optimizer)
    validate(args=SimpleNamespace(deepspeed={"zero_optimization": {}}), optimizer=tb_optimizer)


# --------------------------------------------------------------------------------------------------
# Two real processes


def torchrun(mode: str, out: Path, timeout: float = 300, deepspeed: bool = False) -> list[dict]:
    """Run tests/dist_train.py on 2 CPU processes (gloo); the JSON that each rank wrote.

    With ``deepspeed``: DeepSpeed's CPU accelerator, and no ACCELERATE_USE_CPU (with it the Trainer leaves DeepSpeed
    out without a word; ``use_cpu=True`` in the arguments is enough for gloo)."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "TOKENIZERS_PARALLELISM": "false"}
    if deepspeed:
        del env["ACCELERATE_USE_CPU"]
        env["DS_ACCELERATOR"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(HERE / "dist_train.py"), mode, str(out)]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow  # two torchrun processes: ~12 s
def test_two_process_training_shares_the_pass_and_agrees(tmp_path):
    r0, r1 = torchrun("train", tmp_path)
    assert (r0["rank"], r1["rank"], r0["world_size"], r0["backend"]) == (0, 1, 2, "gloo")
    assert r0["weights_sum"] == r1["weights_sum"]  # DDP: the same weights on both ranks

    # Several updates, identical on both ranks and equal to a single-process pass on the same weights.
    assert [u["step"] for u in r0["updates"]] == [0, 2, 4] == [u["step"] for u in r1["updates"]]
    for u0, u1 in zip(r0["updates"], r1["updates"], strict=True):
        assert u0["factors"] == u1["factors"] == u0["reference"]["factors"] == u1["reference"]["factors"]
        assert u0["alpha"] == u1["alpha"] == u0["reference"]["alpha"]
        assert len(set(u0["factors"].values())) > 3  # matrix units: the factors really differ
    assert r0["lrs"] == r1["lrs"] and len(r0["lrs"]) == 6  # every group's lr at every optimizer step
    assert r0["final_lrs"] == r1["final_lrs"] and r0["tb_factors"] == r1["tb_factors"]
    assert len(set(r0["tb_factors"])) > 3

    # The work was shared: disjoint shares that cover every matrix (3-D experts split per expert), each pass.
    tasks = r0["tasks"]
    assert r0["owners"] == r1["owners"] and set(r0["owners"]) == {0, 1}
    assert any(name.endswith("experts.down_proj[3]") for name in tasks)
    for rank, result in enumerate((r0, r1)):
        share = [t for t, o in zip(tasks, r0["owners"], strict=True) if o == rank]
        assert sorted(result["analysed"]) == sorted(share * r0["passes"])
    assert not set(r0["analysed"]) & set(r1["analysed"])

    # A NaN matrix in rank 1's share: both ranks agree with each other and with the single-process pass.
    n0, n1 = r0["nan"], r1["nan"]
    victim = n0["victim"]
    assert victim in n1["analysed"] and victim not in n0["analysed"]
    assert n0["reference"]["spectra"][victim]["status"] == "non_finite"
    assert n0["factors"] == n1["factors"] == n0["reference"]["factors"]
    assert n0["alpha"] == n1["alpha"] == n0["reference"]["alpha"]
    victim_unit = victim.rsplit(".", 1)[0]
    assert n0["alpha"][victim_unit] is None and n0["factors"][victim_unit] == 1.0
    assert n0["tb_factors"] == n1["tb_factors"]

    # A local failure on rank 1 only: every rank fails the pass the same way and keeps factor 1.
    f0, f1 = r0["failure"], r1["failure"]
    assert f0["factors"] == f1["factors"] and set(f0["factors"].values()) == {1.0}
    assert f0["tb_factors"] == f1["tb_factors"] and set(f0["tb_factors"]) == {1.0}
    assert "failed on rank(s) [1]" in f0["raised"] and "injected failure" in f1["raised"]

    # 'auto': the interval each rank measured is agreed on (the largest), so the passes stay collective
    assert r0["auto_interval"] == r1["auto_interval"] and r0["auto_interval"] >= 1

    # Weight decay balanced with the learning rate: identical on both ranks, and the single-process ratios
    b0, b1 = r0["balance"], r1["balance"]
    assert b0["weight_decays"] == b1["weight_decays"] and b0["lrs"] == b1["lrs"]
    assert b0["wd_factors"] == b1["wd_factors"] == pytest.approx(b0["reference_wd_factors"], rel=1e-12)
    assert len(set(b0["wd_factors"].values())) > 3 and len(set(b0["weight_decays"][-1])) > 3

    # Asynchronous passes: snapshot at steps 2 and 4 (interval 2, lag 1), applied at 3 and 5 on both ranks alike.
    a0, a1 = r0["async"], r1["async"]
    assert a0["lag"] == a1["lag"] == 1
    assert a0["history"] == [[0, None], [3, 2], [5, 4]]
    assert a0["lrs"] == a1["lrs"] and a0["tb_factors"] == a1["tb_factors"]
    assert len({tuple(lrs) for lrs in a0["lrs"]}) == 6 and len(set(a0["tb_factors"])) > 3


@pytest.mark.slow  # two torchrun processes: ~11 s
def test_fsdp2_gathers_full_matrices_and_matches_single_process(tmp_path):
    r0, r1 = torchrun("fsdp2", tmp_path)
    for result in (r0, r1):
        for variant in ("plain", "lora"):
            v = result[variant]
            assert v["sharded"] and v["still_sharded"]  # DTensor parameters before and after the pass
            assert v["local_numel"] * 2 == v["full_numel"]  # each rank really holds half
            assert v["same_partition"]
            assert v["gathered_equal"] and v["gathered_names"] == v["reference_names"]
            assert v["alpha"].keys() == v["reference_alpha"].keys()
            assert all(same(v["alpha"][k], v["reference_alpha"][k]) for k in v["alpha"])
            assert v["loss_finite"]  # FSDP still runs forward/backward after the pass
    assert r0["lora"]["alpha"] == r1["lora"]["alpha"]
    assert r0["fsdp1_error"] == r1["fsdp1_error"] == FSDP1_MESSAGE
    assert r0["plain"]["alpha"] != r0["lora"]["alpha"]  # the LoRA view really used W0 + ΔW


def _without_seconds(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "spectral_seconds"} for r in history(path)]


@pytest.mark.slow  # 2 torchrun processes, 5 DeepSpeed runs: ~45 s (the first DeepSpeed launch on a machine: ~2 min)
def test_deepspeed_zero3_training_is_sharded_agrees_and_resumes_exactly(tmp_path):
    """Real DeepSpeed ZeRO-3 (CPU accelerator, gloo, 2 processes), TempBalanceTrainer on a tiny LLaMA."""
    import deepspeed  # noqa: F401 - a test dependency: fail here, not in the subprocesses, if it is missing

    # The first launch JIT-compiles DeepSpeed's small shared-memory communication extension (about 1-3 minutes on
    # 2 cores); later launches load it from the torch extensions cache.
    r0, r1 = torchrun("zero3", tmp_path, timeout=1200, deepspeed=True)
    assert (r0["rank"], r1["rank"], r0["world_size"], r0["backend"]) == (0, 1, 2, "gloo")
    full = r0["full"]
    assert full["wrapped"] == "DeepSpeedEngine" and full["global_step"] == 6
    for result in (r0, r1):
        for name in ("full", "stopped", "lora", "async"):
            s0 = result[name]["step0"]
            assert s0["sharding"] == "zero3"
            assert s0["partitioned"] and s0["released"]  # empty local tensors before and after the pass
            assert s0["full_inside"] and s0["gathered_equal"]  # inside: the full matrices, bit for bit
            assert s0["gathered_names"] == s0["reference_names"]  # every matrix, in model order
        for name in ("full", "stopped", "resumed", "lora", "async"):  # partition and plan from ds_shape: as unsharded
            assert result[name]["same_partition"] and result[name]["same_plan"]

    # Both ranks: identical factors, learning rates at every step, final weights.
    for name in ("full", "stopped", "resumed", "lora", "async"):
        for key in ("factors", "tb_factors", "lrs", "weights", "interval"):
            assert r0[name][key] == r1[name][key], (name, key)
    assert len(set(full["tb_factors"])) > 3  # matrix units: the factors really differ

    # Step 0: the α and factors of a single process without DeepSpeed on the same weights.
    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    args = tiny_training_args(tmp_path / "single", max_steps=1, tb_unit="matrix")
    TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=32)).train()
    single = history(tmp_path / "single")[0]
    zero3 = history(tmp_path / "full")
    assert [r["step"] for r in zero3] == [0, 2, 4]
    assert zero3[0]["alpha"] == single["alpha"] and zero3[0]["factor"] == single["factor"]

    # Resume: the run stopped after its step-3 checkpoint and resumed from it is the uninterrupted run: the same
    # learning rates of every group at every step, factors, interval, history and final weights.
    stopped, resumed = r0["stopped"], r0["resumed"]
    assert stopped["global_step"] == 3 and list(stopped["lrs"]) == ["1", "2", "3"]
    assert list(resumed["lrs"]) == ["4", "5", "6"] and resumed["step0"] == {}
    assert {**stopped["lrs"], **resumed["lrs"]} == full["lrs"]
    assert resumed["factors"] == full["factors"] and resumed["tb_factors"] == full["tb_factors"]
    assert resumed["interval"] == full["interval"] == 2
    assert resumed["weights"] == full["weights"]
    assert _without_seconds(tmp_path / "interrupted") == _without_seconds(tmp_path / "full")

    # peft LoRA under ZeRO-3: the adapted matrices W₀ + ΔW were formed from the gathered base and adapter weights.
    assert all(unit.endswith(("q_proj", "v_proj")) for unit in r0["lora"]["factors"])
    assert len(set(r0["lora"]["factors"].values())) > 1

    # tb_async under ZeRO-3: snapshots at steps 2 and 4 (gathered in the training thread), applied at 3 and 5; the
    # step-2 snapshot is of the same weights as the synchronous run's step-2 pass, so it finds the same α.
    asynchronous = history(tmp_path / "async")
    assert [(r["step"], r.get("snapshot_step")) for r in asynchronous] == [(0, None), (3, 2), (5, 4)]
    assert asynchronous[1]["alpha"] == zero3[1]["alpha"] and asynchronous[1]["factor"] == zero3[1]["factor"]
    lrs = r0["async"]["lrs"]  # step 3 still runs on the step-0 factors; step 4 on the synchronous run's step-2 ones
    assert lrs["2"] == full["lrs"]["2"] and lrs["3"] != full["lrs"]["3"] and lrs["4"] == full["lrs"]["4"]
