"""Baselines to compare TempBalance with: layer-wise learning-rate decay (LLRD).

LLRD (Howard & Ruder 2018; the usual stronger fine-tuning baseline since ELECTRA/DeBERTa) gives the top
transformer block the base learning rate and each block below it ``decay`` times less:
``lr(block i of n) = lr × decay^(n - 1 - i)``. Parameters before the first block (embeddings) get
``lr × decay^n``; parameters after the last block (pooler, final norm, classifier head) get ``lr``. Blocks come
from `tb_hf.layers.find_blocks` (one generic rule, any architecture, through peft wrappers); with several
stacks (T5) depth counts over all blocks in model order.

Example:
    ```python
    from tb_hf.baselines import LLRDTrainer

    trainer = LLRDTrainer(model=model, args=args, train_dataset=train, llrd_decay=0.9)
    trainer.train()
    ```
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from transformers import Trainer
from transformers.utils import logging

from .layers import find_blocks, llrd_depths
from .optim import grouped, optimizer_cls_kwargs_and_lr, trainer_decay_names
from .options import check_range

__all__ = ["LLRDTrainer", "llrd_depths", "llrd_param_groups"]

logger = logging.get_logger(__name__)


def llrd_param_groups(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    decay: float,
    weight_decay: float = 0.0,
    decay_parameter_names: Collection[str] | None = None,
) -> list[dict]:
    """Optimizer param groups for LLRD: per depth a weight-decay and a no-decay group, lr = lr × decay^depth.

    Args:
        model: Any model with transformer blocks (see `tb_hf.layers.find_blocks`), peft-wrapped or not.
        learning_rate: The top block's (and the head's) learning rate.
        decay: Factor per block going down, 0 < decay <= 1 (1 is plain fine-tuning).
        weight_decay: Weight decay of the decay groups.
        decay_parameter_names: Names that take weight decay (default: the Trainer's rule, no biases or norms).

    Every group carries ``llrd_depth``. Empty groups are left out; group 0 is the shallowest (full lr), so the
    Trainer's logged ``learning_rate`` shows the base schedule.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"llrd_decay must be in (0, 1], got {decay}")
    if decay_parameter_names is None:
        decay_parameter_names = trainer_decay_names(model)
    by_depth: dict[int, list[str]] = {}
    for name, depth in llrd_depths(model).items():
        by_depth.setdefault(depth, []).append(name)
    buckets = [({"llrd_depth": d, "lr": learning_rate * decay**d}, names) for d, names in sorted(by_depth.items())]
    return grouped(
        model, buckets, learning_rate=learning_rate, weight_decay=weight_decay, decay_names=decay_parameter_names
    )


class LLRDTrainer(Trainer):
    """`transformers.Trainer` with layer-wise learning-rate decay (only `create_optimizer` changes).

    Args:
        llrd_decay: Learning-rate factor per block going down from the top (0.9 is a common choice).
        *args: As for `transformers.Trainer`. The Trainer's schedule multiplies every group's lr.
        **kwargs: As for `transformers.Trainer`.
    """

    def __init__(self, *args, llrd_decay: float = 0.9, **kwargs):
        check_range("llrd_decay", llrd_decay, 0.0, 1.0, low_open=True)
        self.llrd_decay = float(llrd_decay)
        super().__init__(*args, **kwargs)
        if self.optimizer is not None and not any("llrd_depth" in g for g in self.optimizer.param_groups):
            raise ValueError(
                "LLRDTrainer builds its own per-depth param groups, and the optimizer passed in optimizers=(...) "
                "has none, so llrd_decay would be ignored. Pass optimizer_cls_and_kwargs=(torch.optim.AdamW, "
                "{'lr': ...}) instead, or build the optimizer over tb_hf.baselines.llrd_param_groups(model, ...)."
            )
        depth = getattr(self.args, "tb_llrd_decay", 1.0)  # a TempBalanceConfig's depth decay: not LLRD's setting
        if depth != 1.0 and depth != self.llrd_decay:
            raise ValueError(
                f"The TempBalanceConfig sets tb_llrd_decay={depth:g}, which LLRDTrainer does not read; it uses "
                f"llrd_decay={self.llrd_decay:g}. Pass LLRDTrainer(..., llrd_decay={depth:g}) (and plain "
                "TrainingArguments), or use TempBalanceTrainer for the α profile on top of depth."
            )
        if self.model is not None:
            find_blocks(self.model)  # fails here, before training, for a model without transformer blocks

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            cls, kwargs, lr = optimizer_cls_kwargs_and_lr(self.args, opt_model, self.optimizer_cls_and_kwargs)
            groups = llrd_param_groups(
                opt_model,
                learning_rate=lr,
                decay=self.llrd_decay,
                weight_decay=self.args.weight_decay,
                decay_parameter_names=self.get_decay_parameter_names(opt_model),
            )
            self.optimizer = cls(groups, **kwargs)
            logger.info(
                f"LLRD: {len(groups)} param groups, lr from {lr:g} (top) down to "
                f"{min(g['lr'] for g in groups):g} (embeddings)."
            )
        return super().create_optimizer(model)
