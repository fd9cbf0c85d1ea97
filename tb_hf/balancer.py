"""One run's layer-wise rates: what is decided once (options, units, base rates, the engine) and the passes that
renew the factors, run now or in a background thread.

Data flows one way::

    `Balancer.update`: `SpectralEngine.run` (the pass, shared between ranks) -> `balance` (metrics -> factors)
      -> `apply_factors` / `apply_wd_factors` (the optimizer) -> an `Update`, which `tb_hf.history` turns into
      the Trainer's logs and a ``history.jsonl`` record

`tb_hf.TempBalanceCallback` calls it at the Trainer's events; a profile in which no factor depends on α (LLRD) makes
no pass at all. A failed pass never stops training: every unit keeps factor 1 and a warning says why.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from torch import nn
from transformers.utils import logging

from . import state as tb_state
from .balancing import Balance, apply_factors, apply_wd_factors, balance
from .distributed import check_supported
from .engine import PassResult, SpectralEngine
from .layers import Partition, partition_model, unit_weights
from .optim import lr_ratios
from .options import TempBalanceOptions

logger = logging.get_logger(__name__)

__all__ = ["Balancer", "Update"]


@dataclass(frozen=True)
class Update:
    """What one pass gave, for the logs and the history: per unit its metric (NaN: not fitted), the standard error of
    its α, the factors, the seconds it took, and for an asynchronous pass the step its weights were copied at."""

    step: int
    metrics: dict[str, float]
    alpha_se: dict[str, float]
    outcome: Balance
    seconds: float
    snapshot_step: int | None = None


@dataclass
class _AsyncPass:
    """A pass computed in a background thread on a snapshot of the weights (``tb_async``), applied at a fixed step
    (``future`` None once resolved, or for a pass a checkpoint stored finished)."""

    pending: tb_state.PendingPass
    future: Future | None = None
    started: float = 0.0

    @classmethod
    def launch(cls, executor: ThreadPoolExecutor, engine: SpectralEngine, model: nn.Module, step: int, lag: int):
        snapshot = engine.snapshot(model)  # training thread: gathering may be a collective
        started = time.perf_counter()
        future = executor.submit(engine.compute, snapshot)
        return cls(tb_state.PendingPass(snapshot_step=step, apply_step=step + lag), future, started)


class Balancer:
    """The balancing of one model with fixed options: units and base rates decided once, factors renewed by passes.

    Args:
        model: The model as the optimizer sees it (peft-wrapped or not).
        options: The resolved options (`tb_hf.options.resolve_options`).
        partition: The model's units, if already known.
    """

    def __init__(self, model: nn.Module, options: TempBalanceOptions, partition: Partition | None = None):
        check_supported(model)
        self.options = options
        self.partition = partition or partition_model(model, options.balance.unit)
        self.unit_weights = unit_weights(model, self.partition)
        b = options.balance
        ratios = lr_ratios(model, self.partition, b.llrd_decay, head_lr_ratio=b.head_lr_ratio,
                           embeddings_lr_ratio=b.embeddings_lr_ratio)  # fmt: skip
        #: Each unit's base learning rate relative to the run's (the depth profile; 1 without one).
        self.lr_ratios = {u.name: ratios[u.params[0]] for u in self.partition.units}
        self.engine: SpectralEngine | None = None
        self.factors: dict[str, float] = {}
        self.wd_factors: dict[str, float] = {}
        self.pass_seconds = math.nan  # the cost of the run's first pass (what tb_update_steps="auto" weighs)
        self.seed = 0  # tb_permute_factors: the TrainingArguments seed
        self._executor: ThreadPoolExecutor | None = None
        self._async: _AsyncPass | None = None

    @property
    def units(self) -> set[str]:
        return {u.name for u in self.partition.units}

    def start(self, model: nn.Module, seed: int = 0) -> None:
        """Ready the spectral engine for ``model`` as the Trainer trains it (none when no factor depends on α)."""
        self.seed = seed
        if self.options.balance.needs_alpha and self.engine is None:
            self.engine = SpectralEngine(model, self.partition, self.options.spectral)

    # Synchronous passes

    def update(self, model: nn.Module, optimizer, scheduler, step: int) -> Update:
        """One pass and its factors, applied to ``optimizer``/``scheduler`` (every rank, the same step)."""
        begin = time.perf_counter()
        result = self.run_pass(model, step)
        outcome = self._balance(result)
        self.apply(optimizer, scheduler, outcome)
        metrics, alpha_se = self._metrics(result)
        return Update(step, metrics, alpha_se, outcome, time.perf_counter() - begin)

    def run_pass(self, model: nn.Module, step: int) -> PassResult | None:
        """The spectral pass (None when it failed, or when no factor depends on α)."""
        if self.engine is None:
            return None
        return _guarded(lambda: self.engine.run(model), step)

    def apply(self, optimizer, scheduler, outcome: Balance) -> None:
        """Factors into the optimizer: learning rates, and weight decays when they are balanced (or back to their
        base when they no longer are, after a resume with other options)."""
        apply_factors(optimizer, scheduler, outcome.factors)
        self.factors = dict(outcome.factors)
        wd_factors = outcome.wd_factors
        if not wd_factors and any(g.get(tb_state.WD_FACTOR, 1.0) != 1.0 for g in optimizer.param_groups):
            wd_factors = dict.fromkeys(outcome.factors, 1.0)
        if wd_factors:
            apply_wd_factors(optimizer, wd_factors)
            self.wd_factors = dict(wd_factors)

    def restore(self, run: tb_state.RunState) -> None:
        """The factors a checkpoint left in force."""
        self.factors, self.wd_factors, self.pass_seconds = run.factors, run.wd_factors, run.pass_seconds
        self._async = None if run.pending is None else _AsyncPass(run.pending)

    def _metrics(self, result: PassResult | None) -> tuple[dict[str, float], dict[str, float]]:
        if result is None:
            return ({u.name: math.nan for u in self.partition.units} if self.engine is not None else {}), {}
        return result.metrics, result.alpha_se

    def _balance(self, result: PassResult | None) -> Balance:
        if self.engine is None:  # a depth profile alone: every factor 1
            return Balance(dict.fromkeys(self.units_in_order(), 1.0), {}, [])
        metrics, alpha_se = self._metrics(result)
        alphas = None if result is None else result.alphas
        outcome = balance(metrics, self.options.balance, alphas=alphas, alpha_se=alpha_se, weights=self.unit_weights,
                          seed=self.seed)  # fmt: skip
        if outcome.skipped and result is not None:
            delta = self.options.spectral.lora_view == "delta"
            unanalysed = "no LoRA-adapted matrix (tb_lora_view='delta')" if delta else "no matrix"
            skipped = set(outcome.skipped)
            why = {u.name: result.statuses(u) or [unanalysed] for u in self.partition.units if u.name in skipped}
            logger.warning(f"TempBalance: {len(outcome.skipped)} unit(s) not fitted keep factor 1: {why}")
        return outcome

    def units_in_order(self) -> list[str]:
        return [u.name for u in self.partition.units]

    # Asynchronous passes

    @property
    def pending(self) -> tb_state.PendingPass | None:
        """The asynchronous pass in flight (None: none)."""
        return None if self._async is None else self._async.pending

    def start_async(self, model: nn.Module, step: int, lag: int) -> None:
        """Copy the weights now and compute their pass in a background thread; it applies after step + lag."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempbalance")
        self._async = _AsyncPass.launch(self._executor, self.engine, model, step, lag)

    def resolve_pending(self) -> tb_state.PendingPass:
        """Wait for the pass in flight and exchange its results (every rank joins, at the same step)."""
        job = self._async
        pending = job.pending
        if pending.finished:
            return pending
        local, error = None, None
        try:
            local = job.future.result()
        except Exception as err:  # noqa: BLE001 - joined below, then every unit keeps its factor
            error = err
        job.future = None
        result = _guarded(lambda: self.engine.finish(local, error), pending.snapshot_step)
        outcome = self._balance(result)
        pending.metrics, pending.alpha_se = self._metrics(result)
        pending.factors, pending.wd_factors, pending.skipped = outcome.factors, outcome.wd_factors, outcome.skipped
        pending.seconds = time.perf_counter() - job.started
        return pending

    def apply_pending(self, optimizer, scheduler) -> Update:
        """Apply the pass in flight (waiting for it if it is late)."""
        pending = self.resolve_pending()
        self._async = None
        outcome = Balance(pending.factors, pending.wd_factors, pending.skipped)
        self.apply(optimizer, scheduler, outcome)
        tb_state.clear_pending(optimizer)
        return Update(pending.apply_step, pending.metrics, pending.alpha_se, outcome, pending.seconds,
                      pending.snapshot_step)  # fmt: skip

    def drop_pending(self) -> None:
        self._async = None

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._async = None


def _guarded(run, step: int) -> PassResult | None:
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - a failed pass must never stop training
        logger.warning(f"TempBalance: spectral pass failed at step {step} ({err!r}); every unit keeps factor 1.")
        return None
