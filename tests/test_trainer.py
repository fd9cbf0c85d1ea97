"""TempBalanceTrainer and TempBalanceCallback inside the real transformers Trainer."""

from __future__ import annotations

import json
import logging
import math

import peft
import pytest
import torch
import transformers as tf
from tiny_models import ARCHS, LLAMA_LIKE, dataset_for, tiny_training_args
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, get_scheduler

from tb_hf import (
    TempBalanceCallback,
    TempBalanceConfig,
    TempBalanceTrainer,
    create_tempbalance_optimizer,
    find_blocks,
)


def config(tmp_path, **overrides) -> TempBalanceConfig:
    return tiny_training_args(tmp_path, **overrides)


def history(tmp_path) -> list[dict]:
    with open(tmp_path / "tempbalance" / "history.jsonl") as f:
        return [json.loads(line) for line in f]


class Recorder(TrainerCallback):
    """Every group's lr and factor as the optimizer step uses them (before `optimizer.step()`)."""

    def __init__(self):
        self.steps: list[tuple[int, list[tuple]]] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        groups = [(g["tb_unit"], g["lr"], g["tb_base_lr"], g["tb_factor"]) for g in optimizer.param_groups]
        self.steps.append((state.global_step, groups))


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_architecture_trains(name, tmp_path):
    torch.manual_seed(0)
    factory, blocks, mats, _ = ARCHS[name]
    model = factory()
    trainer = TempBalanceTrainer(model=model, args=config(tmp_path), train_dataset=dataset_for(model))
    trainer.train()
    assert trainer.state.global_step == 3
    partition = trainer.tempbalance.partition
    assert list(partition.blocks) == blocks
    assert [u.name for u in partition.units] == blocks
    for unit, tails in zip(partition.units, mats, strict=True):
        assert unit.matrices == tuple(f"{unit.name}.{t}" for t in tails)
    records = history(tmp_path)
    assert [r["step"] for r in records] == [0, 2]
    for r in records:
        assert set(r["factor"]) == set(blocks)
        assert all(a is not None and a > 1 for a in r["alpha"].values()), r  # every block fitted
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors == pytest.approx(records[-1]["factor"])
    assert min(factors.values()) == pytest.approx(0.5) and max(factors.values()) == pytest.approx(1.5)
    logged = [h for h in trainer.state.log_history if "tb/spectral_seconds" in h]
    assert logged and all(f"tb/alpha/{b}" in logged[0] and f"tb/lr_scale/{b}" in logged[0] for b in blocks)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_learning_rate_is_base_times_factor_times_schedule(schedule, tmp_path):
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(
        tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=100)
    )
    recorder = Recorder()
    args = config(
        tmp_path, max_steps=12, learning_rate=5e-2, lr_scheduler_type=schedule, warmup_steps=3, tb_update_steps="2"
    )
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=48), callbacks=[recorder])
    trainer.train()
    reference = get_scheduler(
        schedule, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), num_warmup_steps=3, num_training_steps=12
    )
    assert [step for step, _ in recorder.steps] == list(range(12))
    seen_factors: dict[str, set] = {}
    for step, groups in recorder.steps:
        schedule_t = reference.lr_lambdas[0](step)
        assert groups[0][0] is None and groups[0][1] == pytest.approx(args.learning_rate * schedule_t, rel=1e-12)
        for unit, lr, base, factor in groups:
            assert lr == pytest.approx(base * factor * schedule_t, rel=1e-12, abs=1e-18), (step, unit)
            if unit is not None:
                seen_factors.setdefault(unit, set()).add(round(factor, 12))
    assert any(len(values) > 1 for values in seen_factors.values()), "factors never changed: the test shows nothing"
    assert [r["step"] for r in history(tmp_path)] == [0, 2, 4, 6, 8, 10]


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    recorder = Recorder()
    args = config(tmp_path, max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=3)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=36), callbacks=[recorder])
    trainer.train()
    assert len(recorder.steps) == 6  # one record per optimizer step, not per micro-batch
    assert [r["step"] for r in history(tmp_path)] == [0, 2, 4]


def test_auto_interval_is_a_tenth_of_an_epoch(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = config(tmp_path, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=2, tb_update_steps="auto")
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=64))
    trainer.train()
    assert trainer.tempbalance.interval == 3  # 32 steps per epoch // 10
    records = history(tmp_path)
    assert [r["step"] for r in records] == list(range(0, 32, 3))
    assert [r["epoch"] for r in records] == [step / 32 for step in range(0, 32, 3)]


@pytest.mark.slow  # two training runs and a checkpoint
def test_resume_is_bit_identical(tmp_path):
    def run(out, resume=None, save=False):
        torch.manual_seed(0)
        model = ARCHS["bert"][0]()
        recorder = Recorder()
        args = config(
            out,
            max_steps=8,
            learning_rate=2e-2,
            warmup_steps=2,
            tb_update_steps="3",
            save_strategy="steps" if save else "no",
            save_steps=4,
        )
        trainer = TempBalanceTrainer(
            model=model, args=args, train_dataset=dataset_for(model, n=32), callbacks=[recorder]
        )
        trainer.train(resume_from_checkpoint=resume)
        return recorder.steps, trainer

    straight, trainer_a = run(tmp_path / "a", save=True)
    resumed, trainer_b = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4"))
    assert [s for s, _ in resumed] == [4, 5, 6, 7]
    assert resumed == straight[4:]  # exact equality of every group's lr and factor
    assert {s for s, _ in straight} == set(range(8))
    # the update at step 6 happened in both runs and gave the same alphas and factors
    last_a, last_b = history(tmp_path / "a")[-1], history(tmp_path / "b")[-1]
    assert last_b["step"] == last_a["step"] == 6
    assert (last_b["alpha"], last_b["factor"]) == (last_a["alpha"], last_a["factor"])
    for pa, pb in zip(trainer_a.model.parameters(), trainer_b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_nan_block_keeps_factor_one_and_training_continues(tmp_path, caplog):
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(
        tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=100)
    )
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.query.weight[0, 0] = math.nan
    trainer = TempBalanceTrainer(model=model, args=config(tmp_path), train_dataset=dataset_for(model))
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer.state.global_step == 3
    first, later = history(tmp_path)
    assert first["skipped"] == ["bert.encoder.layer.1"] and first["factor"]["bert.encoder.layer.1"] == 1.0
    assert {first["factor"]["bert.encoder.layer.0"], first["factor"]["bert.encoder.layer.2"]} == {0.5, 1.5}
    # the NaN reached every weight through the first update: every unit is skipped, training still runs
    assert later["skipped"] == [f"bert.encoder.layer.{i}" for i in range(3)]
    assert set(later["factor"].values()) == {1.0}
    assert "bert.encoder.layer.1" in caplog.text and "non_finite" in caplog.text


def test_model_without_blocks_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="ModuleList of at least 2"):
        TempBalanceTrainer(model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), args=config(tmp_path))


def test_callback_with_plain_trainer(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["roberta"][0]()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=2, disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    callback = TempBalanceCallback(update_steps="2", min_evals=8, mapping="sigmoid")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset_for(model),
        optimizers=(create_tempbalance_optimizer(model, args, callback.user_tb_args), None),
        callbacks=[callback],
    )
    trainer.train()
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert set(factors) == {"roberta.encoder.layer.0", "roberta.encoder.layer.1"}
    assert all(10 ** (-1) < f < 10**0.5 and f != 1.0 for f in factors.values())  # sigmoid range, s = (2, 1)
    assert any("tb/lr_scale/roberta.encoder.layer.0" in h for h in trainer.state.log_history)


def test_callback_without_tempbalance_optimizer_says_what_to_do(tmp_path):
    model = ARCHS["bert"][0]()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset_for(model), callbacks=[TempBalanceCallback()])
    with pytest.raises(ValueError, match="create_tempbalance_optimizer"):
        trainer.train()
    with pytest.raises(TypeError, match="unknown TempBalance options"):
        TempBalanceCallback(mappping="linear")


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(tb_mapping="cubic"), "tb_mapping"),
        (dict(tb_farms_window=64), "tb_estimator"),
        (dict(tb_xmin_method="ks", tb_xmin_pos=1.5), "tb_xmin_pos"),
        (dict(tb_update_steps="0"), "tb_update_steps"),
        (dict(tb_lr_min=2.0, tb_lr_max=1.0), "tb_lr_min"),
    ],
)
def test_invalid_config_fails_at_construction(options, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        TempBalanceConfig(output_dir=str(tmp_path), **options)


@pytest.mark.parametrize("extra", [dict(optim="sgd"), dict(optim="adafactor"), dict(bf16=True)])
def test_optimizers_and_mixed_precision(extra, tmp_path):
    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    trainer = TempBalanceTrainer(model=model, args=config(tmp_path, **extra), train_dataset=dataset_for(model))
    trainer.train()
    assert len(history(tmp_path)) == 2
    assert {g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]} == {0.5, 1.5}


# --------------------------------------------------------------------------------------------------
# peft LoRA


def lora_model(name: str, task: str):
    torch.manual_seed(0)
    if name == "roberta":
        base, targets = ARCHS["roberta"][0](), ["query", "value"]
    elif task == "SEQ_CLS":
        base, targets = tf.LlamaForSequenceClassification(tf.LlamaConfig(**LLAMA_LIKE)), ["q_proj", "v_proj"]
    else:
        base, targets = ARCHS["llama"][0](), ["q_proj", "v_proj"]
    return peft.get_peft_model(base, peft.LoraConfig(task_type=task, r=4, lora_alpha=8, target_modules=targets))


@pytest.mark.parametrize("name, task", [("roberta", "SEQ_CLS"), ("llama", "CAUSAL_LM"), ("llama", "SEQ_CLS")])
def test_lora_training(name, task, tmp_path):
    model = lora_model(name, task)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    trainer = TempBalanceTrainer(
        model=model, args=config(tmp_path, learning_rate=5e-2), train_dataset=dataset_for(model.base_model.model)
    )
    trainer.train()
    blocks = [p for p, _ in find_blocks(model)]
    names = {id(p): n for n, p in model.named_parameters()}
    by_unit: dict = {}
    for g in trainer.optimizer.param_groups:
        by_unit.setdefault(g["tb_unit"], []).extend(names[id(p)] for p in g["params"])
    assert set(by_unit) == {None, *blocks}
    for block in blocks:
        assert {n.split(".lora_")[1].split(".")[0] for n in by_unit[block]} == {"A", "B"}
    if task == "SEQ_CLS":
        assert any("modules_to_save" in n for n in by_unit[None])  # the new head trains unscaled
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), "base weights are frozen"
    assert {g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]} == {0.5, 1.5}
    # the last update analysed W0 + scaling * B @ A (the B matrices moved away from zero)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
