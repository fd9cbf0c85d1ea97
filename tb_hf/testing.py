"""Tiny random models of the architectures TempBalance must handle, built in-process from configs (no Hub), and
helpers to train them for a few steps: for tb_hf's tests, the bad-input battery and your own tests of a TempBalance
set-up, like ``transformers.testing_utils``. Never for benchmarks or demos (random weights have no meaningful α).

``ARCHS[name] = (factory, block paths, matrix-name tails of each block, matrix-mode units per block)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import transformers as tf

LLAMA_LIKE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
_BERT_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100)

# Tail of the matrix names of one block, in model order.
_BERT_MATS = (
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "attention.output.dense.weight",
    "intermediate.dense.weight",
    "output.dense.weight",
)
_LLAMA_MATS = tuple(f"self_attn.{p}_proj.weight" for p in "qkvo") + tuple(
    f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")
)
_T5_ENC_MATS = tuple(f"layer.0.SelfAttention.{p}.weight" for p in "qkvo") + (
    "layer.1.DenseReluDense.wi.weight",
    "layer.1.DenseReluDense.wo.weight",
)
_T5_DEC_MATS = (
    tuple(f"layer.0.SelfAttention.{p}.weight" for p in "qkvo")
    + tuple(f"layer.1.EncDecAttention.{p}.weight" for p in "qkvo")
    + ("layer.2.DenseReluDense.wi.weight", "layer.2.DenseReluDense.wo.weight")
)


def stack_blocks(stack: str, n: int = 2) -> list[str]:
    return [f"{stack}.{i}" for i in range(n)]


# name: (model factory, block paths, matrix-name tails of each block, matrix-mode units per block)
ARCHS = {
    "bert": (
        lambda: tf.BertForSequenceClassification(tf.BertConfig(**_BERT_LIKE)),
        stack_blocks("bert.encoder.layer"),
        [_BERT_MATS] * 2,
        6,
    ),
    "roberta": (
        lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**_BERT_LIKE, pad_token_id=1)),
        stack_blocks("roberta.encoder.layer"),
        [_BERT_MATS] * 2,
        6,
    ),
    "deberta-v2": (
        lambda: tf.DebertaV2ForSequenceClassification(
            tf.DebertaV2Config(  # DeBERTa-v3-like: relative attention with shared position keys
                **_BERT_LIKE,
                relative_attention=True,
                pos_att_type=["p2c", "c2p"],
                share_att_key=True,
                position_buckets=16,
                norm_rel_ebd="layer_norm",
            )
        ),
        stack_blocks("deberta.encoder.layer"),
        [
            tuple(
                m.replace("query", "query_proj").replace("key", "key_proj").replace("value", "value_proj")
                for m in _BERT_MATS
            )
        ]
        * 2,
        6,
    ),
    "distilbert": (
        lambda: tf.DistilBertForSequenceClassification(
            tf.DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4, vocab_size=100)
        ),
        stack_blocks("distilbert.transformer.layer"),
        [tuple(f"attention.{p}_lin.weight" for p in ("q", "k", "v", "out")) + ("ffn.lin1.weight", "ffn.lin2.weight")]
        * 2,
        6,
    ),
    "gpt2": (
        lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
        ),
        stack_blocks("transformer.h"),
        [("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")] * 2,
        4,
    ),
    "llama": (
        lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**LLAMA_LIKE)),
        stack_blocks("model.layers"),
        [_LLAMA_MATS] * 2,
        7,
    ),
    "mistral": (
        lambda: tf.MistralForCausalLM(tf.MistralConfig(**LLAMA_LIKE)),
        stack_blocks("model.layers"),
        [_LLAMA_MATS] * 2,
        7,
    ),
    "qwen2": (
        lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**LLAMA_LIKE)),
        stack_blocks("model.layers"),
        [_LLAMA_MATS] * 2,
        7,
    ),
    "gemma": (
        lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**LLAMA_LIKE, head_dim=8)),
        stack_blocks("model.layers"),
        [_LLAMA_MATS] * 2,
        7,
    ),
    "phi3": (
        lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**LLAMA_LIKE)),
        stack_blocks("model.layers"),
        [("self_attn.o_proj.weight", "self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight")]
        * 2,
        4,
    ),
    "t5": (
        lambda: tf.T5ForConditionalGeneration(
            tf.T5Config(
                d_model=32,
                d_ff=64,
                d_kv=8,
                num_layers=2,
                num_heads=4,
                vocab_size=100,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        ),
        stack_blocks("encoder.block") + stack_blocks("decoder.block"),
        [_T5_ENC_MATS] * 2 + [_T5_DEC_MATS] * 2,
        None,  # encoder and decoder blocks differ: checked in test_t5_and_mixtral_matrix_units
    ),
    "mixtral": (
        lambda: tf.MixtralForCausalLM(tf.MixtralConfig(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2)),
        stack_blocks("model.layers"),
        [
            tuple(f"self_attn.{p}_proj.weight" for p in "qkvo")
            + ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
        ]
        * 2,
        6,  # q, k, v, o, router gate, experts (gate_up_proj and down_proj in one unit)
    ),
}


def batch_for(model: torch.nn.Module, batch_size: int = 4, seq_len: int = 12, seed: int = 0) -> dict:
    """A random training batch of the right kind for ``model`` (classification, causal LM, seq2seq)."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch_size, seq_len), generator=g)
    name = type(model).__name__
    if "SequenceClassification" in name:
        return {"input_ids": ids, "labels": torch.randint(0, model.config.num_labels, (batch_size,), generator=g)}
    if "ConditionalGeneration" in name:
        return {"input_ids": ids, "labels": torch.randint(3, vocab, (batch_size, 6), generator=g)}
    return {"input_ids": ids, "labels": ids.clone()}


def dataset_for(model: torch.nn.Module, n: int = 16, seed: int = 0):
    """A `datasets.Dataset` of ``n`` random examples of the right kind for ``model``."""
    from datasets import Dataset

    batch = batch_for(model, batch_size=n, seed=seed)
    return Dataset.from_dict({k: v.tolist() for k, v in batch.items()})


def tiny_training_args(output_dir, **overrides):
    """`TempBalanceConfig` for a few quiet CPU steps of a tiny model (3 steps, α every 2, min_evals 8)."""
    from tb_hf import TempBalanceConfig

    options = dict(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        tb_update_steps="2",
        tb_min_evals=8,
        seed=0,
    )
    return TempBalanceConfig(**{**options, **overrides})


def history(output_dir) -> list[dict]:
    """The records of ``<output_dir>/tempbalance/history.jsonl``, one per spectral update, in file order."""
    with open(Path(output_dir) / "tempbalance" / "history.jsonl") as f:
        return [json.loads(line) for line in f]


class Recorder(tf.TrainerCallback):
    """Every group's (unit, lr, base lr, factor) as the optimizer step uses them (before `optimizer.step()`)."""

    def __init__(self):
        self.steps: list[tuple[int, list[tuple]]] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        groups = [(g["tb_unit"], g["lr"], g["tb_base_lr"], g["tb_factor"]) for g in optimizer.param_groups]
        self.steps.append((state.global_step, groups))


def same(a, b) -> bool:
    """Equality that treats NaN (JSON null) as equal to itself."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def same_spectra(a: dict, b: dict) -> bool:
    """Two `analyze` results are equal, field by field, in the same order (NaN equal to NaN); keys as labels."""
    a, b = {str(k): v for k, v in a.items()}, {str(k): v for k, v in b.items()}
    if list(a) != list(b):
        return False
    return all(same(x, y) for k in a for x, y in zip(a[k].to_dict().values(), b[k].to_dict().values(), strict=True))
