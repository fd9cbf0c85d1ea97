"""TempBalance's state in the optimizer's param groups: the one module that names its keys.

The state lives in the param groups because they are what a checkpoint saves and ``resume_from_checkpoint``
restores (``optimizer.pt``) before any callback runs; a resumed run reads it back here and continues bit for bit.

Per group (every group `tb_hf.optim` builds):

* ``tb_unit``: the unit whose factor scales the group (None: never scaled);
* ``tb_base_lr`` / ``tb_base_wd``: the group's unscaled learning rate (a depth profile included) and weight decay;
* ``tb_factor`` / ``tb_wd_factor``: the learning-rate factor and the weight-decay ratio in force;
* ``tb_pending_factor`` / ``tb_pending_wd_factor``: those of an asynchronous pass in flight, saved finished.

Run level, in group 0 (so the group order is part of the contract: `tb_hf.optim` puts the unscaled group first):

* ``tb_options``: the TempBalance options the run started with (a resume compares them with its own);
* ``tb_interval`` / ``tb_lag``: the recompute interval in force and the asynchronous lag (absent until decided);
* ``tb_pass_seconds``: the cost of the first pass (for ``tb_update_steps="auto"``);
* ``tb_pending``: an asynchronous pass in flight (its steps, metrics and timing);
* ``tb_groups``: the profile the groups were built for (``unit``, ``llrd_decay``, ``head_lr_ratio``,
  ``embeddings_lr_ratio``); checkpoints of older versions
  have ``tb_llrd_decay`` alone (absent: no depth profile).

Checkpoints written before a key existed resume with its default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PendingPass", "RunState", "check_saved_groups", "group_keys", "read_run_state", "unit_names"]

UNIT, BASE_LR, FACTOR = "tb_unit", "tb_base_lr", "tb_factor"
BASE_WD, WD_FACTOR = "tb_base_wd", "tb_wd_factor"
PENDING_FACTOR, PENDING_WD_FACTOR = "tb_pending_factor", "tb_pending_wd_factor"
OPTIONS, INTERVAL, LAG, PASS_SECONDS, PENDING, GROUPS = (
    "tb_options", "tb_interval", "tb_lag", "tb_pass_seconds", "tb_pending", "tb_groups",
)  # fmt: skip
_LEGACY_LLRD_DECAY = "tb_llrd_decay"  # group 0's depth profile before tb_groups
_RUN_KEYS = (OPTIONS, INTERVAL, PASS_SECONDS)  # one of them in group 0: the state came from TempBalance


#: Options that fixed the param groups when the optimizer was built: a resume cannot change them.
RESUME_FIXED = ("tb_unit", "tb_llrd_decay", "tb_head_lr_ratio", "tb_embeddings_lr_ratio")


def options_of(options) -> dict:
    """Every option's resolved value by its flag name (what a checkpoint records, `write_options`)."""
    return options.to_dict()


def changed_options(stored: dict | None, options) -> dict[str, tuple]:
    """The options (resolved, ``options``: `tb_hf.options.TempBalanceOptions`) that differ from those a checkpoint
    recorded: name -> (then, now). An option the checkpoint does not know counts at its default; a checkpoint that
    recorded none (older versions) changes nothing. ``tb_preset`` is no change of its own: what it set is in the
    other options."""
    from .options import DEFAULTS

    if stored is None:
        return {}
    return {
        name: (stored.get(name, DEFAULTS.get(name)), value)
        for name, value in options_of(options).items()
        if name != "tb_preset" and stored.get(name, DEFAULTS.get(name)) != value
    }


def group_keys(unit: str | None, base_lr: float) -> dict:
    """The TempBalance keys of a new param group (factors 1; ``tb_base_wd`` is set from the group's decay)."""
    return {UNIT: unit, BASE_LR: base_lr, FACTOR: 1.0}


def unit_names(optimizer) -> set[str]:
    """The units the optimizer's groups are built for (empty: not TempBalance's groups)."""
    return {g[UNIT] for g in optimizer.param_groups if g.get(UNIT) is not None}


def has_tempbalance_groups(optimizer) -> bool:
    return optimizer is not None and any(UNIT in g for g in optimizer.param_groups)


@dataclass
class PendingPass:
    """An asynchronous pass: the weights were copied after optimizer step ``snapshot_step``, and its factors take
    effect after step ``apply_step``. ``factors`` is empty while it is still being computed."""

    snapshot_step: int
    apply_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    alpha_se: dict[str, float] = field(default_factory=dict)
    factors: dict[str, float] = field(default_factory=dict)
    wd_factors: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return bool(self.factors)


@dataclass
class RunState:
    """What group 0 and the unit groups say about the run (`read_run_state`)."""

    restored: bool  # the groups hold TempBalance's run state (False: fresh groups, e.g. save_only_model=True)
    options: dict[str, Any] | None  # None: never written (a fresh start, or a checkpoint that predates it)
    interval: int | None
    decided: bool
    lag: int
    pass_seconds: float
    profile: dict[str, Any] | None  # the profile the groups were built for (None: not TempBalance's groups)
    factors: dict[str, float]
    wd_factors: dict[str, float]
    pending: PendingPass | None


def read_run_state(optimizer) -> RunState:
    groups = optimizer.param_groups
    group0 = groups[0]
    pending = None
    if group0.get(PENDING) is not None:
        stored = group0[PENDING]
        pending = PendingPass(
            snapshot_step=stored["snapshot_step"],
            apply_step=stored["apply_step"],
            metrics=dict(stored["metrics"]),
            alpha_se=dict(stored.get("alpha_se") or {}),  # absent from a checkpoint written before it was recorded
            factors={g[UNIT]: g[PENDING_FACTOR] for g in groups if PENDING_FACTOR in g},
            wd_factors={g[UNIT]: g[PENDING_WD_FACTOR] for g in groups if PENDING_WD_FACTOR in g},
            skipped=list(stored["skipped"]),
            seconds=stored["seconds"],
        )
    units = [g for g in groups if g.get(UNIT) is not None]
    return RunState(
        restored=any(key in group0 for key in _RUN_KEYS),
        options=group0.get(OPTIONS),
        interval=group0.get(INTERVAL),
        decided=INTERVAL in group0,
        lag=group0.get(LAG, 0),
        pass_seconds=group0.get(PASS_SECONDS, math.nan),
        profile=group_profile(optimizer),
        factors={g[UNIT]: g[FACTOR] for g in units},
        wd_factors={g[UNIT]: g.get(WD_FACTOR, 1.0) for g in units},
        pending=pending,
    )


def group_profile(optimizer) -> dict[str, Any] | None:
    """The profile the optimizer's groups were built for: ``{"unit": ..., "llrd_decay": ...}`` (``unit`` None when a
    checkpoint of an older version did not record it), or None for an optimizer without tb_hf's groups."""
    if not has_tempbalance_groups(optimizer):
        return None
    group0 = optimizer.param_groups[0]
    if GROUPS in group0:
        return dict(group0[GROUPS])
    return {"unit": None, "llrd_decay": group0.get(_LEGACY_LLRD_DECAY, 1.0)}


def write_options(optimizer, options: Mapping[str, Any], pass_seconds: float | None = None) -> None:
    group0 = optimizer.param_groups[0]
    group0[OPTIONS] = dict(options)
    if pass_seconds is not None:
        group0[PASS_SECONDS] = pass_seconds


def write_interval(optimizer, interval: int | None, lag: int) -> None:
    group0 = optimizer.param_groups[0]
    group0[INTERVAL], group0[LAG] = interval, lag


def forget_interval(optimizer) -> None:
    """The interval is to be decided again (a resume with other schedule options)."""
    group0 = optimizer.param_groups[0]
    group0.pop(INTERVAL, None)
    group0.pop(LAG, None)


def write_pending(optimizer, pending: PendingPass) -> None:
    """Save a finished pass in flight, so that a checkpoint taken now resumes with exactly its factors."""
    group0 = optimizer.param_groups[0]
    group0[PENDING] = {
        "snapshot_step": pending.snapshot_step,
        "apply_step": pending.apply_step,
        "metrics": dict(pending.metrics),
        "seconds": pending.seconds,
        "skipped": list(pending.skipped),
        "alpha_se": dict(pending.alpha_se),
    }
    for group in optimizer.param_groups:
        unit = group.get(UNIT)
        if unit is not None:
            group[PENDING_FACTOR] = pending.factors[unit]
            if pending.wd_factors:
                group[PENDING_WD_FACTOR] = pending.wd_factors[unit]


def clear_pending(optimizer) -> None:
    optimizer.param_groups[0].pop(PENDING, None)
    for group in optimizer.param_groups:
        group.pop(PENDING_FACTOR, None)
        group.pop(PENDING_WD_FACTOR, None)


def fixed_changes_text(changed: Mapping[str, tuple]) -> str:
    """``tb_unit='block' (now 'matrix')``: the `RESUME_FIXED` options among ``changed``, or '' if none."""
    return ", ".join(f"{name}={then!r} (now {now!r})" for name, (then, now) in changed.items() if name in RESUME_FIXED)


def restart_reason(run: RunState, options, start: int) -> str | None:
    """Why a run resumed at step ``start`` makes a fresh pass now (None: it continues as the checkpoint left it).

    Raises:
        ValueError: For a resume that changes an option which fixed the param groups (`RESUME_FIXED`).
    """
    if start == 0:
        return None
    if not run.restored:
        return (
            f"resumed at step {start} from a checkpoint without TempBalance's optimizer state (save_only_model="
            "True, or an optimizer saved without TempBalance's groups): alpha is computed again now, and the "
            "recompute interval decided again"
        )
    changed = changed_options(run.options, options)
    fixed = fixed_changes_text(changed)
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


def check_saved_groups(checkpoint: str | os.PathLike, optimizer, options=None) -> None:
    """Before ``resume_from_checkpoint`` loads ``<checkpoint>/optimizer.pt`` into ``optimizer``: a ValueError that
    names the cause when the saved groups cannot be this optimizer's (torch would only say "loaded state dict has a
    different number of parameter groups"). ``options``: the options now in force, to name a changed `RESUME_FIXED`
    option. Nothing to check without an ``optimizer.pt`` (``save_only_model``, DeepSpeed's own layout), or when it
    cannot be read (the Trainer then says what is wrong with it)."""
    import torch

    path = os.path.join(os.fspath(checkpoint), "optimizer.pt")
    if not os.path.isfile(path):
        return
    try:  # memory-mapped: the tensors of the optimizer state are not read
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["param_groups"]
    except Exception:  # noqa: BLE001 - not ours to report
        return
    now = optimizer.param_groups
    if not any(UNIT in g for g in saved):
        raise ValueError(
            f"{path} was saved by an optimizer without TempBalance's param groups (a plain Trainer's, or LLRD's), so "
            "TempBalance cannot resume it. Start a new run from its weights instead: load the checkpoint folder as "
            "the model (from_pretrained) and train without resume_from_checkpoint."
        )
    saved_units = [g.get(UNIT) for g in saved]
    now_units = [g.get(UNIT) for g in now]
    same = saved_units == now_units and all(
        len(a["params"]) == len(b["params"]) for a, b in zip(saved, now, strict=True)
    )
    fixed = fixed_changes_text(changed_options(saved[0].get(OPTIONS), options)) if options is not None else ""
    if same and not fixed:
        return
    units_then = sorted({u for u in saved_units if u is not None})
    units_now = sorted({u for u in now_units if u is not None})
    if fixed:
        cause = f"the checkpoint was written with {fixed}, options that fix the param groups"
    elif units_then != units_now:
        cause = (
            f"the units differ: {len(units_then)} then (e.g. {units_then[:1]}), {len(units_now)} now (e.g. "
            f"{units_now[:1]}); tb_unit changed, or the model is wrapped differently (peft LoRA added to a full "
            "fine-tuning checkpoint, or removed)"
        )
    else:
        cause = (
            "the same units, but other trainable parameters or groups in them (LoRA adapters added or removed, "
            "layers frozen or unfrozen, or another tb_llrd_decay since the checkpoint)"
        )
    raise ValueError(
        f"Cannot resume from {checkpoint}: its optimizer state was built for other param groups ({cause}). Resume "
        "with the checkpoint's settings, or start a new run from its weights."
    )
