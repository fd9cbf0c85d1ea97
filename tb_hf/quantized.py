"""Quantized weights (bitsandbytes 4-bit and 8-bit, QLoRA): their full shapes, their dense matrices, and keeping
bitsandbytes from repacking 4-bit weights on CPU. Other packed formats (GPTQ, AWQ) are recognised, not read."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "REPACKED_4BIT_MESSAGE",
    "can_dequantize",
    "dense_weight",
    "full_shape",
    "is_packed",
    "keep_4bit_weights_unpacked",
    "repacked_4bit_weights",
]


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's full shape, also when DeepSpeed ZeRO-3 has partitioned it (``ds_shape``; the local tensor is
    then empty) and for a bitsandbytes 4-bit weight (the matrix's shape in its ``quant_state``; the stored tensor is
    ``[out·in/2, 1]`` packed bytes). A DTensor (FSDP2) reports its full shape itself."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return tuple(quant_state.shape)
    return tuple(getattr(param, "ds_shape", param.shape))


REPACKED_4BIT_MESSAGE = (
    "bitsandbytes has repacked the 4-bit weight(s) {names} for its AVX512-BF16 CPU kernel, as it does at the first "
    "eval-mode forward without gradients (an evaluation) on a CPU with avx512_bf16. A repacked weight no longer "
    "dequantizes to its matrix, so TempBalance will not fit it, and it has no backward pass, so the LoRA adapters "
    "whose gradients pass through it silently stop learning. Load the model again and set "
    "`module.support_avx512bf16_for_cpu = False` on every bitsandbytes Linear4bit before any evaluation: "
    "TempBalanceTrainer does so when it is created, "
    "TempBalanceCallback when training starts (tb_hf.layers.keep_4bit_weights_unpacked(model))."
)


def _is_bnb_4bit(param: torch.Tensor) -> bool:
    return type(param).__name__ == "Params4bit" and getattr(param, "bnb_quantized", True)


def is_packed(param: torch.Tensor) -> bool:
    """Whether the stored tensor is not the matrix itself: a bitsandbytes 4-bit weight (any storage dtype), an 8-bit
    one (int8 rows and their scales), or any other integer storage (GPTQ, AWQ, ...)."""
    if _is_bnb_4bit(param):
        return True
    return not (param.dtype.is_floating_point or param.dtype.is_complex)  # also Int8Params but has_fp16_weights


def _int8_scales(param: torch.Tensor, module: nn.Module | None) -> torch.Tensor | None:
    """The row scales of a bitsandbytes 8-bit weight: on the weight until the layer's first forward, then on the
    layer's ``state`` (`Linear8bitLt.init_8bit_state` moves them)."""
    scales = getattr(param, "SCB", None)
    if scales is None and module is not None:
        scales = getattr(getattr(module, "state", None), "SCB", None)
    return scales


def can_dequantize(param: torch.Tensor, module: nn.Module | None = None) -> bool:
    """Whether `dense_weight` can give the matrix of a packed weight: bitsandbytes 4-bit (nf4/fp4, with its
    ``quant_state``) and 8-bit (``Int8Params`` with its scales). ``module``: the layer owning the weight."""
    if _is_bnb_4bit(param):
        return getattr(param, "quant_state", None) is not None
    if type(param).__name__ == "Int8Params" and param.dtype == torch.int8:
        return _int8_scales(param, module) is not None
    return False


def is_repacked_4bit(param: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit weight repacked for the AVX512-BF16 CPU kernel (see `keep_4bit_weights_unpacked`)."""
    return getattr(getattr(param, "quant_state", None), "packing_format_for_cpu", False) is True


def repacked_4bit_weights(model: nn.Module) -> list[str]:
    """Names of the 4-bit weights of ``model`` that bitsandbytes has repacked for its CPU kernel."""
    return [name for name, param in model.named_parameters() if is_repacked_4bit(param)]


def keep_4bit_weights_unpacked(model: nn.Module) -> int:
    """Keep bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel; the number of layers changed.

    On a CPU with avx512_bf16, bitsandbytes (checked with 0.50.2) converts a ``Linear4bit``'s weight to another
    layout at the first forward in eval mode without gradients (the Trainer's evaluation) and keeps it so. The
    converted weight has no autograd: after it, the LoRA adapters of earlier layers get no gradient and stop learning
    without any error, and ``dequantize_4bit`` no longer gives the matrix. Setting the layers'
    ``support_avx512bf16_for_cpu = False`` (what this does) keeps the weights as loaded; evaluation then runs
    bitsandbytes's general CPU kernel. It changes nothing on GPU.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):  # bitsandbytes sets it to 1 (an int)
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


@torch.no_grad()
def dense_weight(param: torch.Tensor, module: nn.Module | None = None, name: str = "the weight") -> torch.Tensor:
    """The matrix a weight stands for: the parameter itself (detached), or, for a bitsandbytes 4-bit or 8-bit
    weight, a dequantized copy (``dequantize_4bit`` of the packed bytes with their ``quant_state``; int8 rows times
    their scales), the weight the layer's forward computes with, in its compute dtype. The model is not changed
    (not peft's ``dequantize_module_weight``, which reassigns the weight after a forward).

    Raises:
        ValueError: For a 4-bit weight repacked for the CPU kernel (`REPACKED_4BIT_MESSAGE`), and for a packed
            format that cannot be dequantized (`can_dequantize`).
    """
    if not is_packed(param):
        return param.detach()
    if is_repacked_4bit(param):
        raise ValueError(REPACKED_4BIT_MESSAGE.format(names=name))
    if not can_dequantize(param, module):
        kind = f"{type(param).__name__}, {param.dtype}"
        raise ValueError(f"{name} is stored in a packed format ({kind}) that TempBalance cannot dequantize")
    import bitsandbytes.functional as bnb_functional

    if _is_bnb_4bit(param):
        return bnb_functional.dequantize_4bit(param.data, param.quant_state)
    return bnb_functional.int8_vectorwise_dequant(param.data, _int8_scales(param, module))
