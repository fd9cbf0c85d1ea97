"""peft LoRA as TempBalance sees it: which LoRA layers adapt a weight, and the weight the forward pass uses
(W₀ + ΔW) or the update alone (ΔW)."""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.utils import logging

from .quantized import full_shape

__all__ = ["lora_layers", "lora_weight"]

logger = logging.get_logger(__name__)


def _adapted_param(layer: LoraLayer) -> torch.Tensor | None:
    """The parameter a LoRA layer adapts: the base layer's weight, or a ``ParamWrapper``'s target parameter."""
    if hasattr(layer, "get_param"):  # ParamWrapper, from peft's `target_parameters` (e.g. 3-D expert weights)
        return layer.get_param()
    return getattr(layer.get_base_layer(), "weight", None)


def lora_layers(model: nn.Module) -> dict[int, list[LoraLayer]]:
    """id(adapted parameter) -> the LoRA layers adapting it (several for nested ``ParamWrapper``s)."""
    layers: dict[int, list[LoraLayer]] = {}
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(target := _adapted_param(module), torch.Tensor):
            layers.setdefault(id(target), []).append(module)
    return layers


def lora_weight(weight: torch.Tensor, layers: list[LoraLayer], lora_view: str) -> torch.Tensor:
    """W₀ + ΔW (``"effective"``) or ΔW (``"delta"``) of a weight adapted by ``layers``, ΔW over active adapters.

    Formed in float32 (or float64 if the weight is): in bf16 the sum W₀ + ΔW rounds away most of a small ΔW.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32) if weight.dtype.is_floating_point else torch.float32
    if lora_view == "effective":
        out = weight.to(dtype)
    else:  # only the shape: ``weight`` may be a packed (quantized) parameter
        out = torch.zeros(full_shape(weight), dtype=dtype, device=weight.device)
    for layer in layers:
        active = [] if layer.disable_adapters else [a for a in layer.active_adapters if a in layer.scaling]
        merged = layer.merged_adapters  # already inside `weight`
        if lora_view == "delta":
            add, remove = active, []
        else:
            add = [a for a in active if a not in merged]
            remove = [a for a in merged if a not in active]
        for adapter, sign in [(a, 1.0) for a in add] + [(a, -1.0) for a in remove]:
            if layer.use_dora.get(adapter, False):
                logger.warning_once(
                    "TempBalance: DoRA's magnitude vector is left out of the analysed weight (W₀ + B·A·scaling)."
                )
            out = out + sign * layer.get_delta_weight(adapter).to(device=weight.device, dtype=dtype)
    return out
