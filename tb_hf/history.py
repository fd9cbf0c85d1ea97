"""``<output_dir>/tempbalance/history.jsonl``: one JSON line per spectral update, its one reader and writer.

Each record holds the optimizer ``step`` of the update, the ``epoch``, the pass's ``spectral_seconds``, the units
that were ``skipped`` (not fitted: factor 1), and per unit its ``alpha`` (null where it is not finite), its
``alpha_se`` (the fits' standard error), its α ``factor`` and its ``lr_scale`` (the unit's learning rate relative to
the run's: the depth profile times the factor); an asynchronous pass also has its ``snapshot_step``, a pass that
balances weight decay its ``wd_factor``, and the first record of a run (or of a resumed stretch) the ``options`` in
force, resolved.
The training callback writes it (main process only), ``tb-hf plot-history`` and the sweeps read it.

A record is written as one line, flushed and synced before the next step, so a crash leaves at most its last line
torn; `read_history` drops such a torn last line with a warning (what ``kill -9`` in the middle of a write leaves),
and resuming rewrites the file atomically (`trim_history`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "HISTORY_FILE",
    "append_history",
    "history_path",
    "history_record",
    "read_history",
    "trim_history",
    "update_logs",
    "update_record",
]

HISTORY_FILE = os.path.join("tempbalance", "history.jsonl")


def history_path(path: str | os.PathLike) -> str:
    """The history file of a training output folder, or ``path`` itself if it is not a folder."""
    path = os.fspath(path)
    return os.path.join(path, HISTORY_FILE) if os.path.isdir(path) else path


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def history_record(
    step: int,
    epoch: float,
    seconds: float,
    metrics: Mapping[str, float],
    factors: Mapping[str, float],
    skipped: Sequence[str],
    *,
    alpha_se: Mapping[str, float] | None = None,
    snapshot_step: int | None = None,
    extra: Mapping | None = None,
) -> dict:
    """One update as a history record (non-finite α and standard errors become null)."""
    return {
        "step": step,
        "epoch": epoch,  # at the moment of the update (the Trainer's state.epoch lags one step here)
        "spectral_seconds": seconds,
        **({"snapshot_step": snapshot_step} if snapshot_step is not None else {}),
        "skipped": list(skipped),
        "alpha": {k: _finite_or_none(v) for k, v in metrics.items()},
        "factor": dict(factors),
        # standard error of each unit's α from the fits: how well α is known (seeds do not vary it at step 0)
        "alpha_se": {k: _finite_or_none(v) for k, v in (alpha_se or {}).items()},
        **dict(extra or {}),
    }


def update_logs(update, lr_ratios: Mapping[str, float]) -> dict[str, float]:
    """The Trainer log values of a `tb_hf.balancer.Update`: ``tb/alpha/<unit>``, ``tb/lr_scale/<unit>`` (the unit's
    learning rate relative to the run's: depth profile × factor), ``tb/wd_scale/<unit>``, ``tb/skipped_units`` and
    ``tb/spectral_seconds``."""
    outcome = update.outcome
    return {
        "tb/spectral_seconds": update.seconds,
        "tb/skipped_units": float(len(outcome.skipped)),
        **{f"tb/alpha/{name}": value for name, value in update.metrics.items()},
        **{f"tb/lr_scale/{name}": lr_ratios.get(name, 1.0) * value for name, value in outcome.factors.items()},
        **{f"tb/wd_scale/{name}": value for name, value in outcome.wd_factors.items()},
    }


def update_record(update, epoch: float, lr_ratios: Mapping[str, float], options: Mapping | None = None) -> dict:
    """The history record of a `tb_hf.balancer.Update` (``options``: the resolved options, for the first record)."""
    outcome = update.outcome
    extra = {"lr_scale": {name: lr_ratios.get(name, 1.0) * value for name, value in outcome.factors.items()}}
    if outcome.wd_factors:
        extra["wd_factor"] = outcome.wd_factors
    if options is not None:
        extra["options"] = dict(options)
    return history_record(update.step, epoch, update.seconds, update.metrics, outcome.factors, outcome.skipped,
                          alpha_se=update.alpha_se, snapshot_step=update.snapshot_step, extra=extra)  # fmt: skip


def append_history(output_dir: str | os.PathLike, record: Mapping) -> None:
    """Append one record to ``<output_dir>/tempbalance/history.jsonl`` as one line, flushed and synced."""
    path = os.path.join(os.fspath(output_dir), HISTORY_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:  # one write() call in practice: a crash leaves the line whole or absent
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(path: str | os.PathLike, *, missing_ok: bool = False) -> list[dict]:
    """The records of a ``history.jsonl`` (a file, or a training output folder holding
    ``tempbalance/history.jsonl``), sorted by step.

    A torn last line (a write cut short by a crash) is dropped with a warning naming the file; anything else that
    is not a record is an error.

    Args:
        missing_ok: Return ``[]`` for a missing or empty file instead of raising.

    Raises:
        FileNotFoundError: If there is no history file (unless ``missing_ok``).
        ValueError: If it holds no records (unless ``missing_ok``) or a line other than the last is not a
            TempBalance record.
    """
    path = history_path(path)
    if not os.path.isfile(path):
        if missing_ok:
            return []
        raise FileNotFoundError(
            f"No TempBalance history at {path}: it is written to <output_dir>/tempbalance/history.jsonl by a "
            "training run with TempBalanceTrainer or TempBalanceCallback."
        )
    with open(path) as f:
        lines = f.read().split("\n")  # the last item is "" when the file ends with a newline, as records do
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # the last line, without its newline: a write cut short
                logger.warning(f"TempBalance: {path}, line {number} is cut short (a crash mid-write?): dropped.")
                break
            raise ValueError(f"{path}, line {number}: not JSON ({err})") from err
        if not isinstance(record, dict) or "step" not in record or "alpha" not in record:
            raise ValueError(f"{path}, line {number}: not a TempBalance record (needs 'step' and 'alpha')")
        records.append(record)
    if not records and not missing_ok:
        raise ValueError(f"{path} holds no records yet")
    return sorted(records, key=lambda r: r["step"])


def trim_history(output_dir: str | os.PathLike | None, keep_through: int | None) -> None:
    """Start a fresh history (``keep_through`` None), or on resume keep only the records up to step
    ``keep_through`` (the checkpoint's step). The file is rewritten atomically (a torn last line is dropped, see
    `read_history`)."""
    if output_dir is None:
        return
    path = os.path.join(os.fspath(output_dir), HISTORY_FILE)
    if not os.path.exists(path):
        return
    records = [] if keep_through is None else read_history(path, missing_ok=True)
    kept = [r for r in records if r["step"] <= keep_through]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
