"""Layer-wise learning-rate decay (LLRD), the profile the project's study recommends, as a thin alias.

LLRD (Howard & Ruder 2018; the usual stronger fine-tuning baseline since ELECTRA/DeBERTa) gives the top transformer
block of each stack the base learning rate and each block below it ``decay`` times less: ``lr(block i of n) = lr ×
decay^(n - 1 - i)``; the embeddings get ``lr × decay^n``, the head, pooler and final norm ``lr``
(`tb_hf.blocks.depths`). It is the ``tb_preset="llrd"`` profile of the same machinery as TempBalance (no spectral
pass): the same options, logs, ``history.jsonl``, ``tb-hf analyze`` output and resume checks.

Example:
    ```python
    from tb_hf.baselines import LLRDTrainer

    trainer = LLRDTrainer(model=model, args=args, train_dataset=train, llrd_decay=0.9)
    trainer.train()
    ```

The same with the general trainer: ``TempBalanceTrainer(..., args=TempBalanceConfig(..., tb_preset="llrd",
tb_llrd_decay=0.9))``, where a hyperparameter search can set ``tb_llrd_decay`` per trial.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from .optim import tempbalance_param_groups
from .trainer import TempBalanceTrainer
from .values import check_range

__all__ = ["LLRDTrainer", "llrd_param_groups"]


def llrd_param_groups(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    decay: float,
    weight_decay: float = 0.0,
    decay_parameter_names: Collection[str] | None = None,
) -> list[dict]:
    """Optimizer param groups for LLRD (`tb_hf.optim.tempbalance_param_groups` with ``llrd_decay=decay``): per block
    a weight-decay and a no-decay group at ``learning_rate × decay^depth``.

    Args:
        model: Any model with transformer blocks (see `tb_hf.blocks.find_blocks`), peft-wrapped or not.
        learning_rate: The top block's (and the head's) learning rate.
        decay: Factor per block going down, 0 < decay <= 1 (1 is plain fine-tuning).
        weight_decay: Weight decay of the decay groups.
        decay_parameter_names: Names that take weight decay (default: the Trainer's rule, no biases or norms).
    """
    decay = check_range("llrd_decay", decay, 0, 1, low_open=True, why=" (1: no depth profile)")
    return tempbalance_param_groups(model, lr=learning_rate, weight_decay=weight_decay, llrd_decay=decay,
                                    decay_parameter_names=decay_parameter_names)  # fmt: skip


class LLRDTrainer(TempBalanceTrainer):
    """`tb_hf.TempBalanceTrainer` with the ``"llrd"`` profile: layer-wise learning-rate decay, no spectral pass.

    Args:
        llrd_decay: Learning-rate factor per block going down from the top (default: the preset's 0.9, or the
            ``tb_llrd_decay`` of a `TempBalanceConfig` given as ``args``).
        *args: As for `transformers.Trainer`. The Trainer's schedule multiplies every group's lr.
        **kwargs: As for `transformers.Trainer` (and ``tb_args``).
    """

    def __init__(self, *args, llrd_decay: float | None = None, **kwargs):
        fixed = {"tb_preset": "llrd"}
        if llrd_decay is not None:
            fixed["tb_llrd_decay"] = check_range("llrd_decay", llrd_decay, 0, 1, low_open=True,
                                                 why=" (1: plain fine-tuning)")  # fmt: skip
        self._tb_fixed = fixed
        super().__init__(*args, **kwargs)

    @property
    def llrd_decay(self) -> float:
        """The decay in force."""
        return self.tb_options.balance.llrd_decay
