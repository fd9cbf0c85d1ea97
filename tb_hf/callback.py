"""TempBalanceCallback: when to recompute α, and where the results go.

The callback wires the library's one-way data flow into the Trainer's events::

    model -> unit_matrices() -> analyze() -> unit_metrics() -> compute_factors() -> apply_factors()

(the first two as `tb_hf.distributed.spectral_pass`, which shares them between the ranks of a distributed job).

* ``on_train_begin``: check that the optimizer has TempBalance groups, resolve the update interval, and
  (on a fresh start) run the first spectral pass before the first optimizer step. On
  ``resume_from_checkpoint`` the factors come back with the optimizer and scheduler state, so nothing is
  recomputed and the run continues bit for bit.
* ``on_optimizer_step`` (after ``optimizer.step()``, before ``scheduler.step()``): every ``interval``
  optimizer steps, recompute. Between updates the factors are held.

Results go to the Trainer's logs (``tb/alpha/<unit>``, ``tb/lr_scale/<unit>``, ``tb/skipped_units``,
``tb/spectral_seconds``: TensorBoard, W&B and ``trainer_state.json`` get them) and, on the main process,
to ``<output_dir>/tempbalance/history.jsonl``, one JSON line per update.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging

from .balancing import apply_factors, compute_factors, unit_metrics
from .config import TempBalanceArguments
from .distributed import check_supported, deepspeed_config_sections, spectral_pass
from .layers import Partition, build_param_groups, full_shape, partition_model

logger = logging.get_logger(__name__)

__all__ = ["TempBalanceCallback", "create_tempbalance_optimizer", "tempbalance_param_groups"]

HISTORY_FILE = os.path.join("tempbalance", "history.jsonl")

DEEPSPEED_OPTIMIZER_MESSAGE = (
    "TempBalance cannot run with a DeepSpeed config that defines its own 'optimizer' (or 'scheduler'): DeepSpeed "
    "then builds the optimizer itself, with no per-block param groups (and its schedulers give every group the same "
    "learning rate), so training would run without balancing. Remove the 'optimizer' and 'scheduler' sections from "
    "the DeepSpeed config and set them through the TrainingArguments (optim, learning_rate, weight_decay, "
    "lr_scheduler_type, warmup_steps): the Trainer then creates TempBalance's optimizer and schedule and DeepSpeed "
    "wraps them."
)


def _tb_arguments(args: TrainingArguments | None, tb_args: TempBalanceArguments | None) -> TempBalanceArguments:
    """Explicit TempBalance options, else those of a `TempBalanceConfig`, else the defaults."""
    if tb_args is not None:
        return tb_args
    if isinstance(args, TempBalanceArguments):
        return args.tempbalance_arguments()
    return TempBalanceArguments()


def tempbalance_param_groups(
    model: torch.nn.Module,
    args: TrainingArguments,
    tb_args: TempBalanceArguments | None = None,
    *,
    decay_parameter_names: list[str] | None = None,
) -> list[dict]:
    """Optimizer param groups for TempBalance: per unit a decay and a no-decay group, unscaled group first."""
    tb = _tb_arguments(args, tb_args)
    check_supported(model)  # FSDP1's flat shards hide the blocks: say so instead of "no blocks found"
    if decay_parameter_names is None:
        # The Trainer's own no-decay rule (biases, LayerNorm/RMSNorm, *norm* names); it does not use `self`.
        decay_parameter_names = Trainer.get_decay_parameter_names(None, model)
    return build_param_groups(
        model,
        partition_model(model, tb.tb_unit),
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        decay_parameter_names=decay_parameter_names,
    )


def optimizer_from_groups(
    groups: list[dict], args: TrainingArguments, model: torch.nn.Module, optimizer_cls_and_kwargs=None
):
    """Instantiate the optimizer that ``args.optim`` names over TempBalance's param groups."""
    from transformers.trainer_optimizer import is_optimizer_factory

    cls, kwargs = optimizer_cls_and_kwargs or Trainer.get_optimizer_cls_and_kwargs(args, model)
    if is_optimizer_factory(cls) or "params" in kwargs or "model" in kwargs:
        raise ValueError(
            f"optim={args.optim!r} builds its own parameter groups, so TempBalance cannot give each block its own "
            "learning rate with it. Choose an optimizer that takes param groups (e.g. adamw_torch_fused, adamw_torch, "
            "sgd, adafactor)."
        )
    return cls(groups, **kwargs)


def create_tempbalance_optimizer(
    model: torch.nn.Module, args: TrainingArguments, tb_args: TempBalanceArguments | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``args.optim`` names, over TempBalance's per-unit param groups.

    For a plain `transformers.Trainer` with `TempBalanceCallback`; pass it as ``optimizers=(optimizer, None)``
    so the Trainer still builds its usual scheduler around it (not allowed with FSDP or ``model_init``: use
    `tb_hf.TempBalanceTrainer` there).
    """
    return optimizer_from_groups(tempbalance_param_groups(model, args, tb_args), args, model)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


class TempBalanceCallback(TrainerCallback):
    """Layer-wise learning-rate balancing from weight spectra, for any `transformers.Trainer`.

    The optimizer must hold TempBalance's param groups: `tb_hf.TempBalanceTrainer` builds them itself; with a
    plain Trainer pass ``optimizers=(create_tempbalance_optimizer(model, args), None)``.

    Args:
        tb_args: TempBalance options. If None, the ``tb_*`` fields of the Trainer's args are used when they
            are a `tb_hf.TempBalanceConfig`, else the defaults.
        **options: Individual options without the ``tb_`` prefix (``mapping="sigmoid"``, ``update_steps=10``),
            applied on top of ``tb_args``/the defaults.

    Example:
        ```python
        from transformers import Trainer, TrainingArguments
        from tb_hf import TempBalanceCallback, create_tempbalance_optimizer

        args = TrainingArguments(output_dir="out", learning_rate=2e-5, warmup_steps=0.06)
        optimizer = create_tempbalance_optimizer(model, args)
        trainer = Trainer(model=model, args=args, train_dataset=train, optimizers=(optimizer, None),
                          callbacks=[TempBalanceCallback(mapping="linear", update_steps="auto")])
        trainer.train()
        ```
    """

    def __init__(self, tb_args: TempBalanceArguments | None = None, **options):
        unknown = [k for k in options if f"tb_{k}" not in TempBalanceArguments.__dataclass_fields__]
        if unknown:
            valid = [name.removeprefix("tb_") for name in TempBalanceArguments.__dataclass_fields__]
            raise TypeError(f"unknown TempBalance options {unknown}; valid: {valid}")
        if options:  # validated now, not at the first training step
            base = vars(tb_args) if tb_args is not None else {}
            tb_args = TempBalanceArguments(**{**base, **{f"tb_{k}": v for k, v in options.items()}})
        self.user_tb_args = tb_args
        # Internal state, set in on_train_begin.
        self.tb: TempBalanceArguments | None = None
        self.partition: Partition | None = None
        self.interval: int | None = None
        self.steps_per_epoch: int | None = None
        self.unit_weights: dict[str, float] = {}
        self.factors: dict[str, float] = {}
        self._pending_logs: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------
    # Events

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.tb = _tb_arguments(args, self.user_tb_args)
        check_supported(model)
        self.partition = partition_model(model, self.tb.tb_unit)
        self._check_optimizer(optimizer, args)
        params = dict(model.named_parameters())
        self.unit_weights = {
            u.name: float(sum(math.prod(full_shape(params[p])) for p in u.params)) for u in self.partition.units
        }  # full sizes, also under ZeRO-3
        self.steps_per_epoch = self._steps_per_epoch(args, state, kwargs.get("train_dataloader"))
        self.interval = self.tb.update_interval(self.steps_per_epoch)
        logger.info(
            f"TempBalance: {len(self.partition.units)} {self.tb.tb_unit} units, alpha recomputed every "
            f"{self.interval} optimizer steps ({self.tb.tb_xmin_method} xmin, {self.tb.tb_estimator} ESD, "
            f"{self.tb.tb_mapping} map)."
        )
        if state.is_world_process_zero:
            self._trim_history(args.output_dir, state.global_step)
        if state.global_step == 0:
            self.update(model, optimizer, lr_scheduler, args, state)
        else:  # resumed: the factors were restored with the optimizer's param groups
            self.factors = {g["tb_unit"]: g["tb_factor"] for g in optimizer.param_groups if g.get("tb_unit")}

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        done = state.global_step + 1  # optimizer steps completed, this one included
        if done % self.interval == 0 and done < state.max_steps:
            self.update(model, optimizer, lr_scheduler, args, state, step=done)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # `TempBalanceTrainer.log` merges the pending values before the integrations see them. With a plain
        # Trainer they arrive here, after the integrations: keep them at least in logs and log_history.
        pending = self.pop_pending_logs()
        if pending and logs is not None:
            logs.update(pending)
            if state.log_history:
                state.log_history[-1].update(pending)

    # ------------------------------------------------------------------------------------------------
    # The update

    def update(self, model, optimizer, lr_scheduler, args, state, step: int = 0) -> dict[str, float]:
        """One spectral pass and the new factors, applied to ``optimizer``/``lr_scheduler``. Never raises
        because of a fit: units that could not be fitted keep factor 1 and a warning names them."""
        start = time.perf_counter()
        units = self.partition.units
        try:
            # Shared between the ranks of a distributed job (every rank gets every result); alone, a plain pass.
            spectra = spectral_pass(
                model, self.partition, lora_view=self.tb.tb_lora_view, **self.tb.spectral_options()
            )
            metrics = unit_metrics(spectra, units, metric=self.tb.tb_metric)
        except Exception as err:  # noqa: BLE001 - a failed pass must never stop training
            logger.warning(f"TempBalance: spectral pass failed at step {step} ({err!r}); every unit keeps factor 1.")
            spectra, metrics = {}, {u.name: math.nan for u in units}
        factors = compute_factors(metrics, weights=self.unit_weights, **self.tb.factor_options())
        apply_factors(optimizer, lr_scheduler, factors)
        self.factors = factors
        seconds = time.perf_counter() - start

        skipped = [name for name, value in metrics.items() if not math.isfinite(value)]
        if skipped:
            why = {
                unit.name: sorted({s.status for key, s in spectra.items() if key.split("[")[0] in unit.matrices})
                for unit in units
                if unit.name in skipped
            }
            logger.warning(f"TempBalance: step {step}: {len(skipped)} unit(s) not fitted keep factor 1: {why}")
        self._pending_logs = {
            "tb/spectral_seconds": seconds,
            "tb/skipped_units": float(len(skipped)),
            **{f"tb/alpha/{name}": value for name, value in metrics.items()},
            **{f"tb/lr_scale/{name}": value for name, value in factors.items()},
        }
        if state.is_world_process_zero:
            epoch = step / self.steps_per_epoch if self.steps_per_epoch else (state.epoch or 0.0)
            self._append_history(args.output_dir, step, epoch, seconds, metrics, factors, skipped)
        return factors

    def pop_pending_logs(self) -> dict[str, float]:
        pending, self._pending_logs = self._pending_logs, {}
        return pending

    # ------------------------------------------------------------------------------------------------
    # Helpers

    @staticmethod
    def _check_optimizer(optimizer, args=None) -> None:
        if deepspeed_config_sections(args) & {"optimizer", "scheduler"}:
            raise ValueError(DEEPSPEED_OPTIMIZER_MESSAGE)
        if optimizer is None or not any("tb_unit" in group for group in optimizer.param_groups):
            raise ValueError(
                "TempBalanceCallback needs an optimizer with TempBalance's per-unit param groups, and this one has "
                "none. Either use tb_hf.TempBalanceTrainer instead of Trainer, or build the optimizer with "
                "tb_hf.create_tempbalance_optimizer(model, args) and pass Trainer(..., optimizers=(optimizer, None))."
            )

    @staticmethod
    def _steps_per_epoch(args, state, train_dataloader) -> int | None:
        try:
            return math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        except TypeError:  # no dataloader, or an iterable one without a length
            epochs = state.num_train_epochs or 1
            return state.max_steps // epochs if state.max_steps else None

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
    def _append_history(output_dir, step, epoch, seconds, metrics: Mapping, factors: Mapping, skipped) -> None:
        if output_dir is None:
            return
        path = os.path.join(output_dir, HISTORY_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {
            "step": step,
            "epoch": epoch,  # at the moment of the update (the Trainer's state.epoch lags one step here)
            "spectral_seconds": seconds,
            "skipped": skipped,
            "alpha": {k: _finite_or_none(v) for k, v in metrics.items()},
            "factor": dict(factors),
        }
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
