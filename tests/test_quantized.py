"""QLoRA with real bitsandbytes on CPU: the quantized base is dequantized one block at a time and balanced.

A tiny LLaMA in float32 (128 wide, so that bitsandbytes's 64-element blocks and its CPU kernels apply) is saved and
loaded back quantized with ``BitsAndBytesConfig`` and ``device_map="cpu"``: 4-bit nf4 and fp4, and 8-bit. The float
weights it was quantized from are known, so the dequantized matrices and their α are checked against them.
"""

from __future__ import annotations

import logging
import math

import bitsandbytes as bnb
import bitsandbytes.functional as bnb_functional
import peft
import pytest
import torch
import transformers as tf

from tb_hf import TempBalanceArguments, TempBalanceTrainer, partition_model, unit_matrices
from tb_hf.engine import SpectralEngine
from tb_hf.quantized import REPACKED_4BIT_MESSAGE, full_shape, keep_4bit_weights_unpacked, repacked_4bit_weights
from tb_hf.testing import dataset_for, history, tiny_training_args

WIDE_LLAMA = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
KINDS = ("nf4", "fp4", "int8", "nf4-double-quant", "nf4-bf16-storage")  # the last: FSDP-QLoRA's storage dtype
TARGETS = ["q_proj", "v_proj", "down_proj"]
TB = TempBalanceArguments(tb_min_evals=8, tb_unit="matrix")


@pytest.fixture(scope="module")
def float_llama(tmp_path_factory):
    """(folder of the saved float32 model, the model)."""
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**WIDE_LLAMA))
    path = tmp_path_factory.mktemp("llama") / "float"
    model.save_pretrained(path)
    return path, model


def load_quantized(path, kind: str) -> tf.PreTrainedModel:
    if kind == "int8":
        config = tf.BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = tf.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=kind.split("-")[0],
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=kind.endswith("double-quant"),
            bnb_4bit_quant_storage=torch.bfloat16 if kind.endswith("bf16-storage") else torch.uint8,
        )
    return tf.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, device_map="cpu", dtype=torch.float32
    )


def qlora(path, kind: str, seed: int = 0) -> peft.PeftModel:
    model = load_quantized(path, kind)
    torch.manual_seed(seed)
    return peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))


def float_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def roundtrip(weight: torch.Tensor, kind: str, blocksize: int = 64) -> torch.Tensor:
    """bitsandbytes's own quantize -> dequantize of a float weight (what loading quantized stores)."""
    if kind == "int8":
        rows, scales, _ = bnb_functional.int8_vectorwise_quant(weight.half())
        return bnb_functional.int8_vectorwise_dequant(rows, scales)
    packed, state = bnb_functional.quantize_4bit(
        weight, blocksize=blocksize, quant_type=kind.split("-")[0], compress_statistics=kind.endswith("double-quant")
    )
    return bnb_functional.dequantize_4bit(packed, state)


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_base_is_dequantized_and_fitted_like_the_float_model(float_llama, kind):
    path, reference = float_llama
    model = qlora(path, kind)
    floats = dict(reference.named_parameters())
    stored = {n: p.data.clone() for n, p in model.named_parameters()}
    partition = partition_model(model, "matrix")
    engine = SpectralEngine(model, partition, TB)
    assert engine.packed and {t.status for t in engine.tasks} == {None}  # nothing left out as "quantized"
    assert all(t.packed for t in engine.tasks)  # the plan says which weights are read dequantized
    base = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert type(base).__name__ == ("Int8Params" if kind == "int8" else "Params4bit")
    assert [t.shape for t in engine.tasks][:3] == [(128, 128), (64, 128), (128, 256)]  # the matrix, not the bytes
    assert full_shape(base) == (128, 128)

    # The matrices, block by block: bitsandbytes's own dequantization of the float weights, close to them.
    matrices = {key.param: m for _share, mats in engine._blocks(model, engine.tasks) for key, m in mats.items()}
    assert list(matrices) == [n for u in partition.units for n in u.matrices]
    bound = {"nf4": 0.11, "fp4": 0.14, "int8": 0.01}[kind.split("-")[0]]
    for name, matrix in matrices.items():
        original = floats[float_name(name)]
        assert matrix.shape == original.shape and matrix.dtype == torch.float32
        torch.testing.assert_close(matrix, roundtrip(original, kind), rtol=0, atol=1e-6)
        assert 0 < torch.linalg.norm(matrix - original) < bound * torch.linalg.norm(original)

    # α of every unit close to the float model's (the quantization noise barely moves the tail).
    result = engine.run(model)
    assert {s.status for s in result.spectra.values()} == {"ok"}
    float_engine = SpectralEngine(reference, partition_model(reference, "matrix"), TB)
    float_alpha = float_engine.run(reference).alphas
    assert not float_engine.packed and not any(t.packed for t in float_engine.tasks)
    tolerance = 0.01 if kind == "int8" else 0.05
    assert len(result.alphas) == 6
    for unit, alpha in result.alphas.items():
        assert alpha == pytest.approx(float_alpha[unit.removeprefix("base_model.model.")], rel=tolerance)
    assert {n: p.data for n, p in model.named_parameters()}.keys() == stored.keys()
    same_bytes = [
        torch.equal(p.data.view(torch.uint8), stored[n].view(torch.uint8)) for n, p in model.named_parameters()
    ]
    assert all(same_bytes)  # the model is unchanged (bytes: packed bf16 storage holds NaN patterns)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_qlora_training_balances_the_quantized_blocks(float_llama, tmp_path, kind):
    """TempBalanceTrainer on a QLoRA model: every unit fitted at every pass (no factor 1 left by 'quantized'),
    factors that differ, LoRA learning; the analysed weight is dequantized W₀ + scaling·B·A."""
    path, _ = float_llama
    model = qlora(path, kind)
    args = tiny_training_args(tmp_path, max_steps=4, tb_unit="matrix", learning_rate=1e-2)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=16))
    trainer.train()
    records = history(tmp_path)
    assert [r["step"] for r in records] == [0, 2]
    for r in records:
        assert r["skipped"] == [] and len(r["alpha"]) == 6
        assert all(a is not None and a > 1 for a in r["alpha"].values())
        assert len(set(r["factor"].values())) > 1
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors == pytest.approx(records[-1]["factor"]) and len(set(factors.values())) > 1

    matrices = unit_matrices(model, trainer.tempbalance.balancer.partition)
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
            assert torch.count_nonzero(lora_b) > 0  # LoRA learned
            w = module.base_layer.weight
            if kind == "int8":  # after the first forward the scales live in the layer's state
                w0 = bnb_functional.int8_vectorwise_dequant(w.data, module.base_layer.state.SCB)
            else:
                w0 = bnb_functional.dequantize_4bit(w.data, w.quant_state)
            expected = w0 + module.scaling["default"] * (lora_b @ lora_a)
            torch.testing.assert_close(matrices[f"{name}.base_layer.weight"], expected)


def test_delta_view_of_a_quantized_base_needs_no_dequantizing(float_llama):
    """tb_lora_view='delta': ΔW = scaling·B·A alone, of the base's matrix shape (not that of its packed bytes)."""
    path, _ = float_llama
    model = qlora(path, "nf4")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    partition = partition_model(model, "matrix")
    engine = SpectralEngine(
        model, partition, TempBalanceArguments(tb_min_evals=4, tb_unit="matrix", tb_lora_view="delta")
    )
    matrices = {k.param: m for _share, mats in engine._blocks(model, engine.tasks) for k, m in mats.items()}
    layer = model.base_model.model.model.layers[0].self_attn.v_proj
    delta = layer.scaling["default"] * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
    torch.testing.assert_close(matrices["base_model.model.model.layers.0.self_attn.v_proj.base_layer.weight"], delta)
    assert {s.status for s in engine.run(model).spectra.values()} == {"rank_deficient"}  # rank 4: not fitted


def _repack(model) -> list[str]:
    """Repack the 4-bit weights as bitsandbytes does for its AVX512-BF16 CPU kernel: by a real eval-mode forward
    without gradients where the CPU has avx512_bf16, else with bitsandbytes's own conversion."""
    if bnb_functional.has_avx512bf16():
        model.eval()
        with torch.no_grad():
            model(input_ids=torch.randint(3, 100, (2, 8)))
        model.train()
    else:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                w = module.weight
                w.data, w.quant_state = bnb_functional._convert_weight_packed_for_cpu(w.data, w.quant_state)
    return repacked_4bit_weights(model)


def test_repacked_4bit_weights_are_refused_not_fitted(float_llama, tmp_path, caplog):
    path, _ = float_llama
    model = qlora(path, "nf4")
    engine = SpectralEngine(model, partition_model(model, "matrix"), TB)
    assert engine.run(model).metrics  # fine before
    repacked = _repack(model)
    assert len(repacked) == 14 and repacked[0].endswith("layers.0.self_attn.q_proj.base_layer.weight")
    with pytest.raises(ValueError, match="support_avx512bf16_for_cpu = False") as err:
        engine.run(model)
    assert "repacked" in str(err.value) and "layers.0.self_attn.q_proj" in str(err.value)

    if bnb_functional.has_avx512bf16():  # why it is refused: bitsandbytes's converted weight has no backward
        lora = model.base_model.model.model.layers[0].self_attn.q_proj
        loss = model(**{k: torch.tensor(v) for k, v in dataset_for(model, n=4)[:4].items()}).loss
        loss.backward()
        assert lora.lora_B["default"].weight.grad is None or not lora.lora_B["default"].weight.grad.any()

    # Training it: a clear error when the trainer is made (LoRA would not learn), not factor 1 in silence.
    args = tiny_training_args(tmp_path, max_steps=2, tb_unit="matrix")
    with pytest.raises(ValueError) as err:
        TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=8))
    assert str(err.value) == REPACKED_4BIT_MESSAGE.format(names=f"{repacked[0]} and 13 more")


def test_evaluation_during_qlora_training_repacks_nothing(float_llama, tmp_path):
    """The Trainer's evaluations (eval mode, no gradients) would repack the 4-bit weights on an avx512_bf16 CPU;
    TempBalanceTrainer turns that off, so LoRA keeps learning and every later pass fits every unit."""
    path, _ = float_llama
    model = qlora(path, "nf4")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert all(m.support_avx512bf16_for_cpu == bnb_functional.has_avx512bf16() for m in layers)
    args = tiny_training_args(
        tmp_path, max_steps=4, tb_unit="matrix", learning_rate=1e-2, eval_strategy="steps", eval_steps=1,
        per_device_eval_batch_size=4,
    )  # fmt: skip
    data = dataset_for(model, n=16)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    assert not any(m.support_avx512bf16_for_cpu for m in layers)  # set when the trainer is created
    assert "eval_loss" in trainer.evaluate()  # even an evaluation before training
    trainer.train()
    assert repacked_4bit_weights(model) == []
    assert sum("eval_loss" in h for h in trainer.state.log_history) == 4  # one after every step
    records = history(tmp_path)
    assert [r["step"] for r in records] == [0, 2] and all(r["skipped"] == [] for r in records)
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):  # layer 0's adapters too: gradients reach them
            assert torch.count_nonzero(module.lora_B["default"].weight) > 0, name


def test_keep_4bit_weights_unpacked_counts_the_layers(float_llama):
    path, _ = float_llama
    model = load_quantized(path, "nf4")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = True
    assert keep_4bit_weights_unpacked(model) == len(layers) == 14
    assert keep_4bit_weights_unpacked(model) == 0


def test_undequantizable_packed_weights_still_get_status_quantized(caplog):
    """Integer storage that is not bitsandbytes's (GPTQ, AWQ, ...): not fitted, and the warning says why."""
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**WIDE_LLAMA))
    k = model.model.layers[0].self_attn.k_proj  # (the warning is logged once per text: not test_bad_input's q_proj)
    k.weight = torch.nn.Parameter(torch.randint(0, 255, k.weight.shape, dtype=torch.uint8), requires_grad=False)
    with caplog.at_level(logging.WARNING):
        engine = SpectralEngine(model, partition_model(model), TB)
    assert [t.status for t in engine.tasks][:3] == [None, "quantized", None]
    assert "cannot dequantize" in caplog.text and "bitsandbytes 4-bit and 8-bit" in caplog.text
    result = engine.run(model)
    assert math.isfinite(result.metrics["model.layers.0"])  # from the block's other matrices
    assert "model.layers.0.self_attn.k_proj.weight" not in unit_matrices(model, partition_model(model))
