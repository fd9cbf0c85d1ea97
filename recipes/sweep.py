"""Sweeps over tasks × training-set sizes × seeds × methods (× LoRA on/off) with recipes/glue/run_glue.py.

One YAML file describes the grid (see recipes/sweeps/*.yaml; each starts with the command that runs it). A task
is a GLUE task or ``rotten_tomatoes`` by name, or your own files (a task entry with ``train_file``,
``validation_file``, ``text_columns`` and ``label_column``); its training-set sizes are ``fractions``,
``shots_per_class`` or ``max_train_samples`` (a list, per task or at the top level). Every run gets its own folder
``<output_dir>/runs/<task>/<size>/<method>[-lora]/seed<s>/`` (``<size>``: ``frac0.01``, ``shots16`` or ``n500``)
holding the recipe's outputs and ``result.json``, written only when the run succeeded. The config and every run's
arguments are checked before the first run. Re-running the sweep skips runs that have ``result.json`` and retries
the others (a failed run leaves ``error.txt``). Then the results are aggregated:

* ``<output_dir>/results.csv``: one row per run (the size, ``n_train``, ``n_eval``, best- and final-epoch scores,
  best epoch, wall time);
* ``<output_dir>/summary.csv`` and ``summary.md``: best- and final-epoch scores, mean ± std over seeds per task,
  size and method, and each method's difference to the baseline with a paired t-test over seeds
  (``scipy.stats.ttest_rel``);
* ``<output_dir>/scores.png``: the metric at each training-set size, one panel per task, one line per method.

Usage:

```bash
python recipes/sweep.py recipes/sweeps/default.yaml              # the built-in default (bash scripts/run.sh)
python recipes/sweep.py recipes/sweeps/minilm_glue_small.yaml    # MiniLM on five GLUE tasks, local files
python recipes/sweep.py recipes/sweeps/roberta_glue.yaml         # roberta-base with the Hub, the paper's grid
python recipes/sweep.py recipes/sweeps/default.yaml --aggregate-only
python recipes/sweep.py recipes/sweeps/default.yaml --dry-run    # list the runs and whether they are done
python recipes/sweep.py recipes/sweeps/default.yaml --workers 2  # 2 single-threaded processes, then aggregate
python recipes/sweep.py recipes/sweeps/default.yaml --shard 1/4  # the first quarter of the grid (e.g. per machine)
```

Runs go in-process by default (``launcher: inprocess``, no start-up cost per run); ``launcher: python`` starts
each in its own process and ``launcher: accelerate launch --num_processes 2 --multi_gpu`` under accelerate.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

RECIPE = Path(__file__).resolve().parent / "glue" / "run_glue.py"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Size:
    """One way to size the training subset: the YAML key listing the sizes, run_glue's flag, the results column
    and the run folder prefix."""

    yaml_key: str
    flag: str
    column: str
    folder: str
    label: str  # in tables and plots


SIZES = {
    size.column: size
    for size in (
        Size("fractions", "train_fraction", "fraction", "frac", "fraction"),
        Size("shots_per_class", "shots_per_class", "shots_per_class", "shots", "shots per class"),
        Size("max_train_samples", "max_train_samples", "max_train_samples", "n", "max train samples"),
    )
}
CONFIG_KEYS = (
    "output_dir", "launcher", "tasks", "seeds", "methods", "baseline", "lora", "lora_args", "args", "method_args",
    *(size.yaml_key for size in SIZES.values()),
)  # fmt: skip


@dataclass(frozen=True)
class Run:
    task: str
    size_key: str  # "fraction", "shots_per_class" or "max_train_samples" (a key of SIZES)
    size: float | int
    method: str
    lora: bool
    seed: int
    args: dict  # run_glue arguments

    @property
    def name(self) -> str:
        size = f"{SIZES[self.size_key].folder}{self.size:g}"
        return f"{self.task}/{size}/{self.method}{'-lora' if self.lora else ''}/seed{self.seed}"

    @property
    def fraction(self) -> float | None:
        return self.size if self.size_key == "fraction" else None

    def __hash__(self):
        return hash(self.name)


def load_config(path: str | Path) -> dict:
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the sweep config {path}: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a sweep config is a mapping (see recipes/sweeps/default.yaml for the layout).")
    missing = [k for k in ("output_dir", "tasks", "seeds", "methods") if k not in config]
    if missing:
        raise ValueError(f"{path}: missing keys {missing} (see recipes/sweeps/default.yaml for the layout).")
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a sweep config has {list(CONFIG_KEYS)}.")
    return config


def _sizes(task: str, task_cfg: dict, config: dict) -> tuple[Size, list]:
    """The task's sizes (taken out of its entry) or else the top-level ones, checked."""
    names = [size.yaml_key for size in SIZES.values()]
    local = [k for k in names if k in task_cfg]
    given, source = (local, task_cfg) if local else ([k for k in names if config.get(k) is not None], config)
    if len(given) != 1:
        raise ValueError(
            f"Task {task!r}: give exactly one of {names} (in the task or at the top level), got {given or 'none'}."
        )
    size = next(s for s in SIZES.values() if s.yaml_key == given[0])
    values = source[given[0]]
    task_cfg.pop(given[0], None)
    values = values if isinstance(values, list) else [values]
    if size.column == "fraction":
        ok = [isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1 for v in values]
        need = "numbers in (0, 1] (0.01 = 1% of the training set)"
    else:
        ok = [isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values]
        need = "whole numbers >= 1"
    if not values or not all(ok):
        raise ValueError(f"Task {task!r}: {size.yaml_key} must be a list of {need}, got {values}.")
    return size, values


def expand_grid(config: dict) -> list[Run]:
    """The runs of a sweep config, in order task, size, seed, method, lora.

    A task is a GLUE task or ``rotten_tomatoes`` by name, or any name with ``train_file``, ``validation_file``,
    ``text_columns`` (and ``label_column``) in its entry: a custom task. Its sizes are one of ``fractions``,
    ``shots_per_class`` or ``max_train_samples`` (a list, in the task or at the top level).
    """
    out_root = Path(config["output_dir"])
    tasks = config["tasks"]
    if isinstance(tasks, list):
        tasks = {t: {} for t in tasks}
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError("'tasks' must list task names, or map each task name to its settings.")
    seeds, loras = config["seeds"], config.get("lora", [False])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
    ):
        raise ValueError(f"'seeds' must be a list of whole numbers, e.g. [13, 37, 43], got {seeds!r}.")
    if not isinstance(loras, list) or not loras or not all(isinstance(x, bool) for x in loras):
        raise ValueError(f"'lora' must be a list of true/false, e.g. [false, true], got {loras!r}.")
    for key in ("args", "method_args", "lora_args"):
        if not isinstance(config.get(key) or {}, dict):
            raise ValueError(f"'{key}' must map names to values, got {config[key]!r}.")
    runs = []
    for task, task_cfg in tasks.items():
        if not isinstance(task_cfg or {}, dict):
            raise ValueError(f"Task {task!r}: its entry must map settings to values, e.g. {{fractions: [0.1]}}.")
        task_cfg = dict(task_cfg or {})
        size, values = _sizes(task, task_cfg, config)
        custom = "train_file" in task_cfg or "train_file" in (config.get("args") or {})
        for value, seed, method, lora in itertools.product(values, seeds, config["methods"], loras):
            args = ({} if custom else {"task_name": task}) | dict(config.get("args") or {}) | task_cfg
            args |= dict((config.get("method_args") or {}).get(method) or {})
            if lora:
                args |= dict(config.get("lora_args") or {"lora_r": 8, "lora_alpha": 16})
            args |= {s.flag: None for s in SIZES.values()}  # the sweep's size is the only one
            args |= {size.flag: value, "method": method, "seed": seed}
            value = float(value) if size.column == "fraction" else int(value)
            run = Run(task, size.column, value, method, bool(lora), int(seed), args)
            run.args["output_dir"] = str(out_root / "runs" / run.name)
            runs.append(run)
    return runs


def _recipe():
    """recipes/glue/run_glue.py as a module (imported on first use)."""
    if str(RECIPE.parent) not in sys.path:
        sys.path.insert(0, str(RECIPE.parent))
    import run_glue

    return run_glue


def validate(config: dict, runs: list[Run]) -> None:
    """Refuse a config that cannot run, before the first run: unknown methods, ``method_args`` for a method
    that is not swept, a baseline that is not swept, and any run whose arguments run_glue's parser rejects
    (parsed exactly as the run will be, without loading data or a model). Raises ValueError saying what to fix."""
    run_glue = _recipe()
    methods = config["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"'methods' must be a list of {list(run_glue.METHODS)}, got {methods!r}.")
    unknown = [m for m in methods if m not in run_glue.METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are unknown; run_glue's methods are {list(run_glue.METHODS)}.")
    extra = [m for m in (config.get("method_args") or {}) if m not in methods]
    if extra:
        raise ValueError(f"method_args has {extra}, which are not among the methods {methods}: fix or drop them.")
    baseline = config.get("baseline", "ft")
    if baseline not in methods:
        raise ValueError(f"baseline {baseline!r} is not among the methods {methods}.")
    parser = run_glue.make_parser(raise_errors=True)
    problems: dict[str, list[str]] = {}
    for run in runs:
        try:
            run_glue.parse_args(run_glue.config_to_argv(run.args), parser)
        except ValueError as err:
            problems.setdefault(str(err), []).append(run.name)
    if problems:
        lines = [f"{msg} (in {len(names)} run(s), e.g. {names[0]})" for msg, names in problems.items()]
        raise ValueError("run_glue would refuse these runs' arguments:\n  " + "\n  ".join(lines[:5]))


def is_done(run: Run) -> bool:
    return (Path(run.args["output_dir"]) / RESULT_FILE).is_file()


def _run_inprocess(run: Run) -> dict:
    run_glue = _recipe()
    return run_glue.main(*run_glue.parse_args(run_glue.config_to_argv(run.args)))


_PRCTL = None


def _die_with_parent(parent: int) -> None:
    """``preexec_fn`` of the processes the sweep starts: on Linux the kernel sends them SIGTERM when the sweep
    process dies, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``), so no worker or run outlives it."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above: nobody would signal us
        os._exit(1)


def _popen_kwargs() -> dict:
    """Keyword arguments of `subprocess.Popen`/`run` for a child that dies with this process (Linux)."""
    global _PRCTL
    if not sys.platform.startswith("linux"):
        return {}
    if _PRCTL is None:  # looked up here, in the parent: the child only calls it
        import ctypes

        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    return {"preexec_fn": functools.partial(_die_with_parent, os.getpid())}


def _watch_parent(parent: int) -> None:
    """Where prctl is missing (not Linux): a worker exits once its parent is gone."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_subprocess(run: Run, launcher: str) -> dict:
    run_glue = _recipe()
    out = Path(run.args["output_dir"])
    cmd = [*shlex.split(launcher), str(RECIPE), *run_glue.config_to_argv(run.args)]
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **_popen_kwargs())
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode} (see {out / 'log.txt'}): {shlex.join(cmd)}")
    with open(out / "all_results.json") as f:
        return json.load(f)


class _Progress:
    """A tqdm bar on a terminal; plain lines (``sweep: [3/9] rte/frac0.05/ft/seed13 ok (45 s)``) when stderr
    is a file or a pipe, where a bar's escape codes would only be noise."""

    def __init__(self, total: int, label: str, position: int):
        self.total, self.label, self.done = total, label, 0
        self.bar = None
        if total and sys.stderr.isatty():
            desc = f"sweep[{position}]" if position else "sweep"
            self.bar = tqdm(total=total, desc=desc, unit="run", position=position, leave=True)

    def start(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(run.name)

    def finish(self, run: Run, note: str, seconds: float) -> None:
        self.done += 1
        if self.bar is not None:
            if note != "ok":
                tqdm.write(f"{self.label}: {run.name} {note}")
            self.bar.update()
        else:
            print(f"{self.label}: [{self.done}/{self.total}] {run.name} {note} ({seconds:.0f} s)", file=sys.stderr)
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def execute(
    runs: list[Run], launcher: str = "inprocess", *, quiet: bool = True, position: int = 0, label: str = "sweep"
) -> dict[str, int]:
    """Run what is not done yet; returns counts of ``done`` (skipped), ``ok`` and ``failed`` runs.

    A failing run (any exception, or run_glue exiting) leaves its traceback in ``error.txt`` and the others go on.
    """
    todo = [run for run in runs if not is_done(run)]
    counts = {"done": len(runs) - len(todo), "ok": 0, "failed": 0}
    if counts["done"]:
        print(f"{label}: skipped {counts['done']} finished runs, {len(todo)} to run", file=sys.stderr)
    progress = _Progress(len(todo), label, position)
    for run in todo:
        progress.start(run)
        out = Path(run.args["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").unlink(missing_ok=True)
        start = time.time()
        try:
            if launcher == "inprocess":
                with _quiet_libraries(out / "log.txt") if quiet else contextlib.nullcontext():
                    results = _run_inprocess(run)
            else:
                results = _run_subprocess(run, launcher)
        except (Exception, SystemExit):  # SystemExit: run_glue refused the run's arguments
            counts["failed"] += 1
            (out / "error.txt").write_text(traceback.format_exc())
            progress.finish(run, f"FAILED (see {out / 'error.txt'})", time.time() - start)
            continue
        record = {
            "task": run.task,
            "size_key": run.size_key,
            "size": run.size,
            "fraction": run.fraction,
            "method": run.method,
            "lora": run.lora,
            "seed": run.seed,
            "run_seconds": time.time() - start,
            "args": run.args,
            "results": results,
        }
        (out / RESULT_FILE).write_text(json.dumps(record, indent=1))
        counts["ok"] += 1
        progress.finish(run, "ok", time.time() - start)
    progress.close()
    return counts


@contextlib.contextmanager
def _quiet_libraries(log_path: Path):
    """Keep the sweep's progress bar readable: library warnings and progress bars off, printed logs to a file."""
    import datasets
    import transformers

    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    try:
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            yield
    finally:
        transformers.logging.set_verbosity(old)
        datasets.enable_progress_bars()
        transformers.logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------------
# Aggregation


def collect(output_dir: str | Path):
    """One row per finished run (``runs/**/result.json``) as a pandas DataFrame (scores in metric units).

    The size of the training subset is ``size_key`` (``fraction``, ``shots_per_class`` or ``max_train_samples``)
    and ``size``; ``n_train`` and ``n_eval`` are the numbers of training and evaluation examples.
    """
    import pandas as pd

    rows = []
    for path in sorted(Path(output_dir).glob(f"runs/**/{RESULT_FILE}")):
        rec = json.loads(path.read_text())
        res = rec["results"]
        main = res["main_metric"]
        size_key = rec.get("size_key", "fraction")  # records written before other sizes existed
        rows.append(
            {
                "task": rec["task"],
                "size_key": size_key,
                "size": rec.get("size", rec.get("fraction")),
                "method": rec["method"] + ("+lora" if rec["lora"] else ""),
                "seed": rec["seed"],
                "metric": main,
                "n_train": res.get("train_samples"),
                "n_eval": res.get("eval_samples"),
                "best": res[f"best_eval_{main}"],
                "final": res[f"eval_{main}"],
                "best_epoch": res.get("best_epoch"),
                "run_seconds": rec.get("run_seconds"),
            }
        )
    columns = ["task", "size_key", "size", "method", "seed", "metric", "n_train", "n_eval", "best", "final"]
    frame = pd.DataFrame(rows, columns=[*columns, "best_epoch", "run_seconds"])
    frame = frame.sort_values(["task", "size_key", "size", "method", "seed"], kind="stable", ignore_index=True)
    for col in ("best_epoch", "n_train", "n_eval"):
        values = pd.to_numeric(frame[col], errors="coerce")
        if (values.dropna() % 1 == 0).all():
            frame[col] = values.astype("Int64")  # 2, not 2.0 (blank where unknown)
    return frame


def _named_sizes(frame):
    """For the CSV files: the size in a column named for what it is (``fraction``, ``shots_per_class``,
    ``max_train_samples``; several columns if the tasks of a sweep are sized differently)."""
    frame = frame.copy()
    keys = [k for k in SIZES if k in set(frame["size_key"])]
    at = list(frame.columns).index("size_key")
    for i, key in enumerate(keys):
        values = frame["size"].where(frame["size_key"] == key)
        frame.insert(at + i, key, values if key == "fraction" else values.astype("Int64"))
    return frame.drop(columns=["size_key", "size"])


def _missing(value) -> bool:
    """None, NaN or pandas' NA."""
    import pandas as pd

    return bool(pd.isna(value))


def _size_text(key: str, size, mixed: bool) -> str:
    text = f"{size:g}" if key == "fraction" else str(int(size))
    return f"{text} ({SIZES[key].label})" if mixed else text


def _paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean difference a - b and the paired t-test p-value (nan with < 2 pairs or no variation)."""
    from scipy.stats import ttest_rel

    diff = float(np.mean(np.subtract(a, b)))
    if len(a) < 2 or np.allclose(np.subtract(a, b), np.subtract(a, b)[0]):
        return diff, math.nan
    return diff, float(ttest_rel(a, b).pvalue)


def summarize(results, baseline: str = "ft", score: str = "best"):
    """Per (task, size): mean ± std over seeds per method, and each method − baseline with its p-value.

    Differences are paired by seed (only seeds that both methods finished). Returns a DataFrame with one row
    per (task, size, method).
    """
    import pandas as pd

    rows = []
    for (task, size_key, size), cell in results.groupby(["task", "size_key", "size"], sort=True):
        base = cell[cell["method"] == baseline].set_index("seed")[score]
        for method, group in cell.groupby("method", sort=False):
            scores = group.set_index("seed")[score]
            row = {
                "task": task,
                "size_key": size_key,
                "size": size,
                "method": method,
                "metric": group["metric"].iloc[0],
                "n_train": group["n_train"].iloc[0],
                "n_eval": group["n_eval"].iloc[0],
                "n_seeds": len(scores),
                "mean": scores.mean(),
                "std": scores.std(ddof=1) if len(scores) > 1 else math.nan,
                "diff_vs_baseline": math.nan,
                "p_value": math.nan,
            }
            seeds = sorted(set(scores.index) & set(base.index))
            if method != baseline and seeds:
                row["diff_vs_baseline"], row["p_value"] = _paired(scores.loc[seeds].tolist(), base.loc[seeds].tolist())
            rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(summary, methods: list[str], baseline: str = "ft", scale: float = 100.0) -> str:
    """Markdown: one row per task and size, mean ± std per method, then each method − baseline (p)."""
    others = [m for m in methods if m != baseline]
    keys = list(dict.fromkeys(summary["size_key"]))
    size_head = SIZES[keys[0]].label if len(keys) == 1 else "size"
    head = ["task", size_head, "n train", "metric", *methods, *(f"{m} − {baseline} (p)" for m in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, size_key, size), cell in summary.groupby(["task", "size_key", "size"], sort=True):
        by = cell.set_index("method")
        first = cell.iloc[0]
        n_train = "?" if _missing(first["n_train"]) else str(int(first["n_train"]))
        out = [task, _size_text(size_key, size, len(keys) > 1), n_train, first["metric"]]
        for m in methods:
            if m in by.index:
                mean, std = by.loc[m, "mean"] * scale, by.loc[m, "std"] * scale
                out.append(f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}")
            else:
                out.append("–")
        for m in others:
            if m in by.index and not math.isnan(by.loc[m, "diff_vs_baseline"]):
                p = by.loc[m, "p_value"]
                out.append(f"{by.loc[m, 'diff_vs_baseline'] * scale:+.2f} ({'n/a' if math.isnan(p) else f'{p:.2f}'})")
            else:
                out.append("–")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def _tick(key: str, size, n_train) -> str:
    n = "" if _missing(n_train) else f"{int(n_train)} ex."
    if key == "fraction":
        return f"{100 * size:.3g}%" + (f"\n({n})" if n else "")
    if key == "shots_per_class":
        return f"{int(size)}/class" + (f"\n({n})" if n else "")
    return n or f"≤ {int(size)}"


_XLABELS = {
    "fraction": "training subset: % of the training set (examples)",
    "shots_per_class": "training subset: examples per class (in all)",
    "max_train_samples": "training examples",
}


def plot_scores(summary, path: str | Path, methods: list[str] | None = None, scale: float = 100.0):
    """PNG: mean score ± std over seeds at each training-set size, one panel per task, one line per method.

    The sizes are evenly spaced and labelled as what they are (% of the training set, or examples per class) with
    the number of training examples; the methods' points are shifted a little apart so their error bars do not
    overlap.
    """
    from matplotlib.figure import Figure

    tasks = sorted(summary["task"].unique())
    fig = Figure(figsize=(max(4.2, 3.8 * len(tasks)), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks), squeeze=False)[0])
    for ax, task in zip(axes, tasks, strict=True):
        cell = summary[summary["task"] == task]
        sizes = cell.drop_duplicates(["size_key", "size"]).sort_values(["size_key", "size"])
        position = {(k, v): i for i, (k, v) in enumerate(zip(sizes["size_key"], sizes["size"], strict=True))}
        present = list(dict.fromkeys(cell["method"]))
        shown = [m for m in (methods or present) if m in present]
        step = min(0.12, 0.6 / max(len(shown), 1))
        for j, method in enumerate(shown):
            group = cell[cell["method"] == method].sort_values(["size_key", "size"])
            offset = (j - (len(shown) - 1) / 2) * step
            x = [position[(k, v)] + offset for k, v in zip(group["size_key"], group["size"], strict=True)]
            ax.errorbar(
                x,
                group["mean"] * scale,
                yerr=group["std"].fillna(0) * scale,
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xticks(
            range(len(sizes)),
            [_tick(k, v, n) for k, v, n in zip(sizes["size_key"], sizes["size"], sizes["n_train"], strict=True)],
        )
        ax.set_xlim(-0.5, len(sizes) - 0.5)
        keys = set(sizes["size_key"])
        ax.set_xlabel(_XLABELS[keys.pop()] if len(keys) == 1 else "training subset")
        ax.set_title(task)
        ax.set_ylabel(f"{cell['metric'].iloc[0]} (best epoch, ×{scale:g})")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def _aggregate(config: dict) -> tuple[str, list[str]]:
    """`aggregate`, also returning the names of the files it wrote (none without finished runs)."""
    import pandas as pd

    out = Path(config["output_dir"])
    baseline = config.get("baseline", "ft")
    results = collect(out)
    if results.empty:
        return "(no finished runs yet)", []
    _named_sizes(results).to_csv(out / "results.csv", index=False)
    summaries = {score: summarize(results, baseline=baseline, score=score) for score in ("best", "final")}
    both = pd.concat([s.assign(score=k) for k, s in summaries.items()])
    _named_sizes(both).to_csv(out / "summary.csv", index=False)
    present = set(summaries["best"]["method"])
    listed = [m + suffix for suffix in ("", "+lora") for m in config["methods"]]
    methods = [m for m in dict.fromkeys([baseline, *listed, *sorted(present)]) if m in present]
    tables = {k: markdown_table(s, methods, baseline=baseline) for k, s in summaries.items()}
    note = (
        f"Scores ×100, mean ± std over seeds; '{baseline}' is the baseline, differences are paired by seed with p "
        "from scipy.stats.ttest_rel."
    )
    (out / "summary.md").write_text(
        f"Best epoch:\n\n{tables['best']}\n\nFinal epoch:\n\n{tables['final']}\n\n{note}\n"
    )
    written = ["results.csv", "summary.csv", "summary.md"]
    try:
        plot_scores(summaries["best"], out / "scores.png", methods)
        written.append("scores.png")
    except ImportError:  # matplotlib is the optional [plot] extra
        pass
    return tables["best"], written


def aggregate(config: dict) -> str:
    """Write results.csv, summary.csv, summary.md (best- and final-epoch tables) and scores.png.

    Returns the best-epoch markdown table.
    """
    return _aggregate(config)[0]


def _parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; ValueError saying so otherwise."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise ValueError(
            f"--shard takes K/N with 1 <= K <= N (part K of N: 1/2 and 2/2 split a sweep in two), got {text!r}."
        )
    return k, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="Sweep YAML file.")
    parser.add_argument("--aggregate-only", action="store_true", help="Only aggregate the finished runs.")
    parser.add_argument("--dry-run", action="store_true", help="List the runs and whether they are done.")
    parser.add_argument(
        "--launcher", help="Override the config's launcher ('inprocess', 'python', 'accelerate launch')."
    )
    parser.add_argument(
        "--shard",
        help="K/N (1 <= K <= N): run only part K of N of the grid (runs K, K+N, K+2N, ...), to spread a sweep over N "
        "processes or machines sharing the output folder; aggregate afterwards with --aggregate-only.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Run the grid in N single-threaded worker processes (shards 1/N ... N/N, OMP_NUM_THREADS=1 unless "
        "set), then aggregate. On a CPU machine N = number of cores beats one multi-threaded process. The workers "
        "stop when this process ends.",
    )
    ns = parser.parse_args(argv)
    if ns.workers < 1:
        parser.error(f"--workers must be >= 1, got {ns.workers}.")
    # Every mistake in the command or the config stops here, before the first run, with exit status 2.
    try:
        shard = _parse_shard(ns.shard) if ns.shard else None
        config = load_config(ns.config)
        runs = expand_grid(config)
        if not ns.aggregate_only and os.environ.get("TB_SWEEP_VALIDATED") != "1":  # workers: done by the parent
            validate(config, runs)
    except ValueError as err:
        parser.error(str(err))
    if ns.aggregate_only:
        _print_summary(config, runs)
        return 0
    if ns.workers > 1 and not (shard or ns.dry_run):
        return _run_workers(ns, config, runs)
    all_runs = runs
    if shard:
        runs = runs[shard[0] - 1 :: shard[1]]
    if ns.dry_run:
        for run in runs:
            print(("done  " if is_done(run) else "todo  ") + run.name)
        return 0
    if "TB_SWEEP_PARENT" in os.environ and not sys.platform.startswith("linux"):
        _watch_parent(int(os.environ["TB_SWEEP_PARENT"]))  # on Linux prctl does it (_die_with_parent)
    start = time.time()
    launcher = ns.launcher or config.get("launcher", "inprocess")
    if launcher == "python":
        launcher = sys.executable
    label = f"shard {shard[0]}/{shard[1]}" if shard else "sweep"
    counts = execute(runs, launcher, position=shard[0] - 1 if shard else 0, label=label)
    print(
        f"{label}: {len(runs)} runs: {counts['ok']} ran, {counts['done']} already done, {counts['failed']} failed "
        f"({time.time() - start:.0f} s)"
    )
    if shard:
        print("Aggregate with --aggregate-only once every shard is done.")
    else:
        _print_summary(config, all_runs)
    return 1 if counts["failed"] else 0


def _print_summary(config: dict, runs: list[Run]) -> None:
    """Aggregate, print the table, then say what was written and which runs failed or have not run."""
    out = Path(config["output_dir"])
    table, written = _aggregate(config)
    if written:
        print((out / "summary.md").read_text())
        print(f"Wrote {', '.join(written)} to {out}/ ({sum(map(is_done, runs))} of {len(runs)} runs finished).")
    else:
        print(f"No run of this sweep has finished: nothing written to {out}/.")
    failed = [r for r in runs if not is_done(r) and (Path(r.args["output_dir"]) / "error.txt").is_file()]
    if failed:
        names = ", ".join(r.name for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        print(f"{len(failed)} runs failed ({names}): the reason is in error.txt in each run's folder.")
    pending = sum(not is_done(r) for r in runs) - len(failed)
    if pending:
        print(f"{pending} runs have not run yet.")


def _run_workers(ns: argparse.Namespace, config: dict, runs: list[Run]) -> int:
    """Start ``ns.workers`` shards of this sweep as processes, wait for them, aggregate. The workers (and the runs
    they start) end with this process, even when it is killed."""
    env = dict(os.environ, TB_SWEEP_VALIDATED="1", TB_SWEEP_PARENT=str(os.getpid()))
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), ns.config]
    if ns.launcher:
        cmd += ["--launcher", ns.launcher]
    procs = [
        subprocess.Popen([*cmd, "--shard", f"{k}/{ns.workers}"], env=env, stdout=subprocess.DEVNULL, **_popen_kwargs())
        for k in range(1, ns.workers + 1)
    ]
    failed = sum(proc.wait() != 0 for proc in procs)
    print(f"{ns.workers} workers finished in {time.time() - start:.0f} s ({failed} of them had failed runs)")
    _print_summary(config, runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
