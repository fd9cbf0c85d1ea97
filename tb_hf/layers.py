"""Which weight matrices belong to which TempBalance unit, and the optimizer groups that follow from it.

Data flows one way::

    model -> find_blocks() -> partition_model() -> Partition (units: matrices + trainable params)
          -> `tb_hf.engine` (the spectral pass) and `tb_hf.optim` (param groups, one factor per unit)

Conventions (``docs/method.md``, sections 5-6):

* A **block** is a child of an outermost ``nn.ModuleList`` of at least two children of one class, each of
  which owns a parameter with two or more dimensions. One generic rule, no per-architecture table: it finds
  ``encoder.layer`` (BERT family), ``transformer.h`` (GPT-2), ``model.layers`` (LLaMA family), both T5
  stacks, and works unchanged through peft wrappers.
* The **analysed matrices** of a block are the weights that multiply their input (`_multiplies`: Linear,
  GPT-2 ``Conv1D``, fused projections, 2-D convolution kernels, 3-D expert tensors), frozen ones included; not
  ``nn.Embedding`` weights (T5's relative attention bias), depthwise/1-D convolution kernels or raw parameters
  (Mamba's ``conv1d`` and ``A_log``, RWKV's ``time_mix``), nor the adapter weights of peft layers (LoRA
  ``lora_A``/``lora_B``): with LoRA the analysed matrix is the wrapped ``base_layer`` weight, seen as W₀ + ΔW
  (`lora_weight`) by the pass (`tb_hf.engine.unit_matrices`).
* A **unit** shares one learning-rate factor: a whole block (``unit="block"``, the default) or one module
  owning analysed matrices (``unit="matrix"``, e.g. ``...q_proj`` with its bias and LoRA adapters). A unit is
  kept only if it has at least one analysed matrix and at least one trainable parameter. Every other trainable
  parameter (embeddings, final norm, pooler, head, and in matrix mode the norms inside blocks) is *outside*
  and keeps factor 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn
from transformers.utils import logging

from .options import LORA_AVERAGES, LORA_VIEWS, UNIT_KINDS

__all__ = [
    "LORA_AVERAGES",
    "LORA_VIEWS",
    "UNIT_KINDS",
    "Partition",
    "REPACKED_4BIT_MESSAGE",
    "Unit",
    "can_dequantize",
    "dense_weight",
    "find_blocks",
    "full_shape",
    "is_packed",
    "keep_4bit_weights_unpacked",
    "llrd_depths",
    "lora_layers",
    "lora_weight",
    "parent_paths",
    "partition_model",
    "repacked_4bit_weights",
    "unit_weights",
]

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class Unit:
    """A set of parameters that share one learning-rate factor.

    Attributes:
        name: Module path of the unit: the block (``"roberta.encoder.layer.3"``) or, in matrix mode, the module
            owning the analysed matrices (``"roberta.encoder.layer.3.attention.self.query"``; for a LoRA-wrapped
            module the LoRA layer itself, not its ``base_layer``).
        matrices: Parameter names (as in ``model.named_parameters()``) of the matrices analysed for this unit,
            frozen ones included (``"...query.base_layer.weight"`` under LoRA).
        params: Names of the trainable parameters that take this unit's factor (matrices, biases, norms, LoRA
            adapters inside the unit).
    """

    name: str
    matrices: tuple[str, ...]
    params: tuple[str, ...]


@dataclass(frozen=True)
class Partition:
    """The model split into TempBalance units.

    Attributes:
        units: The units, in model order.
        outside: Trainable parameters outside every unit (embeddings, final norm, pooler, head, ...): factor 1.
        blocks: Module paths of all blocks found by `find_blocks` (including blocks that yielded no unit).
    """

    units: tuple[Unit, ...]
    outside: tuple[str, ...]
    blocks: tuple[str, ...]

    @property
    def params(self) -> tuple[str, ...]:
        """All trainable parameter names of the partition: the units' in order, then the outside ones."""
        return tuple(name for unit in self.units for name in unit.params) + self.outside


# --------------------------------------------------------------------------------------------------
# Blocks


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's full shape, also when DeepSpeed ZeRO-3 has partitioned it (``ds_shape``; the local tensor is
    then empty) and for a bitsandbytes 4-bit weight (the matrix's shape in its ``quant_state``; the stored tensor is
    ``[out·in/2, 1]`` packed bytes). A DTensor (FSDP2) reports its full shape itself."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return tuple(quant_state.shape)
    return tuple(getattr(param, "ds_shape", param.shape))


# --------------------------------------------------------------------------------------------------
# Quantized weights

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


def _has_matrix(module: nn.Module) -> bool:
    return any(len(full_shape(p)) >= 2 for p in module.parameters())


def _is_block_list(module: nn.Module, min_len: int = 2) -> bool:
    """A list of transformer blocks: children of one class, or composite modules of several classes (a hybrid
    stack such as Jamba's attention and Mamba layers), each holding a matrix."""
    if not isinstance(module, nn.ModuleList) or len(module) < min_len:
        return False
    if not all(_has_matrix(child) for child in module):
        return False
    first = type(module[0])
    return all(type(child) is first for child in module) or all(
        next(child.children(), None) is not None for child in module
    )


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of ``model``, as ``(module path, block)`` pairs in model order.

    A block is a child of an outermost ``nn.ModuleList`` with at least two children that all share one class
    (or are all composite modules, as in hybrid attention/Mamba stacks) and each own (at any depth) a parameter
    with ``ndim >= 2``. A model with no such list but a list of one composite block (a one-layer model,
    ALBERT's shared layer group) gets that one block, with a warning. Lists inside a found list are not searched, so
    per-block lists (T5's ``layer``, expert lists) never show up as blocks of their own; several stacks
    (T5's encoder and decoder) are all found. Paths match ``model.named_modules()``, so a peft-wrapped model
    gives ``"base_model.model.<path>"``.

    Raises:
        ValueError: If the model has no such list.
    """
    blocks: list[tuple[str, nn.Module]] = []

    def visit(module: nn.Module, prefix: str, min_len: int) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _is_block_list(child, min_len):
                blocks.extend((f"{path}.{i}", block) for i, block in enumerate(child))
            else:
                visit(child, path, min_len)

    visit(model, "", 2)
    if not blocks:
        # A one-layer model, or ALBERT's single shared layer group: a list holding one composite block.
        visit(model, "", 1)
        blocks = [(path, block) for path, block in blocks if next(block.children(), None) is not None]
        if blocks:
            logger.warning_once(
                f"TempBalance: {type(model).__name__} has a single transformer block ({blocks[0][0]}): with "
                "tb_unit='block' it is one unit, and one unit always gets factor 1. Use tb_unit='matrix' to balance "
                "the matrices inside it."
            )
    if not blocks:
        raise ValueError(
            f"Found no transformer blocks in {type(model).__name__}: TempBalance looks for an nn.ModuleList of "
            "transformer layers (children of one class, or composite layers of a hybrid stack, each holding a weight "
            "matrix), as in encoder.layer, model.layers or transformer.h. This model has none, so there is nothing "
            "to balance: train it with the plain Trainer, or wrap its layers in an nn.ModuleList."
        )
    return blocks


def llrd_depths(model: torch.nn.Module) -> dict[str, int]:
    """Depth from the top of every trainable parameter: 0 for the top block and the head, n for embeddings.

    Depth counts blocks (`find_blocks`, in model order, over every stack) from the last: block i of n has depth
    n − 1 − i; a parameter before the first block (embeddings) has depth n, one after the last (pooler, final norm,
    head) depth 0. Layer-wise lr decay gives a parameter of depth d the rate ``lr × decay^d``."""
    blocks = [path for path, _ in find_blocks(model)]
    n = len(blocks)
    depth_of_block = {path: n - 1 - i for i, path in enumerate(blocks)}
    depths: dict[str, int] = {}
    seen_block = False
    for name, param in model.named_parameters():
        block = next((b for b in blocks if name.startswith(f"{b}.")), None)
        if block is not None:
            seen_block = True
            depth = depth_of_block[block]
        else:
            depth = 0 if seen_block else n  # after the blocks: head/pooler/final norm; before: embeddings
        if param.requires_grad:
            depths[name] = depth
    return depths


# --------------------------------------------------------------------------------------------------
# Partition


def parent_paths(name: str) -> Iterator[str]:
    """``"a.b.c"`` -> ``"a.b"``, ``"a"``: the paths of the modules containing a parameter, innermost first."""
    while "." in name:
        name = name.rsplit(".", 1)[0]
        yield name


def _innermost(name: str, paths: Collection[str]) -> str | None:
    return next((prefix for prefix in parent_paths(name) if prefix in paths), None)


def _multiplies(module: nn.Module | None, attr: str, shape: tuple[int, ...]) -> bool:
    """Whether ``module.<attr>`` (of full ``shape``) is a weight that multiplies its input: the weight of a
    Linear (quantized ones included), GPT-2's ``Conv1D``, a 2-D convolution (a 4-D kernel) or any other module's
    2-D ``weight`` (custom linear layers, MoE routers), or a 3-D expert tensor (leading dimension = the module's
    ``num_experts``, as in Mixtral). Not: embeddings, depthwise or 1-D convolution kernels (Mamba's ``conv1d``),
    and other raw parameters such as Mamba's ``A_log`` or RWKV's ``time_mix``, whose "spectrum" means nothing."""
    from transformers.pytorch_utils import Conv1D

    if module is None or isinstance(module, nn.Embedding):
        return False
    if isinstance(module, nn.Linear | Conv1D):
        return attr == "weight" and len(shape) == 2
    if isinstance(module, nn.Conv2d):
        return attr == "weight" and module.in_channels // module.groups > 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return False
    if len(shape) == 3:
        return shape[0] == getattr(module, "num_experts", None) and min(shape[1:]) > 1
    return attr == "weight" and len(shape) == 2  # a custom linear layer (e.g. an MoE router's weight)


def _is_analysed(name: str, param: torch.Tensor, modules: dict[str, nn.Module]) -> bool:
    """Whether a parameter inside a block is one of the matrices whose spectrum is analysed."""
    shape = full_shape(param)
    if len(shape) < 2:
        return False
    owner, attr = name.rsplit(".", 1)
    if not _multiplies(modules.get(owner), attr, shape):
        return False
    for prefix in parent_paths(name):
        module = modules[prefix]
        # peft adapter weights (lora_A, lora_B, lora_embedding_*): only the wrapped base_layer is analysed.
        if isinstance(module, BaseTunerLayer) and not name.startswith(f"{prefix}.base_layer."):
            return False
        # modules_to_save inside a block: the trainable copy is used in the forward pass, not the original.
        if isinstance(module, ModulesToSaveWrapper) and name.startswith(f"{prefix}.original_module."):
            return False
    return True


def _matrix_unit_path(owner: str, modules: dict[str, nn.Module]) -> str:
    """The module path of a matrix unit: the owner, lifted out of peft ``base_layer`` wrappers."""
    path = owner
    while "." in path:
        parent, child = path.rsplit(".", 1)
        if child != "base_layer" or not isinstance(modules[parent], BaseTunerLayer):
            break
        path = parent
    return path


def partition_model(model: nn.Module, unit: str = "block") -> Partition:
    """Split ``model`` into TempBalance units.

    Args:
        model: Any ``nn.Module`` with transformer blocks (see `find_blocks`), peft-wrapped or not.
        unit: ``"block"``: one unit per block, holding all its analysed matrices and trainable parameters.
            ``"matrix"``: one unit per module owning analysed matrices inside a block, holding the trainable
            parameters under that module (its bias, LoRA adapters); other trainable parameters inside blocks
            (norms) are then outside.

    A unit is kept only if it has at least one analysed matrix and at least one trainable parameter; the
    trainable parameters of a dropped unit are outside. Frozen matrices are analysed (the LoRA base weight),
    frozen parameters never appear in ``params`` or ``outside``.
    """
    if unit not in UNIT_KINDS:
        raise ValueError(f"unit must be one of {UNIT_KINDS}, got {unit!r}")
    blocks = [path for path, _ in find_blocks(model)]
    modules = dict(model.named_modules())
    named = list(model.named_parameters())

    # Unit path -> analysed matrices, in model order.
    matrices: dict[str, list[str]] = {}
    block_paths = set(blocks)
    for name, param in named:
        block = _innermost(name, block_paths)
        if block is None or not _is_analysed(name, param, modules):
            continue
        key = block if unit == "block" else _matrix_unit_path(name.rsplit(".", 1)[0], modules)
        matrices.setdefault(key, []).append(name)

    params: dict[str, list[str]] = {key: [] for key in matrices}
    outside: list[str] = []
    for name, param in named:
        if param.requires_grad:
            key = _innermost(name, params)
            (params[key] if key is not None else outside).append(name)

    units = []
    for key, mats in matrices.items():
        if params[key]:
            units.append(Unit(name=key, matrices=tuple(mats), params=tuple(params[key])))
        # else: nothing trainable to scale (e.g. a frozen block, or a matrix without LoRA under peft).
    if not units:
        logger.warning_once(
            f"TempBalance: none of the {len(blocks)} transformer blocks of {type(model).__name__} has a trainable "
            "parameter (all frozen, e.g. only the head is trained): there is nothing to balance, and every learning "
            "rate follows the base schedule. Unfreeze the blocks or put LoRA adapters in them to use TempBalance."
        )
    elif len(units) == 1 and not (unit == "block" and len(blocks) == 1):  # a one-block model: find_blocks said so
        n_other = len(matrices) - 1  # units that have analysed matrices but nothing trainable
        others = {0: "the only one with an analysed matrix", 1: "the other is frozen"}.get(
            n_other, f"the other {n_other} are frozen"
        )
        advice = (
            "Use tb_unit='matrix' to balance the matrices inside it, or unfreeze more blocks."
            if unit == "block"
            else "Train more matrices (unfreeze them, or put LoRA adapters on more modules) to use TempBalance."
        )
        logger.warning_once(
            f"TempBalance: only one {unit} unit of {type(model).__name__} has a trainable parameter ({units[0].name}; "
            f"{others}): a single trainable unit always gets factor 1, so nothing is balanced. "
            f"{advice}"
        )
    logger.info(
        f"TempBalance: {len(blocks)} blocks found ({blocks[0]} ... {blocks[-1]}), {len(units)} {unit} units, "
        f"{len(outside)} trainable parameters outside the units."
    )
    return Partition(units=tuple(units), outside=tuple(outside), blocks=tuple(blocks))


def unit_weights(model: nn.Module, partition: Partition) -> dict[str, float]:
    """Unit → its number of trainable parameters (the weights of ``tb_normalize``), from the parameters' full
    shapes (`full_shape`), so the same whether the model is sharded (ZeRO-3's local tensors are empty) or not."""
    params = dict(model.named_parameters())
    return {u.name: float(sum(math.prod(full_shape(params[p])) for p in u.params)) for u in partition.units}


# --------------------------------------------------------------------------------------------------
# Matrices


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
