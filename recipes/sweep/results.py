"""A sweep's finished runs as tables: one row per run (``results.csv``) and one per (TempBalance run, block) for the
α table (``alpha.csv``), read from each run's ``result.json`` and ``tempbalance/history.jsonl``, in its folder or in
the sweep's archive (``runs.jsonl.xz``, see `recipes.sweep.archive`)."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

from tb_hf.history import read_history

from . import archive, provenance
from .grid import RESULT_FILE, SIZES, Run

logger = logging.getLogger("recipes.sweep")
_SKIPPED: set[str] = set()  # result files already named as unreadable in this process (one warning each)

#: The columns that identify a cell of the grid: runs of one cell differ only in method and seed.
CELL = ["model", "task", "size_key", "size", "lora"]


def _model_label(rec: dict) -> str:
    """The model of a run record, as its folder or Hub name (``~/.cache/tb_hf/mpnet-base`` -> ``mpnet-base``)."""
    args = rec.get("args")
    if not isinstance(args, dict):
        return ""  # records written before the arguments were stored
    name = str(args.get("model_name_or_path") or "minilm")  # run_glue's default
    return Path(os.path.expanduser(name.rstrip("/"))).name or name


def read_record(path: Path) -> dict | None:
    """A run's ``result.json`` record, or None if it is missing, half-written or damaged (not a JSON object with
    ``results``): such a run is to do, and a normal run of the sweep runs it again."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("results"), dict) else None


def _records(output_dir: str | Path, runs: list[Run] | None):
    """(name, record, history) of every finished run under ``output_dir``, loose (``runs/<name>/result.json``) or
    archived (``runs.jsonl.xz``; a loose record of a run takes precedence), in the order of their run folders;
    ``history()`` reads the run's history records. With ``runs``, only theirs, made with their settings and data (a
    record written for other settings or data, one that stores no settings, or one for a run the config no longer
    has, is left out). A loose result file that cannot be read is skipped with a warning."""
    root = Path(output_dir)
    wanted = None if runs is None else {run.name: run for run in runs}
    found = {}  # the path a loose result.json of the run has or would have -> (name, record, history)
    for path in root.glob(f"runs/**/{RESULT_FILE}"):
        rec = read_record(path)
        if rec is not None:
            history = functools.partial(_loose_history, path.parent)
            found[path] = (path.parent.relative_to(root / "runs").as_posix(), rec, history)
    for name in archive.load(root):
        path = root / "runs" / name / RESULT_FILE
        rec = None if path in found else archive.record(root, name)
        if rec is not None:
            found[path] = (name, rec, functools.partial(archive.history, root, name))
    for path in sorted(root.glob(f"runs/**/{RESULT_FILE}")):
        if path not in found and str(path) not in _SKIPPED:
            _SKIPPED.add(str(path))
            logger.warning(
                f"sweep: skipped {path}: not a complete result record (half-written or damaged). A run of the "
                "sweep without --aggregate-only runs it again."
            )
    for path in sorted(found):
        name, rec, history = found[path]
        if wanted is not None:
            run = wanted.get(name)
            if run is None or provenance.changes(run, rec):
                continue
        yield name, rec, history


def _loose_history(folder: Path) -> list[dict]:
    return read_history(folder, missing_ok=True) if (folder / "tempbalance").is_dir() else []


def collect(output_dir: str | Path, runs: list[Run] | None = None):
    """One row per finished run (``runs/**/result.json`` or archived) as a pandas DataFrame (scores in metric units).

    The model is its folder or Hub name; the size of the training subset is ``size_key`` (``fraction``,
    ``shots_per_class`` or ``max_train_samples``) and ``size``; ``lora`` says whether LoRA adapters were trained;
    ``n_train`` and ``n_eval`` are the numbers of training and evaluation examples, ``eval_split`` says what was
    evaluated (``validation``, or ``train_holdout`` with run_glue's --eval_on_train_holdout), ``epoch_scores`` lists
    every evaluation's score, space-separated, and ``tb_interval`` is the recompute interval TempBalance used
    (decided at step 3 under ``tb_update_steps=auto``: replay it with ``tb_auto_interval``).

    Args:
        runs: Only these runs of the grid, and only where the stored result was made with their settings.
    """
    import pandas as pd

    rows = []
    for _, rec, _ in _records(output_dir, runs):
        res = rec["results"]
        main = res["main_metric"]
        size_key = rec.get("size_key", "fraction")  # records written before other sizes existed
        args = rec.get("args") if isinstance(rec.get("args"), dict) else {}
        rows.append(
            {
                "model": _model_label(rec),
                "task": rec["task"],
                "size_key": size_key,
                "size": rec.get("size", rec.get("fraction")),
                "lora": bool(rec.get("lora", False)),
                "method": rec["method"],
                "seed": rec["seed"],
                "metric": main,
                "n_train": res.get("train_samples"),
                "n_eval": res.get("eval_samples"),
                "best": res[f"best_eval_{main}"],
                "final": res[f"eval_{main}"],
                "best_epoch": res.get("best_epoch"),
                "run_seconds": rec.get("run_seconds"),
                "learning_rate": args.get("learning_rate"),
                "eval_split": res.get("eval_split", "validation"),
                "tb_interval": res.get("tb_update_interval"),
                "epoch_scores": " ".join(f"{x:.6g}" for x in res.get("epoch_scores") or []),
            }
        )
    columns = ["model", "task", "size_key", "size", "lora", "method", "seed", "metric", "n_train", "n_eval"]
    columns += ["best", "final", "best_epoch", "run_seconds", "learning_rate", "eval_split", "tb_interval"]
    frame = pd.DataFrame(rows, columns=[*columns, "epoch_scores"])
    frame = frame.sort_values(["model", "task", "size_key", "size", "lora", "method", "seed"], ignore_index=True)
    frame["lora"] = frame["lora"].astype(bool)
    for col in ("best_epoch", "n_train", "n_eval", "tb_interval"):
        values = pd.to_numeric(frame[col], errors="coerce")
        if (values.dropna() % 1 == 0).all():
            frame[col] = values.astype("Int64")  # 2, not 2.0 (blank where unknown)
    return frame


def named_sizes(frame):
    """For the CSV files: the size in a column named for what it is (``fraction``, ``shots_per_class``,
    ``max_train_samples``; several columns if the tasks of a sweep are sized differently)."""
    frame = frame.copy()
    keys = [k for k in SIZES if k in set(frame["size_key"])]
    at = list(frame.columns).index("size_key")
    for i, key in enumerate(keys):
        values = frame["size"].where(frame["size_key"] == key)
        frame.insert(at + i, key, values if key == "fraction" else values.astype("Int64"))
    return frame.drop(columns=["size_key", "size"])


def _number(value) -> float:
    """A history value as a float: None (a non-finite value, or one not recorded) is NaN."""
    return float("nan") if value is None else float(value)


def collect_alpha(output_dir: str | Path, runs: list[Run] | None = None):
    """One row per (finished TempBalance run, block) from ``<run>/tempbalance/history.jsonl``: α, its standard error
    from the fits (NaN in histories written before it was recorded) and the factor at step 0, α at the last update,
    and the number of updates. Empty when no run has a history."""
    import pandas as pd

    rows = []
    for _, rec, history in _records(output_dir, runs):
        records = history()
        if not records or records[0]["step"] != 0:
            continue
        first, last = records[0], records[-1]
        for block, alpha0 in first["alpha"].items():
            rows.append(
                {
                    "model": _model_label(rec),
                    "task": rec["task"],
                    "size_key": rec.get("size_key", "fraction"),
                    "size": rec.get("size", rec.get("fraction")),
                    "lora": bool(rec.get("lora", False)),
                    "method": rec["method"],
                    "seed": rec["seed"],
                    "block": block,
                    "alpha_step0": alpha0,
                    "alpha_se_step0": _number((first.get("alpha_se") or {}).get(block)),
                    "factor_step0": first["factor"].get(block),
                    "alpha_last": last["alpha"].get(block),
                    "last_step": last["step"],
                    "n_updates": len(records),
                }
            )
    columns = [*CELL, "method", "seed", "block", "alpha_step0", "alpha_se_step0"]
    return pd.DataFrame(rows, columns=[*columns, "factor_step0", "alpha_last", "last_step", "n_updates"])
