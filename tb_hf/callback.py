"""TempBalanceCallback: TempBalance's one-way data flow, wired into the Trainer's events.

    setup (`tb_hf.setup`: options, units) -> `SpectralEngine.run` (`tb_hf.engine`: the pass, shared between ranks)
      -> `balance` (`tb_hf.balancing`: metrics -> factors) -> `apply_factors` / `apply_wd_factors` (the optimizer)
      -> the Trainer's logs and ``history.jsonl`` (`tb_hf.history`)

When α is recomputed is `tb_hf.schedule`'s decision, what survives a checkpoint lives in the optimizer's param
groups (`tb_hf.state`); this module only calls them at the right events:

* ``on_train_begin``: check the optimizer, then (fresh start) the first pass before the first optimizer step. On
  ``resume_from_checkpoint`` the factors, the interval and any pass in flight come back with the optimizer state
  and the run continues bit for bit. A resume whose checkpoint has no TempBalance state (``save_only_model=True``)
  or that changes TempBalance options (the schedule, the map, the estimator, ...) makes a fresh pass at the resume
  step with the options now in force and decides the interval again from there, and says so; a resume that changes
  the units (``tb_unit``) or the depth profile (``tb_llrd_decay``), which fixed the param groups, is refused.
* ``on_optimizer_step``: apply an asynchronous pass due now, let ``"auto"`` decide once it has timed its steps,
  and run (or, with ``tb_async``, start) the passes that are due.
* ``on_step_end``: before a checkpoint is written, finish a pass in flight and store it, so resuming is exact.

Results go to the Trainer's logs (``tb/alpha/<unit>``, ``tb/lr_scale/<unit>``, ``tb/wd_scale/<unit>``,
``tb/skipped_units``, ``tb/spectral_seconds``) and, on the main process, to
``<output_dir>/tempbalance/history.jsonl``.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from . import state as tb_state
from .balancing import Balance, apply_factors, apply_wd_factors, balance
from .config import TempBalanceArguments, tb_arguments
from .distributed import deepspeed_config_sections, max_over_ranks
from .engine import PassResult, SpectralEngine
from .history import append_history, history_record, trim_history
from .layers import REPACKED_4BIT_MESSAGE, keep_4bit_weights_unpacked, repacked_4bit_weights
from .optim import create_tempbalance_optimizer, optimizer_from_args, tempbalance_param_groups
from .options import PRESETS
from .schedule import RecomputeSchedule
from .setup import Setup, build_setup
from .state import changed_options, options_of

logger = logging.get_logger(__name__)

__all__ = ["TempBalanceCallback", "create_tempbalance_optimizer", "optimizer_from_args", "tempbalance_param_groups"]


DEEPSPEED_OPTIMIZER_MESSAGE = (
    "TempBalance cannot run with a DeepSpeed config that defines its own 'optimizer' (or 'scheduler'): DeepSpeed "
    "then builds the optimizer itself, with no per-block param groups (and its schedulers give every group the same "
    "learning rate), so training would run without balancing. Remove the 'optimizer' and 'scheduler' sections from "
    "the DeepSpeed config and set them through the TrainingArguments (optim, learning_rate, weight_decay, "
    "lr_scheduler_type, warmup_steps): the Trainer then creates TempBalance's optimizer and schedule and DeepSpeed "
    "wraps them."
)


class TempBalanceCallback(TrainerCallback):
    """Layer-wise learning-rate balancing from weight spectra, for any `transformers.Trainer`.

    The optimizer must hold TempBalance's param groups: `tb_hf.TempBalanceTrainer` builds them itself; with a
    plain Trainer pass ``optimizers=(create_tempbalance_optimizer(model, torch.optim.AdamW, lr=...), None)``
    (or ``create_tempbalance_optimizer(model, args)`` for the optimizer ``args.optim`` names).

    Args:
        tb_args: TempBalance options. If None, the ``tb_*`` fields of the Trainer's args are used when they
            are a `tb_hf.TempBalanceConfig`, else the defaults.
        **options: Individual options without the ``tb_`` prefix (``mapping="sigmoid"``, ``update_steps=10``),
            applied on top of ``tb_args``/the defaults.

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
        fields = TempBalanceArguments.__dataclass_fields__
        unknown = [k for k in options if f"tb_{k}" not in fields]
        if unknown:
            valid = [name.removeprefix("tb_") for name in fields]
            raise TypeError(f"unknown TempBalance options {unknown}; valid: {valid}")
        if tb_args is not None:
            tb_args = tb_arguments(tb_args=tb_args)  # only the tb_* fields, also of a whole TempBalanceConfig
        if options:  # validated now, not at the first training step
            base = {name: getattr(tb_args, name) for name in fields} if tb_args is not None else {}
            tb_args = TempBalanceArguments(**{**base, **{f"tb_{k}": v for k, v in options.items()}})
        self.user_tb_args = tb_args
        #: Options, units and unit sizes: handed over by `TempBalanceMixin` when it builds the optimizer, else
        #: built in on_train_begin.
        self.setup: Setup | None = None
        # Internal state, set in on_train_begin.
        self.engine: SpectralEngine | None = None
        self.schedule: RecomputeSchedule | None = None
        self.steps_per_epoch: int | None = None
        self.permutation_seed = 0  # tb_permute_factors: the TrainingArguments seed
        self.pass_seconds = math.nan  # cost of the run's first pass (for tb_update_steps="auto")
        self.last_pass_seconds = math.nan
        self.factors: dict[str, float] = {}
        self.wd_factors: dict[str, float] = {}  # tb_balance='weight_decay' or 'both': each unit's weight-decay ratio
        self._pending_logs: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tb_state.PendingPass | None = None  # an asynchronous pass in flight
        self._future: Future | None = None
        self._started = 0.0

    # The setup and the schedule, as attributes.

    @property
    def tb(self) -> TempBalanceArguments | None:
        return None if self.setup is None else self.setup.tb

    @property
    def partition(self):
        return None if self.setup is None else self.setup.partition

    @property
    def unit_weights(self) -> dict[str, float]:
        return {} if self.setup is None else self.setup.unit_weights

    @property
    def interval(self) -> int | None:
        return None if self.schedule is None else self.schedule.interval

    @property
    def lag(self) -> int:
        return 0 if self.schedule is None else self.schedule.lag

    @property
    def decided(self) -> bool:
        return self.schedule is not None and self.schedule.decided

    @property
    def rule_interval(self) -> int | None:
        return None if self.schedule is None else self.schedule.rule

    @property
    def step_seconds(self) -> float:
        return math.nan if self.schedule is None else self.schedule.step_seconds()

    # ------------------------------------------------------------------------------------------------
    # Events

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self._prepare(args, model, optimizer)
        self.permutation_seed = getattr(args, "seed", 0)
        self.steps_per_epoch = self._steps_per_epoch(args, state, kwargs.get("train_dataloader"))
        run = tb_state.read_run_state(optimizer)
        start = state.global_step
        why = self._restart_reason(run, start)
        self._pending = None
        if state.is_world_process_zero:  # a fresh pass at the resume step replaces the checkpoint's record there
            trim_history(args.output_dir, None if start == 0 else start if why is None else start - 1)
        if start == 0 or why is not None:
            if why is not None:
                logger.warning(f"TempBalance: {why}.")
                tb_state.clear_pending(optimizer)
                tb_state.forget_interval(optimizer)
            self.update(model, optimizer, lr_scheduler, args, state, step=start)
            self.pass_seconds = self.last_pass_seconds  # what 'auto' weighs against a step
            tb_state.write_options(optimizer, options_of(self.tb), self.pass_seconds)
            self.schedule = self._new_schedule(start, state.max_steps)
            if self.schedule.decided:
                self._record_interval(optimizer)
        else:  # resumed: factors, interval and any pass in flight come back with the optimizer's param groups
            self.factors, self.wd_factors, self.pass_seconds = run.factors, run.wd_factors, run.pass_seconds
            if run.options is None:  # a checkpoint written before the options were recorded
                tb_state.write_options(optimizer, options_of(self.tb))
            if run.decided:
                self.schedule = self._new_schedule(start, state.max_steps, resumed=run)
            else:  # 'auto' resumed before its decision: it times the steps after the resume and decides then
                self.schedule = self._new_schedule(start, state.max_steps)
            self._pending = run.pending
        tb = self.tb
        logger.info(
            f"TempBalance: {len(self.partition.units)} {tb.tb_unit} units, {tb.tb_xmin_method} xmin, "
            f"{tb.tb_estimator} ESD in {str(self.engine.options['dtype']).removeprefix('torch.')}, "
            f"{tb.tb_mapping} map, balancing {tb.tb_balance}; {self.schedule.text()}."
        )

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        done = state.global_step + 1  # optimizer steps completed, this one included
        if self._pending is not None and done == self._pending.apply_step:
            self._apply_pending(optimizer, lr_scheduler, args, state)
        if self.schedule.observe(done, time.perf_counter()):
            self._decide(model, optimizer)
        if not self.schedule.due(done):
            return
        if not self.tb.tb_async:
            self.update(model, optimizer, lr_scheduler, args, state, step=done)
        elif self._pending is None:
            self._start_async(model, done)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        # A checkpoint is written right after this event: store a pass in flight, finished, so that resuming
        # applies exactly the factors this run will apply.
        if control.should_save and self._pending is not None:
            self._resolve_pending()
            tb_state.write_pending(optimizer, self._pending)

    def on_train_end(self, args, state, control, **kwargs):
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._pending = self._future = None

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

    # ------------------------------------------------------------------------------------------------
    # Set-up and resume

    def _prepare(self, args, model, optimizer) -> None:
        """The setup (handed over, or built now), checked against the optimizer; the engine."""
        check_optimizer(optimizer, args)
        _keep_4bit_unpacked(model)
        if self.setup is None:
            self.setup = build_setup(model, args, self.user_tb_args)
        built = tb_state.read_run_state(optimizer).llrd_decay
        if built != self.tb.tb_llrd_decay:
            preset = PRESETS.get(self.tb.tb_preset, {})
            origin = f" (set by tb_preset={self.tb.tb_preset!r})" if "tb_llrd_decay" in preset else ""
            raise ValueError(
                f"The optimizer's groups follow a depth profile with llrd_decay={built}, but the TempBalance options "
                f"say tb_llrd_decay={self.tb.tb_llrd_decay}{origin}: build the optimizer with the same decay "
                f"(create_tempbalance_optimizer(..., llrd_decay={self.tb.tb_llrd_decay})) or pass "
                f"llrd_decay={built} to the callback."
            )
        in_optimizer, expected = tb_state.unit_names(optimizer), self.setup.units
        if in_optimizer != expected:
            raise ValueError(
                f"The optimizer's TempBalance groups ({len(in_optimizer)} units, e.g. {sorted(in_optimizer)[:2]}) "
                f"do not match the callback's {len(expected)} {self.tb.tb_unit} units (e.g. {sorted(expected)[:2]}): "
                f"build the optimizer with the same unit (create_tempbalance_optimizer(..., "
                f"unit={self.tb.tb_unit!r})) after freezing or wrapping the model."
            )
        unit_groups = [g for g in optimizer.param_groups if g.get(tb_state.UNIT) is not None]
        if self.tb.balances_wd and not any(g.get(tb_state.BASE_WD) for g in unit_groups):
            raise ValueError(
                f"tb_balance={self.tb.tb_balance!r} scales each unit's weight decay, but every TempBalance group of "
                "the optimizer has weight_decay 0: set weight_decay (e.g. TrainingArguments(weight_decay=0.1), or the "
                "optimizer's own), or tb_balance='lr'"
            )
        self.engine = SpectralEngine(model, self.partition, self.tb)

    def _restart_reason(self, run: tb_state.RunState, start: int) -> str | None:
        """Why a resumed run makes a fresh pass now (None: it continues as the checkpoint left it). Raises for a
        resume that changes what the param groups were built for."""
        if start == 0:
            return None
        if not run.restored:
            return (
                f"resumed at step {start} from a checkpoint without TempBalance's optimizer state (save_only_model="
                "True, or an optimizer saved without TempBalance's groups): alpha is computed again now, and the "
                "recompute interval decided again"
            )
        changed = changed_options(run.options, self.tb)
        fixed = tb_state.fixed_changes_text(changed)
        if fixed:
            raise ValueError(
                f"The checkpoint was written with {fixed}: these options fixed the optimizer's param groups (which "
                "parameters share a factor, and their base learning rates), so a resumed run cannot change them. "
                "Resume with the checkpoint's values, or start a new run from its weights."
            )
        if changed:
            text = ", ".join(f"{name} {then!r} -> {now!r}" for name, (then, now) in changed.items())
            return (
                f"resumed at step {start} with other TempBalance options ({text}): alpha is computed again now with "
                "them, the recompute interval is decided again from here, and a pass the checkpoint held in flight "
                "is dropped"
            )
        return None

    def _new_schedule(self, start: int, max_steps: int, resumed: tb_state.RunState | None = None):
        tb = self.tb
        options = dict(
            update_steps=tb.tb_update_steps,
            rule=tb.update_interval(self.steps_per_epoch),
            budget=tb.tb_max_overhead,
            start_step=start,
            max_steps=max_steps,
            async_=tb.tb_async,
            replay=tb.tb_auto_interval,
        )
        if resumed is not None:
            return RecomputeSchedule.resumed(interval=resumed.interval, lag=resumed.lag, **options)
        return RecomputeSchedule(**options)

    def _decide(self, model, optimizer) -> None:
        """Fix the 'auto' interval from the measured cost of a pass and of a training step (or replay one)."""
        if not math.isfinite(self.pass_seconds):  # a checkpoint without the cost of a pass: measure one now
            begin = time.perf_counter()
            self._run_pass(model, step=-1)
            self.pass_seconds = time.perf_counter() - begin
        interval = max_over_ranks(self.schedule.decide(self.pass_seconds))  # every rank passes at the same steps
        self.schedule.fix(interval, self.schedule.explain(interval, self.pass_seconds))
        self._record_interval(optimizer)

    def _record_interval(self, optimizer) -> None:
        tb_state.write_interval(optimizer, self.schedule.interval, self.schedule.lag)  # resume keeps it
        logger.info(f"TempBalance: {self.schedule.text()} ({self.schedule.why}).")

    # ------------------------------------------------------------------------------------------------
    # Passes

    def update(self, model, optimizer, lr_scheduler, args, state, step: int = 0) -> dict[str, float]:
        """One synchronous spectral pass and the new factors, applied to ``optimizer``/``lr_scheduler``. Never
        raises because of a fit: units that could not be fitted keep factor 1 and a warning names them."""
        begin = time.perf_counter()
        result = self._run_pass(model, step)
        outcome = self._balance(result)
        self._apply(optimizer, lr_scheduler, outcome)
        self.last_pass_seconds = time.perf_counter() - begin
        metrics, alpha_se = self._metrics(result)
        self._report(args, state, step, metrics, alpha_se, outcome, self.last_pass_seconds)
        return self.factors

    def _run_pass(self, model, step: int) -> PassResult | None:
        return self._guarded(lambda: self.engine.run(model), step)

    @staticmethod
    def _guarded(run, step: int) -> PassResult | None:
        try:
            return run()
        except Exception as err:  # noqa: BLE001 - a failed pass must never stop training
            logger.warning(f"TempBalance: spectral pass failed at step {step} ({err!r}); every unit keeps factor 1.")
            return None

    def _metrics(self, result: PassResult | None) -> tuple[dict[str, float], dict[str, float]]:
        if result is None:
            return {u.name: math.nan for u in self.partition.units}, {}
        return result.metrics, result.alpha_se

    def _balance(self, result: PassResult | None) -> Balance:
        metrics, alpha_se = self._metrics(result)
        outcome = balance(
            metrics,
            self.tb,
            alphas=None if result is None else result.alphas,
            alpha_se=alpha_se,
            weights=self.unit_weights,
            seed=self.permutation_seed,
        )
        if outcome.skipped and result is not None:
            unanalysed = (
                "no LoRA-adapted matrix (tb_lora_view='delta')" if self.tb.tb_lora_view == "delta" else "no matrix"
            )
            skipped = set(outcome.skipped)
            why = {u.name: result.statuses(u) or [unanalysed] for u in self.partition.units if u.name in skipped}
            logger.warning(f"TempBalance: {len(outcome.skipped)} unit(s) not fitted keep factor 1: {why}")
        return outcome

    def _apply(self, optimizer, lr_scheduler, outcome: Balance) -> None:
        """The factors of a pass into the optimizer: learning rates, and weight decays when they are balanced (or
        back to their base when they no longer are, after a resume with other options)."""
        apply_factors(optimizer, lr_scheduler, outcome.factors)
        self.factors = dict(outcome.factors)
        wd_factors = outcome.wd_factors
        if not wd_factors and any(g.get(tb_state.WD_FACTOR, 1.0) != 1.0 for g in optimizer.param_groups):
            wd_factors = dict.fromkeys(outcome.factors, 1.0)
        if wd_factors:
            apply_wd_factors(optimizer, wd_factors)
            self.wd_factors = dict(wd_factors)

    def _report(self, args, state, step: int, metrics, alpha_se, outcome: Balance, seconds: float,
                snapshot_step: int | None = None) -> None:  # fmt: skip
        self._pending_logs = {
            "tb/spectral_seconds": seconds,
            "tb/skipped_units": float(len(outcome.skipped)),
            **{f"tb/alpha/{name}": value for name, value in metrics.items()},
            **{f"tb/lr_scale/{name}": value for name, value in outcome.factors.items()},
            **{f"tb/wd_scale/{name}": value for name, value in outcome.wd_factors.items()},
        }
        if state.is_world_process_zero and args.output_dir is not None:
            epoch = step / self.steps_per_epoch if self.steps_per_epoch else (state.epoch or 0.0)
            record = history_record(
                step, epoch, seconds, metrics, outcome.factors, outcome.skipped, alpha_se=alpha_se,
                snapshot_step=snapshot_step, extra={"wd_factor": outcome.wd_factors} if outcome.wd_factors else None,
            )  # fmt: skip
            append_history(args.output_dir, record)

    # Asynchronous passes

    def _start_async(self, model, step: int) -> None:
        snapshot = self.engine.snapshot(model)  # training thread: gathering may be a collective
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempbalance")
        self._started = time.perf_counter()
        self._future = self._executor.submit(self.engine.compute, snapshot)
        self._pending = tb_state.PendingPass(snapshot_step=step, apply_step=step + self.schedule.lag)

    def _resolve_pending(self) -> None:
        """Wait for the pass in flight and exchange its results (every rank joins, at the same step)."""
        pending = self._pending
        if pending.finished:
            return
        local, error = None, None
        try:
            local = self._future.result()
        except Exception as err:  # noqa: BLE001 - joined below, then every unit keeps its factor
            error = err
        self._future = None
        result = self._guarded(lambda: self.engine.finish(local, error), pending.snapshot_step)
        outcome = self._balance(result)
        pending.metrics, pending.alpha_se = self._metrics(result)
        pending.factors, pending.wd_factors, pending.skipped = outcome.factors, outcome.wd_factors, outcome.skipped
        pending.seconds = time.perf_counter() - self._started

    def _apply_pending(self, optimizer, lr_scheduler, args, state) -> None:
        self._resolve_pending()
        pending, self._pending = self._pending, None
        outcome = Balance(pending.factors, pending.wd_factors, pending.skipped)
        self._apply(optimizer, lr_scheduler, outcome)
        tb_state.clear_pending(optimizer)
        self._report(
            args, state, pending.apply_step, pending.metrics, pending.alpha_se, outcome, pending.seconds,
            snapshot_step=pending.snapshot_step,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------
    # Helpers

    @staticmethod
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


def check_optimizer(optimizer, args=None) -> None:
    """A ValueError saying what to do unless ``optimizer`` holds TempBalance's param groups and no DeepSpeed config
    builds its own optimizer or schedule (which would have none)."""
    if deepspeed_config_sections(args) & {"optimizer", "scheduler"}:
        raise ValueError(DEEPSPEED_OPTIMIZER_MESSAGE)
    if not tb_state.has_tempbalance_groups(optimizer):
        raise ValueError(
            "TempBalanceCallback needs an optimizer with TempBalance's per-unit param groups, and this one has "
            "none. Either use tb_hf.TempBalanceTrainer instead of Trainer, or build the optimizer with "
            "tb_hf.create_tempbalance_optimizer(model, torch.optim.AdamW, lr=...) and pass "
            "Trainer(..., optimizers=(optimizer, None))."
        )


def _keep_4bit_unpacked(model) -> None:
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
