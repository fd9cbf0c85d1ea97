"""When TempBalance recomputes: 'once', the budget of 'auto', IterableDatasets, asynchronous passes and resume."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from datasets import IterableDataset

from tb_hf import TempBalanceTrainer
from tb_hf.testing import ARCHS, Recorder, dataset_for, history, tiny_training_args


def test_once_computes_alpha_only_before_the_first_step(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path, max_steps=6, tb_update_steps="once")
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
    trainer.train()
    assert [r["step"] for r in history(tmp_path)] == [0]
    assert trainer.tempbalance.schedule.interval is None
    assert {g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]} == {0.5, 1.5}


def test_iterable_dataset_auto_interval_comes_from_max_steps(tmp_path, caplog):
    """An IterableDataset has no length: 'auto' used to mean every 100 steps (one update in a 6-step run)."""
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    rows = dataset_for(model, n=64).to_list()
    iterable = IterableDataset.from_generator(lambda: iter(rows))
    args = tiny_training_args(tmp_path, max_steps=30, tb_update_steps="auto", tb_max_overhead=1.0)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=iterable)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    tb = trainer.tempbalance
    assert tb.steps_per_epoch == 30 and tb.schedule.rule == 3  # the run counts as one epoch: 30 // 10
    assert "no length" in caplog.text and "max_steps=30" in caplog.text
    assert tb.schedule.interval is not None and tb.schedule.interval < 30
    assert len(history(tmp_path)) >= 2


def _run(out, *, async_, save_steps=None, resume=None, update="4", max_steps=8):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    recorder = Recorder()
    args = tiny_training_args(
        out,
        max_steps=max_steps,
        learning_rate=2e-2,
        warmup_steps=2,
        tb_update_steps=update,
        tb_async=async_,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
    )
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=32), callbacks=[recorder])
    trainer.train(resume_from_checkpoint=resume)
    return recorder.steps, trainer


def test_async_pass_applies_the_snapshot_factors_at_a_fixed_later_step(tmp_path):
    sync_steps, sync = _run(tmp_path / "sync", async_=False)
    async_steps, trainer = _run(tmp_path / "async", async_=True)
    assert trainer.tempbalance.schedule.lag == 2  # interval 4 // 2
    sync_hist, async_hist = history(tmp_path / "sync"), history(tmp_path / "async")
    assert [r["step"] for r in sync_hist] == [0, 4]
    assert [(r["step"], r.get("snapshot_step")) for r in async_hist] == [(0, None), (6, 4)]
    # the pass on the step-4 weights gives the same alphas and factors, applied 2 steps later
    assert async_hist[1]["alpha"] == sync_hist[1]["alpha"] and async_hist[1]["factor"] == sync_hist[1]["factor"]
    # until step 4 both runs are identical; at steps 4 and 5 the async run still has the step-0 factors
    assert async_steps[:4] == sync_steps[:4]
    factors = [[g[3] for g in groups] for _, groups in async_steps]
    assert factors[4] == factors[5] == factors[0] and factors[6] == [g[3] for g in sync_steps[4][1]]


@pytest.mark.slow  # three short runs and a checkpoint
@pytest.mark.parametrize("async_", [False, True])
def test_resume_with_a_pass_in_flight_is_bit_identical(async_, tmp_path):
    straight, trainer_a = _run(tmp_path / "a", async_=async_, save_steps=5)
    resumed, trainer_b = _run(tmp_path / "b", async_=async_, resume=str(tmp_path / "a" / "checkpoint-5"))
    assert [s for s, _ in resumed] == [5, 6, 7]
    assert resumed == straight[5:]  # every group's lr and factor, exactly
    if async_:  # the checkpoint held the pass in flight (snapshot at step 4, applied at 6)
        assert history(tmp_path / "b")[-1] == history(tmp_path / "a")[-1]
        assert history(tmp_path / "b")[-1]["snapshot_step"] == 4
        # a checkpoint written before alpha_se was recorded resumes the same, with no standard errors to report
        old = tmp_path / "old-checkpoint-5"
        shutil.copytree(tmp_path / "a" / "checkpoint-5", old)
        state = torch.load(old / "optimizer.pt", weights_only=False)
        del state["param_groups"][0]["tb_pending"]["alpha_se"]
        torch.save(state, old / "optimizer.pt")
        from_old, _ = _run(tmp_path / "c", async_=True, resume=str(old))
        assert from_old == straight[5:]
        last = history(tmp_path / "c")[-1]
        assert last["alpha_se"] == {} and last["alpha"] == history(tmp_path / "a")[-1]["alpha"]
    for pa, pb in zip(trainer_a.model.parameters(), trainer_b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_frozen_blocks_warn_that_nothing_is_balanced(tmp_path, caplog):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    for name, p in model.named_parameters():
        p.requires_grad = "classifier" in name  # only the head trains
    args = tiny_training_args(tmp_path, max_steps=2)
    with caplog.at_level(logging.WARNING):
        TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model)).train()
    assert "nothing to balance" in caplog.text and "only the head is trained" in caplog.text


def test_resume_before_the_auto_interval_is_fixed(tmp_path):
    """A checkpoint at step 2 (before 'auto' is decided at step 3): the resumed run still knows the step-0 pass cost
    (it used to divide NaN and crash at step 3) and fixes its interval."""
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path / "a", max_steps=8, tb_update_steps="auto", save_strategy="steps", save_steps=2)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=32))
    trainer.train()
    pass_seconds = trainer.tempbalance.balancer.pass_seconds
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path / "b", max_steps=8, tb_update_steps="auto")
    resumed = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=32))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.tempbalance.schedule.decided and resumed.tempbalance.schedule.interval >= 1
    assert resumed.tempbalance.balancer.pass_seconds == pass_seconds  # from the checkpoint, not re-measured


def test_permuted_factors_control(tmp_path):
    """tb_permute_factors: the same α, but each unit gets another unit's factor, by one seeded permutation used at
    every update, and the optimizer applies exactly that."""
    import random

    import transformers as tf

    from tb_hf.balancing import compute_factors

    def run(out, **extra):
        torch.manual_seed(0)
        config = tf.BertConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4, vocab_size=100
        )
        model = tf.BertForSequenceClassification(config)
        args = tiny_training_args(out, max_steps=4, tb_update_steps="2", tb_mapping="sigmoid", seed=7, **extra)
        trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=16))
        trainer.train()
        return trainer, history(out)

    _, plain = run(tmp_path / "plain")
    trainer, permuted = run(tmp_path / "permuted", tb_permute_factors=True)
    assert permuted[0]["alpha"] == plain[0]["alpha"]
    units = list(plain[0]["factor"])
    order = random.Random(7).sample(units, len(units))  # the run's seed
    assert order != units
    for record in permuted:  # step 0 and step 2
        unpermuted = compute_factors(record["alpha"], mapping="sigmoid")
        assert record["factor"] == pytest.approx({u: unpermuted[src] for u, src in zip(units, order, strict=True)})
    pairs = zip(units, order, strict=True)
    assert permuted[0]["factor"] == pytest.approx({u: plain[0]["factor"][src] for u, src in pairs})
    applied = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert applied == pytest.approx(permuted[-1]["factor"])


class _LrAndDecay(Recorder):
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        groups = [(g["tb_unit"], g["lr"], g["weight_decay"], g["tb_factor"]) for g in optimizer.param_groups]
        self.steps.append((state.global_step, groups))


def _run_balanced(out, *, save_steps=None, resume=None):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    recorder = _LrAndDecay()
    args = tiny_training_args(out, max_steps=8, learning_rate=2e-2, warmup_steps=2, weight_decay=0.1,
                              tb_update_steps="4", tb_async=True, tb_balance="both", tb_llrd_decay=0.8,
                              save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)  # fmt: skip
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=32), callbacks=[recorder])
    trainer.train(resume_from_checkpoint=resume)
    return recorder.steps, trainer


@pytest.mark.slow  # two short runs and a checkpoint
def test_resume_with_balanced_weight_decay_and_a_depth_profile_is_bit_identical(tmp_path):
    """Weight-decay balancing resumes like lr balancing, also with a pass in flight (snapshot at 4, applied at 6,
    checkpoint at 5), on a depth profile."""
    straight, trainer_a = _run_balanced(tmp_path / "a", save_steps=5)
    resumed, trainer_b = _run_balanced(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-5"))
    assert [s for s, _ in resumed] == [5, 6, 7] and resumed == straight[5:]  # every group's lr and weight decay
    decays = [[wd for _, _, wd, _ in groups] for _, groups in straight]
    assert decays[6] != decays[5]  # the pass in flight changed the weight decays at step 6
    assert history(tmp_path / "b")[-1] == history(tmp_path / "a")[-1]
    for pa, pb in zip(trainer_a.model.parameters(), trainer_b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


# --------------------------------------------------------------------------------------------------
# The policy alone (tb_hf.schedule)


def test_schedule_integer_once_and_the_async_lag():
    from tb_hf.schedule import RecomputeSchedule

    every3 = RecomputeSchedule("3", rule=3, budget=0.03, max_steps=10)
    assert every3.decided and [s for s in range(1, 11) if every3.due(s)] == [3, 6, 9]
    once = RecomputeSchedule("once", rule=None, budget=0.03, max_steps=10)
    assert once.decided and not any(once.due(s) for s in range(1, 11))
    lagged = RecomputeSchedule("4", rule=4, budget=0.03, max_steps=10, async_=True)
    assert lagged.lag == 2 and [s for s in range(1, 11) if lagged.due(s)] == [4]  # 8 + 2 is past the end
    assert not every3.observe(4, 1.0)  # a fixed interval times nothing


def test_schedule_auto_decides_from_the_steps_after_the_restart():
    from tb_hf.schedule import DECIDE_AFTER, RecomputeSchedule, budget_interval

    assert budget_interval(2, pass_seconds=1.0, step_seconds=0.5, budget=0.1) == 20  # ceil(1 / (0.1 * 0.5))
    assert budget_interval(30, pass_seconds=1.0, step_seconds=0.5, budget=0.1) == 30  # the rule is a floor
    auto = RecomputeSchedule("auto", rule=2, budget=0.1, start_step=10, max_steps=100)
    assert not auto.decided and not auto.due(12)  # no pass before the decision
    times = {11: 5.0, 12: 5.5, 13: 6.0}  # the first step after the restart is not timed: 0.5 s per step after it
    ready = [auto.observe(step, t) for step, t in times.items()]
    assert ready == [False, False, True] and DECIDE_AFTER == 3
    assert auto.step_seconds() == pytest.approx(0.5)
    interval = auto.decide(pass_seconds=1.0)
    auto.fix(interval, auto.explain(interval, 1.0))
    assert interval == 20 and auto.due(20) and not auto.due(30) and "every 20 steps" in auto.why
    replay = RecomputeSchedule("auto", rule=2, budget=0.1, max_steps=100, replay=7)
    assert replay.decide(pass_seconds=1.0) == 7 and "replays" in replay.explain(7, 1.0)


@pytest.mark.slow  # two short runs
def test_auto_interval_is_recorded_and_replayed_exactly(tmp_path):
    """'auto' depends on the machine's load; tb_auto_interval=N replays a run's recorded decision: the same passes
    at the same steps, the same learning rates."""
    runs = {}
    for name, overrides in (("auto", {}), ("replay", None)):
        if overrides is None:
            # the recorded interval; the budget, which a replay does not time against, is left unset
            overrides = {"tb_auto_interval": runs["auto"][1].tempbalance.schedule.interval, "tb_max_overhead": None}
        torch.manual_seed(0)
        model = ARCHS["bert"][0]()
        recorder = Recorder()
        args = tiny_training_args(tmp_path / name, **{"max_steps": 12, "tb_update_steps": "auto",
                                                      "tb_max_overhead": 1.0, **overrides})  # fmt: skip
        trainer = TempBalanceTrainer(
            model=model, args=args, train_dataset=dataset_for(model, n=32), callbacks=[recorder]
        )
        trainer.train()
        runs[name] = (recorder.steps, trainer)
    (auto_lrs, auto), (replay_lrs, replay) = runs["auto"], runs["replay"]
    assert replay.tempbalance.schedule.interval == auto.tempbalance.schedule.interval
    assert "replays" in replay.tempbalance.schedule.why
    assert [r["step"] for r in history(tmp_path / "replay")] == [r["step"] for r in history(tmp_path / "auto")]
    assert replay_lrs == auto_lrs
