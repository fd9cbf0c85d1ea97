"""TempBalanceTrainer and TempBalanceCallback inside the real transformers Trainer."""

from __future__ import annotations

import logging
import math

import peft
import pytest
import torch
import transformers as tf
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, get_scheduler

from tb_hf import (
    TempBalanceCallback,
    TempBalanceConfig,
    TempBalanceTrainer,
    create_tempbalance_optimizer,
    find_blocks,
)
from tb_hf.testing import ARCHS, LLAMA_LIKE, Recorder, dataset_for, history, tiny_training_args


def config(tmp_path, **overrides) -> TempBalanceConfig:
    return tiny_training_args(tmp_path, **overrides)


def linear_factors(alpha: dict[str, float], lo: float = 0.5, hi: float = 1.5) -> dict[str, float]:
    """TempBalance's linear map (docs/method.md, section 5) of the logged α, written out independently of tb_hf."""
    a_min, a_max = min(alpha.values()), max(alpha.values())
    assert a_max > a_min, alpha
    return {unit: lo + (hi - lo) * (a - a_min) / (a_max - a_min) for unit, a in alpha.items()}


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_architecture_trains(name, tmp_path):
    torch.manual_seed(0)
    factory, blocks, mats, _ = ARCHS[name]
    model = factory()
    trainer = TempBalanceTrainer(model=model, args=config(tmp_path), train_dataset=dataset_for(model))
    trainer.train()
    assert trainer.state.global_step == 3
    partition = trainer.tempbalance.balancer.partition
    assert list(partition.blocks) == blocks
    assert [u.name for u in partition.units] == blocks
    for unit, tails in zip(partition.units, mats, strict=True):
        assert unit.matrices == tuple(f"{unit.name}.{t}" for t in tails)
    records = history(tmp_path)
    assert [r["step"] for r in records] == [0, 2]
    for r in records:
        assert set(r["factor"]) == set(blocks)
        assert all(a is not None and a > 1 for a in r["alpha"].values()), r  # every block fitted
        assert r["factor"] == pytest.approx(linear_factors(r["alpha"]), rel=1e-9)  # the higher α, the higher lr
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors == pytest.approx(linear_factors(records[-1]["alpha"]), rel=1e-9)
    logged = [h for h in trainer.state.log_history if "tb/spectral_seconds" in h]
    assert len(logged) == len(records)
    for h, r in zip(logged, records, strict=True):  # the Trainer's logs carry the same α and factors
        assert {b: h[f"tb/alpha/{b}"] for b in blocks} == pytest.approx(r["alpha"])
        assert {b: h[f"tb/lr_scale/{b}"] for b in blocks} == pytest.approx(linear_factors(r["alpha"]))


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


@pytest.mark.parametrize("budget", [1.0, 0.03])
def test_auto_interval_is_a_tenth_of_an_epoch_within_the_budget(budget, tmp_path):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = config(
        tmp_path,
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=2,
        tb_update_steps="auto",
        tb_max_overhead=budget,
    )
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=64))
    trainer.train()
    tb = trainer.tempbalance
    assert tb.schedule.rule == 3  # Model Balancing: 32 steps per epoch // 10
    # never more often than the budget allows, measured from the step-0 pass and steps 2..3
    needed = math.ceil(tb.balancer.pass_seconds / (budget * tb.schedule.step_seconds()))
    assert tb.balancer.pass_seconds > 0 and tb.schedule.step_seconds() > 0
    assert tb.schedule.interval == max(3, needed)
    assert trainer.optimizer.param_groups[0]["tb_interval"] == tb.schedule.interval  # saved with checkpoints
    expected = [0] + [s for s in range(3, 32) if s % tb.schedule.interval == 0]  # decided after step 3
    records = history(tmp_path)
    assert [r["step"] for r in records] == expected
    assert [r["epoch"] for r in records] == [step / 32 for step in expected]


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
    fitted = {b: first["alpha"][b] for b in ("bert.encoder.layer.0", "bert.encoder.layer.2")}
    assert {b: first["factor"][b] for b in fitted} == pytest.approx(linear_factors(fitted), rel=1e-9)
    # the NaN reached every weight through the first update: every unit is skipped, training still runs
    assert later["skipped"] == [f"bert.encoder.layer.{i}" for i in range(3)]
    assert set(later["factor"].values()) == {1.0}
    assert "bert.encoder.layer.1" in caplog.text and "non_finite" in caplog.text


def test_model_without_blocks_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="Found no transformer blocks in Sequential"):
        TempBalanceTrainer(model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), args=config(tmp_path))


@pytest.mark.parametrize("route", ["peft_style", "training_arguments"])
def test_callback_with_plain_trainer(route, tmp_path):
    torch.manual_seed(0)
    model = ARCHS["roberta"][0]()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=2, disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    callback = TempBalanceCallback(update_steps="2", min_evals=8, mapping="sigmoid")
    if route == "peft_style":  # no TrainingArguments needed, like peft's create_loraplus_optimizer
        optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    else:  # the optimizer args.optim names
        optimizer = create_tempbalance_optimizer(model, args, tb_args=callback.user_options)
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset_for(model), optimizers=(optimizer, None), callbacks=[callback]
    )
    trainer.train()
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert set(factors) == {"roberta.encoder.layer.0", "roberta.encoder.layer.1"}
    assert all(10 ** (-1) < f < 10**0.5 and f != 1.0 for f in factors.values())  # sigmoid range, s = (2, 1)
    assert any("tb/lr_scale/roberta.encoder.layer.0" in h for h in trainer.state.log_history)


def test_peft_style_optimizer_groups_without_training_arguments():
    model = ARCHS["bert"][0]()
    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.98))
    units = [g["tb_unit"] for g in optimizer.param_groups]
    assert units[0] is None and units.count("bert.encoder.layer.0") == 2 == units.count("bert.encoder.layer.1")
    assert all(g["lr"] == 3e-4 == g["tb_base_lr"] and g["betas"] == (0.9, 0.98) for g in optimizer.param_groups)
    decay = {g["weight_decay"] for g in optimizer.param_groups if g["params"]}
    assert decay == {0.0, 0.1}  # biases and norms without weight decay, as in the Trainer
    matrix = create_tempbalance_optimizer(model, torch.optim.SGD, lr=0.1, unit="matrix")
    assert len({g["tb_unit"] for g in matrix.param_groups}) > 3
    with pytest.raises(TypeError, match="needs optimizer_cls and lr"):
        create_tempbalance_optimizer(model, torch.optim.AdamW)


def test_callback_refuses_an_optimizer_built_for_other_units(tmp_path):
    model = ARCHS["bert"][0]()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to="none", use_cpu=True, disable_tqdm=True)
    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3, unit="matrix")
    with pytest.raises(ValueError, match="built with unit='matrix', but the options in force say tb_unit='block'"):
        Trainer(
            model=model, args=args, train_dataset=dataset_for(model), optimizers=(optimizer, None),
            callbacks=[TempBalanceCallback(unit="block")],
        )  # fmt: skip


def test_callback_refuses_weight_decay_balancing_when_every_group_has_no_decay(tmp_path):
    """The callback path: the optimizer's groups carry the decay (here TrainingArguments' default, 0)."""
    model = ARCHS["bert"][0]()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to="none", use_cpu=True, disable_tqdm=True)
    callback = TempBalanceCallback(balance="weight_decay")
    with pytest.raises(ValueError, match="scales each unit's weight_decay, which is 0 here"):  # the args' decay
        create_tempbalance_optimizer(model, args, tb_args=callback.user_options)
    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3)  # weight_decay 0
    with pytest.raises(ValueError, match="every TempBalance group of the optimizer has weight_decay 0"):
        Trainer(model=model, args=args, train_dataset=dataset_for(model), optimizers=(optimizer, None),
                callbacks=[callback])  # fmt: skip # refused when the Trainer is made


def test_weight_decay_balancing_where_only_biases_and_norms_train_says_so(tmp_path):
    """The message said "set weight_decay (e.g. 0.1)" when it was 0.1: no parameter of the units takes decay."""
    model = ARCHS["bert"][0]()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.endswith("weight") or "LayerNorm" in name or "classifier" in name)
    args = tiny_training_args(tmp_path, tb_preset="alphadecay", weight_decay=0.1)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
    with pytest.raises(ValueError, match="no parameter inside the units takes weight decay .only biases and norms"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("kind", ["config", "arguments"])
def test_callback_takes_a_whole_config_or_the_arguments(kind, tmp_path):
    """Passing a whole TempBalanceConfig (TrainingArguments fields and all) with an option used to raise
    TypeError: unexpected keyword 'output_dir'."""
    from tb_hf import TempBalanceArguments

    if kind == "config":
        tb_args = TempBalanceConfig(output_dir=str(tmp_path), tb_xmin_pos=1.5)
    else:
        tb_args = TempBalanceArguments(tb_xmin_pos=1.5)
    callback = TempBalanceCallback(tb_args, mapping="sigmoid")
    assert type(callback.user_options) is TempBalanceArguments
    assert (callback.user_options.tb_mapping, callback.user_options.tb_xmin_pos) == ("sigmoid", 1.5)


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
        # unbounded values: refused at construction, naming the option and a sane range
        (dict(tb_mapping="sigmoid", tb_sigmoid_s_low=2000, tb_sigmoid_s_high=2000), r"tb_sigmoid_s_low .*\[0, 6\]"),
        (dict(tb_lr_max=math.inf), r"tb_lr_max must be a finite number in \(0, 100\]"),
        (dict(tb_xmin_pos=math.inf), r"tb_xmin_pos must be a finite number in \(1, 100\]"),
        (dict(tb_xmin_pos=math.nan), "tb_xmin_pos"),
        (dict(tb_sigmoid_tau=math.inf), "tb_sigmoid_tau"),
        (dict(tb_farms_aspect_ratio=-1.0), "tb_farms_aspect_ratio"),
        (dict(tb_max_overhead=0.0), "tb_max_overhead"),
        (dict(tb_update_steps="sometimes"), "'auto', 'once' or a positive integer"),
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
    records = history(tmp_path)
    assert len(records) == 2
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors == pytest.approx(linear_factors(records[-1]["alpha"]), rel=1e-9)


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


class LoraSnapshot(TrainerCallback):
    """(W0, A, B, scaling) of every LoRA layer as the update after optimizer step ``at`` sees them."""

    def __init__(self, at: int):
        self.at, self.layers = at, {}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at:
            for name, m in model.named_modules():
                if isinstance(m, peft.tuners.lora.LoraLayer):
                    w0, a, b = (x.detach().clone() for x in (m.base_layer.weight, m.lora_A["default"].weight,
                                                               m.lora_B["default"].weight))  # fmt: skip
                    self.layers[name] = (w0, a, b, m.scaling["default"])


def hill_alpha(w: torch.Tensor, xmin_pos: float = 2.0) -> float:
    """α of docs/method.md, sections 2-3 (median xmin), from scratch in float64: eigenvalues of the smaller Gram."""
    w = w.double()
    evals = torch.linalg.eigvalsh(w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w).clamp(min=0)
    i = math.floor(len(evals) / xmin_pos)
    tail = evals[i:]
    return 1 + len(tail) / torch.log(tail / evals[i]).sum().item()


@pytest.mark.parametrize("name, task", [("roberta", "SEQ_CLS"), ("llama", "CAUSAL_LM"), ("llama", "SEQ_CLS")])
def test_lora_training(name, task, tmp_path):
    model = lora_model(name, task)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    snapshot = LoraSnapshot(at=2)
    trainer = TempBalanceTrainer(
        model=model,
        args=config(tmp_path, learning_rate=5e-2),
        train_dataset=dataset_for(model.base_model.model),
        callbacks=[snapshot],
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
    records = history(tmp_path)
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors == pytest.approx(linear_factors(records[-1]["alpha"]), rel=1e-9)
    # The update after step 2 analysed W0 + scaling * B @ A: a block's α is the mean α of its adapted matrices,
    # recomputed here by hand from the weights of that moment, and told apart from W0 alone and from W0 + B @ A.
    assert records[-1]["step"] == 2 and len(snapshot.layers) == 2 * len(blocks)
    for block in blocks:
        layers = [v for k, v in snapshot.layers.items() if k.startswith(block + ".")]
        assert len(layers) == 2 and all(scaling == 8 / 4 for *_, scaling in layers)  # lora_alpha / r
        effective = sum(hill_alpha(w0 + s * b @ a) for w0, a, b, s in layers) / 2
        assert records[-1]["alpha"][block] == pytest.approx(effective, rel=1e-5)
        frozen_only = sum(hill_alpha(w0) for w0, *_ in layers) / 2
        unscaled = sum(hill_alpha(w0 + b @ a) for w0, a, b, _ in layers) / 2  # Model Balancing's W0 + B @ A
        for other in (frozen_only, unscaled):
            assert abs(other - effective) > 1e-3 * effective, "the check could not tell the views apart"


class WeightDecays(TrainerCallback):
    """Every group's (unit, lr, weight decay) as the optimizer step uses them."""

    def __init__(self):
        self.steps: list[list[tuple]] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.steps.append([(g["tb_unit"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups])


def test_weight_decay_balancing_alphadecay(tmp_path):
    """tb_balance='weight_decay': each unit's decay groups get weight_decay × a linear map of α into
    [tb_wd_min_ratio, tb_wd_max_ratio] (more decay for higher α); learning rates stay the base schedule; biases and
    norms keep no decay; the ratios are in the history and the logs."""
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    recorder = WeightDecays()
    args = config(tmp_path, max_steps=4, weight_decay=0.1, tb_balance="weight_decay", tb_wd_min_ratio=0.2,
                  tb_wd_max_ratio=2.0, tb_update_steps="2", lr_scheduler_type="constant")  # fmt: skip
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model), callbacks=[recorder])
    trainer.train()
    records = history(tmp_path)
    assert [r["step"] for r in records] == [0, 2]
    for record, step in zip(records, (0, 2), strict=True):
        expected = linear_factors(record["alpha"], 0.2, 2.0)
        assert record["wd_factor"] == pytest.approx(expected, rel=1e-12)
        assert set(record["factor"].values()) == {1.0}  # the learning rates are not balanced
        for unit, lr, wd in recorder.steps[step]:
            assert lr == pytest.approx(1e-3)
            if unit is not None and wd > 0:
                assert wd == pytest.approx(0.1 * expected[unit], rel=1e-12)
    decays = {wd for _, _, wd in recorder.steps[-1]}
    assert 0.0 in decays and 0.1 in decays and len(decays) == 4  # no-decay groups, the outside, two units
    logged = trainer.state.log_history[0]
    assert logged["tb/wd_scale/bert.encoder.layer.0"] == records[0]["wd_factor"]["bert.encoder.layer.0"]


def test_both_balanced_and_the_se_map(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = config(tmp_path, max_steps=2, weight_decay=0.1, tb_balance="both", tb_mapping="se", tb_se_threshold=0.5,
                  tb_lr_min=0.5, tb_lr_max=2.0)  # fmt: skip
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
    trainer.train()
    record = history(tmp_path)[0]
    assert set(record["wd_factor"].values()) == {0.5, 1.5}  # the default ratio range, two units
    factors = record["factor"]
    assert all(0.5 <= f <= 2.0 for f in factors.values()) and len(set(factors.values())) == 2
    # the higher-α block gets the larger learning rate and the larger weight decay
    hi = max(record["alpha"], key=record["alpha"].get)
    assert factors[hi] == max(factors.values()) and record["wd_factor"][hi] == 1.5


def test_tb_args_override_only_what_they_set(tmp_path):
    """tb_args replaced every tb_* field of the config: llrd 0.5 in the config with tb_args(tb_mapping='none')
    trained flat (outside probe)."""
    from tb_hf import TempBalanceArguments

    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path, tb_preset="llrd", tb_llrd_decay=0.5, tb_update_steps=None, tb_min_evals=None)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model),
                                 tb_args=TempBalanceArguments(tb_head_lr_ratio=2.0))  # fmt: skip
    b = trainer.tb_options.balance
    assert (trainer.tb_options.preset, b.llrd_decay, b.head_lr_ratio) == ("llrd", 0.5, 2.0)


def test_a_second_tempbalance_callback_is_refused(tmp_path):
    """Two callbacks made every pass twice (history steps [0, 2, 2]; outside probe)."""
    model = ARCHS["bert"][0]()
    with pytest.raises(ValueError, match="adds its own TempBalanceCallback, and callbacks=.* holds another"):
        TempBalanceTrainer(model=model, args=tiny_training_args(tmp_path), train_dataset=dataset_for(model),
                           callbacks=[TempBalanceCallback()])  # fmt: skip
