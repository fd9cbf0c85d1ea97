"""What must hold before tb_hf trains: one function, `validate`, that the trainer (at construction) and the callback
(at the start of training) both call, so a run that cannot balance stops before its first step, saying what to do."""

from __future__ import annotations

from transformers.utils import logging

from . import state as tb_state
from .blocks import find_blocks
from .distributed import deepspeed_config_sections
from .quantized import REPACKED_4BIT_MESSAGE, keep_4bit_weights_unpacked, repacked_4bit_weights

logger = logging.get_logger(__name__)

__all__ = ["DEEPSPEED_OPTIMIZER_MESSAGE", "validate"]

DEEPSPEED_OPTIMIZER_MESSAGE = (
    "tb_hf cannot run with a DeepSpeed config that defines its own 'optimizer' (or 'scheduler'): DeepSpeed then "
    "builds the optimizer itself, with no per-block param groups (and its schedulers give every group the same "
    "learning rate), so training would run without layer-wise rates. Remove the 'optimizer' and 'scheduler' sections "
    "from the DeepSpeed config and set them through the TrainingArguments (optim, learning_rate, weight_decay, "
    "lr_scheduler_type, warmup_steps): the Trainer then creates tb_hf's optimizer and schedule and DeepSpeed wraps "
    "them."
)


def validate(model=None, args=None, *, optimizer=None, balancer=None) -> None:
    """Raise a ValueError that says what to do for anything that would keep layer-wise rates from working: a DeepSpeed
    config with its own optimizer, a model without transformer blocks or with repacked 4-bit weights, and (given
    ``optimizer`` and ``balancer``, a `tb_hf.balancer.Balancer`) an optimizer built for another profile. Also keeps
    bitsandbytes from repacking 4-bit weights during training (QLoRA on CPU)."""
    if deepspeed_config_sections(args) & {"optimizer", "scheduler"}:
        raise ValueError(DEEPSPEED_OPTIMIZER_MESSAGE)
    if model is not None:
        find_blocks(model)  # a model without transformer blocks fails here, before any training
        _check_4bit(model)
    if optimizer is not None:
        _check_optimizer(optimizer, balancer, getattr(args, "weight_decay", 0) or 0)


def _check_4bit(model) -> None:
    """QLoRA on CPU: refuse 4-bit weights bitsandbytes has already repacked (LoRA below them cannot learn, and they
    do not dequantize), and keep the others from being repacked by an evaluation during training."""
    repacked = repacked_4bit_weights(model)
    if repacked:
        names = f"{repacked[0]} and {len(repacked) - 1} more" if len(repacked) > 1 else repacked[0]
        raise ValueError(REPACKED_4BIT_MESSAGE.format(names=names))
    if keep_4bit_weights_unpacked(model):
        logger.info(
            "TempBalance: set support_avx512bf16_for_cpu=False on the bitsandbytes 4-bit layers, so that an "
            "evaluation on CPU does not repack their weights (LoRA would stop learning; no dequantizing)."
        )


def _check_optimizer(optimizer, balancer, weight_decay: float) -> None:
    profile = tb_state.group_profile(optimizer)
    if profile is None:
        raise ValueError(
            "Layer-wise rates need an optimizer with tb_hf's per-unit param groups, and this one has none. Either "
            "let tb_hf.TempBalanceTrainer (or LLRDTrainer) build it, or build it with "
            "tb_hf.create_tempbalance_optimizer(model, torch.optim.AdamW, lr=...) and pass "
            "Trainer(..., optimizers=(optimizer, None)) (tb_hf.baselines.llrd_param_groups for LLRD's)."
        )
    if balancer is None:
        return
    options = balancer.options
    b = options.balance
    wanted = {"unit": b.unit, "llrd_decay": b.llrd_decay, "head_lr_ratio": b.head_lr_ratio,
              "embeddings_lr_ratio": b.embeddings_lr_ratio}  # fmt: skip
    for key, value in wanted.items():
        built = profile.get(key)
        if built is not None and built != value:
            preset = f" (tb_preset={options.preset!r})" if options.preset else ""
            raise ValueError(
                f"The optimizer's param groups were built with {key}={built!r}, but the options in force say "
                f"tb_{key}={value!r}{preset}: build the optimizer with the same {key} "
                f"(create_tempbalance_optimizer(..., {key}={value!r})), or set tb_{key}={built!r} in the options."
            )
    in_optimizer, expected = tb_state.unit_names(optimizer), balancer.units
    if in_optimizer != expected:
        raise ValueError(
            f"The optimizer's TempBalance groups ({len(in_optimizer)} units, e.g. {sorted(in_optimizer)[:2]}) do not "
            f"match the callback's {len(expected)} {options.balance.unit} units (e.g. {sorted(expected)[:2]}): build "
            f"the optimizer with the same unit (create_tempbalance_optimizer(..., unit={options.balance.unit!r})) "
            "after freezing or wrapping the model."
        )
    if options.balance.balances_wd:
        unit_groups = [g for g in optimizer.param_groups if g.get(tb_state.UNIT) is not None]
        if not any(g.get(tb_state.BASE_WD) for g in unit_groups):
            decays = weight_decay > 0 or any(g.get("weight_decay") for g in optimizer.param_groups)
            why = (
                "no parameter inside the units takes weight decay (only biases and norms train there, which take "
                "none): there is nothing to balance; train the blocks' matrices (or LoRA adapters), or set "
                "tb_balance='lr'"
                if decays or not unit_groups
                else "every TempBalance group of the optimizer has weight_decay 0: set weight_decay (e.g. "
                "TrainingArguments(weight_decay=0.1), or the optimizer's own), or tb_balance='lr'"
            )
            raise ValueError(f"tb_balance={options.balance.balance!r} scales each unit's weight decay, but {why}")
