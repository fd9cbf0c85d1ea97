"""Which weight matrices belong to which TempBalance unit: the partition of a model.

Data flows one way::

    model -> `tb_hf.blocks.find_blocks` -> partition_model() -> Partition (units: matrices + trainable params)
          -> `tb_hf.engine` (the spectral pass) and `tb_hf.optim` (param groups, one factor per unit)

Conventions (``docs/method.md``, sections 5-6):

* The **analysed matrices** of a block are the weights that multiply their input (`_multiplies`: Linear,
  GPT-2 ``Conv1D``, fused projections, 2-D convolution kernels, 3-D expert tensors), frozen ones included; not
  ``nn.Embedding`` weights (T5's relative attention bias), depthwise/1-D convolution kernels or raw parameters
  (Mamba's ``conv1d`` and ``A_log``, RWKV's ``time_mix``), nor the adapter weights of peft layers (LoRA
  ``lora_A``/``lora_B``): with LoRA the analysed matrix is the wrapped ``base_layer`` weight, seen as W₀ + ΔW
  (`tb_hf.lora.lora_weight`) by the pass (`tb_hf.engine.unit_matrices`).
* A **unit** shares one learning-rate factor: a whole block (``unit="block"``, the default) or one module
  owning analysed matrices (``unit="matrix"``, e.g. ``...q_proj`` with its bias and LoRA adapters). A unit is
  kept only if it has at least one analysed matrix and at least one trainable parameter. Every other trainable
  parameter (embeddings, final norm, pooler, head, and in matrix mode the norms inside blocks) is *outside*
  and keeps factor 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn
from transformers.utils import logging

from .blocks import find_blocks, parent_paths
from .options import UNIT_KINDS
from .quantized import full_shape

__all__ = ["Partition", "Unit", "partition_model", "unit_weights"]

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
        unit: What a unit is: ``"block"`` or ``"matrix"``.
    """

    units: tuple[Unit, ...]
    outside: tuple[str, ...]
    blocks: tuple[str, ...]
    unit: str = "block"

    @property
    def params(self) -> tuple[str, ...]:
        """All trainable parameter names of the partition: the units' in order, then the outside ones."""
        return tuple(name for unit in self.units for name in unit.params) + self.outside


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
    return Partition(units=tuple(units), outside=tuple(outside), blocks=tuple(blocks), unit=unit)


def unit_weights(model: nn.Module, partition: Partition) -> dict[str, float]:
    """Unit → its number of trainable parameters (the weights of ``tb_normalize``), from the parameters' full
    shapes (`full_shape`), so the same whether the model is sharded (ZeRO-3's local tensors are empty) or not."""
    params = dict(model.named_parameters())
    return {u.name: float(sum(math.prod(full_shape(params[p])) for p in u.params)) for u in partition.units}
