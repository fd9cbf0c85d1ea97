"""TempBalanceMixin and TempBalanceTrainer: TempBalance for any `transformers.Trainer`, changing only what it must."""

from __future__ import annotations

import json
import os
import re

from transformers import Trainer
from transformers.utils import logging

from . import state as tb_state
from .arguments import TempBalanceArguments, tb_source
from .balancer import Balancer
from .callback import TempBalanceCallback
from .checks import validate
from .optim import optimizer_from_args
from .options import TempBalanceOptions, explicit_options, resolve_options

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

    #: Options a subclass fixes over the user's (`tb_hf.baselines.LLRDTrainer`: ``{"tb_preset": "llrd", ...}``).
    _tb_fixed: dict = {}
    #: The ``tb_*`` values of the hyperparameter-search trial in progress: they win over ``tb_args``.
    _tb_trial: dict = {}

    def __init__(self, *args, tb_args: TempBalanceArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._tb_setup(tb_args)

    def _tb_setup(self, tb_args: TempBalanceArguments | None) -> None:
        """What the mixin adds to a constructed Trainer: the checks, the callback, and (for an optimizer passed in
        ``optimizers=``) its profile's check. `tb_hf.setfit` calls it on SetFit's body trainer."""
        validate(self.model, self.args)  # a model without blocks, a DeepSpeed optimizer: refused before any training
        if any(isinstance(c, TempBalanceCallback) for c in self.callback_handler.callbacks):
            raise ValueError(
                f"{type(self).__name__} adds its own TempBalanceCallback, and callbacks=[...] holds another: two "
                "would balance (and log) every pass twice. Drop it from callbacks and give its options as tb_args= "
                "(or in the TempBalanceConfig)."
            )
        self.tempbalance = TempBalanceCallback(tb_args)
        self.add_callback(self.tempbalance)
        options = self.tb_options  # every refusal now, at construction
        if self.optimizer is not None:  # passed in optimizers=(...): it must have been built for these options
            self._hand_over(Balancer(self.model, options))
            validate(optimizer=self.optimizer, balancer=self.tempbalance.balancer)

    @property
    def tb_options(self) -> TempBalanceOptions:
        """The options in force (`tb_hf.options.resolve_options`), from ``tb_args``, else the ``tb_*`` fields of
        ``args`` as they are now (a hyperparameter-search trial sets them), else the defaults."""
        source = tb_source(self.args, self.tempbalance.user_options)
        if self._tb_trial:
            given = explicit_options(source) if isinstance(source, TempBalanceArguments) else {}
            source = TempBalanceArguments(**{**given, **self._tb_trial})
        if self._tb_fixed:
            source = self._with_fixed(source)
        return resolve_options(source, weight_decay=getattr(self.args, "weight_decay", None))

    def _with_fixed(self, source) -> TempBalanceArguments:
        given = explicit_options(source) if isinstance(source, TempBalanceArguments) else {}
        clash = {k: v for k, v in given.items() if k in self._tb_fixed and v != self._tb_fixed[k]}
        if clash:
            fixed = ", ".join(f"{k}={self._tb_fixed[k]!r}" for k in clash)
            raise ValueError(
                f"{type(self).__name__} trains {fixed}, and its arguments set "
                f"{', '.join(f'{k}={v!r}' for k, v in clash.items())}: drop them from the arguments, or use "
                "tb_hf.TempBalanceTrainer with the options you want."
            )
        return TempBalanceArguments(**{**given, **self._tb_fixed})

    def _hand_over(self, balancer: Balancer) -> None:
        self.tempbalance.balancer, self.tempbalance.own_balancer = balancer, False

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            # options, units and base rates decided once: the param groups here, the passes in the callback
            balancer = Balancer(opt_model, self.tb_options)
            self._hand_over(balancer)
            self.optimizer = optimizer_from_args(
                opt_model,
                self.args,
                balancer.options,
                decay_names=self.get_decay_parameter_names(opt_model),
                optimizer_cls_and_kwargs=self.optimizer_cls_and_kwargs,
                partition=balancer.partition,
            )
        return super().create_optimizer(model)

    def hyperparameter_search(self, hp_space=None, *args, **kwargs):
        """`transformers.Trainer.hyperparameter_search`, where every ``tb_*`` value (and ``learning_rate``) a trial
        sets is the one that trains that trial: the trial's values win over ``tb_args`` and the arguments, the options
        are resolved again per trial (a ``tb_preset`` a trial sets fills what that trial leaves unset), nothing of an
        earlier trial's settings stays, and a name the arguments do not have is refused before the trial trains (the
        Trainer alone would only warn and ignore it). The ``tb_*`` fields are as before the search afterwards: apply
        the best trial with ``tb_hf.tuning.hp_space(...).settings(best.hyperparameters)``."""
        fields = set(type(self.args).__dataclass_fields__)

        def checked(trial):
            params = hp_space(trial) if hp_space is not None else {}
            unknown = sorted(set(params) - fields)
            if unknown:
                tb = sorted(f for f in fields if f.startswith("tb_"))
                use = f"its fields (the tb_* options are {tb})" if tb else "a tb_hf.TempBalanceConfig as args"
                raise ValueError(
                    f"The search space sets {unknown}, which {type(self.args).__name__} does not have: the trial "
                    f"would train without them. Use {use}, e.g. with tb_hf.tuning.hp_space(...)."
                )
            self._tb_trial = {k: v for k, v in params.items() if k.startswith("tb_")}
            return params

        before = {name: getattr(self.args, name) for name in fields if name.startswith("tb_")}
        self._tb_before_search, self._tb_trial = before, {}
        try:
            return super().hyperparameter_search(checked if hp_space is not None else None, *args, **kwargs)
        finally:
            for name, value in before.items():
                setattr(self.args, name, value)
            self._tb_before_search, self._tb_trial = None, {}

    def _hp_search_setup(self, trial):
        if getattr(self, "_tb_before_search", None) and trial is not None:
            for name, value in self._tb_before_search.items():  # each trial from the same starting point
                setattr(self.args, name, value)
        super()._hp_search_setup(trial)
        if trial is not None and self.hp_search_backend is not None:
            self.tb_options  # noqa: B018 - the trial's options checked now, before its model is built

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
            tb_state.check_saved_groups(checkpoint, self.optimizer, self.tempbalance.balancer.options)
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
