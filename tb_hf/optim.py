"""Optimizer param groups for TempBalance (and LLRD), and the optimizer built over them.

Like ``peft.optimizers.create_loraplus_optimizer``, `create_tempbalance_optimizer` is a plain function for
your own training loop::

    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=2e-5, weight_decay=0.1)

It needs no ``TrainingArguments``. For a `transformers.Trainer`, `optimizer_from_args` builds the optimizer
that ``args.optim`` names over the same groups (what `tb_hf.TempBalanceTrainer` does).

Every group carries ``tb_unit`` (None for the unscaled groups), ``tb_base_lr``, ``tb_factor`` and ``tb_base_wd``;
they survive ``optimizer.state_dict()`` and so checkpoints. `tb_hf.balancing.apply_factors` scales the groups of a
unit.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from torch import nn

from . import state
from .layers import Partition, llrd_depths, partition_model

__all__ = [
    "build_param_groups",
    "create_tempbalance_optimizer",
    "trainer_decay_names",
    "grouped",
    "optimizer_from_args",
    "tempbalance_param_groups",
]


def trainer_decay_names(model: nn.Module) -> list[str]:
    """The Trainer's weight-decay rule (no biases, LayerNorm/RMSNorm or ``*norm*`` parameters)."""
    from transformers import Trainer

    return Trainer.get_decay_parameter_names(None, model)  # it does not use `self`


def grouped(
    model: nn.Module,
    buckets: Iterable[tuple[dict, Collection[str]]],
    *,
    learning_rate: float,
    weight_decay: float,
    decay_names: Collection[str],
) -> list[dict]:
    """Param groups from named buckets: each ``(keys, names)`` becomes a decay and a no-decay group (the empty
    ones left out) carrying ``keys``; ``keys["lr"]`` overrides ``learning_rate``. Frozen parameters are skipped."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    decay = set(decay_names)
    groups = []
    for keys, names in buckets:
        kept = [name for name in names if name in trainable]
        lr = keys.get("lr", learning_rate)
        for params, wd in (
            ([trainable[n] for n in kept if n in decay], weight_decay),
            ([trainable[n] for n in kept if n not in decay], 0.0),
        ):
            if params:
                groups.append({**keys, "params": params, "lr": lr, "weight_decay": wd})
    return groups


def _tb_keys(unit: str | None, learning_rate: float) -> dict:
    return state.group_keys(unit, learning_rate)


def build_param_groups(
    model: nn.Module,
    partition: Partition,
    *,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: Collection[str],
    llrd_decay: float = 1.0,
) -> list[dict]:
    """Optimizer param groups: a weight-decay and a no-decay group per unit, and the same for the outside.

    The outside groups come first, so group 0 is unscaled and the Trainer's logged ``learning_rate`` (group
    0's) shows the base schedule; if nothing is outside, group 0 is an empty ``{"params": []}`` placeholder.
    Empty groups are otherwise omitted. Every group carries ``tb_unit`` (None outside the units),
    ``tb_base_lr`` (its unscaled learning rate), ``tb_factor`` (1.0) and ``tb_base_wd`` (its weight decay).

    With ``llrd_decay`` < 1 the groups also follow a depth profile (layer-wise lr decay, `tb_hf.layers.llrd_depths`):
    a unit in a block of depth d (0 for the top block) has ``tb_base_lr = learning_rate × llrd_decay^d``, the
    outside parameters are grouped by depth the same way (embeddings at depth n, the head at 0, shallowest first),
    and TempBalance's factors multiply that profile. Group 0 then carries ``tb_llrd_decay``.

    Raises:
        ValueError: If a trainable parameter of the model is missing from the partition or appears twice in it
            (the partition is stale: recompute it after changing which parameters are trainable).
    """
    if not 0 < llrd_decay <= 1:
        raise ValueError(f"llrd_decay must be in (0, 1] (1: no depth profile), got {llrd_decay}")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    names = [name for name in partition.params if name in trainable]
    missing = trainable - set(names)
    if missing or len(names) != len(set(names)):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(
            "The partition does not match the model's trainable parameters (recompute it with partition_model "
            f"after changing requires_grad): missing {sorted(missing)[:5]}, duplicated {duplicates[:5]}."
        )
    options = dict(learning_rate=learning_rate, weight_decay=weight_decay, decay_names=decay_parameter_names)
    depth = llrd_depths(model) if llrd_decay != 1 else {}

    def keys(unit: str | None, d: int) -> dict:
        lr = learning_rate * llrd_decay**d
        return {**_tb_keys(unit, lr), "lr": lr}

    if depth:  # the outside by depth, the shallowest (the head: the base schedule) first
        by_depth: dict[int, list[str]] = {}
        for name in partition.outside:
            by_depth.setdefault(depth[name], []).append(name)
        outside = [(keys(None, d), by_depth[d]) for d in sorted(by_depth)]
    else:
        outside = [(_tb_keys(None, learning_rate), partition.outside)]
    groups = grouped(model, outside, **options)
    if not groups:
        groups = [{**_tb_keys(None, learning_rate), "params": [], "lr": learning_rate, "weight_decay": 0.0}]
    groups += grouped(model, [(keys(u.name, depth.get(u.params[0], 0)), u.params) for u in partition.units], **options)
    for group in groups:
        group[state.BASE_WD] = group["weight_decay"]
    if depth:
        groups[0][state.LLRD_DECAY] = llrd_decay
    return groups


def tempbalance_param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    unit: str = "block",
    decay_parameter_names: Collection[str] | None = None,
    llrd_decay: float = 1.0,
    partition: Partition | None = None,
) -> list[dict]:
    """TempBalance's param groups for ``model``: per unit a decay and a no-decay group, the unscaled group first
    (with ``llrd_decay`` < 1, on a layer-wise lr decay profile: see `build_param_groups`). ``partition``: the
    model's units if already known (default: ``partition_model(model, unit)``)."""
    from .distributed import check_supported

    check_supported(model)  # FSDP1's flat shards hide the blocks: say so instead of "no blocks found"
    if decay_parameter_names is None:
        decay_parameter_names = trainer_decay_names(model)
    return build_param_groups(
        model,
        partition if partition is not None else partition_model(model, unit),
        learning_rate=lr,
        weight_decay=weight_decay,
        decay_parameter_names=decay_parameter_names,
        llrd_decay=llrd_decay,
    )


def create_tempbalance_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] | None = None,
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
    unit: str = "block",
    llrd_decay: float = 1.0,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """An optimizer over TempBalance's per-unit param groups, peft-style: no ``TrainingArguments`` needed.

    Args:
        model: Any model with transformer blocks, peft-wrapped or not.
        optimizer_cls: The optimizer class (``torch.optim.AdamW``, ``torch.optim.SGD``, bitsandbytes', ...).
        lr: Base learning rate of every group (TempBalance scales the units' groups by their factors).
        weight_decay: Weight decay of the decay groups (biases and norms get none, as in the Trainer).
        unit: ``"block"`` (one factor per transformer block) or ``"matrix"``.
        llrd_decay: A layer-wise lr decay profile under the factors (``tb_llrd_decay``; 1: none).
        **optimizer_kwargs: Passed to ``optimizer_cls`` (``betas``, ``eps``, ...).

    Example:
        ```python
        import torch
        from transformers import Trainer
        from tb_hf import TempBalanceCallback, create_tempbalance_optimizer

        optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=2e-5, weight_decay=0.1)
        trainer = Trainer(model=model, args=args, train_dataset=train, optimizers=(optimizer, None),
                          callbacks=[TempBalanceCallback(mapping="sigmoid")])
        ```

    For the Trainer's own optimizer choice (``args.optim``), pass ``TrainingArguments`` instead of the class:
    ``create_tempbalance_optimizer(model, args)``, optionally with ``tb_args=`` (its ``tb_unit``).
    """
    from transformers import TrainingArguments

    if isinstance(optimizer_cls, TrainingArguments):
        args, tb_args = optimizer_cls, optimizer_kwargs.pop("tb_args", None)
        if optimizer_kwargs or lr is not None:
            raise TypeError("with TrainingArguments, the learning rate and options come from the arguments")
        return optimizer_from_args(model, args, tb_args)
    if optimizer_cls is None or lr is None:
        raise TypeError("create_tempbalance_optimizer(model, optimizer_cls, *, lr, ...) needs optimizer_cls and lr")
    groups = tempbalance_param_groups(model, lr=lr, weight_decay=weight_decay, unit=unit, llrd_decay=llrd_decay)
    return optimizer_cls(groups, lr=lr, **optimizer_kwargs)


def optimizer_cls_kwargs_and_lr(args, model: nn.Module, optimizer_cls_and_kwargs=None) -> tuple[type, dict, float]:
    """The optimizer class and kwargs the Trainer would use (the ``optimizer_cls_and_kwargs`` it was given, else
    those ``args.optim`` names) and the base learning rate of the param groups: the kwargs' ``lr`` where they set
    one (as with a plain Trainer, whose groups then take it), else ``args.learning_rate``."""
    from transformers import Trainer

    cls, kwargs = optimizer_cls_and_kwargs or Trainer.get_optimizer_cls_and_kwargs(args, model)
    lr = kwargs.get("lr")
    return cls, kwargs, float(args.learning_rate if lr is None else lr)


def optimizer_from_args(
    model: nn.Module,
    args,
    tb_args=None,
    *,
    decay_names: Collection[str] | None = None,
    optimizer_cls_and_kwargs=None,
    partition: Partition | None = None,
) -> torch.optim.Optimizer:
    """The optimizer that ``args.optim`` names (``TrainingArguments``) over TempBalance's param groups.

    ``tb_args``: TempBalance options (for ``tb_unit`` and ``tb_llrd_decay``); default: those of ``args`` if it is a
    `tb_hf.TempBalanceConfig`, else the defaults. ``partition``: the model's units if already known.
    """
    from transformers.trainer_optimizer import is_optimizer_factory

    from .config import tb_arguments

    tb = tb_arguments(args, tb_args)
    cls, kwargs, lr = optimizer_cls_kwargs_and_lr(args, model, optimizer_cls_and_kwargs)
    groups = tempbalance_param_groups(
        model,
        lr=lr,
        weight_decay=args.weight_decay,
        unit=tb.tb_unit,
        decay_parameter_names=decay_names,
        llrd_decay=tb.tb_llrd_decay,
        partition=partition,
    )
    if is_optimizer_factory(cls) or "params" in kwargs or "model" in kwargs:
        raise ValueError(
            f"optim={args.optim!r} builds its own parameter groups, so TempBalance cannot give each block its own "
            "learning rate with it. Choose an optimizer that takes param groups (e.g. adamw_torch_fused, adamw_torch, "
            "sgd, adafactor)."
        )
    return cls(groups, **kwargs)
