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
python recipes/sweep.py recipes/sweeps/mpnet_fewshot.yaml --methods ft,tempbalance-mb --sizes 16  # part of the grid
```

A method is one of run_glue's ``--method`` choices (``ft``, ``tempbalance``, ``llrd``) or a named variant whose
``method_args`` entry says which, e.g. ``tempbalance-once: {method: tempbalance, tb_update_steps: once}`` or
``ft-lr1e-4: {method: ft, learning_rate: 1.0e-4}``; the name is the run folder's and the results' method.
``summary.md`` also pools each method − baseline per model over every (task, size, seed) pair (paired t-test and
sign count), compares other pairs of methods the same way where the config lists them (``contrasts: ["tempbalance
vs llrd"]``, also in ``contrasts.csv``) and, for TempBalance runs, compares the spread of block α at step 0 with
its run-to-run noise.

Runs go in-process by default (``launcher: inprocess``, no start-up cost per run); ``launcher: python`` starts
each in its own process and ``launcher: accelerate launch --num_processes 2 --multi_gpu`` under accelerate.

Several sweep processes may work on one grid at once (a second one started later on a free core, or machines that
share the folder): each run is claimed with a ``running.lock`` file holding its host and process id, a run another
live process holds or has finished is skipped, and a lock left by a killed process of this machine is taken over.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
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
    "output_dir", "launcher", "tasks", "seeds", "methods", "baseline", "contrasts", "lora", "lora_args", "args",
    "method_args", *(size.yaml_key for size in SIZES.values()),
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
            method_args = dict((config.get("method_args") or {}).get(method) or {})
            recipe_method = method_args.pop("method", method)  # a named variant: its run_glue --method
            args |= method_args
            if lora:
                args |= dict(config.get("lora_args") or {"lora_r": 8, "lora_alpha": 16})
            args |= {s.flag: None for s in SIZES.values()}  # the sweep's size is the only one
            args |= {size.flag: value, "method": recipe_method, "seed": seed}
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


def contrasts(config: dict) -> list[tuple[str, str]]:
    """The config's ``contrasts``: extra paired comparisons besides method − baseline, each ``"A vs B"`` (A − B,
    e.g. ``"tempbalance-mb vs llrd"``: does TempBalance beat the stronger baseline, not only plain FT?). Raises
    ValueError for anything else, or a method the sweep does not run."""
    given = config.get("contrasts") or []
    if not isinstance(given, list):
        raise ValueError(f"'contrasts' is a list of 'A vs B' (A − B, both among the methods), got {given!r}.")
    pairs = []
    for item in given:
        parts = item.split(" vs ") if isinstance(item, str) else []
        names = [x.strip() for x in parts]
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise ValueError(
                f"contrast {item!r}: write 'A vs B' with two different methods, e.g. 'tempbalance vs llrd'."
            )
        unknown = [m for m in names if m not in config["methods"]]
        if unknown:
            raise ValueError(f"contrast {item!r}: {unknown} not among the methods {config['methods']}.")
        pairs.append((names[0], names[1]))
    return pairs


def contrast_frame(results, pairs: list[tuple[str, str]], score: str = "best"):
    """Each contrast A − B paired by seed: one row per (model, task, size) where both finished, then the pooled rows
    (scope ``all``, then each size) over every (task, size, seed) pair, as `summarize` and `pooled` compute them.
    In a sweep with LoRA, A+lora − B+lora too."""
    import pandas as pd

    present = set(results["method"])
    frames = []
    # LoRA runs are named "<method>+lora": a contrast pairs the plain runs and, where there are any, the LoRA runs
    for a, b in ((a + suffix, b + suffix) for a, b in pairs for suffix in ("", "+lora")):
        if a not in present or b not in present:
            continue
        both = results[results["method"].isin([a, b])]
        cells = summarize(both, baseline=b, score=score)
        cells = cells[(cells["method"] == a) & (cells["n_pairs"] > 0)].assign(scope="cell")
        pools = pooled(both, baseline=b, score=score)
        frames += [cells.assign(contrast=f"{a} − {b}"), pools.assign(contrast=f"{a} − {b}")]
    columns = ["contrast", "model", "scope", "task", "size_key", "size", "n_pairs", "diff_vs_baseline", "p_value"]
    columns += ["wins", "losses", "ties"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def contrast_table(frame, scale: float = 100.0) -> str:
    """Markdown of `contrast_frame`: per contrast, its cells, then its pooled rows."""
    lines = ["| contrast | model | task | size | pairs | difference | p | wins:losses:ties |", "|" + "---|" * 8]
    mixed = frame["size_key"].dropna().nunique() > 1
    for _, row in frame.iterrows():
        if row["scope"] == "cell":
            task, size = row["task"], _size_text(row["size_key"], row["size"], mixed)
        else:
            task, size = "**pooled**", row["scope"]
        lines.append(
            f"| {row['contrast']} | {row['model'] or '–'} | {task} | {size} | {int(row['n_pairs'])} | "
            f"{row['diff_vs_baseline'] * scale:+.2f} | {_p_text(row['p_value'])} | "
            f"{int(row['wins'])}:{int(row['losses'])}:{int(row['ties'])} |"
        )
    return "\n".join(lines)


def validate(config: dict, runs: list[Run]) -> None:
    """Refuse a config that cannot run, before the first run: unknown methods, ``method_args`` for a method
    that is not swept, a baseline that is not swept, and any run whose arguments run_glue's parser rejects
    (parsed exactly as the run will be, without loading data or a model). Raises ValueError saying what to fix."""
    run_glue = _recipe()
    methods = config["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"'methods' must be a list of {list(run_glue.METHODS)}, got {methods!r}.")
    bad_names = [m for m in methods if not isinstance(m, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", m)]
    if bad_names:
        raise ValueError(
            f"method names {bad_names} must be single words (letters, digits, - _ . +): they name folders."
        )
    if len(set(methods)) != len(methods):
        raise ValueError(f"'methods' lists a name twice: {methods}.")
    unknown = [m for m in methods if recipe_method(config, m) not in run_glue.METHODS]
    if unknown:
        raise ValueError(
            f"methods {unknown} are unknown; run_glue's methods are {list(run_glue.METHODS)}. A named variant gives "
            f"its run_glue method in method_args, e.g. method_args: {{{unknown[0]}: {{method: tempbalance, "
            "tb_update_steps: once}}."
        )
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


def recipe_method(config: dict, name: str) -> str:
    """The run_glue ``--method`` of a sweep method name: the ``method`` of its ``method_args`` entry (a named
    variant, e.g. ``tempbalance-once: {method: tempbalance, tb_update_steps: once}``), else the name itself."""
    entry = (config.get("method_args") or {}).get(name) or {}
    return entry.get("method", name) if isinstance(entry, dict) else name


def is_done(run: Run) -> bool:
    return (Path(run.args["output_dir"]) / RESULT_FILE).is_file()


LOCK_FILE = "running.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _claim(out: Path) -> str | None:
    """Take the run in ``out`` for this process, or say who holds it.

    The claim is ``out/running.lock`` holding ``host pid``, created exclusively, so that two sweep processes over
    one grid (started at different times, or on machines that share the folder) never run the same run twice. A
    lock of a process of this machine that is gone (killed, crashed) is taken over; one of another machine cannot
    be checked from here and is left alone (delete it by hand if that machine's sweep is dead).

    Returns:
        None once this process holds the run, else why it is skipped.
    """
    lock, me = out / LOCK_FILE, f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
                pid = int(pid)
            except (OSError, ValueError):
                host, pid = "", 0  # unreadable or half-written: stale
            if host and host != socket.gethostname():
                return f"running on {host} (process {pid}; {lock})"
            if pid and pid != os.getpid() and _alive(pid):
                return f"running in process {pid}"
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return None
    return "taken by another process"


def _take(run: Run, out: Path) -> str | None:
    """None once this process holds ``run`` (see `_claim`); else why it is skipped: another process holds it, or
    finished it after this sweep listed its work."""
    if is_done(run):
        return "finished elsewhere"
    why = _claim(out)
    if why is None and is_done(run):  # finished between the check and the claim
        (out / LOCK_FILE).unlink()
        return "finished elsewhere"
    return why


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
    """Run what is not done yet; returns counts of ``done`` (skipped), ``ok`` and ``failed`` runs, and
    ``elsewhere``: runs another sweep process over the same folders was running (see `_claim`) or finished meanwhile.

    A failing run (any exception, or run_glue exiting) leaves its traceback in ``error.txt`` and the others go on.
    """
    todo = [run for run in runs if not is_done(run)]
    counts = {"done": len(runs) - len(todo), "ok": 0, "failed": 0, "elsewhere": 0}
    if counts["done"]:
        print(f"{label}: skipped {counts['done']} finished runs, {len(todo)} to run", file=sys.stderr)
    progress = _Progress(len(todo), label, position)
    for run in todo:
        progress.start(run)
        out = Path(run.args["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        why = _take(run, out)
        if why is not None:
            counts["elsewhere"] += 1
            progress.finish(run, f"skipped ({why})", 0.0)
            continue
        try:
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
            _write_result(run, out, results, time.time() - start)
        finally:
            (out / LOCK_FILE).unlink(missing_ok=True)
        counts["ok"] += 1
        progress.finish(run, "ok", time.time() - start)
    progress.close()
    return counts


def _write_result(run: Run, out: Path, results: dict, seconds: float) -> None:
    record = {
        "task": run.task,
        "size_key": run.size_key,
        "size": run.size,
        "fraction": run.fraction,
        "method": run.method,
        "lora": run.lora,
        "seed": run.seed,
        "run_seconds": seconds,
        "args": run.args,
        "results": results,
    }
    (out / RESULT_FILE).write_text(json.dumps(record, indent=1))


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


def _model_label(rec: dict) -> str:
    """The model of a run record, as its folder or Hub name (``~/.cache/tb_hf/mpnet-base`` -> ``mpnet-base``)."""
    args = rec.get("args")
    if not isinstance(args, dict):
        return ""  # records written before the arguments were stored
    name = str(args.get("model_name_or_path") or "minilm")  # run_glue's default
    return Path(os.path.expanduser(name.rstrip("/"))).name or name


def collect(output_dir: str | Path):
    """One row per finished run (``runs/**/result.json``) as a pandas DataFrame (scores in metric units).

    The model is its folder or Hub name; the size of the training subset is ``size_key`` (``fraction``,
    ``shots_per_class`` or ``max_train_samples``) and ``size``; ``n_train`` and ``n_eval`` are the numbers of training
    and evaluation examples, ``eval_split`` says what was evaluated (``validation``, or ``train_holdout`` with
    run_glue's --eval_on_train_holdout) and ``epoch_scores`` lists every evaluation's score, space-separated.
    """
    import pandas as pd

    rows = []
    for path in sorted(Path(output_dir).glob(f"runs/**/{RESULT_FILE}")):
        rec = json.loads(path.read_text())
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
                "method": rec["method"] + ("+lora" if rec["lora"] else ""),
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
                "epoch_scores": " ".join(f"{x:.6g}" for x in res.get("epoch_scores") or []),
            }
        )
    columns = ["model", "task", "size_key", "size", "method", "seed", "metric", "n_train", "n_eval", "best", "final"]
    extra = ["best_epoch", "run_seconds", "learning_rate", "eval_split", "epoch_scores"]
    frame = pd.DataFrame(rows, columns=[*columns, *extra])
    order = ["model", "task", "size_key", "size", "method", "seed"]
    frame = frame.sort_values(order, kind="stable", ignore_index=True)
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


def _signs(a: list[float], b: list[float]) -> dict[str, int]:
    """Sign count of the paired differences a - b: wins (a > b), losses (a < b) and ties."""
    d = np.subtract(a, b)
    return {"wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum())}


CELL = ["model", "task", "size_key", "size"]


def _with_model(frame):
    """Frames from before the model column (tests, old records) count as one unnamed model."""
    return frame if "model" in frame.columns else frame.assign(model="")


def summarize(results, baseline: str = "ft", score: str = "best"):
    """Per (model, task, size): mean ± std over seeds per method, and each method − baseline with its p-value
    (paired t-test) and sign count (wins, losses, ties over the seeds).

    Differences are paired by seed (only seeds that both methods finished: ``n_pairs``). Returns a DataFrame with
    one row per (model, task, size, method).
    """
    import pandas as pd

    results = _with_model(results)
    rows = []
    for (model, task, size_key, size), cell in results.groupby(CELL, sort=True):
        base = cell[cell["method"] == baseline].set_index("seed")[score]
        for method, group in cell.groupby("method", sort=False):
            scores = group.set_index("seed")[score]
            row = {
                "model": model,
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
                "n_pairs": 0,
                "wins": 0,
                "losses": 0,
                "ties": 0,
            }
            seeds = sorted(set(scores.index) & set(base.index))
            if method != baseline and seeds:
                a, b = scores.loc[seeds].tolist(), base.loc[seeds].tolist()
                row["diff_vs_baseline"], row["p_value"] = _paired(a, b)
                row |= {"n_pairs": len(seeds), **_signs(a, b)}
            rows.append(row)
    return pd.DataFrame(rows)


def pooled(results, baseline: str = "ft", score: str = "best"):
    """Per model, each method − baseline pooled over every (task, size, seed) pair both finished: the mean score
    of each over those pairs, the mean difference, a paired t-test over all the pairs and the sign count. One row
    per model, scope (``all`` sizes, then each size on its own) and method."""
    import pandas as pd

    results = _with_model(results)
    rows = []
    for model, frame in results.groupby("model", sort=True):
        scopes = [("all", frame)]
        for (key, size), part in frame.groupby(["size_key", "size"], sort=True):
            scopes.append((_size_text(key, size, True), part))
        if len(scopes) == 2:  # one size: "all" is that size
            scopes = scopes[1:]
        for scope, part in scopes:
            wide = part.pivot_table(index=["task", "size_key", "size", "seed"], columns="method", values=score)
            for method in wide.columns:
                if method == baseline or baseline not in wide.columns:
                    continue
                both = wide[[baseline, method]].dropna()
                if both.empty:
                    continue
                a, b = both[method].tolist(), both[baseline].tolist()
                diff, p = _paired(a, b)
                cells = both.reset_index()[["task", "size_key", "size"]].drop_duplicates()
                rows.append(
                    {
                        "model": model,
                        "scope": scope,
                        "method": method,
                        "n_cells": len(cells),
                        "n_pairs": len(both),
                        "baseline_mean": float(np.mean(b)),
                        "mean": float(np.mean(a)),
                        "diff_vs_baseline": diff,
                        "p_value": p,
                        **_signs(a, b),
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "model", "scope", "method", "n_cells", "n_pairs", "baseline_mean", "mean", "diff_vs_baseline", "p_value",
            "wins", "losses", "ties",
        ],
    )  # fmt: skip


def curves(results):
    """Per (model, task, size, method): the mean over seeds of each evaluation's score (``epoch_scores``; runs with
    another number of evaluations than the cell's first are left out), the best evaluation and its number (1-based).
    For choosing the learning rate and epochs on held-out training examples."""
    import pandas as pd

    rows = []
    for (model, task, size_key, size, method), group in _with_model(results).groupby([*CELL, "method"], sort=True):
        lists = [[float(x) for x in str(text).split()] for text in group["epoch_scores"] if str(text).strip()]
        lists = [x for x in lists if lists and len(x) == len(lists[0])]
        if not lists:
            continue
        mean = np.mean(lists, axis=0)
        rows.append(
            {
                "model": model, "task": task, "size_key": size_key, "size": size, "method": method,
                "learning_rate": group["learning_rate"].iloc[0], "n_seeds": len(lists), "mean_scores": mean.tolist(),
                "best_eval": int(np.argmax(mean)) + 1, "best_mean": float(mean.max()),
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def curves_markdown(frame, scale: float = 100.0) -> str:
    n = max(len(x) for x in frame["mean_scores"])
    head = ["model", "task", "size", "method", "lr", "seeds", *(str(i) for i in range(1, n + 1)), "best (eval #)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in frame.iterrows():
        scores = [f"{x * scale:.1f}" for x in r["mean_scores"]] + [""] * (n - len(r["mean_scores"]))
        lr = "" if _missing(r["learning_rate"]) else f"{float(r['learning_rate']):g}"
        lines.append(
            "| " + " | ".join([r["model"] or "–", r["task"], _size_text(r["size_key"], r["size"], False), r["method"],
                               lr, str(r["n_seeds"]), *scores, f"{r['best_mean'] * scale:.1f} ({r['best_eval']})"])
            + " |"
        )  # fmt: skip
    return "\n".join(lines)


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2f}"


def markdown_table(summary, methods: list[str], baseline: str = "ft", scale: float = 100.0) -> str:
    """Markdown: one row per (model,) task and size, mean ± std per method, then each method − baseline with
    (p; wins:losses over the paired seeds). The model column is shown when there is more than one model."""
    summary = _with_model(summary)
    others = [m for m in methods if m != baseline]
    keys = list(dict.fromkeys(summary["size_key"]))
    size_head = SIZES[keys[0]].label if len(keys) == 1 else "size"
    several = summary["model"].nunique() > 1
    head = [*(["model"] if several else []), "task", size_head, "n train", "metric", *methods]
    head += [f"{m} − {baseline} (p; wins:losses)" for m in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, task, size_key, size), cell in summary.groupby(CELL, sort=True):
        by = cell.set_index("method")
        first = cell.iloc[0]
        n_train = "?" if _missing(first["n_train"]) else str(int(first["n_train"]))
        size_text = _size_text(size_key, size, len(keys) > 1)
        out = [*([model] if several else []), task, size_text, n_train, first["metric"]]
        for m in methods:
            if m in by.index:
                mean, std = by.loc[m, "mean"] * scale, by.loc[m, "std"] * scale
                out.append(f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}")
            else:
                out.append("–")
        for m in others:
            if m in by.index and not math.isnan(by.loc[m, "diff_vs_baseline"]):
                row = by.loc[m]
                diff = row["diff_vs_baseline"] * scale
                out.append(f"{diff:+.2f} ({_p_text(row['p_value'])}; {int(row['wins'])}:{int(row['losses'])})")
            else:
                out.append("–")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def pooled_table(frame, methods: list[str], baseline: str = "ft", scale: float = 100.0) -> str:
    """Markdown of `pooled`: per model and scope, each method against the baseline over all paired runs."""
    head = ["model", "sizes", "method", "cells", "pairs", baseline, "method", f"− {baseline}", "p", "wins:losses:ties"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {m: i for i, m in enumerate(methods)}
    frame = frame.assign(_o=frame["method"].map(lambda m: order.get(m, len(order))))
    for _, row in frame.sort_values(["model", "_o"], kind="stable").iterrows():
        lines.append(
            "| "
            + " | ".join(
                [
                    row["model"] or "–",
                    row["scope"],
                    row["method"],
                    str(row["n_cells"]),
                    str(row["n_pairs"]),
                    f"{row['baseline_mean'] * scale:.2f}",
                    f"{row['mean'] * scale:.2f}",
                    f"{row['diff_vs_baseline'] * scale:+.2f}",
                    _p_text(row["p_value"]),
                    f"{row['wins']}:{row['losses']}:{row['ties']}",
                ]
            )  # fmt: skip
            + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# TempBalance's alpha across blocks and across seeds


def _number(value) -> float:
    """A history value as a float: None (a non-finite value, or one not recorded) is NaN."""
    return math.nan if value is None else float(value)


def collect_alpha(output_dir: str | Path):
    """One row per (finished TempBalance run, block) from ``<run>/tempbalance/history.jsonl``: α, its standard error
    from the fits (NaN in histories written before it was recorded) and the factor at step 0, α at the last update,
    and the number of updates. Empty when no run has a history."""
    import pandas as pd

    rows = []
    for path in sorted(Path(output_dir).glob(f"runs/**/{RESULT_FILE}")):
        history = path.parent / "tempbalance" / "history.jsonl"
        if not history.is_file():
            continue
        records = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        records.sort(key=lambda r: r["step"])
        if not records or records[0]["step"] != 0:
            continue
        rec = json.loads(path.read_text())
        first, last = records[0], records[-1]
        for block, alpha0 in first["alpha"].items():
            rows.append(
                {
                    "model": _model_label(rec),
                    "task": rec["task"],
                    "size_key": rec.get("size_key", "fraction"),
                    "size": rec.get("size", rec.get("fraction")),
                    "method": rec["method"] + ("+lora" if rec["lora"] else ""),
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
    columns = ["model", "task", "size_key", "size", "method", "seed", "block", "alpha_step0", "alpha_se_step0"]
    return pd.DataFrame(rows, columns=[*columns, "factor_step0", "alpha_last", "last_step", "n_updates"])


def alpha_spread(alphas):
    """Per (model, task, size, method): the spread of block α at step 0 (max − min over blocks, mean over seeds)
    against the noise of α: the standard error of a block's α from its fits (median over blocks, mean over seeds;
    NaN for histories that do not record it) and the run-to-run noise (std over seeds of each block's α, the
    largest over blocks) at step 0 and at the last update; and how far α moved during training (the largest
    |α_last − α_step0| over blocks, mean over seeds). Seeds that start from the same pretrained weights have the
    same α at step 0 (seed std 0): there only the fit error says whether the spread is more than noise."""
    import pandas as pd

    rows = []
    for (model, task, size_key, size, method), cell in alphas.groupby([*CELL, "method"], sort=True):
        wide0 = cell.pivot_table(index="seed", columns="block", values="alpha_step0")
        wide_last = cell.pivot_table(index="seed", columns="block", values="alpha_last")
        factors = cell.pivot_table(index="seed", columns="block", values="factor_step0")
        se0 = cell.pivot_table(index="seed", columns="block", values="alpha_se_step0", dropna=False)
        moved = (wide_last - wide0).abs().max(axis=1)
        rows.append(
            {
                "model": model,
                "task": task,
                "size_key": size_key,
                "size": size,
                "method": method,
                "n_seeds": len(wide0),
                "n_blocks": wide0.shape[1],
                "spread_step0": float((wide0.max(axis=1) - wide0.min(axis=1)).mean()),
                "fit_se_step0": float(se0.median(axis=1).mean()) if se0.notna().any().any() else math.nan,
                "seed_std_step0": float(wide0.std(ddof=1).max()) if len(wide0) > 1 else math.nan,
                "seed_std_last": float(wide_last.std(ddof=1).max()) if len(wide_last) > 1 else math.nan,
                "max_move": float(moved.mean()),
                "factor_min": float(factors.min().min()),
                "factor_max": float(factors.max().max()),
                "updates": float(cell.groupby("seed")["n_updates"].first().mean()),
            }
        )
    return pd.DataFrame(rows)


def alpha_markdown(spread) -> str:
    head = [
        "model", "task", "size", "method", "seeds", "blocks", "α spread over blocks (step 0)",
        "fit SE of a block's α (step 0)", "seed std of α (step 0)",
        "seed std of α (last)", "max |α_last − α_0|", "factors at step 0", "updates",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mixed = spread["size_key"].nunique() > 1
    for _, r in spread.iterrows():
        std0 = "n/a" if math.isnan(r["seed_std_step0"]) else f"{r['seed_std_step0']:.4f}"
        std_last = "n/a" if math.isnan(r["seed_std_last"]) else f"{r['seed_std_last']:.4f}"
        fit_se = "n/a" if math.isnan(r["fit_se_step0"]) else f"{r['fit_se_step0']:.3f}"
        cells = [
            r["model"] or "–", r["task"], _size_text(r["size_key"], r["size"], mixed), r["method"], str(r["n_seeds"]),
            str(r["n_blocks"]), f"{r['spread_step0']:.3f}", fit_se, std0, std_last, f"{r['max_move']:.4f}",
            f"{r['factor_min']:.3f}–{r['factor_max']:.3f}", f"{r['updates']:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
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
    overlap. Each method has one colour in every panel and one entry in the figure's legend.
    """
    from matplotlib.figure import Figure

    tasks = sorted(summary["task"].unique())
    every = [m for m in (methods or list(dict.fromkeys(summary["method"]))) if m in set(summary["method"])]
    fig = Figure(figsize=(max(4.2, 3.8 * len(tasks)) + 1.8, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks), squeeze=False)[0])
    handles = {}
    for ax, task in zip(axes, tasks, strict=True):
        cell = summary[summary["task"] == task]
        sizes = cell.drop_duplicates(["size_key", "size"]).sort_values(["size_key", "size"])
        position = {(k, v): i for i, (k, v) in enumerate(zip(sizes["size_key"], sizes["size"], strict=True))}
        shown = [m for m in every if m in set(cell["method"])]
        step = min(0.12, 0.6 / max(len(shown), 1))
        for j, method in enumerate(shown):
            group = cell[cell["method"] == method].sort_values(["size_key", "size"])
            offset = (j - (len(shown) - 1) / 2) * step
            x = [position[(k, v)] + offset for k, v in zip(group["size_key"], group["size"], strict=True)]
            handles[method] = ax.errorbar(
                x,
                group["mean"] * scale,
                yerr=group["std"].fillna(0) * scale,
                marker="o",
                capsize=3,
                label=method,
                color=f"C{every.index(method) % 10}",  # one colour per method in every panel
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
    # one legend for the figure: a method that only some panels have is still named
    fig.legend([handles[m] for m in every], every, loc="outside right upper", fontsize="small")
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
    if baseline not in set(results["method"]) and f"{baseline}+lora" in set(results["method"]):
        baseline += "+lora"  # a LoRA-only sweep (lora: [true]): its baseline is the plain LoRA run
    _named_sizes(results).to_csv(out / "results.csv", index=False)
    summaries = {score: summarize(results, baseline=baseline, score=score) for score in ("best", "final")}
    both = pd.concat([s.assign(score=k) for k, s in summaries.items()])
    _named_sizes(both).to_csv(out / "summary.csv", index=False)
    present = set(summaries["best"]["method"])
    listed = [m + suffix for suffix in ("", "+lora") for m in config["methods"]]
    methods = [m for m in dict.fromkeys([baseline, *listed, *sorted(present)]) if m in present]
    tables = {k: markdown_table(s, methods, baseline=baseline) for k, s in summaries.items()}
    pools = {k: pooled(results, baseline=baseline, score=k) for k in ("best", "final")}
    splits = sorted(set(results["eval_split"]))
    note = (
        f"Scores ×100 on the {' and '.join(splits)} split(s), mean ± std over seeds; '{baseline}' is the baseline. "
        "Differences are paired by seed (same training subset, same seed), with p from scipy.stats.ttest_rel and "
        "the sign count wins:losses of the method against the baseline. Best epoch: the best of the evaluations "
        "of each run (picked on the evaluation set itself, so optimistic); final epoch: the last evaluation."
    )
    text = f"Best epoch:\n\n{tables['best']}\n\nFinal epoch:\n\n{tables['final']}\n\n{note}\n"
    written = ["results.csv", "summary.csv", "summary.md"]
    if not pools["best"].empty:
        pd.concat([p.assign(score=k) for k, p in pools.items()]).to_csv(out / "pooled.csv", index=False)
        written.append("pooled.csv")
        text += (
            "\nPooled per model over every (task, size, seed) pair that both finished (paired t-test over all the "
            "pairs; the scores are means over those pairs):\n\n"
            f"Best epoch:\n\n{pooled_table(pools['best'], methods, baseline)}\n\n"
            f"Final epoch:\n\n{pooled_table(pools['final'], methods, baseline)}\n"
        )
    pairs = contrasts(config)
    versus = {k: contrast_frame(results, pairs, score=k) for k in ("best", "final")}
    (out / "contrasts.csv").unlink(missing_ok=True)  # a stale one would disagree with summary.md
    if not versus["best"].empty:
        pd.concat([v.assign(score=k) for k, v in versus.items()]).to_csv(out / "contrasts.csv", index=False)
        written.append("contrasts.csv")
        text += (
            "\nContrasts (the config's `contrasts`, A − B paired by seed as above; pooled over every (task, size, "
            f"seed) pair both finished):\n\nBest epoch:\n\n{contrast_table(versus['best'])}\n\n"
            f"Final epoch:\n\n{contrast_table(versus['final'])}\n"
        )
    holdout = results[results["eval_split"] == "train_holdout"]
    if not holdout.empty:
        text += (
            "\nScore at each evaluation, mean over seeds, on held-out training examples (for choosing the learning "
            f"rate and epochs):\n\n{curves_markdown(curves(holdout))}\n"
        )
    alphas = collect_alpha(out)
    if not alphas.empty:
        spread = alpha_spread(alphas)
        _named_sizes(alphas).to_csv(out / "alpha.csv", index=False)
        written.append("alpha.csv")
        text += (
            "\nTempBalance's α per block (from each run's tempbalance/history.jsonl): the spread over blocks at step "
            "0 against the noise of α: the standard error of a block's α from its power-law fits ((α − 1)/√n_tail "
            "per matrix; median over blocks; n/a in histories that predate it), and the run-to-run noise (std over "
            "seeds of each block's α, the largest over blocks; 0 at step 0 when every seed starts from the same "
            "pretrained weights):\n\n"
            f"{alpha_markdown(spread)}\n"
        )
    (out / "summary.md").write_text(text)
    try:
        plotted = summaries["best"]
        if plotted["model"].nunique() > 1:
            plotted = plotted.assign(method=plotted["model"] + ": " + plotted["method"])
            methods = list(dict.fromkeys(plotted["method"]))
        plot_scores(plotted, out / "scores.png", methods)
        written.append("scores.png")
    except ImportError:  # matplotlib is the optional [plot] extra
        pass
    return tables["best"], written


def aggregate(config: dict) -> str:
    """Write results.csv, summary.csv, summary.md (best- and final-epoch tables) and scores.png.

    Returns the best-epoch markdown table.
    """
    return _aggregate(config)[0]


def select_runs(
    config: dict, runs: list[Run], methods: str | None, sizes: str | None, tasks: str | None = None
) -> list[Run]:
    """The runs of the ``--methods``, ``--sizes`` and ``--tasks`` filters (comma-separated; None keeps all), in grid
    order, except that ``--tasks`` also sets the order of the tasks (the cheap ones first, say). A name or size that
    the config does not have raises ValueError."""
    if methods is not None:
        wanted = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in config["methods"]]
        if unknown or not wanted:
            raise ValueError(f"--methods {methods!r}: the config's methods are {config['methods']}.")
        runs = [r for r in runs if r.method in wanted]
    if sizes is not None:
        have = list(dict.fromkeys(f"{r.size:g}" for r in runs))
        wanted = [x.strip() for x in sizes.split(",") if x.strip()]
        try:
            wanted = [f"{float(x):g}" for x in wanted]
        except ValueError:
            wanted = []
        unknown = [x for x in wanted if x not in have]
        if unknown or not wanted:
            raise ValueError(f"--sizes {sizes!r}: the config's sizes are {have} (numbers, comma-separated).")
        runs = [r for r in runs if f"{r.size:g}" in wanted]
    if tasks is not None:
        wanted = list(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
        unknown = [t for t in wanted if t not in config["tasks"]]
        if unknown or not wanted:
            raise ValueError(f"--tasks {tasks!r}: the config's tasks are {list(config['tasks'])}.")
        runs = sorted((r for r in runs if r.task in wanted), key=lambda r: wanted.index(r.task))
    return runs


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
        "--methods",
        help="Comma-separated: run only these methods of the config (e.g. the core comparison first; the rest stay "
        "to do). Aggregation always covers every finished run.",
    )
    parser.add_argument(
        "--sizes",
        help="Comma-separated: run only these training-set sizes (as in the run folders: 16 for shots16, 0.01 for "
        "frac0.01), e.g. the small sizes of every task before the large ones.",
    )
    parser.add_argument(
        "--tasks",
        help="Comma-separated: run only these tasks of the config, in this order (e.g. the cheap tasks first).",
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
        contrasts(config)  # checked for --aggregate-only too: the tables need it
        if not ns.aggregate_only and os.environ.get("TB_SWEEP_VALIDATED") != "1":  # workers: done by the parent
            validate(config, runs)
        selected = select_runs(config, runs, ns.methods, ns.sizes, ns.tasks)
    except ValueError as err:
        parser.error(str(err))
    if ns.aggregate_only:
        _print_summary(config, runs)
        return 0
    if ns.workers > 1 and not (shard or ns.dry_run):
        return _run_workers(ns, config, runs)
    all_runs, runs = runs, selected
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
        f"{label}: {len(runs)} runs: {counts['ok']} ran, {counts['done']} already done, {counts['failed']} failed"
        + (f", {counts['elsewhere']} left to another sweep process" if counts["elsewhere"] else "")
        + f" ({time.time() - start:.0f} s)"
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
    for flag, value in (("--methods", ns.methods), ("--sizes", ns.sizes), ("--tasks", ns.tasks)):
        if value is not None:
            cmd += [flag, value]
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
