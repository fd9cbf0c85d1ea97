"""Which weight matrices belong to which TempBalance unit, and the optimizer groups that follow from it.

Data flows one way::

    model -> find_blocks() -> partition_model() -> Partition (units: matrices + trainable params)
          -> unit_matrices()     -> {matrix name: tensor}, fed to `tb_hf.spectral.analyze`
          -> build_param_groups() -> optimizer param groups, one factor per unit

Conventions (``../shared/docs/ALGORITHM.md``, sections 5-6):

* A **block** is a child of an outermost ``nn.ModuleList`` of at least two children of one class, each of
  which owns a parameter with two or more dimensions. One generic rule, no per-architecture table: it finds
  ``encoder.layer`` (BERT family), ``transformer.h`` (GPT-2), ``model.layers`` (LLaMA family), both T5
  stacks, and works unchanged through peft wrappers.
* The **analysed matrices** of a block are all its parameters with ``ndim >= 2`` (Linear, GPT-2 ``Conv1D``,
  fused projections, 3-D expert tensors), frozen ones included, except ``nn.Embedding`` weights (T5's
  relative attention bias) and the adapter weights of peft layers (LoRA ``lora_A``/``lora_B``): with LoRA the
  analysed matrix is the wrapped ``base_layer`` weight, seen as W₀ + ΔW by `unit_matrices`.
* A **unit** shares one learning-rate factor: a whole block (``unit="block"``, the default) or one module
  owning analysed matrices (``unit="matrix"``, e.g. ``...q_proj`` with its bias and LoRA adapters). A unit is
  kept only if it has at least one analysed matrix and at least one trainable parameter. Every other trainable
  parameter (embeddings, final norm, pooler, head, and in matrix mode the norms inside blocks) is *outside*
  and keeps factor 1.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn
from transformers.utils import logging

__all__ = [
    "LORA_VIEWS",
    "UNIT_KINDS",
    "Partition",
    "Unit",
    "build_param_groups",
    "find_blocks",
    "partition_model",
    "unit_matrices",
]

logger = logging.get_logger(__name__)

UNIT_KINDS = ("block", "matrix")
LORA_VIEWS = ("effective", "delta")


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
    then empty). A DTensor (FSDP2) reports its full shape itself."""
    return tuple(getattr(param, "ds_shape", param.shape))


def _has_matrix(module: nn.Module) -> bool:
    return any(len(full_shape(p)) >= 2 for p in module.parameters())


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) < 2:
        return False
    first = type(module[0])
    return all(type(child) is first and _has_matrix(child) for child in module)


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of ``model``, as ``(module path, block)`` pairs in model order.

    A block is a child of an outermost ``nn.ModuleList`` with at least two children that all share one class
    and each own (at any depth) a parameter with ``ndim >= 2``. Lists inside a found list are not searched, so
    per-block lists (T5's ``layer``, expert lists) never show up as blocks of their own; several stacks
    (T5's encoder and decoder) are all found. Paths match ``model.named_modules()``, so a peft-wrapped model
    gives ``"base_model.model.<path>"``.

    Raises:
        ValueError: If the model has no such list.
    """
    blocks: list[tuple[str, nn.Module]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _is_block_list(child):
                blocks.extend((f"{path}.{i}", block) for i, block in enumerate(child))
            else:
                visit(child, path)

    visit(model, "")
    if not blocks:
        raise ValueError(
            f"Found no transformer blocks in {type(model).__name__}: looked for an nn.ModuleList of at least 2 "
            "children of one class, each holding a parameter with 2 or more dimensions. TempBalance balances "
            "learning rates across transformer blocks, so it needs a model that has them."
        )
    return blocks


# --------------------------------------------------------------------------------------------------
# Partition


def _prefixes(name: str) -> Iterator[str]:
    """``"a.b.c"`` -> ``"a.b"``, ``"a"``: the paths of the modules containing a parameter, innermost first."""
    while "." in name:
        name = name.rsplit(".", 1)[0]
        yield name


def _innermost(name: str, paths: Collection[str]) -> str | None:
    return next((prefix for prefix in _prefixes(name) if prefix in paths), None)


def _is_analysed(name: str, param: torch.Tensor, modules: dict[str, nn.Module]) -> bool:
    """Whether a parameter inside a block is one of the matrices whose spectrum is analysed."""
    if len(full_shape(param)) < 2:
        return False
    owner = name.rsplit(".", 1)[0]
    if isinstance(modules.get(owner), nn.Embedding):
        return False
    for prefix in _prefixes(name):
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
    logger.info(
        f"TempBalance: {len(blocks)} blocks found ({blocks[0]} ... {blocks[-1]}), {len(units)} {unit} units, "
        f"{len(outside)} trainable parameters outside the units."
    )
    return Partition(units=tuple(units), outside=tuple(outside), blocks=tuple(blocks))


# --------------------------------------------------------------------------------------------------
# Matrices


def _adapted_param(layer: LoraLayer) -> torch.Tensor | None:
    """The parameter a LoRA layer adapts: the base layer's weight, or a ``ParamWrapper``'s target parameter."""
    if hasattr(layer, "get_param"):  # ParamWrapper, from peft's `target_parameters` (e.g. 3-D expert weights)
        return layer.get_param()
    return getattr(layer.get_base_layer(), "weight", None)


def _lora_layers(model: nn.Module) -> dict[int, list[LoraLayer]]:
    """id(adapted parameter) -> the LoRA layers adapting it (several for nested ``ParamWrapper``s)."""
    layers: dict[int, list[LoraLayer]] = {}
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(target := _adapted_param(module), torch.Tensor):
            layers.setdefault(id(target), []).append(module)
    return layers


def _lora_weight(weight: torch.Tensor, layers: list[LoraLayer], lora_view: str) -> torch.Tensor:
    """W₀ + ΔW (``"effective"``) or ΔW (``"delta"``) of a weight adapted by ``layers``, ΔW over active adapters."""
    out = weight if lora_view == "effective" else torch.zeros_like(weight)
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
            out = out + sign * layer.get_delta_weight(adapter).to(device=weight.device, dtype=weight.dtype)
    return out


@torch.no_grad()
def unit_matrices(model: nn.Module, partition: Partition, *, lora_view: str = "effective") -> dict[str, torch.Tensor]:
    """The matrices to analyse, ``{matrix name: tensor}``, for every unit of ``partition``.

    Tensors are detached, on the parameter's device and in its dtype. For a matrix adapted by peft LoRA:

    * ``lora_view="effective"``: the weight the forward pass uses, W₀ + ΔW with ΔW = ``get_delta_weight`` (B·A
      times ``lora_alpha / r``, or ``/ √r`` with rsLoRA, in the base weight's layout, also for GPT-2's
      ``Conv1D``) summed over the layer's active adapters. Adapters already merged into W₀ are not added twice;
      merged adapters that are not active (or adapters disabled with ``disable_adapter()``) are taken out.
    * ``lora_view="delta"``: ΔW alone (zero while adapters are disabled). Matrices without LoRA are left out.

    Matrices without LoRA are returned as they are in the ``"effective"`` view.
    """
    if lora_view not in LORA_VIEWS:
        raise ValueError(f"lora_view must be one of {LORA_VIEWS}, got {lora_view!r}")
    params = dict(model.named_parameters())
    lora = _lora_layers(model)
    out: dict[str, torch.Tensor] = {}
    for unit in partition.units:
        for name in unit.matrices:
            param = params[name]
            if id(param) in lora:
                out[name] = _lora_weight(param.detach(), lora[id(param)], lora_view)
            elif lora_view == "effective":
                out[name] = param.detach()
    return out


# --------------------------------------------------------------------------------------------------
# Optimizer groups


def _group(params: list[nn.Parameter], *, unit: str | None, learning_rate: float, weight_decay: float) -> dict:
    return {
        "params": params,
        "lr": learning_rate,
        "weight_decay": weight_decay,
        "tb_unit": unit,
        "tb_base_lr": learning_rate,
        "tb_factor": 1.0,
    }


def build_param_groups(
    model: nn.Module,
    partition: Partition,
    *,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: Collection[str],
) -> list[dict]:
    """Optimizer param groups: a weight-decay and a no-decay group per unit, and the same for the outside.

    The outside groups come first, so group 0 is unscaled and the Trainer's logged ``learning_rate`` (group
    0's) shows the base schedule; if nothing is outside, group 0 is an empty ``{"params": []}`` placeholder.
    Empty groups are otherwise omitted. Every group carries ``tb_unit`` (None outside the units),
    ``tb_base_lr`` (= ``learning_rate``) and ``tb_factor`` (1.0), which survive optimizer checkpoints.

    Args:
        model: The model ``partition`` was computed for.
        partition: From `partition_model`.
        learning_rate: Base learning rate of every group.
        weight_decay: Weight decay of the decay groups (no-decay groups get 0.0).
        decay_parameter_names: Names that take weight decay, e.g. ``Trainer.get_decay_parameter_names(model)``.

    Raises:
        ValueError: If a trainable parameter of the model is missing from the partition or appears twice in it
            (the partition is stale: recompute it after changing which parameters are trainable).
    """
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    names = [name for name in partition.params if name in trainable]
    missing = trainable.keys() - set(names)
    if missing or len(names) != len(set(names)):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(
            "The partition does not match the model's trainable parameters (recompute it with partition_model "
            f"after changing requires_grad): missing {sorted(missing)[:5]}, duplicated {duplicates[:5]}."
        )
    decay = set(decay_parameter_names)

    def split(unit: str | None, group_names: Collection[str]) -> list[dict]:
        """The non-empty decay and no-decay groups of some parameter names."""
        kept = [name for name in group_names if name in trainable]
        with_decay = [trainable[name] for name in kept if name in decay]
        without_decay = [trainable[name] for name in kept if name not in decay]
        return [
            _group(params, unit=unit, learning_rate=learning_rate, weight_decay=wd)
            for params, wd in ((with_decay, weight_decay), (without_decay, 0.0))
            if params
        ]

    groups = split(None, partition.outside) or [_group([], unit=None, learning_rate=learning_rate, weight_decay=0.0)]
    for unit in partition.units:
        groups.extend(split(unit.name, unit.params))
    return groups
