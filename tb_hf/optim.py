"""Optimizer param groups for every layer-wise profile (TempBalance, LLRD, both), and the optimizer built over them.

Like ``peft.optimizers.create_loraplus_optimizer``, `create_tempbalance_optimizer` is a plain function for
your own training loop::

    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=2e-5, weight_decay=0.1)

It needs no ``TrainingArguments``. For a `transformers.Trainer`, `optimizer_from_args` builds the optimizer
that ``args.optim`` names over the same groups (what `tb_hf.TempBalanceTrainer` does).

A group's unscaled learning rate is ``lr × ratio``, the ratio coming from the depth profile (`lr_ratios`: layer-wise
lr decay, 1 without one); TempBalance's α factor multiplies it during training. Every group carries ``tb_unit``
(None for the groups outside the units), ``tb_base_lr``, ``tb_factor`` and ``tb_base_wd``, and group 0 records the
profile the groups were built for (``tb_groups``); they survive ``optimizer.state_dict()`` and so checkpoints.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from torch import nn

from . import state
from .blocks import positions
from .layers import Partition, partition_model
from .options import BalanceOptions, TempBalanceOptions
from .values import check_range, to_float

__all__ = [
    "build_param_groups",
    "create_tempbalance_optimizer",
    "grouped",
    "lr_ratios",
    "optimizer_from_args",
    "tempbalance_param_groups",
    "trainer_decay_names",
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


def lr_ratios(
    model: nn.Module,
    partition: Partition,
    llrd_decay: float = BalanceOptions.llrd_decay,
    *,
    head_lr_ratio: float = BalanceOptions.head_lr_ratio,
    embeddings_lr_ratio: float = BalanceOptions.embeddings_lr_ratio,
) -> dict[str, float]:
    """Each trainable parameter's base learning rate relative to ``lr``: ``llrd_decay ** depth``
    (`tb_hf.blocks.positions`: per stack, embeddings one below the first block, head and final norm at the top),
    times ``head_lr_ratio`` for the head and ``embeddings_lr_ratio`` for the embeddings; 1 without a profile."""
    extra = {"block": 1.0, "head": head_lr_ratio, "embeddings": embeddings_lr_ratio}
    return {
        name: llrd_decay**pos.depth * extra[pos.kind] for name, pos in positions(model, list(partition.blocks)).items()
    }


def build_param_groups(
    model: nn.Module,
    partition: Partition,
    *,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: Collection[str],
    llrd_decay: float = BalanceOptions.llrd_decay,
    head_lr_ratio: float = BalanceOptions.head_lr_ratio,
    embeddings_lr_ratio: float = BalanceOptions.embeddings_lr_ratio,
) -> list[dict]:
    """Optimizer param groups: a weight-decay and a no-decay group per unit, and the same outside the units per base
    rate.

    A unit's groups have the base rate ``learning_rate × ratio`` of its block (`lr_ratios`; with ``llrd_decay`` < 1 a
    layer-wise lr decay profile, 1 otherwise; ``head_lr_ratio`` and ``embeddings_lr_ratio`` multiply the head's and
    the embeddings' rates); the parameters outside the units are grouped by their ratio. Group 0
    is at ``learning_rate`` itself, so the Trainer's logged ``learning_rate`` (group 0's) shows the base schedule: an
    outside group with ratio 1 (the head), else an empty ``{"params": []}`` placeholder. Every group carries
    ``tb_unit`` (None outside the units), ``tb_base_lr``, ``tb_factor`` (1.0) and ``tb_base_wd``; group 0 carries
    ``tb_groups``, the profile the groups were built for (a resume or a callback with another profile is refused).

    Raises:
        ValueError: If a trainable parameter of the model is missing from the partition or appears twice in it
            (the partition is stale: recompute it after changing which parameters are trainable).
    """
    llrd_decay = check_range("llrd_decay", llrd_decay, 0, 1, low_open=True, why=" (1: no depth profile)")
    head_lr_ratio = check_range("head_lr_ratio", head_lr_ratio, 0, 100, low_open=True)
    embeddings_lr_ratio = check_range("embeddings_lr_ratio", embeddings_lr_ratio, 0, 100, low_open=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    names = [name for name in partition.params if name in trainable]
    missing = trainable - set(names)
    if missing or len(names) != len(set(names)):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(
            "The partition does not match the model's trainable parameters (recompute it with partition_model "
            f"after changing requires_grad): missing {sorted(missing)[:5]}, duplicated {duplicates[:5]}."
        )
    learning_rate = check_range("lr", learning_rate, 0, float("inf"), low_open=True)
    weight_decay = check_range("weight_decay", weight_decay, 0, float("inf"))
    options = dict(learning_rate=learning_rate, weight_decay=weight_decay, decay_names=decay_parameter_names)
    ratio = lr_ratios(
        model, partition, llrd_decay, head_lr_ratio=head_lr_ratio, embeddings_lr_ratio=embeddings_lr_ratio
    )

    def keys(unit: str | None, r: float) -> dict:
        return {**state.group_keys(unit, learning_rate * r), "lr": learning_rate * r}

    by_ratio: dict[float, list[str]] = {}
    for name in partition.outside:
        by_ratio.setdefault(ratio[name], []).append(name)
    groups = grouped(model, [(keys(None, r), by_ratio[r]) for r in sorted(by_ratio, reverse=True)], **options)
    if not groups or groups[0][state.BASE_LR] != learning_rate:
        groups.insert(0, {**keys(None, 1.0), "params": [], "weight_decay": 0.0})
    groups += grouped(model, [(keys(u.name, ratio[u.params[0]]), u.params) for u in partition.units], **options)
    for group in groups:
        group[state.BASE_WD] = group["weight_decay"]
    groups[0][state.GROUPS] = {"unit": partition.unit, "llrd_decay": llrd_decay, "head_lr_ratio": head_lr_ratio,
                               "embeddings_lr_ratio": embeddings_lr_ratio}  # fmt: skip
    return groups


def tempbalance_param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    unit: str = BalanceOptions.unit,
    decay_parameter_names: Collection[str] | None = None,
    llrd_decay: float = BalanceOptions.llrd_decay,
    partition: Partition | None = None,
    head_lr_ratio: float = BalanceOptions.head_lr_ratio,
    embeddings_lr_ratio: float = BalanceOptions.embeddings_lr_ratio,
) -> list[dict]:
    """The param groups of `build_param_groups` for ``model`` (per unit a decay and a no-decay group, on a depth
    profile with ``llrd_decay`` < 1, the head and embeddings at their multipliers). ``partition``: the model's units
    if already known (default: ``partition_model(model, unit)``)."""
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
        head_lr_ratio=head_lr_ratio,
        embeddings_lr_ratio=embeddings_lr_ratio,
    )


def create_tempbalance_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] | None = None,
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
    unit: str = BalanceOptions.unit,
    llrd_decay: float = BalanceOptions.llrd_decay,
    head_lr_ratio: float = BalanceOptions.head_lr_ratio,
    embeddings_lr_ratio: float = BalanceOptions.embeddings_lr_ratio,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """An optimizer over the per-unit param groups, peft-style: no ``TrainingArguments`` needed.

    Args:
        model: Any model with transformer blocks, peft-wrapped or not.
        optimizer_cls: The optimizer class (``torch.optim.AdamW``, ``torch.optim.SGD``, bitsandbytes', ...).
        lr: Base learning rate (the top block's and the head's; TempBalance scales the units' groups by their
            factors).
        weight_decay: Weight decay of the decay groups (biases and norms get none, as in the Trainer).
        unit: ``"block"`` (one factor per transformer block) or ``"matrix"``.
        llrd_decay: A layer-wise lr decay profile under the factors (``tb_llrd_decay``; 1: none). With
            ``TempBalanceCallback(preset="llrd", llrd_decay=...)`` this is LLRD.
        head_lr_ratio: The head's (pooler's, final norm's) rate relative to the top block's (``tb_head_lr_ratio``).
        embeddings_lr_ratio: A multiplier on the embeddings' rate (``tb_embeddings_lr_ratio``).
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
    ``create_tempbalance_optimizer(model, args)``, optionally with ``tb_args=`` (its ``tb_unit`` and
    ``tb_llrd_decay``).
    """
    from transformers import TrainingArguments

    if isinstance(optimizer_cls, TrainingArguments):
        from .arguments import tb_source
        from .options import resolve_options

        args, tb_args = optimizer_cls, optimizer_kwargs.pop("tb_args", None)
        if optimizer_kwargs or lr is not None:
            raise TypeError("with TrainingArguments, the learning rate and options come from the arguments")
        options = resolve_options(tb_source(args, tb_args), weight_decay=args.weight_decay)
        return optimizer_from_args(model, args, options)
    if optimizer_cls is None or lr is None:
        raise TypeError("create_tempbalance_optimizer(model, optimizer_cls, *, lr, ...) needs optimizer_cls and lr")
    lr = check_range("lr", lr, 0, float("inf"), low_open=True)
    profile = dict(
        unit=unit, llrd_decay=llrd_decay, head_lr_ratio=head_lr_ratio, embeddings_lr_ratio=embeddings_lr_ratio
    )
    groups = tempbalance_param_groups(model, lr=lr, weight_decay=weight_decay, **profile)
    return optimizer_cls(groups, lr=lr, **optimizer_kwargs)


def optimizer_cls_kwargs_and_lr(args, model: nn.Module, optimizer_cls_and_kwargs=None) -> tuple[type, dict, float]:
    """The optimizer class and kwargs the Trainer would use (the ``optimizer_cls_and_kwargs`` it was given, else
    those ``args.optim`` names) and the base learning rate of the param groups: the kwargs' ``lr`` where they set
    one (as with a plain Trainer, whose groups then take it), else ``args.learning_rate``."""
    from transformers import Trainer

    cls, kwargs = optimizer_cls_and_kwargs or Trainer.get_optimizer_cls_and_kwargs(args, model)
    lr = kwargs.get("lr")
    return cls, kwargs, to_float("learning_rate", args.learning_rate if lr is None else lr)


def optimizer_from_args(
    model: nn.Module,
    args,
    options: TempBalanceOptions,
    *,
    decay_names: Collection[str] | None = None,
    optimizer_cls_and_kwargs=None,
    partition: Partition | None = None,
) -> torch.optim.Optimizer:
    """The optimizer that ``args.optim`` names (``TrainingArguments``) over the param groups of ``options``'s profile
    (its unit and depth profile). ``partition``: the model's units if already known."""
    from transformers.trainer_optimizer import is_optimizer_factory

    cls, kwargs, lr = optimizer_cls_kwargs_and_lr(args, model, optimizer_cls_and_kwargs)
    groups = tempbalance_param_groups(
        model,
        lr=lr,
        weight_decay=args.weight_decay,
        unit=options.balance.unit,
        decay_parameter_names=decay_names,
        llrd_decay=options.balance.llrd_decay,
        partition=partition,
        head_lr_ratio=options.balance.head_lr_ratio,
        embeddings_lr_ratio=options.balance.embeddings_lr_ratio,
    )
    if is_optimizer_factory(cls) or "params" in kwargs or "model" in kwargs:
        raise ValueError(
            f"optim={args.optim!r} builds its own parameter groups, so tb_hf cannot give each block its own "
            "learning rate with it. Choose an optimizer that takes param groups (e.g. adamw_torch_fused, adamw_torch, "
            "sgd, adafactor)."
        )
    return cls(groups, **kwargs)
