"""TempBalanceMixin on other Trainer classes: trl's SFTTrainer with LoRA and transformers' Seq2SeqTrainer."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers as tf
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, get_scheduler

from tb_hf import TempBalanceArguments, TempBalanceMixin, TempBalanceTrainer, find_blocks
from tb_hf.testing import ARCHS, LLAMA_LIKE, Recorder, dataset_for, history

trl = pytest.importorskip("trl")

TB_ARGS = TempBalanceArguments(tb_update_steps="2", tb_min_evals=8)


def linear_factors(alpha: dict[str, float], lo: float = 0.5, hi: float = 1.5) -> dict[str, float]:
    """TempBalance's linear map (docs/method.md, section 5), written out independently of tb_hf."""
    a_min, a_max = min(alpha.values()), max(alpha.values())
    return {unit: lo + (hi - lo) * (a - a_min) / (a_max - a_min) for unit, a in alpha.items()}


def check_lrs_follow_the_schedule(recorder: Recorder, base_lr: float, warmup: int, total: int, records: list[dict]):
    """lr of every group == base × factor × schedule(t), with the factor of the latest update at or before t."""
    reference = get_scheduler(
        "linear", torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), num_warmup_steps=warmup,
        num_training_steps=total,
    )  # fmt: skip
    assert [step for step, _ in recorder.steps] == list(range(total))
    for step, groups in recorder.steps:
        schedule_t = reference.lr_lambdas[0](step)
        expected = linear_factors([r for r in records if r["step"] <= step][-1]["alpha"])
        assert groups[0][0] is None and groups[0][1] == pytest.approx(base_lr * schedule_t, rel=1e-12)
        for unit, lr, tb_base_lr, factor in groups:
            assert tb_base_lr == base_lr
            if unit is not None:
                assert factor == pytest.approx(expected[unit], rel=1e-9), (step, unit)
            assert lr == pytest.approx(base_lr * factor * schedule_t, rel=1e-12, abs=1e-18), (step, unit)


def test_mixin_is_what_tempbalance_trainer_is_made_of():
    assert TempBalanceTrainer.__mro__[1:3] == (TempBalanceMixin, Trainer)


def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A word-level tokenizer over LLAMA_LIKE's 100 ids (pad 0, bos 1, eos 2), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, LLAMA_LIKE["vocab_size"])]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


class TempBalanceSFTTrainer(TempBalanceMixin, trl.SFTTrainer):
    pass


def test_sft_trainer_with_lora(tmp_path):
    from datasets import Dataset

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(f"w{i}" for i in torch.randint(4, 100, (12,), generator=g).tolist()) for _ in range(32)]
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**LLAMA_LIKE))
    lora = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-2, warmup_steps=2,
        max_length=16, use_cpu=True, bf16=False, activation_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    recorder = Recorder()
    trainer = TempBalanceSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tiny_tokenizer(),
        peft_config=lora, callbacks=[recorder], tb_args=TB_ARGS,
    )  # fmt: skip
    assert isinstance(trainer.model, peft.PeftModel)  # SFTTrainer wrapped the model inside its __init__
    trainer.train()
    assert trainer.state.global_step == 6

    blocks = [name for name, _ in find_blocks(trainer.model)]
    assert blocks == [f"base_model.model.model.layers.{i}" for i in range(2)]
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    by_unit: dict = {}
    for group in trainer.optimizer.param_groups:
        by_unit.setdefault(group["tb_unit"], []).extend(names[id(p)] for p in group["params"])
    assert set(by_unit) == {None, *blocks}
    for block in blocks:  # only the adapters of the block train, with the block's factor
        assert by_unit[block] and all(".lora_A." in n or ".lora_B." in n for n in by_unit[block])
        assert all(n.startswith(block + ".") for n in by_unit[block])

    records = history(tmp_path)
    assert [r["step"] for r in records] == [0, 2, 4]
    for r in records:
        assert set(r["alpha"]) == set(blocks) and r["factor"] == pytest.approx(linear_factors(r["alpha"]))
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors == pytest.approx(linear_factors(records[-1]["alpha"]))
    check_lrs_follow_the_schedule(recorder, 5e-2, warmup=2, total=6, records=records)
    logged = [h for h in trainer.state.log_history if "tb/spectral_seconds" in h]
    assert len(logged) == 3 and all(f"tb/lr_scale/{b}" in logged[0] for b in blocks)


class TempBalanceSeq2SeqTrainer(TempBalanceMixin, Seq2SeqTrainer):
    pass


def test_seq2seq_trainer_on_t5(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["t5"][0]()
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-2, warmup_steps=2,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    recorder = Recorder()
    trainer = TempBalanceSeq2SeqTrainer(
        model=model, args=args, train_dataset=dataset_for(model, n=24), callbacks=[recorder], tb_args=TB_ARGS
    )
    trainer.train()
    assert trainer.state.global_step == 6
    blocks = ARCHS["t5"][1]
    records = history(tmp_path)
    assert [r["step"] for r in records] == [0, 2, 4]
    for r in records:  # four blocks: the factors between the ends depend on the α values themselves
        assert list(r["alpha"]) == blocks and r["factor"] == pytest.approx(linear_factors(r["alpha"]))
        assert len({round(a, 9) for a in r["alpha"].values()}) == 4
    check_lrs_follow_the_schedule(recorder, 5e-2, warmup=2, total=6, records=records)
