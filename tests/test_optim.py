"""tb_hf.optim: TempBalance's param groups, with and without a depth profile (tb_llrd_decay), against LLRD's."""

from __future__ import annotations

import pytest
import torch

from tb_hf import TempBalanceTrainer, partition_model
from tb_hf.baselines import LLRDTrainer
from tb_hf.optim import build_param_groups, create_tempbalance_optimizer, tempbalance_param_groups, trainer_decay_names
from tb_hf.testing import ARCHS, Recorder, dataset_for, tiny_training_args


def _names(model, group) -> list[str]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return [ids[id(p)] for p in group["params"]]


def test_without_a_depth_profile_the_layout_is_outside_first_then_each_unit():
    model = ARCHS["bert"][0]()
    groups = tempbalance_param_groups(model, lr=1e-3, weight_decay=0.1)
    assert [g["tb_unit"] for g in groups] == [None, None] + ["bert.encoder.layer.0"] * 2 + ["bert.encoder.layer.1"] * 2
    assert {g["lr"] for g in groups} == {g["tb_base_lr"] for g in groups} == {1e-3}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] * 3 == [g["tb_base_wd"] for g in groups]
    assert "tb_llrd_decay" not in groups[0]
    assert any("embeddings" in n for n in _names(model, groups[0])) and any(
        "classifier" in n for n in _names(model, groups[0])
    )


def test_depth_profile_gives_each_block_its_decayed_base_rate():
    model = ARCHS["bert"][0]()  # 2 blocks: block 1 at depth 0, block 0 at depth 1, embeddings at depth 2
    groups = tempbalance_param_groups(model, lr=1e-3, weight_decay=0.1, llrd_decay=0.5)
    by = [(g["tb_unit"], g["lr"], g["tb_base_lr"], g["weight_decay"]) for g in groups]
    assert by == [
        (None, 1e-3, 1e-3, 0.1),  # pooler and classifier (after the blocks): the base schedule, group 0
        (None, 1e-3, 1e-3, 0.0),
        (None, 2.5e-4, 2.5e-4, 0.1),  # embeddings: 0.5^2
        (None, 2.5e-4, 2.5e-4, 0.0),
        ("bert.encoder.layer.0", 5e-4, 5e-4, 0.1),  # 0.5^1
        ("bert.encoder.layer.0", 5e-4, 5e-4, 0.0),
        ("bert.encoder.layer.1", 1e-3, 1e-3, 0.1),  # the top block: 0.5^0
        ("bert.encoder.layer.1", 1e-3, 1e-3, 0.0),
    ]
    assert groups[0]["tb_llrd_decay"] == 0.5
    assert all("pooler" in n or "classifier" in n for n in _names(model, groups[0]) + _names(model, groups[1]))
    assert all("embeddings" in n for n in _names(model, groups[2]) + _names(model, groups[3]))
    # matrix units take their block's depth
    matrix = build_param_groups(
        model, partition_model(model, "matrix"), learning_rate=1e-3, weight_decay=0.1,
        decay_parameter_names=trainer_decay_names(model), llrd_decay=0.5,
    )  # fmt: skip
    rates = {g["tb_unit"]: g["tb_base_lr"] for g in matrix if g["tb_unit"]}
    assert rates["bert.encoder.layer.0.attention.self.query"] == 5e-4
    assert rates["bert.encoder.layer.1.output.dense"] == 1e-3
    with pytest.raises(ValueError, match=r"llrd_decay must be in \(0, 1\]"):
        tempbalance_param_groups(model, lr=1e-3, llrd_decay=1.5)


def _lrs_by_parameter(model, optimizer) -> dict[str, float]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.slow  # two short training runs
def test_depth_profile_with_a_constant_map_trains_exactly_like_llrd(tmp_path):
    """tb_llrd_decay=d with every α factor 1 (tb_lr_min = tb_lr_max = 1) is LLRD with decay d: the same learning rate
    for every parameter at every step, and the same weights after training."""

    class PerParameter(Recorder):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, model=None, **kwargs):
            self.steps.append(_lrs_by_parameter(model, optimizer))

    runs = {}
    for name in ("llrd", "tempbalance"):
        torch.manual_seed(0)
        model = ARCHS["bert"][0]()
        recorder = PerParameter()
        common = dict(max_steps=4, learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)
        if name == "llrd":
            args = tiny_training_args(tmp_path / name, **common)
            trainer = LLRDTrainer(model=model, args=args, train_dataset=dataset_for(model), llrd_decay=0.7,
                                  callbacks=[recorder])  # fmt: skip
        else:
            args = tiny_training_args(tmp_path / name, **common, tb_llrd_decay=0.7, tb_lr_min=1.0, tb_lr_max=1.0)
            trainer = TempBalanceTrainer(
                model=model, args=args, train_dataset=dataset_for(model), callbacks=[recorder]
            )
        trainer.train()
        runs[name] = (recorder.steps, model)
    (llrd_lrs, llrd_model), (tb_lrs, tb_model) = runs["llrd"], runs["tempbalance"]
    assert len(llrd_lrs) == len(tb_lrs) == 4
    for step_llrd, step_tb in zip(llrd_lrs, tb_lrs, strict=True):
        assert step_llrd.keys() == step_tb.keys() and step_llrd == pytest.approx(step_tb, rel=1e-12)
    assert len({round(v, 12) for v in llrd_lrs[-1].values()}) == 3  # three depths really differ
    for (name, a), b in zip(llrd_model.named_parameters(), tb_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow  # a short training run
def test_lr_is_base_times_depth_times_alpha_factor_times_schedule(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    recorder = Recorder()
    args = tiny_training_args(tmp_path, max_steps=4, learning_rate=1e-2, warmup_steps=2, tb_llrd_decay=0.8,
                              tb_update_steps="2", lr_scheduler_type="linear")  # fmt: skip
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model), callbacks=[recorder])
    trainer.train()
    depth = {None: 0, "bert.encoder.layer.0": 1, "bert.encoder.layer.1": 0}
    for step, groups in recorder.steps:
        schedule = step / 2 if step < 2 else (4 - step) / 2  # linear warmup over 2 steps, linear decay to 0 at 4
        for unit, lr, base, factor in groups:
            if unit is not None:
                assert base == pytest.approx(1e-2 * 0.8 ** depth[unit], rel=1e-12)
                assert lr == pytest.approx(base * factor * schedule, rel=1e-9)
    factors = {unit: factor for unit, _, _, factor in recorder.steps[-1][1] if unit}
    assert factors["bert.encoder.layer.0"] != factors["bert.encoder.layer.1"]  # α factors on top of the depth


def test_callback_refuses_an_optimizer_with_another_depth_profile(tmp_path):
    from transformers import Trainer

    from tb_hf import TempBalanceCallback

    model = ARCHS["bert"][0]()
    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3, llrd_decay=0.9)
    args = tiny_training_args(tmp_path)
    trainer = Trainer(model=model, args=args, train_dataset=dataset_for(model), optimizers=(optimizer, None),
                      callbacks=[TempBalanceCallback()])  # fmt: skip
    with pytest.raises(ValueError, match=r"llrd_decay=0.9, but the TempBalance options say tb_llrd_decay=1.0"):
        trainer.train()
    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3)  # the preset's decay is not built
    trainer = Trainer(model=model, args=args, train_dataset=dataset_for(model), optimizers=(optimizer, None),
                      callbacks=[TempBalanceCallback(preset="llrd-alpha")])  # fmt: skip
    with pytest.raises(ValueError, match=r"tb_llrd_decay=0.9 \(set by tb_preset='llrd-alpha'\): build the opt"):
        trainer.train()


@pytest.mark.parametrize("trainer_cls", [LLRDTrainer, TempBalanceTrainer])
def test_the_optimizer_kwargs_lr_is_the_base_rate_as_with_a_plain_trainer(tmp_path, trainer_cls):
    from transformers import Trainer

    sgd = (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9})
    plain = Trainer(model=ARCHS["bert"][0](), args=tiny_training_args(tmp_path), optimizer_cls_and_kwargs=sgd)
    plain.create_optimizer()
    assert {g["lr"] for g in plain.optimizer.param_groups} == {1e-3}  # what a Trainer user expects
    kw = {"llrd_decay": 0.5} if trainer_cls is LLRDTrainer else {"tb_llrd_decay": 0.5}
    args = tiny_training_args(tmp_path, learning_rate=5e-5, **({} if trainer_cls is LLRDTrainer else kw))
    trainer = trainer_cls(model=ARCHS["bert"][0](), args=args, optimizer_cls_and_kwargs=sgd,
                          **(kw if trainer_cls is LLRDTrainer else {}))  # fmt: skip
    trainer.create_optimizer()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert max(g["lr"] for g in trainer.optimizer.param_groups) == pytest.approx(1e-3)  # the top block and head
    assert min(g["lr"] for g in trainer.optimizer.param_groups if g["params"]) == pytest.approx(1e-3 * 0.5**2)


def test_llrd_refuses_what_it_would_silently_ignore(tmp_path):
    model = ARCHS["bert"][0]()
    flat = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="has none, so llrd_decay would be ignored"):
        LLRDTrainer(model=model, args=tiny_training_args(tmp_path), optimizers=(flat, None), llrd_decay=0.5)
    with pytest.raises(ValueError, match=r"tb_llrd_decay=0.5, which LLRDTrainer does not read"):
        LLRDTrainer(model=model, args=tiny_training_args(tmp_path, tb_llrd_decay=0.5), llrd_decay=0.9)
    for bad in ("0.9", True, float("nan"), 1.5):
        with pytest.raises(ValueError, match=r"llrd_decay must be a finite number in \(0, 1\]"):
            LLRDTrainer(model=model, args=tiny_training_args(tmp_path), llrd_decay=bad)
    # An optimizer over LLRD's own groups is accepted.
    from tb_hf.baselines import llrd_param_groups

    own = torch.optim.AdamW(llrd_param_groups(model, learning_rate=1e-3, decay=0.5))
    assert LLRDTrainer(model=model, args=tiny_training_args(tmp_path), optimizers=(own, None)).optimizer is own
