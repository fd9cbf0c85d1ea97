"""Sweeps over tasks × training fractions × seeds × methods (× LoRA on/off) with recipes/glue/run_glue.py.

One YAML file describes the grid (see recipes/sweeps/*.yaml; each starts with the command that runs it). Every
run gets its own folder ``<output_dir>/runs/<task>/frac<f>/<method>[-lora]/seed<s>/`` holding the recipe's
outputs and ``result.json``, written only when the run succeeded. Re-running the sweep skips runs that have
``result.json`` and retries the others (a failed run leaves ``error.txt``). Then the results are aggregated:

* ``<output_dir>/results.csv``: one row per run (best-epoch and final-epoch scores, wall time);
* ``<output_dir>/summary.csv`` and ``summary.md``: best- and final-epoch scores, mean ± std over seeds per task,
  fraction and method, and
  each method's difference to the baseline with a paired t-test over seeds (``scipy.stats.ttest_rel``);
* ``<output_dir>/scores.png``: the metric against the training fraction, one panel per task, one line per method.

Usage:

```bash
python recipes/sweep.py recipes/sweeps/default.yaml              # the built-in default (bash scripts/run.sh)
python recipes/sweep.py recipes/sweeps/minilm_glue_small.yaml    # MiniLM on five GLUE tasks, local files
python recipes/sweep.py recipes/sweeps/roberta_glue.yaml         # roberta-base with the Hub, the paper's grid
python recipes/sweep.py recipes/sweeps/default.yaml --aggregate-only
python recipes/sweep.py recipes/sweeps/default.yaml --dry-run    # list the runs and whether they are done
python recipes/sweep.py recipes/sweeps/default.yaml --workers 2  # 2 single-threaded processes, then aggregate
python recipes/sweep.py recipes/sweeps/default.yaml --shard 1/4  # one quarter of the grid (e.g. per machine)
```

Runs go in-process by default (``launcher: inprocess``, no start-up cost per run); ``launcher: python`` starts
each in its own process and ``launcher: accelerate launch --num_processes 2 --multi_gpu`` under accelerate.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shlex
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
class Run:
    task: str
    fraction: float
    method: str
    lora: bool
    seed: int
    args: dict  # run_glue arguments

    @property
    def name(self) -> str:
        return f"{self.task}/frac{self.fraction:g}/{self.method}{'-lora' if self.lora else ''}/seed{self.seed}"

    def __hash__(self):
        return hash(self.name)


def load_config(path: str | Path) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    missing = [k for k in ("output_dir", "tasks", "seeds", "methods") if k not in config]
    if missing:
        raise ValueError(f"{path}: missing keys {missing} (see recipes/sweeps/default.yaml for the layout).")
    return config


def expand_grid(config: dict) -> list[Run]:
    """The runs of a sweep config, in order task, fraction, seed, method, lora."""
    out_root = Path(config["output_dir"])
    tasks = config["tasks"]
    if isinstance(tasks, list):
        tasks = {t: {} for t in tasks}
    runs = []
    for task, task_cfg in tasks.items():
        task_cfg = dict(task_cfg or {})
        fractions = task_cfg.pop("fractions", config.get("fractions"))
        if not fractions:
            raise ValueError(f"Task {task}: give 'fractions' (in the task or at the top level).")
        for fraction, seed, method, lora in itertools.product(
            fractions, config["seeds"], config["methods"], config.get("lora", [False])
        ):
            args = {"task_name": task} | dict(config.get("args", {})) | task_cfg
            args |= dict((config.get("method_args") or {}).get(method, {}))
            if lora:
                args |= dict(config.get("lora_args") or {"lora_r": 8, "lora_alpha": 16})
            args |= {"method": method, "train_fraction": fraction, "seed": seed}
            run = Run(task, float(fraction), method, bool(lora), int(seed), args)
            run.args["output_dir"] = str(out_root / "runs" / run.name)
            runs.append(run)
    return runs


def is_done(run: Run) -> bool:
    return (Path(run.args["output_dir"]) / RESULT_FILE).is_file()


def _run_inprocess(run: Run) -> dict:
    sys.path.insert(0, str(RECIPE.parent))
    import run_glue

    return run_glue.main(*run_glue.parse_args(run_glue.config_to_argv(run.args)))


def _run_subprocess(run: Run, launcher: str) -> dict:
    sys.path.insert(0, str(RECIPE.parent))
    import run_glue

    out = Path(run.args["output_dir"])
    cmd = [*shlex.split(launcher), str(RECIPE), *run_glue.config_to_argv(run.args)]
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode} (see {out / 'log.txt'}): {shlex.join(cmd)}")
    with open(out / "all_results.json") as f:
        return json.load(f)


def execute(runs: list[Run], launcher: str = "inprocess", *, quiet: bool = True, position: int = 0) -> dict[str, int]:
    """Run what is not done yet; returns counts of ``done`` (skipped), ``ok`` and ``failed`` runs."""
    counts = {"done": 0, "ok": 0, "failed": 0}
    bar = tqdm(runs, desc=f"sweep[{position}]" if position else "sweep", unit="run", position=position, leave=True)
    for run in bar:
        bar.set_postfix_str(run.name)
        if is_done(run):
            counts["done"] += 1
            continue
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
        except Exception:
            counts["failed"] += 1
            (out / "error.txt").write_text(traceback.format_exc())
            tqdm.write(f"FAILED {run.name} (see {out / 'error.txt'})")
            continue
        record = {
            "task": run.task,
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
    """One row per finished run (``runs/**/result.json``) as a pandas DataFrame (scores in metric units)."""
    import pandas as pd

    rows = []
    for path in sorted(Path(output_dir).glob(f"runs/**/{RESULT_FILE}")):
        rec = json.loads(path.read_text())
        res = rec["results"]
        main = res["main_metric"]
        rows.append(
            {
                "task": rec["task"],
                "fraction": rec["fraction"],
                "method": rec["method"] + ("+lora" if rec["lora"] else ""),
                "seed": rec["seed"],
                "metric": main,
                "train_samples": res.get("train_samples"),
                "eval_samples": res.get("eval_samples"),
                "best": res[f"best_eval_{main}"],
                "final": res[f"eval_{main}"],
                "best_epoch": res.get("best_epoch"),
                "run_seconds": rec.get("run_seconds"),
            }
        )
    columns = ["task", "fraction", "method", "seed", "metric", "train_samples", "eval_samples", "best", "final"]
    return pd.DataFrame(rows, columns=[*columns, "best_epoch", "run_seconds"])


def _paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean difference a - b and the paired t-test p-value (nan with < 2 pairs or no variation)."""
    from scipy.stats import ttest_rel

    diff = float(np.mean(np.subtract(a, b)))
    if len(a) < 2 or np.allclose(np.subtract(a, b), np.subtract(a, b)[0]):
        return diff, math.nan
    return diff, float(ttest_rel(a, b).pvalue)


def summarize(results, baseline: str = "ft", score: str = "best"):
    """Per (task, fraction): mean ± std over seeds per method, and each method − baseline with its p-value.

    Differences are paired by seed (only seeds that both methods finished). Returns a DataFrame with one row
    per (task, fraction, method).
    """
    import pandas as pd

    rows = []
    for (task, fraction), cell in results.groupby(["task", "fraction"], sort=True):
        base = cell[cell["method"] == baseline].set_index("seed")[score]
        for method, group in cell.groupby("method", sort=False):
            scores = group.set_index("seed")[score]
            row = {
                "task": task,
                "fraction": fraction,
                "method": method,
                "metric": group["metric"].iloc[0],
                "train_samples": group["train_samples"].iloc[0],
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
    """Markdown: one row per task and fraction, mean ± std per method, then each method − baseline (p)."""
    others = [m for m in methods if m != baseline]
    head = ["task", "fraction", "n train", "metric", *methods, *(f"{m} − {baseline} (p)" for m in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, fraction), cell in summary.groupby(["task", "fraction"], sort=True):
        by = cell.set_index("method")
        first = cell.iloc[0]
        out = [task, f"{fraction:g}", str(int(first["train_samples"])), first["metric"]]
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


def plot_scores(summary, path: str | Path, methods: list[str] | None = None, scale: float = 100.0):
    """PNG: mean score (± std over seeds) against the training fraction, one panel per task, a line per method."""
    from matplotlib.figure import Figure

    tasks = sorted(summary["task"].unique())
    fig = Figure(figsize=(3.6 * len(tasks), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks), squeeze=False)[0])
    for ax, task in zip(axes, tasks, strict=True):
        cell = summary[summary["task"] == task]
        for method in methods or list(dict.fromkeys(cell["method"])):
            group = cell[cell["method"] == method].sort_values("fraction")
            if group.empty:
                continue
            ax.errorbar(
                group["fraction"],
                group["mean"] * scale,
                yerr=group["std"].fillna(0) * scale,
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("training fraction")
        ax.set_ylabel(f"{cell['metric'].iloc[0]} (best epoch, ×{scale:g})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def aggregate(config: dict) -> str:
    """Write results.csv, summary.csv, summary.md (best- and final-epoch tables) and scores.png.

    Returns the best-epoch markdown table.
    """
    import pandas as pd

    out = Path(config["output_dir"])
    baseline = config.get("baseline", "ft")
    results = collect(out)
    if results.empty:
        return "(no finished runs yet)"
    results.to_csv(out / "results.csv", index=False)
    summaries = {score: summarize(results, baseline=baseline, score=score) for score in ("best", "final")}
    pd.concat([s.assign(score=k) for k, s in summaries.items()]).to_csv(out / "summary.csv", index=False)
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
    try:
        plot_scores(summaries["best"], out / "scores.png", methods)
    except ImportError:  # matplotlib is the optional [plot] extra
        pass
    return tables["best"]


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
        help="K/N: run only every N-th run starting at K (0-based), to spread a sweep over N processes or machines "
        "sharing the output folder; aggregate afterwards with --aggregate-only.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Run the grid in N single-threaded worker processes (shards 0/N ... N-1/N, OMP_NUM_THREADS=1 unless "
        "set), then aggregate. On a CPU machine N = number of cores beats one multi-threaded process.",
    )
    ns = parser.parse_args(argv)
    config = load_config(ns.config)
    if ns.workers > 1 and not (ns.shard or ns.aggregate_only or ns.dry_run):
        return _run_workers(ns, config)
    runs = expand_grid(config)
    if ns.shard:
        k, n = (int(x) for x in ns.shard.split("/"))
        if not 0 <= k < n:
            raise ValueError(f"--shard K/N needs 0 <= K < N, got {ns.shard}")
        runs = runs[k::n]
    if ns.dry_run:
        for run in runs:
            print(("done  " if is_done(run) else "todo  ") + run.name)
        return 0
    start = time.time()
    if not ns.aggregate_only:
        launcher = ns.launcher or config.get("launcher", "inprocess")
        if launcher == "python":
            launcher = sys.executable
        counts = execute(runs, launcher, position=int(ns.shard.split("/")[0]) if ns.shard else 0)
        print(
            f"{len(runs)} runs: {counts['ok']} ran, {counts['done']} already done, {counts['failed']} failed "
            f"({time.time() - start:.0f} s)"
        )
    if ns.shard:
        return 1 if counts["failed"] else 0  # aggregate once all shards are done
    _print_summary(config)
    return 1 if not ns.aggregate_only and counts["failed"] else 0


def _print_summary(config: dict) -> None:
    table = aggregate(config)
    summary = Path(config["output_dir"]) / "summary.md"
    print(summary.read_text() if summary.is_file() else table)
    print(f"Results in {config['output_dir']}/ (results.csv, summary.csv, summary.md, scores.png)")


def _run_workers(ns: argparse.Namespace, config: dict) -> int:
    """Start ``ns.workers`` shards of this sweep as processes, wait for them, aggregate."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), ns.config]
    if ns.launcher:
        cmd += ["--launcher", ns.launcher]
    procs = [
        subprocess.Popen([*cmd, "--shard", f"{k}/{ns.workers}"], env=env, stdout=subprocess.DEVNULL)
        for k in range(ns.workers)
    ]
    failed = sum(proc.wait() != 0 for proc in procs)
    print(f"{ns.workers} workers finished in {time.time() - start:.0f} s ({failed} reported failed runs)")
    _print_summary(config)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
