"""TempBalanceCallback: when to recompute α, and where the results go.

The callback wires the library's one-way data flow into the Trainer's events::

    model -> SpectralEngine (tb_hf.engine: the pass, shared between ranks) -> unit metrics
          -> compute_factors() -> apply_factors()

* ``on_train_begin``: check that the optimizer has TempBalance groups and (on a fresh start) run the first
  pass before the first optimizer step. On ``resume_from_checkpoint`` the factors, the chosen interval and any
  pass in flight come back with the optimizer state, so nothing is recomputed and the run continues bit for bit.
* When to recompute (``tb_update_steps``): an integer N — every N optimizer steps, exactly; ``"once"`` — never
  again; ``"auto"`` — Model Balancing's interval (about ten passes per epoch), but never more often than the
  budget ``tb_max_overhead`` allows: after `DECIDE_STEP` steps the callback knows the cost of a pass and of a
  step, and fixes ``interval = max(rule, ceil(pass / (budget × step)))`` for the rest of the run.
* ``tb_async``: a pass after the first snapshots the matrices at step s (training thread), computes them in a
  background thread, and applies the factors at step s + lag, waiting there only if the result is late.
  A checkpoint saved while a pass is in flight waits for it and stores its result, so resuming is exact.

Results go to the Trainer's logs (``tb/alpha/<unit>``, ``tb/lr_scale/<unit>``, ``tb/skipped_units``,
``tb/spectral_seconds``) and, on the main process, to ``<output_dir>/tempbalance/history.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .balancing import apply_factors, apply_wd_factors, compute_factors, compute_wd_factors
from .config import TempBalanceArguments, tb_arguments
from .distributed import check_supported, deepspeed_config_sections, max_over_ranks
from .engine import PassResult, SpectralEngine
from .layers import (
    REPACKED_4BIT_MESSAGE,
    Partition,
    keep_4bit_weights_unpacked,
    partition_model,
    repacked_4bit_weights,
    unit_weights,
)
from .optim import create_tempbalance_optimizer, optimizer_from_args, tempbalance_param_groups

logger = logging.get_logger(__name__)

__all__ = ["TempBalanceCallback", "create_tempbalance_optimizer", "optimizer_from_args", "tempbalance_param_groups"]

HISTORY_FILE = os.path.join("tempbalance", "history.jsonl")

#: With tb_update_steps="auto", the interval is fixed after this many optimizer steps (steps 2..DECIDE_STEP
#: are timed; the first step carries one-time costs).
DECIDE_STEP = 3

DEEPSPEED_OPTIMIZER_MESSAGE = (
    "TempBalance cannot run with a DeepSpeed config that defines its own 'optimizer' (or 'scheduler'): DeepSpeed "
    "then builds the optimizer itself, with no per-block param groups (and its schedulers give every group the same "
    "learning rate), so training would run without balancing. Remove the 'optimizer' and 'scheduler' sections from "
    "the DeepSpeed config and set them through the TrainingArguments (optim, learning_rate, weight_decay, "
    "lr_scheduler_type, warmup_steps): the Trainer then creates TempBalance's optimizer and schedule and DeepSpeed "
    "wraps them."
)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


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
        # Internal state, set in on_train_begin.
        self.tb: TempBalanceArguments | None = None
        self.partition: Partition | None = None
        self.engine: SpectralEngine | None = None
        self.steps_per_epoch: int | None = None
        self.rule_interval: int | None = None  # before the budget: tb_update_steps, or Model Balancing's rule
        self.interval: int | None = None  # in force: None = no more passes (or "auto" not yet decided)
        self.lag: int = 0
        self.decided = False
        self.permutation_seed = 0  # tb_permute_factors: the TrainingArguments seed
        self.pass_seconds = math.nan  # cost of the step-0 pass
        self.step_seconds = math.nan  # measured cost of a training step (for tb_update_steps="auto")
        self.step_times: dict[int, float] = {}
        self.unit_weights: dict[str, float] = {}
        self.factors: dict[str, float] = {}
        self.wd_factors: dict[str, float] = {}  # tb_balance='weight_decay' or 'both': each unit's weight-decay ratio
        self._pending_logs: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict | None = None  # async pass in flight: snapshot/apply steps, future or result

    # ------------------------------------------------------------------------------------------------
    # Events

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.tb = tb_arguments(args, self.user_tb_args)
        self.permutation_seed = getattr(args, "seed", 0)
        check_supported(model)
        self._keep_4bit_unpacked(model)
        self.partition = partition_model(model, self.tb.tb_unit)
        self._check_optimizer(optimizer, args)
        self._check_units(optimizer)
        self.engine = SpectralEngine(model, self.partition, self.tb)
        self.unit_weights = unit_weights(model, self.partition)  # full sizes, also under ZeRO-3
        self.steps_per_epoch = self._steps_per_epoch(args, state, kwargs.get("train_dataloader"))
        self.rule_interval = self.tb.update_interval(self.steps_per_epoch)
        self.step_times = {}
        self._pending = None
        if state.is_world_process_zero:
            self._trim_history(args.output_dir, state.global_step)
        group0 = optimizer.param_groups[0]
        if state.global_step == 0:
            self.update(model, optimizer, lr_scheduler, args, state)
            group0["tb_pass_seconds"] = self.pass_seconds  # a resume before the 'auto' decision still knows it
            self.decided = self.tb.tb_update_steps != "auto"
            if self.decided:
                self._fix_interval(optimizer, self.rule_interval, why=f"tb_update_steps={self.tb.tb_update_steps}")
        else:  # resumed: factors, interval and any pass in flight come back with the optimizer's param groups
            self.factors = {g["tb_unit"]: g["tb_factor"] for g in optimizer.param_groups if g.get("tb_unit")}
            self.wd_factors = {
                g["tb_unit"]: g.get("tb_wd_factor", 1.0) for g in optimizer.param_groups if g.get("tb_unit")
            }
            self.decided = "tb_interval" in group0
            self.interval, self.lag = group0.get("tb_interval"), group0.get("tb_lag", 0)
            self.pass_seconds = group0.get("tb_pass_seconds", math.nan)
            if group0.get("tb_pending") is not None:
                self._pending = {
                    **group0["tb_pending"],
                    "factors": self._stored_pending_factors(optimizer),
                    "wd_factors": self._stored_pending_factors(optimizer, "tb_pending_wd_factor"),
                }
        logger.info(
            f"TempBalance: {len(self.partition.units)} {self.tb.tb_unit} units, {self.tb.tb_xmin_method} xmin, "
            f"{self.tb.tb_estimator} ESD in {str(self.engine.options['dtype']).removeprefix('torch.')}, "
            f"{self.tb.tb_mapping} map; {self._schedule_text()}."
        )

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        done = state.global_step + 1  # optimizer steps completed, this one included
        if self._pending is not None and done == self._pending["apply_step"]:
            self._apply_pending(optimizer, lr_scheduler, args, state)
        if not self.decided:
            self.step_times[done] = time.perf_counter()
            if done >= min(DECIDE_STEP, max(1, state.max_steps - 1)):
                self._decide(model, optimizer, state)
        if self.interval is None or done % self.interval != 0 or done >= state.max_steps:
            return
        if self.tb.tb_async and self._pending is None and done + self.lag < state.max_steps:
            self._start_async(model, done)
        elif not self.tb.tb_async:
            self.update(model, optimizer, lr_scheduler, args, state, step=done)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        # A checkpoint is written right after this event: store a pass in flight, finished, so that resuming
        # applies exactly the factors this run will apply.
        if control.should_save and self._pending is not None:
            self._resolve_pending()
            group0 = optimizer.param_groups[0]
            pending = self._pending
            group0["tb_pending"] = {
                **{k: pending[k] for k in ("snapshot_step", "apply_step", "metrics", "seconds", "skipped")},
                "alpha_se": pending.get("alpha_se", {}),  # absent from a pass restored from an older checkpoint
            }
            for group in optimizer.param_groups:
                if group.get("tb_unit") is not None:
                    group["tb_pending_factor"] = pending["factors"][group["tb_unit"]]
                    if pending.get("wd_factors"):
                        group["tb_pending_wd_factor"] = pending["wd_factors"][group["tb_unit"]]

    def on_train_end(self, args, state, control, **kwargs):
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._pending = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        # `TempBalanceTrainer.log` merges the pending values before the integrations see them. With a plain
        # Trainer they arrive here, after the integrations: keep them at least in logs and log_history.
        pending = self.pop_pending_logs()
        if pending and logs is not None:
            logs.update(pending)
            if state.log_history:
                state.log_history[-1].update(pending)

    # ------------------------------------------------------------------------------------------------
    # When to recompute

    def _time_one_pass(self, model) -> float:
        start = time.perf_counter()
        self._finish(lambda: self.engine.run(model), step=-1)
        return time.perf_counter() - start

    def _decide(self, model, optimizer, state) -> None:
        """Fix the 'auto' interval from the measured cost of the first pass and of a training step (or, with
        ``tb_auto_interval``, replay the interval a run recorded)."""
        if self.tb.tb_auto_interval is not None:
            why = f"tb_auto_interval={self.tb.tb_auto_interval} replays a recorded 'auto' decision, untimed"
            self._fix_interval(optimizer, self.tb.tb_auto_interval, why=why, total_steps=state.max_steps)
            return
        timed = sorted(self.step_times)
        if len(timed) >= 2:
            step_seconds = (self.step_times[timed[-1]] - self.step_times[timed[0]]) / (timed[-1] - timed[0])
        else:  # a run too short to time: nothing more to decide
            step_seconds = math.inf
        self.step_seconds = step_seconds
        budget = self.tb.tb_max_overhead
        if not math.isfinite(self.pass_seconds):  # a checkpoint without the step-0 cost: measure one pass now
            self.pass_seconds = self._time_one_pass(model)
        needed = math.ceil(self.pass_seconds / (budget * step_seconds)) if step_seconds > 0 else 1
        interval = max_over_ranks(max(self.rule_interval or 1, needed))  # every rank must pass at the same steps
        why = (
            f"a pass costs {self.pass_seconds:.3g} s and a step {step_seconds:.3g} s: every {interval} steps keeps "
            f"passes within tb_max_overhead={budget:g} (Model Balancing's rule alone: every {self.rule_interval})"
        )
        self._fix_interval(optimizer, interval, why=why, total_steps=state.max_steps)

    def _fix_interval(self, optimizer, interval: int | None, *, why: str, total_steps: int | None = None) -> None:
        self.interval, self.decided = interval, True
        self.lag = max(1, interval // 2) if (interval and self.tb.tb_async) else 0
        group0 = optimizer.param_groups[0]
        group0["tb_interval"], group0["tb_lag"] = interval, self.lag  # saved with the optimizer: resume keeps them
        if total_steps and interval and interval >= total_steps:
            why += f"; the run has {total_steps} steps, so the step-0 factors hold throughout"
        logger.info(f"TempBalance: {self._schedule_text()} ({why}).")

    def _schedule_text(self) -> str:
        if not self.decided:
            return f"recompute interval fixed after step {DECIDE_STEP} from the measured costs (tb_max_overhead)"
        if self.interval is None:
            return "alpha computed once, before the first step"
        lag = f", applied {self.lag} steps later (async)" if self.tb.tb_async else ""
        return f"alpha recomputed every {self.interval} optimizer steps{lag}"

    # ------------------------------------------------------------------------------------------------
    # Asynchronous passes

    def _start_async(self, model, step: int) -> None:
        snapshot = self.engine.snapshot(model)  # training thread: gathering may be a collective
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempbalance")
        start = time.perf_counter()
        future: Future = self._executor.submit(self.engine.compute, snapshot)
        self._pending = {"snapshot_step": step, "apply_step": step + self.lag, "future": future, "start": start}

    def _resolve_pending(self) -> None:
        """Wait for the pass in flight and exchange its results (every rank joins, at the same step)."""
        pending = self._pending
        if "factors" in pending:
            return
        local, error = None, None
        try:
            local = pending.pop("future").result()
        except Exception as err:  # noqa: BLE001 - joined below, then every unit keeps its factor
            error = err
        result = self._finish(lambda: self.engine.finish(local, error), pending["snapshot_step"])
        pending.update(self._factors_of(result), seconds=time.perf_counter() - pending.pop("start"))

    def _apply_pending(self, optimizer, lr_scheduler, args, state) -> None:
        self._resolve_pending()
        pending, self._pending = self._pending, None
        self._apply(optimizer, lr_scheduler, pending)
        for group in optimizer.param_groups:
            group.pop("tb_pending_factor", None)
            group.pop("tb_pending_wd_factor", None)
        optimizer.param_groups[0].pop("tb_pending", None)
        self._report(args, state, pending["apply_step"], pending, snapshot_step=pending["snapshot_step"])

    @staticmethod
    def _stored_pending_factors(optimizer, key: str = "tb_pending_factor") -> dict[str, float]:
        return {g["tb_unit"]: g[key] for g in optimizer.param_groups if key in g}

    # ------------------------------------------------------------------------------------------------
    # The update

    def _finish(self, run, step: int) -> PassResult | None:
        try:
            return run()
        except Exception as err:  # noqa: BLE001 - a failed pass must never stop training
            logger.warning(f"TempBalance: spectral pass failed at step {step} ({err!r}); every unit keeps factor 1.")
            return None

    def _factors_of(self, result: PassResult | None) -> dict:
        units = self.partition.units
        metrics = result.metrics if result is not None else {u.name: math.nan for u in units}
        alpha_se = result.alpha_se if result is not None else {}
        factors = dict.fromkeys(metrics, 1.0)
        if self.tb.balances_lr:
            factors = compute_factors(
                metrics, alpha_se=alpha_se, weights=self.unit_weights, **self.tb.factor_options()
            )
        wd_factors = {}
        if self.tb.balances_wd:
            alphas = result.alphas if result is not None else metrics
            wd_factors = compute_wd_factors(alphas, **self.tb.wd_factor_options())
        if self.tb.tb_permute_factors:
            factors = self._permuted(factors, metrics)
            wd_factors = self._permuted(wd_factors, metrics) if wd_factors else {}
        skipped = [name for name, value in metrics.items() if not math.isfinite(value)]
        if skipped and result is not None:
            unanalysed = (
                "no LoRA-adapted matrix (tb_lora_view='delta')" if self.tb.tb_lora_view == "delta" else "no matrix"
            )
            why = {u.name: result.statuses(u) or [unanalysed] for u in units if u.name in skipped}
            logger.warning(f"TempBalance: {len(skipped)} unit(s) not fitted keep factor 1: {why}")
        return {
            "metrics": metrics, "alpha_se": alpha_se, "factors": factors, "wd_factors": wd_factors, "skipped": skipped
        }

    def _permuted(self, factors: Mapping[str, float], metrics: Mapping[str, float]) -> dict[str, float]:
        """tb_permute_factors: the fitted units' factors shuffled among them (seeded: the same every update)."""
        fitted = [name for name in factors if math.isfinite(metrics.get(name, math.nan))]
        order = random.Random(self.permutation_seed).sample(fitted, len(fitted))
        return {**factors, **{unit: factors[source] for unit, source in zip(fitted, order, strict=True)}}

    def update(self, model, optimizer, lr_scheduler, args, state, step: int = 0) -> dict[str, float]:
        """One synchronous spectral pass and the new factors, applied to ``optimizer``/``lr_scheduler``. Never
        raises because of a fit: units that could not be fitted keep factor 1 and a warning names them."""
        start = time.perf_counter()
        outcome = self._factors_of(self._finish(lambda: self.engine.run(model), step))
        self._apply(optimizer, lr_scheduler, outcome)
        outcome["seconds"] = time.perf_counter() - start
        if step == 0:
            self.pass_seconds = outcome["seconds"]
        self._report(args, state, step, outcome)
        return self.factors

    def _apply(self, optimizer, lr_scheduler, outcome: Mapping) -> None:
        """The factors of a pass into the optimizer: learning rates, and weight decays when they are balanced."""
        apply_factors(optimizer, lr_scheduler, outcome["factors"])
        self.factors = outcome["factors"]
        if outcome.get("wd_factors"):
            apply_wd_factors(optimizer, outcome["wd_factors"])
            self.wd_factors = outcome["wd_factors"]

    def _report(self, args, state, step: int, outcome: Mapping, snapshot_step: int | None = None) -> None:
        metrics, factors, skipped = outcome["metrics"], outcome["factors"], outcome["skipped"]
        self._pending_logs = {
            "tb/spectral_seconds": outcome["seconds"],
            "tb/skipped_units": float(len(skipped)),
            **{f"tb/alpha/{name}": value for name, value in metrics.items()},
            **{f"tb/lr_scale/{name}": value for name, value in factors.items()},
            **{f"tb/wd_scale/{name}": value for name, value in (outcome.get("wd_factors") or {}).items()},
        }
        if state.is_world_process_zero:
            epoch = step / self.steps_per_epoch if self.steps_per_epoch else (state.epoch or 0.0)
            self._append_history(
                args.output_dir,
                step,
                epoch,
                outcome["seconds"],
                metrics,
                factors,
                skipped,
                snapshot_step,
                alpha_se=outcome.get("alpha_se") or {},  # absent in a checkpoint written before it was recorded
                wd_factors=outcome.get("wd_factors") or {},
            )

    def pop_pending_logs(self) -> dict[str, float]:
        pending, self._pending_logs = self._pending_logs, {}
        return pending

    # ------------------------------------------------------------------------------------------------
    # Helpers

    @staticmethod
    def _keep_4bit_unpacked(model) -> None:
        """QLoRA on CPU: refuse 4-bit weights bitsandbytes has already repacked (LoRA below them cannot learn, and
        they do not dequantize), and keep the others from being repacked by an evaluation during training."""
        repacked = repacked_4bit_weights(model)
        if repacked:
            names = f"{repacked[0]} and {len(repacked) - 1} more" if len(repacked) > 1 else repacked[0]
            raise ValueError(REPACKED_4BIT_MESSAGE.format(names=names))
        if keep_4bit_weights_unpacked(model):
            logger.info(
                "TempBalance: set support_avx512bf16_for_cpu=False on the bitsandbytes 4-bit layers, so that an "
                "evaluation on CPU does not repack their weights (LoRA would stop learning; no dequantizing)."
            )

    @staticmethod
    def _check_optimizer(optimizer, args=None) -> None:
        if deepspeed_config_sections(args) & {"optimizer", "scheduler"}:
            raise ValueError(DEEPSPEED_OPTIMIZER_MESSAGE)
        if optimizer is None or not any("tb_unit" in group for group in optimizer.param_groups):
            raise ValueError(
                "TempBalanceCallback needs an optimizer with TempBalance's per-unit param groups, and this one has "
                "none. Either use tb_hf.TempBalanceTrainer instead of Trainer, or build the optimizer with "
                "tb_hf.create_tempbalance_optimizer(model, torch.optim.AdamW, lr=...) and pass "
                "Trainer(..., optimizers=(optimizer, None))."
            )

    def _check_units(self, optimizer) -> None:
        built = optimizer.param_groups[0].get("tb_llrd_decay", 1.0)
        if built != self.tb.tb_llrd_decay:
            raise ValueError(
                f"The optimizer's groups follow a depth profile with llrd_decay={built}, but the TempBalance options "
                f"say tb_llrd_decay={self.tb.tb_llrd_decay}: build the optimizer with the same decay "
                f"(create_tempbalance_optimizer(..., llrd_decay={self.tb.tb_llrd_decay})) or pass "
                f"llrd_decay={built} to the callback."
            )
        in_optimizer = {g["tb_unit"] for g in optimizer.param_groups if g.get("tb_unit") is not None}
        expected = {u.name for u in self.partition.units}
        if in_optimizer != expected:
            raise ValueError(
                f"The optimizer's TempBalance groups ({len(in_optimizer)} units, e.g. {sorted(in_optimizer)[:2]}) "
                f"do not match the callback's {len(expected)} {self.tb.tb_unit} units (e.g. {sorted(expected)[:2]}): "
                f"build the optimizer with the same unit (create_tempbalance_optimizer(..., "
                f"unit={self.tb.tb_unit!r})) after freezing or wrapping the model."
            )

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

    @staticmethod
    def _trim_history(output_dir, global_step: int) -> None:
        """Start a fresh history, or on resume drop the records after the checkpoint's step."""
        path = os.path.join(output_dir or "", HISTORY_FILE)
        if output_dir is None or not os.path.exists(path):
            return
        with open(path) as f:
            kept = [line for line in f if global_step > 0 and json.loads(line)["step"] <= global_step]
        with open(path, "w") as f:
            f.writelines(kept)

    @staticmethod
    def _append_history(
        output_dir,
        step,
        epoch,
        seconds,
        metrics: Mapping,
        factors: Mapping,
        skipped,
        snapshot_step=None,
        alpha_se: Mapping | None = None,
        wd_factors: Mapping | None = None,
    ) -> None:
        if output_dir is None:
            return
        path = os.path.join(output_dir, HISTORY_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {
            "step": step,
            "epoch": epoch,  # at the moment of the update (the Trainer's state.epoch lags one step here)
            "spectral_seconds": seconds,
            **({"snapshot_step": snapshot_step} if snapshot_step is not None else {}),
            "skipped": skipped,
            "alpha": {k: _finite_or_none(v) for k, v in metrics.items()},
            "factor": dict(factors),
            # standard error of each unit's α from the fits: how well α is known (seeds do not vary it at step 0)
            "alpha_se": {k: _finite_or_none(v) for k, v in (alpha_se or {}).items()},
            **({"wd_factor": dict(wd_factors)} if wd_factors else {}),
        }
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
