"""TempBalanceCallback: layer-wise rates wired into the Trainer's events; the work is done by its helpers.

* `tb_hf.checks.validate`: what must hold before the first step;
* `tb_hf.balancer.Balancer`: units, base rates and engine decided once; the passes and their factors;
* `tb_hf.schedule.RecomputeSchedule`: when a pass is due;
* `tb_hf.state`: what survives a checkpoint (in the optimizer's param groups) and what a resume may change;
* `tb_hf.history`: the Trainer's logs and ``<output_dir>/tempbalance/history.jsonl``.

On ``resume_from_checkpoint`` the factors, the interval and any pass in flight come back with the optimizer state and
the run continues bit for bit; a resume whose checkpoint has no TempBalance state (``save_only_model=True``) or that
changes options (the schedule, the map, the estimator, ...) makes a fresh pass at the resume step with the options now
in force, and says so; a resume that changes what fixed the param groups (``tb_unit``, ``tb_llrd_decay``, the head
and embeddings ratios) is refused.
"""

from __future__ import annotations

import math
import time

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from . import state as tb_state
from .arguments import TempBalanceArguments, tb_source
from .balancer import Balancer, Update
from .checks import validate
from .distributed import max_over_ranks
from .history import append_history, trim_history, update_logs, update_record
from .options import OPTION_FIELDS, explicit_options, resolve_options
from .schedule import RecomputeSchedule

logger = logging.get_logger(__name__)

__all__ = ["TempBalanceCallback"]


class TempBalanceCallback(TrainerCallback):
    """Layer-wise learning rates (TempBalance's α factors, a depth profile, or both), for any `transformers.Trainer`.

    The optimizer must hold tb_hf's param groups: `tb_hf.TempBalanceTrainer` builds them itself; with a plain
    Trainer pass ``optimizers=(create_tempbalance_optimizer(model, torch.optim.AdamW, lr=...), None)``.

    Args:
        tb_args: Options (`tb_hf.TempBalanceArguments`, or a whole `TempBalanceConfig`). If None, the ``tb_*``
            fields of the Trainer's args are used when they are a `tb_hf.TempBalanceConfig`, else the defaults.
        **options: Individual options without the ``tb_`` prefix (``mapping="sigmoid"``, ``update_steps=10``,
            ``preset="llrd"``), on top of ``tb_args``.

    Example:
        ```python
        import torch
        from transformers import Trainer, TrainingArguments
        from tb_hf import TempBalanceCallback, create_tempbalance_optimizer

        args = TrainingArguments(output_dir="out", learning_rate=2e-5, warmup_steps=0.06)
        optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=2e-5, weight_decay=0.01)
        trainer = Trainer(model=model, args=args, train_dataset=train, optimizers=(optimizer, None),
                          callbacks=[TempBalanceCallback(mapping="linear", update_steps="auto")])
        trainer.train()
        ```
    """

    def __init__(self, tb_args: TempBalanceArguments | None = None, **options):
        names = ("tb_preset", *OPTION_FIELDS)
        unknown = [k for k in options if f"tb_{k}" not in names]
        if unknown:
            raise TypeError(f"unknown TempBalance options {unknown}; valid: {[n.removeprefix('tb_') for n in names]}")
        source = tb_source(None, tb_args)
        if options:
            base = explicit_options(source) if isinstance(source, TempBalanceArguments) else {}
            source = TempBalanceArguments(**{**base, **{f"tb_{k}": v for k, v in options.items()}})
        elif isinstance(source, TempBalanceArguments):
            source = TempBalanceArguments(**explicit_options(source))  # only the tb_* fields of a TempBalanceConfig
        #: The options as the user gave them (None: the Trainer's args); resolved when training starts.
        self.user_options = source
        #: Units, base rates and passes: handed over by `TempBalanceMixin` with its optimizer, else built at the start.
        self.balancer: Balancer | None = None
        self.own_balancer = False  # built here at the start of training (a plain Trainer), not handed over
        self.schedule: RecomputeSchedule | None = None
        self.steps_per_epoch: int | None = None
        self._pending_logs: dict[str, float] = {}

    def on_init_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        # A plain Trainer given optimizers=(...): check that optimizer against the options now, not at train().
        if optimizer is not None and model is not None and self.balancer is None:
            self.balancer = Balancer(model, resolve_options(tb_source(args, self.user_options)))
            self.own_balancer = True
            validate(model, args, optimizer=optimizer, balancer=self.balancer)

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        args, model = _trainer_view(args, model, kwargs)
        if self.balancer is None or self.own_balancer:  # a plain Trainer: options as the args say now
            options = resolve_options(tb_source(args, self.user_options))  # its optimizer may set its own decay
            self.balancer, self.own_balancer = Balancer(model, options), True
        b = self.balancer
        validate(model, args, optimizer=optimizer, balancer=b)
        b.start(model, seed=getattr(args, "seed", 0))
        self.steps_per_epoch = _steps_per_epoch(args, state, kwargs.get("train_dataloader"))
        run, start = tb_state.read_run_state(optimizer), state.global_step
        why = tb_state.restart_reason(run, b.options, start)
        if state.is_world_process_zero:  # a fresh pass at the resume step replaces the checkpoint's record there
            trim_history(args.output_dir, None if start == 0 else start if why is None else start - 1)
        if start == 0 or why is not None:
            if why is not None:
                logger.warning(f"TempBalance: {why}.")
                tb_state.clear_pending(optimizer)
                tb_state.forget_interval(optimizer)
            b.drop_pending()
            update = b.update(model, optimizer, lr_scheduler, step=start)
            b.pass_seconds = update.seconds  # what 'auto' weighs against a step
            tb_state.write_options(optimizer, tb_state.options_of(b.options), b.pass_seconds)
            self.schedule = self._new_schedule(start, state.max_steps)
            self._report(args, state, update, first=True)
            if self.schedule.decided:
                self._record_interval(optimizer)
        else:  # resumed: factors, interval and any pass in flight come back with the optimizer's param groups
            b.restore(run)
            if run.options is None:  # a checkpoint written before the options were recorded
                tb_state.write_options(optimizer, tb_state.options_of(b.options))
            self.schedule = self._new_schedule(start, state.max_steps, resumed=run)
        logger.info(f"TempBalance: {len(b.partition.units)} units; {b.options.text()}; {self.schedule.text()}.")

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        args, model = _trainer_view(args, model, kwargs)
        done, b = state.global_step + 1, self.balancer  # optimizer steps completed, this one included
        if b.pending is not None and done == b.pending.apply_step:
            self._report(args, state, b.apply_pending(optimizer, lr_scheduler))
        if self.schedule.observe(done, time.perf_counter()):
            self._decide(model, optimizer)
        if not self.schedule.due(done):
            return
        if not b.options.schedule.asynchronous:
            self._report(args, state, b.update(model, optimizer, lr_scheduler, step=done))
        elif b.pending is None:
            b.start_async(model, done, self.schedule.lag)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        # A checkpoint is written right after this event: store a pass in flight, finished, so that resuming
        # applies exactly the factors this run will apply.
        if control.should_save and self.balancer.pending is not None:
            tb_state.write_pending(optimizer, self.balancer.resolve_pending())

    def on_train_end(self, args, state, control, **kwargs):
        self.balancer.shutdown()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # `TempBalanceTrainer.log` merges the pending values before the integrations see them. With a plain
        # Trainer they arrive here, after the integrations: keep them at least in logs and log_history.
        pending = self.pop_pending_logs()
        if pending and logs is not None:
            logs.update(pending)
            if state.log_history:
                state.log_history[-1].update(pending)

    def pop_pending_logs(self) -> dict[str, float]:
        pending, self._pending_logs = self._pending_logs, {}
        return pending

    def update(self, model, optimizer, lr_scheduler, args, state, step: int = 0) -> dict[str, float]:
        """One synchronous pass now (every rank, the same step), applied and reported; the factors. Never raises
        because of a fit: units that could not be fitted keep factor 1 and a warning names them."""
        update = self.balancer.update(model, optimizer, lr_scheduler, step)
        self._report(args, state, update)
        return dict(update.outcome.factors)

    # Helpers

    def _new_schedule(self, start: int, max_steps: int, resumed: tb_state.RunState | None = None):
        return RecomputeSchedule.for_run(self.balancer.options, steps_per_epoch=self.steps_per_epoch,
                                         start_step=start, max_steps=max_steps, resumed=resumed)  # fmt: skip

    def _decide(self, model, optimizer) -> None:
        """Fix the 'auto' interval from the measured cost of a pass and of a training step (or replay one)."""
        b = self.balancer
        if not math.isfinite(b.pass_seconds):  # a checkpoint without the cost of a pass: measure one now
            begin = time.perf_counter()
            b.run_pass(model, step=-1)
            b.pass_seconds = time.perf_counter() - begin
        interval = max_over_ranks(self.schedule.decide(b.pass_seconds))  # every rank passes at the same steps
        self.schedule.fix(interval, self.schedule.explain(interval, b.pass_seconds))
        self._record_interval(optimizer)

    def _record_interval(self, optimizer) -> None:
        tb_state.write_interval(optimizer, self.schedule.interval, self.schedule.lag)  # resume keeps it
        self._pending_logs["tb/update_interval"] = float(self.schedule.interval or 0)  # 0: never again
        logger.info(f"TempBalance: {self.schedule.text()} ({self.schedule.why}).")

    def _report(self, args, state, update: Update, first: bool = False) -> None:
        b = self.balancer
        self._pending_logs.update(update_logs(update, b.lr_ratios))
        if state.is_world_process_zero and args.output_dir is not None:
            epoch = update.step / self.steps_per_epoch if self.steps_per_epoch else (state.epoch or 0.0)
            options = b.options.to_dict() if first else None
            append_history(args.output_dir, update_record(update, epoch, b.lr_ratios, options))


def _trainer_view(args, model, kwargs):
    """The arguments and model of the Trainer that trains: SetFit's body trainer passes callbacks its SetFit arguments
    and model, and the sentence-transformer body's as ``st_args`` / ``st_model``."""
    return kwargs.get("st_args", args), kwargs.get("st_model", model)


def _steps_per_epoch(args, state, train_dataloader) -> int | None:
    try:
        return math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    except TypeError:  # no dataloader, or an iterable one without a length
        epochs = state.num_train_epochs or 1
        per_epoch = state.max_steps // epochs if state.max_steps and epochs < state.max_steps else 0
        if per_epoch < 1:  # an IterableDataset: the run is max_steps long, count it as one epoch
            per_epoch = state.max_steps or None
        logger.warning_once(
            f"TempBalance: the training data has no length (an IterableDataset?), so 'auto' intervals count "
            f"{per_epoch} steps per epoch (from max_steps={state.max_steps})."
        )
        return per_epoch
