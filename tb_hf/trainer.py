"""TempBalanceMixin and TempBalanceTrainer: TempBalance for any `transformers.Trainer`, changing only what it must."""

from __future__ import annotations

import json
import os
import re

from transformers import Trainer
from transformers.utils import logging

from . import state as tb_state
from .callback import DEEPSPEED_OPTIMIZER_MESSAGE, TempBalanceCallback
from .config import TempBalanceArguments
from .distributed import deepspeed_config_sections
from .layers import find_blocks, keep_4bit_weights_unpacked
from .optim import optimizer_from_args
from .setup import build_setup

logger = logging.get_logger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _complete(folder: str) -> bool:
    """A checkpoint the Trainer finished writing: its trainer_state.json (written last) is there and whole."""
    try:
        with open(os.path.join(folder, "trainer_state.json")) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that was written to the end; newer ones cut short (a crash while
    saving) are skipped with a warning. None if there is none."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted(
        ((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))), reverse=True
    )
    for _, name in found:
        folder = os.path.join(output_dir, name)
        if os.path.isdir(folder) and _complete(folder):
            return folder
        logger.warning(f"TempBalance: {folder} was not written to the end (no whole trainer_state.json): skipped.")
    return None


__all__ = ["TempBalanceMixin", "TempBalanceTrainer"]


class TempBalanceMixin:
    """TempBalance for any `transformers.Trainer` subclass: put it first in the bases.

    ``class SFTTempBalanceTrainer(TempBalanceMixin, trl.SFTTrainer)`` (or ``Seq2SeqTrainer``, or your own
    Trainer) builds the optimizer over per-unit param groups (`create_optimizer`), registers a
    `TempBalanceCallback` that recomputes α before the first step and every ``tb_update_steps`` optimizer
    steps, and merges the callback's metrics into the Trainer's logs (`log`). The blocks are looked up on
    ``self.model`` after the wrapped Trainer's ``__init__``, so a model that the Trainer itself wraps (trl's
    ``SFTTrainer`` with ``peft_config``) is checked as it will be trained.

    Args:
        *args: As for the Trainer class it is mixed into. ``args`` may be a `tb_hf.TempBalanceConfig` (its
            ``tb_*`` fields are the options) or the Trainer's own arguments (``SFTConfig``,
            ``Seq2SeqTrainingArguments``, ...: default options unless ``tb_args`` is given).
        **kwargs: As for the Trainer class it is mixed into.
        tb_args: TempBalance options (keyword only), overriding those of ``args``.

    Example:
        ```python
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer
        from tb_hf import TempBalanceArguments, TempBalanceMixin

        class TempBalanceSFTTrainer(TempBalanceMixin, SFTTrainer):
            pass

        trainer = TempBalanceSFTTrainer(
            model=model, args=SFTConfig(output_dir="out"), train_dataset=train,
            peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
            tb_args=TempBalanceArguments(tb_update_steps="auto"),
        )
        trainer.train()
        ```
    """

    def __init__(self, *args, tb_args: TempBalanceArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if deepspeed_config_sections(self.args) & {"optimizer", "scheduler"}:
            raise ValueError(DEEPSPEED_OPTIMIZER_MESSAGE)  # DeepSpeed would build an optimizer without our groups
        if self.model is not None:
            find_blocks(self.model)  # a model without transformer blocks fails here, before any training
            # QLoRA on CPU: an evaluation (even trainer.evaluate() before train()) must not repack the 4-bit weights
            keep_4bit_weights_unpacked(self.model)
        self.tempbalance = TempBalanceCallback(tb_args)
        self.add_callback(self.tempbalance)

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            # options, units and sizes decided once: the param groups here, the spectral passes in the callback
            setup = build_setup(opt_model, self.args, self.tempbalance.user_tb_args)
            self.tempbalance.setup = setup
            self.optimizer = optimizer_from_args(
                opt_model,
                self.args,
                setup.tb,
                decay_names=self.get_decay_parameter_names(opt_model),
                optimizer_cls_and_kwargs=self.optimizer_cls_and_kwargs,
                partition=setup.partition,
            )
        return super().create_optimizer(model)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:  # the last checkpoint written to the end, not one cut short by a crash
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"No complete checkpoint found in output_dir {self.args.output_dir} to resume from.")
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str | os.PathLike) and os.path.isdir(resume_from_checkpoint):
            if not _complete(os.fspath(resume_from_checkpoint)):
                raise ValueError(
                    f"{resume_from_checkpoint} was not written to the end (no whole trainer_state.json: a crash "
                    "while saving?): resume from an earlier checkpoint, or pass resume_from_checkpoint=True for the "
                    "last complete one."
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None and self.optimizer is not None:  # a clear error before torch's "different number"
            tb_state.check_saved_groups(checkpoint, self.optimizer, self.tempbalance.tb)
        return super()._load_optimizer_and_scheduler(checkpoint)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(self.tempbalance.pop_pending_logs())
        super().log(logs, start_time)


class TempBalanceTrainer(TempBalanceMixin, Trainer):
    """A drop-in `transformers.Trainer` that balances learning rates across transformer blocks.

    It builds the optimizer over per-unit param groups (`create_optimizer`), registers a
    `TempBalanceCallback` that recomputes α before the first step and every ``tb_update_steps`` optimizer
    steps, and merges the callback's metrics into the Trainer's logs (`log`) so TensorBoard/W&B get them.
    Everything else is the Trainer: the schedule (warmup and decay are kept: lr = base × factor ×
    schedule(t)), gradient accumulation, mixed precision, ``resume_from_checkpoint``, peft models, any
    ``optim`` whose optimizer takes param groups.

    Args:
        *args: As for `transformers.Trainer`. ``args`` may be a `tb_hf.TempBalanceConfig` (its ``tb_*`` fields
            are the options) or plain `TrainingArguments` (default options).
        **kwargs: As for `transformers.Trainer`.
        tb_args: TempBalance options, overriding those of ``args``.

    Example:
        ```python
        from tb_hf import TempBalanceConfig, TempBalanceTrainer

        args = TempBalanceConfig(output_dir="out", learning_rate=2e-5, warmup_steps=0.06, tb_xmin_pos=1.5)
        trainer = TempBalanceTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)
        trainer.train()
        ```
    """
