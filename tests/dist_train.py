"""Helper for tests/test_distributed.py: run under ``torchrun --nproc_per_node 2``; each rank writes JSON.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_train.py train OUT
    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_train.py fsdp2 OUT

``train``: TempBalanceTrainer (DDP on CPU, gloo) on a tiny Mixtral (2-D and 3-D expert weights, matrix units);
records every spectral update with the single-process reference on the same weights, the learning rate of every
group at every step, which matrices this rank analysed; then a NaN matrix in rank 1's share, and a pass that raises
on rank 1 only.

``fsdp2``: raw ``fully_shard`` on a 2-process CPU gloo mesh, a tiny LLaMA and a peft LoRA LLaMA: gathered matrices
against the unsharded weights, `spectral_pass` against the single-process α.

``zero3`` (with ``DS_ACCELERATOR=cpu`` and without ``ACCELERATE_USE_CPU``, which makes the Trainer drop DeepSpeed):
TempBalanceTrainer under real DeepSpeed ZeRO-3 (``deepspeed`` from PyPI, gloo) on a tiny LLaMA, matrix units: the
partitioned parameters, the matrices gathered block by block against the unsharded weights, the factors and every
group's lr at every step; an uninterrupted 6-step run (checkpoints at 3 and 6), a run stopped after its step-3
checkpoint and resumed from it, a short peft LoRA run (W₀ + ΔW from the gathered base and adapter weights) and an
asynchronous one (tb_async).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys

import torch
import torch.distributed as dist
from transformers import TrainerCallback

import tb_hf.distributed as tbd
import tb_hf.engine as tbe
from tb_hf import (
    TempBalanceArguments,
    TempBalanceTrainer,
    compute_factors,
    compute_wd_factors,
    partition_model,
    unit_matrices,
    unit_metrics,
)
from tb_hf.spectral import analyze
from tb_hf.testing import ARCHS, batch_for, dataset_for, tiny_training_args

OPTIONS = dict(min_evals=8)


def spectra_json(spectra) -> dict:
    return {str(k): {"alpha": s.alpha, "status": s.status, "num_evals": s.num_evals} for k, s in spectra.items()}


def nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class Recorder(TrainerCallback):
    """Every spectral update (with the single-process reference on the same weights) and every group's lr."""

    def __init__(self, trainer_ref: list):
        self.trainer_ref = trainer_ref
        self.updates: list[dict] = []
        self.lrs: list[list[float]] = []

    def reference(self, model) -> dict:
        tb = self.trainer_ref[0].tempbalance
        b = tb.balancer
        spectra = analyze(unit_matrices(model, b.partition, lora_view=b.options.spectral.lora_view),
                          **b.options.spectral.fit_kwargs())  # fmt: skip
        metrics = unit_metrics(spectra, b.engine.metric_units(), metric=b.options.spectral.metric)
        factors = compute_factors(metrics, weights=b.unit_weights, **b.options.balance.factor_kwargs())
        return {"alpha": nan_to_none(metrics), "factors": factors, "spectra": spectra_json(spectra)}

    def record(self, step, model):
        tb = self.trainer_ref[0].tempbalance
        alphas = {k.removeprefix("tb/alpha/"): v for k, v in tb._pending_logs.items() if k.startswith("tb/alpha/")}
        self.updates.append(
            {
                "step": step,
                "factors": dict(tb.balancer.factors),
                "alpha": nan_to_none(alphas),
                "reference": self.reference(model),
            }
        )

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:  # the first pass ran in on_train_begin, on these weights
            self.record(0, model)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        tb = self.trainer_ref[0].tempbalance
        if state.global_step % tb.schedule.interval == 0 and state.global_step < state.max_steps:
            self.record(state.global_step, model)


def train(out: str) -> dict:
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = ARCHS["mixtral"][0]()
    dataset = dataset_for(model, n=32)
    args = tiny_training_args(os.path.join(out, "run"), max_steps=6, tb_unit="matrix")
    analysed: list[str] = []
    real_analyze = tbe.analyze

    def counting_analyze(matrices, **options):
        analysed.extend(str(k) for k in matrices)
        return real_analyze(matrices, **options)

    tbe.analyze = counting_analyze
    trainer_ref: list = []
    recorder = Recorder(trainer_ref)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset, callbacks=[recorder])
    trainer_ref.append(trainer)
    trainer.train()
    passes = len(recorder.updates)
    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "updates": recorder.updates,
        "lrs": recorder.lrs,
        "final_lrs": [g["lr"] for g in trainer.optimizer.param_groups],
        "tb_factors": [g["tb_factor"] for g in trainer.optimizer.param_groups],
        "analysed": list(analysed),  # names this rank analysed in the training passes
        "passes": passes,
        "weights_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
    }
    tb = trainer.tempbalance
    tasks = tb.balancer.engine.tasks
    owners = tbd.assign_by_cost([t.cost for t in tasks], dist.get_world_size())
    result["tasks"] = [str(t.key) for t in tasks]
    result["owners"] = owners

    # A NaN matrix in rank 1's share: rank 1 reports status "non_finite", every rank must agree.
    victim = next(t for t, o in zip(tasks, owners, strict=True) if o == 1 and t.key.index is None)
    with torch.no_grad():
        dict(model.named_parameters())[victim.key.param].fill_(float("nan"))
    analysed.clear()
    factors = tb.update(model, trainer.optimizer, trainer.lr_scheduler, args, trainer.state, step=100)
    alphas = {k.removeprefix("tb/alpha/"): v for k, v in tb._pending_logs.items() if k.startswith("tb/alpha/")}
    result["nan"] = {
        "victim": str(victim.key),
        "analysed": list(analysed),
        "factors": factors,
        "alpha": nan_to_none(alphas),
        "tb_factors": [g["tb_factor"] for g in trainer.optimizer.param_groups],
        "reference": recorder.reference(model),
    }

    # A pass whose local computation raises on rank 1 only: every rank must fail it the same way (factor 1).
    def failing_analyze(matrices, **options):
        raise RuntimeError("injected failure")

    if rank == 1:
        tbe.analyze = failing_analyze
    factors = tb.update(model, trainer.optimizer, trainer.lr_scheduler, args, trainer.state, step=101)
    result["failure"] = {"factors": factors, "tb_factors": [g["tb_factor"] for g in trainer.optimizer.param_groups]}
    try:
        tb.balancer.engine.run(model)
        result["failure"]["raised"] = None
    except RuntimeError as err:
        result["failure"]["raised"] = str(err)
    tbe.analyze = real_analyze

    # Asynchronous passes: each rank computes its share in a background thread, the results are exchanged in
    # the training thread at the fixed apply step, and every rank applies identical factors at that step.
    torch.manual_seed(0)
    model = ARCHS["mixtral"][0]()
    args = tiny_training_args(os.path.join(out, "async"), max_steps=6, tb_unit="matrix", tb_async=True)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset)
    lrs = LrLog()
    trainer.add_callback(lrs)
    trainer.train()
    history = []
    if rank == 0:
        with open(os.path.join(out, "async", "tempbalance", "history.jsonl")) as f:
            history = [json.loads(line) for line in f]
    # tb_update_steps="auto": each rank times its own steps, but all ranks must settle on one interval.
    torch.manual_seed(0)
    model = ARCHS["mixtral"][0]()
    args = tiny_training_args(os.path.join(out, "auto"), max_steps=8, tb_update_steps="auto", tb_max_overhead=0.5)
    auto = TempBalanceTrainer(model=model, args=args, train_dataset=dataset)
    auto.train()
    result["auto_interval"] = auto.tempbalance.schedule.interval
    # Weight decay balanced with the learning rate (AlphaDecay + the 'se' map on a depth profile): every rank gets
    # the same weight decays and learning rates, and the ratios a single process computes from the same α.
    torch.manual_seed(0)
    model = ARCHS["mixtral"][0]()
    args = tiny_training_args(os.path.join(out, "balance"), max_steps=4, tb_unit="matrix", weight_decay=0.1,
                              tb_balance="both", tb_mapping="se", tb_se_threshold=0.5, tb_llrd_decay=0.8)  # fmt: skip
    balanced = TempBalanceTrainer(model=model, args=args, train_dataset=dataset)
    decays = LrLog(key="weight_decay")
    balanced.add_callback(decays)
    balanced.train()
    tb = balanced.tempbalance
    tb.update(model, balanced.optimizer, balanced.lr_scheduler, args, balanced.state, step=100)  # the final weights
    spectra = analyze(unit_matrices(model, tb.balancer.partition), **tb.balancer.options.spectral.fit_kwargs())
    result["balance"] = {
        "weight_decays": decays.lrs,
        "lrs": [g["lr"] for g in balanced.optimizer.param_groups],
        "wd_factors": tb.balancer.wd_factors,
        "reference_wd_factors": compute_wd_factors(
            unit_metrics(spectra, tb.balancer.engine.metric_units()),
            wd_min_ratio=tb.balancer.options.balance.wd_min_ratio,
            wd_max_ratio=tb.balancer.options.balance.wd_max_ratio,
        ),
    }
    result["async"] = {
        "lrs": lrs.lrs,
        "tb_factors": [g["tb_factor"] for g in trainer.optimizer.param_groups],
        "history": [(r["step"], r.get("snapshot_step")) for r in history],
        "lag": trainer.tempbalance.schedule.lag,
    }
    return result


class LrLog(TrainerCallback):
    def __init__(self, key: str = "lr"):
        self.key = key
        self.lrs: list[list[float]] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([g[self.key] for g in optimizer.param_groups])


def fsdp2(out: str) -> dict:
    import peft
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    result = {"rank": dist.get_rank()}
    for variant in ("plain", "lora"):
        torch.manual_seed(0)
        model = ARCHS["llama"][0]()
        if variant == "lora":
            config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
            model = peft.get_peft_model(model, config)
            with torch.no_grad():  # make ΔW non-zero so that W0 + ΔW differs from W0
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.5)
        reference = copy.deepcopy(model)
        ref_partition = partition_model(reference, "block")
        ref_matrices = unit_matrices(reference, ref_partition)
        ref_spectra = analyze(ref_matrices, **OPTIONS)

        for block in ref_partition.blocks:
            fully_shard(model.get_submodule(block), mesh=mesh)
        fully_shard(model, mesh=mesh)
        partition = partition_model(model, "block")
        sharded = all(isinstance(p, DTensor) for p in model.parameters())
        local_numel = sum(p.to_local().numel() for p in model.parameters())

        engine = tbe.SpectralEngine(model, partition, TempBalanceArguments(tb_min_evals=8))
        equal, seen = True, []
        for _share, mats in engine._blocks(model, engine.tasks):
            for key, tensor in mats.items():
                seen.append(str(key))
                equal &= not isinstance(tensor, DTensor) and torch.equal(tensor, ref_matrices[key.param])
        spectra = engine.run(model).spectra
        still_sharded = all(isinstance(p, DTensor) for p in model.parameters())
        # FSDP still works after the pass: one forward/backward.
        loss = model(**batch_for(reference)).loss
        loss.backward()
        result[variant] = {
            "sharded": sharded,
            "still_sharded": still_sharded,
            "local_numel": local_numel,
            "full_numel": sum(p.numel() for p in reference.parameters()),
            "same_partition": partition == ref_partition,
            "gathered_equal": bool(equal),
            "gathered_names": seen,
            "reference_names": list(ref_matrices),
            "alpha": {str(k): s.alpha for k, s in spectra.items()},
            "reference_alpha": {str(k): s.alpha for k, s in ref_spectra.items()},
            "loss_finite": bool(torch.isfinite(loss).item()),
        }

    # FSDP1 flattens parameters into 1-D shards: refused with a clear message, not "no blocks found".
    from torch.distributed.fsdp import FullyShardedDataParallel

    from tb_hf.optim import tempbalance_param_groups

    fsdp1 = FullyShardedDataParallel(ARCHS["llama"][0](), device_id=torch.device("cpu"), use_orig_params=True)
    try:
        tempbalance_param_groups(fsdp1, lr=1e-3)
        result["fsdp1_error"] = None
    except ValueError as err:
        result["fsdp1_error"] = str(err)
    return result


#: DeepSpeed ZeRO-3 for the Trainer: every parameter partitioned (no persistence threshold), no "optimizer" section
#: (the Trainer builds TempBalance's optimizer and DeepSpeed wraps it; it also spares building DeepSpeed's fused Adam).
ZERO3_CONFIG = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_allow_untested_optimizer": True,
}


class StepLog(TrainerCallback):
    """Every group's lr as each step uses it (read at the step's start: DeepSpeed steps inside backward). At step 0
    (after TempBalance's first pass) the ZeRO-3 partitions and the gathered matrices against ``reference``. With
    ``stop_at`` the run stops after that step (and its checkpoint): an interrupted run."""

    def __init__(self, trainer_ref: list, reference: dict, stop_at: int | None = None):
        self.trainer_ref, self.reference, self.stop_at = trainer_ref, reference, stop_at
        self.lrs: dict[str, list[float]] = {}
        self.step0: dict = {}

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.lrs[str(state.global_step + 1)] = [g["lr"] for g in optimizer.param_groups]
        if state.global_step == 0 and not self.step0:
            self.step0 = self.inspect(model)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_at is not None and state.global_step == self.stop_at:
            control.should_training_stop = True

    @torch.no_grad()
    def inspect(self, model) -> dict:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        engine = self.trainer_ref[0].tempbalance.balancer.engine
        params = list(model.parameters())
        partitioned = all(p.ds_status == ZeroParamStatus.NOT_AVAILABLE and p.numel() == 0 for p in params)
        names, equal, full_inside = [], True, True
        for share, mats in engine._blocks(model, engine.tasks):
            for task in share:
                full_inside &= dict(model.named_parameters())[task.key.param].shape == task.shape
            for key, tensor in mats.items():
                names.append(key.param)
                equal &= torch.equal(tensor, self.reference[key.param])
        released = all(p.ds_status == ZeroParamStatus.NOT_AVAILABLE and p.numel() == 0 for p in params)
        return {
            "sharding": engine.sharding,
            "partitioned": partitioned,  # every local tensor empty: ZeRO-3 really shards
            "full_inside": bool(full_inside),  # inside the gathering, the full matrix on this rank
            "gathered_equal": bool(equal),  # the gathered matrices are the unsharded weights, bit for bit
            "gathered_names": names,
            "reference_names": list(self.reference),
            "released": released,  # partitioned again after the pass
            "shapes": sorted({str(tuple(p.ds_shape)) for p in params}),
        }


def lora_llama():
    """A tiny LLaMA with LoRA on q/v whose ΔW is not zero (so W₀ + ΔW differs from W₀), the same on every rank."""
    import peft

    torch.manual_seed(0)
    model = peft.get_peft_model(
        ARCHS["llama"][0](), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def zero3(out: str) -> dict:
    import deepspeed

    from tb_hf.engine import plan

    def run(name: str, *, lora=False, stop_at=None, resume=None, max_steps=6, **options) -> dict:
        torch.manual_seed(0)
        model = lora_llama() if lora else ARCHS["llama"][0]()
        reference = copy.deepcopy(model)  # unsharded, the same weights
        ref_partition = partition_model(reference, "matrix")
        args = tiny_training_args(
            os.path.join(out, name), max_steps=max_steps, tb_unit="matrix", deepspeed=ZERO3_CONFIG,
            save_strategy="steps", save_steps=3, **options,
        )  # fmt: skip
        trainer_ref: list = []
        log = StepLog(trainer_ref, unit_matrices(reference, ref_partition), stop_at)
        dataset = dataset_for(reference, n=32)
        trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset, callbacks=[log])
        trainer_ref.append(trainer)
        trainer.train(resume_from_checkpoint=resume)
        tb = trainer.tempbalance
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            weights = [p.detach().double().sum().item() for p in model.parameters()]
        return {
            "lrs": log.lrs,
            "step0": log.step0,
            "factors": dict(tb.balancer.factors),
            "tb_factors": [g["tb_factor"] for g in trainer.optimizer.param_groups],
            "interval": tb.schedule.interval,
            "global_step": trainer.state.global_step,
            "weights": weights,
            "wrapped": type(trainer.model_wrapped).__name__,
            "same_partition": tb.balancer.partition == ref_partition,
            "same_plan": [(str(t.key), t.shape, t.cost) for t in plan(model, ref_partition)]
            == [(str(t.key), t.shape, t.cost) for t in plan(reference, ref_partition)],
        }

    result = {"full": run("full")}  # uninterrupted, 6 steps (checkpoints at 3 and 6); the Trainer set up gloo
    result.update(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=str(dist.get_backend()))
    result["stopped"] = run("interrupted", stop_at=3)  # stopped after its step-3 checkpoint ...
    checkpoint = os.path.join(out, "interrupted", "checkpoint-3")
    result["resumed"] = run("interrupted", resume=checkpoint)  # ... and resumed from it, in the same output_dir
    result["lora"] = run("lora", lora=True, max_steps=2)  # peft LoRA under ZeRO-3: W₀ + ΔW from gathered weights
    result["async"] = run("async", tb_async=True)  # snapshots gathered in the training thread, computed in another
    return result


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    result = {"train": train, "fsdp2": fsdp2, "zero3": zero3}[mode](out)
    with open(os.path.join(out, f"{mode}_rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
