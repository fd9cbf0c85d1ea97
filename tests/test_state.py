"""tb_hf.state and resuming: checkpoints of earlier versions, checkpoints without TempBalance's state, resumes with
other options, checkpoints that cannot be this run's, a torn history line, a checkpoint cut short."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import peft
import pytest
import torch
from transformers import Trainer

from tb_hf import TempBalanceTrainer
from tb_hf.history import read_history
from tb_hf.state import read_run_state
from tb_hf.testing import ARCHS, Recorder, dataset_for, history, tiny_training_args

DATA = Path(__file__).parent / "data" / "checkpoints"


def _run(out, *, resume=None, save_steps=None, max_steps=8, model=None, **overrides):
    """The tiny BERT of tests/data/checkpoints (made by tests/data/make_checkpoints.py's settings)."""
    torch.manual_seed(0)
    model = model if model is not None else ARCHS["bert"][0]()
    recorder = Recorder()
    options = dict(max_steps=max_steps, learning_rate=2e-2, warmup_steps=2, tb_update_steps="4")
    options |= dict(save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500) | overrides
    args = tiny_training_args(out, **options)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=32), callbacks=[recorder])
    trainer.train(resume_from_checkpoint=resume)
    return recorder.steps, trainer


def _copy_checkpoint(name: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    target = into / name
    shutil.copytree(DATA / name, target, ignore=shutil.ignore_patterns("history.full.jsonl"))
    return target


# --------------------------------------------------------------------------------------------------
# Checkpoints written by earlier versions


@pytest.mark.slow  # two short runs
def test_checkpoint_with_a_pass_in_flight_from_an_earlier_version_resumes_bit_identically(tmp_path):
    """tests/data/checkpoints/async-pending-step5 was written by the code before tb_hf.state existed (commit
    d86cb70): tb_async, α every 4 steps, a pass snapshotted at step 4 and due at step 6, saved at step 5. Resumed
    now, it gives exactly the learning rates, factors and history of an uninterrupted run of today's code."""
    checkpoint = _copy_checkpoint("async-pending-step5", tmp_path / "old")
    straight, _ = _run(tmp_path / "straight", tb_async=True)
    resumed, trainer = _run(tmp_path / "resumed", tb_async=True, resume=str(checkpoint))
    assert [s for s, _ in resumed] == [5, 6, 7] and resumed == straight[5:]
    old = [json.loads(line) for line in (DATA / "async-pending-step5" / "history.full.jsonl").read_text().splitlines()]
    last = history(tmp_path / "resumed")[-1]
    assert (last["step"], last["snapshot_step"]) == (6, 4)
    assert last["alpha"] == old[-1]["alpha"] and last["factor"] == old[-1]["factor"]  # the old run's own update
    assert read_run_state(trainer.optimizer).options["tb_async"] is True  # the options are recorded from now on


@pytest.mark.slow  # two short runs
def test_auto_resumed_before_its_decision_times_the_steps_after_the_resume(tmp_path, caplog):
    """tests/data/checkpoints/auto-undecided-step2 (earlier version, tb_update_steps='auto', saved at step 2 before
    the interval is fixed at step 3): the resumed run decides after step 5 from steps timed after the resume and
    the step-0 pass cost the checkpoint kept; no pass every step (it once made 18 passes where 4 were due)."""
    checkpoint = _copy_checkpoint("auto-undecided-step2", tmp_path / "old")
    stored = read_run_state(_optimizer_of(checkpoint)).pass_seconds
    with caplog.at_level(logging.INFO, logger="tb_hf"):
        _, trainer = _run(tmp_path / "resumed", tb_update_steps="auto", max_steps=40, resume=str(checkpoint))
    tb = trainer.tempbalance
    assert tb.schedule.decided and tb.schedule.start_step == 2 and sorted(tb.schedule.step_times) == [3, 4, 5]
    assert tb.balancer.pass_seconds == stored and tb.schedule.step_seconds() > 0
    steps = [r["step"] for r in read_history(tmp_path / "resumed", missing_ok=True)]  # the resumed run's own
    interval = tb.schedule.interval
    assert all(s >= 5 and s % interval == 0 for s in steps) and len(steps) <= 40 // interval


def _optimizer_of(checkpoint: Path):
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)

    class Saved:
        param_groups = state["param_groups"]

    return Saved


# --------------------------------------------------------------------------------------------------
# What a resume may and may not change


@pytest.mark.slow  # three short runs and a checkpoint
def test_resume_with_another_schedule_and_map_recomputes_at_the_resume_step(tmp_path, caplog):
    _run(tmp_path / "a", save_steps=4)  # tb_update_steps 4, linear map; passes at 0 and 4 (before the save at 4)
    with caplog.at_level(logging.WARNING, logger="tb_hf"):
        resumed, trainer = _run(
            tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4"), tb_update_steps="2", tb_mapping="sigmoid"
        )
    assert "resumed at step 4 with other TempBalance options (tb_mapping 'linear' -> 'sigmoid', " in caplog.text
    assert "tb_update_steps '4' -> '2'" in caplog.text
    steps = [r["step"] for r in history(tmp_path / "b")]
    assert steps == [4, 6]  # a fresh pass at the resume step with the new options, then every 2 steps
    assert trainer.tempbalance.schedule.interval == 2
    fresh = history(tmp_path / "b")[0]
    assert len(set(fresh["factor"].values())) == 2 and max(fresh["factor"].values()) != 1.5  # the sigmoid map's
    # the learning rates after the resume follow the new factors from step 4 on
    assert all(group[3] == fresh["factor"][group[0]] for s, groups in resumed if s < 6 for group in groups if group[0])
    assert read_run_state(trainer.optimizer).options["tb_mapping"] == "sigmoid"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tb_llrd_decay=0.8), r"tb_llrd_decay=1.0 \(now 0.8\)"),
        (dict(tb_unit="matrix"), r"written with tb_unit='block' \(now 'matrix'\), options that fix the param groups"),
    ],
)
@pytest.mark.slow  # a short run and a checkpoint
def test_resume_cannot_change_what_the_param_groups_were_built_for(tmp_path, overrides, message):
    _run(tmp_path / "a", save_steps=4, max_steps=5)
    with pytest.raises(ValueError, match=message):
        _run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4"), **overrides)


@pytest.mark.slow  # three short runs
def test_resume_from_a_checkpoint_without_optimizer_state_recomputes(tmp_path, caplog):
    """save_only_model=True: no optimizer.pt, so the resumed groups start at factor 1 and know no interval. A fresh
    pass at the resume step gives the factors back, and 'once' stays once (it once turned into a pass every step)."""
    _run(tmp_path / "a", save_steps=4, save_only_model=True, tb_update_steps="once")
    assert not (tmp_path / "a" / "checkpoint-4" / "optimizer.pt").exists()
    with caplog.at_level(logging.WARNING, logger="tb_hf"):
        resumed, _ = _run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4"), tb_update_steps="once")
    assert "resumed at step 4 from a checkpoint without TempBalance's optimizer state" in caplog.text
    assert [r["step"] for r in history(tmp_path / "b")] == [4]  # the fresh pass at the resume step, none after it
    factors = {g[0]: g[3] for g in resumed[0][1] if g[0]}
    assert set(factors.values()) == {0.5, 1.5}  # balanced from the first resumed step, not 1


@pytest.mark.slow  # two short runs and a checkpoint
def test_checkpoints_that_cannot_be_this_runs_are_refused_by_their_cause(tmp_path):
    # a plain Trainer's checkpoint resumed by TempBalanceTrainer
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path / "plain", max_steps=2, save_strategy="steps", save_steps=2)
    Trainer(model=model, args=args, train_dataset=dataset_for(model, n=32)).train()
    with pytest.raises(ValueError, match="saved by an optimizer without TempBalance's param groups"):
        _run(tmp_path / "tb", resume=str(tmp_path / "plain" / "checkpoint-2"), max_steps=4)
    # LoRA added to a full fine-tuning checkpoint
    _run(tmp_path / "full", save_steps=2, max_steps=3)
    torch.manual_seed(0)
    lora = peft.get_peft_model(ARCHS["bert"][0](), peft.LoraConfig(r=2, target_modules=["query", "value"]))
    with pytest.raises(ValueError, match=r"the units differ: .*peft LoRA added"):
        _run(tmp_path / "lora", resume=str(tmp_path / "full" / "checkpoint-2"), max_steps=4, model=lora)


# --------------------------------------------------------------------------------------------------
# What a crash leaves


@pytest.mark.slow  # two short runs and a checkpoint
def test_a_torn_last_history_line_is_dropped_on_resume(tmp_path, caplog):
    _run(tmp_path / "a", save_steps=4)
    path = tmp_path / "a" / "tempbalance" / "history.jsonl"
    path.write_text(path.read_text() + '{"step": 8, "alpha": {"bert.enc')  # what kill -9 in mid-write leaves
    with caplog.at_level(logging.WARNING, logger="tb_hf"):
        assert [r["step"] for r in read_history(path)] == [0, 4]
    assert "line 3 is cut short" in caplog.text
    shutil.copytree(tmp_path / "a" / "tempbalance", tmp_path / "a2" / "tempbalance")
    _run(tmp_path / "a2", resume=str(tmp_path / "a" / "checkpoint-4"))
    assert [r["step"] for r in history(tmp_path / "a2")] == [0, 4]  # rewritten whole; the run's last pass was at 4
    with pytest.raises(ValueError, match="line 1: not JSON"):  # a broken line before the last is an error
        (tmp_path / "bad.jsonl").write_text('{"step": 0, "alp\n{"step": 1, "alpha": {}}\n')
        read_history(tmp_path / "bad.jsonl")


@pytest.mark.slow  # two short runs and a checkpoint
def test_a_checkpoint_cut_short_is_not_resumed_from(tmp_path, caplog):
    straight, _ = _run(tmp_path / "a", save_steps=4)  # checkpoints at 4 and 8
    (tmp_path / "a" / "checkpoint-8" / "trainer_state.json").unlink()  # a crash while saving at 8: written last
    (tmp_path / "a" / "checkpoint-12").mkdir()  # and a folder with nothing in it at all
    with pytest.raises(ValueError, match="checkpoint-8 was not written to the end"):
        _run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-8"))
    with caplog.at_level(logging.WARNING, logger="tb_hf"):
        resumed, _ = _run(tmp_path / "a", resume=True)
    assert "checkpoint-12 was not written to the end" in caplog.text and "checkpoint-8 was not" in caplog.text
    assert [s for s, _ in resumed] == [4, 5, 6, 7] and resumed == straight[4:]
