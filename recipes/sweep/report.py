"""A sweep's report: ``results.csv``, ``summary.csv``, ``summary.md`` (markdown tables: per cell, pooled, contrasts,
held-out curves, TempBalance's α), ``pooled.csv``, ``contrasts.csv``, ``alpha.csv`` and ``scores.png``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import stats
from .grid import SIZES, Run, contrasts
from .results import CELL, collect, collect_alpha, named_sizes
from .stats import size_text


def _missing(value) -> bool:
    """None, NaN or pandas' NA."""
    import pandas as pd

    return bool(pd.isna(value))


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def _lora_text(lora) -> str:
    return "yes" if bool(lora) else "no"


def markdown_table(summary, methods: list[str], baseline: str = "ft", scale: float = 100.0) -> str:
    """Markdown: one row per (model,) task, size (and LoRA), mean ± std per method, then each method − baseline with
    (p; wins:losses over the paired seeds). The model column is shown when there is more than one model, the LoRA
    column when any run trained LoRA adapters."""
    summary = stats._with_defaults(summary)
    others = [m for m in methods if m != baseline]
    keys = list(dict.fromkeys(summary["size_key"]))
    size_head = SIZES[keys[0]].label if len(keys) == 1 else "size"
    several = summary["model"].nunique() > 1
    with_lora = bool(summary["lora"].any())
    head = [*(["model"] if several else []), "task", size_head, *(["LoRA"] if with_lora else []), "n train"]
    head += ["metric", *methods, *(f"{m} − {baseline} (p; wins:losses)" for m in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, task, size_key, size, lora), cell in summary.groupby(CELL, sort=True):
        by = cell.set_index("method")
        first = cell.iloc[0]
        n_train = "?" if _missing(first["n_train"]) else str(int(first["n_train"]))
        out = [*([model] if several else []), task, size_text(size_key, size, len(keys) > 1)]
        out += [*([_lora_text(lora)] if with_lora else []), n_train, first["metric"]]
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
    """Markdown of `stats.pooled`: per model (LoRA) and scope, each method against the baseline over all paired
    runs, with the paired t-test, the std of the paired differences and the exact sign test."""
    with_lora = bool(frame["lora"].any())
    head = ["model", *(["LoRA"] if with_lora else []), "sizes", "method", "cells", "pairs", baseline, "method"]
    head += [f"− {baseline}", "std of differences", "p (t-test)", "wins:losses:ties", "p (sign test)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {m: i for i, m in enumerate(methods)}
    frame = frame.assign(_o=frame["method"].map(lambda m: order.get(m, len(order))))
    for _, row in frame.sort_values(["model", "lora", "_o"], kind="stable").iterrows():
        cells = [row["model"] or "–", *([_lora_text(row["lora"])] if with_lora else []), row["scope"], row["method"]]
        cells += [str(row["n_cells"]), str(row["n_pairs"]), f"{row['baseline_mean'] * scale:.2f}"]
        cells += [f"{row['mean'] * scale:.2f}", f"{row['diff_vs_baseline'] * scale:+.2f}"]
        cells += ["n/a" if math.isnan(row["diff_std"]) else f"{row['diff_std'] * scale:.2f}", _p_text(row["p_value"])]
        cells += [f"{row['wins']}:{row['losses']}:{row['ties']}", _p_text(row["sign_p"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contrast_table(frame, scale: float = 100.0) -> str:
    """Markdown of `stats.contrast_frame`: per contrast, its cells, then its pooled rows."""
    with_lora = bool(frame["lora"].fillna(False).astype(bool).any())
    head = ["contrast", "model", *(["LoRA"] if with_lora else []), "task", "size", "pairs", "difference", "p"]
    head += ["wins:losses:ties", "p (sign test)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mixed = frame["size_key"].dropna().nunique() > 1
    for _, row in frame.iterrows():
        if row["scope"] == "cell":
            task, size = row["task"], size_text(row["size_key"], row["size"], mixed)
        else:
            task, size = "**pooled**", row["scope"]
        sign_p = "" if _missing(row["sign_p"]) else _p_text(row["sign_p"])
        lines.append(
            f"| {row['contrast']} | {row['model'] or '–'} | "
            + (f"{_lora_text(row['lora'])} | " if with_lora else "")
            + f"{task} | {size} | {int(row['n_pairs'])} | {row['diff_vs_baseline'] * scale:+.2f} | "
            f"{_p_text(row['p_value'])} | {int(row['wins'])}:{int(row['losses'])}:{int(row['ties'])} | {sign_p} |"
        )
    return "\n".join(lines)


def curves_markdown(frame, scale: float = 100.0) -> str:
    n = max(len(x) for x in frame["mean_scores"])
    head = ["model", "task", "size", "method", "lr", "seeds", *(str(i) for i in range(1, n + 1)), "best (eval #)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in frame.iterrows():
        scores = [f"{x * scale:.1f}" for x in r["mean_scores"]] + [""] * (n - len(r["mean_scores"]))
        lr = "" if _missing(r["learning_rate"]) else f"{float(r['learning_rate']):g}"
        method = r["method"] + (" (LoRA)" if r["lora"] else "")
        lines.append(
            "| " + " | ".join([r["model"] or "–", r["task"], size_text(r["size_key"], r["size"], False), method,
                               lr, str(r["n_seeds"]), *scores, f"{r['best_mean'] * scale:.1f} ({r['best_eval']})"])
            + " |"
        )  # fmt: skip
    return "\n".join(lines)


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
            r["model"] or "–", r["task"], size_text(r["size_key"], r["size"], mixed),
            r["method"] + (" (LoRA)" if r["lora"] else ""), str(r["n_seeds"]), str(r["n_blocks"]),
            f"{r['spread_step0']:.3f}", fit_se, std0, std_last, f"{r['max_move']:.4f}",
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


def plot_curve(curve, path: str | Path, methods: list[str] | None = None, scale: float = 100.0, title: str = ""):
    """PNG: the gain over the baseline against the training-set size (`stats.size_curve`): one panel per (model,
    task), the size on a log axis (ticks: % of the training set or examples per class, with the number of training
    examples), each method's mean paired difference with its confidence interval as error bars, one line and one
    colour per method, and the baseline as the line at 0.
    """
    from matplotlib.figure import Figure

    curve = stats._with_defaults(curve)
    every = [m for m in (methods or list(dict.fromkeys(curve["method"]))) if m in set(curve["method"])]
    panels = list(curve.groupby(["model", "task"], sort=True))
    fig = Figure(figsize=(max(4.2, 3.8 * len(panels)) + 1.8, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    handles = {}
    baseline = str(curve["baseline"].iloc[0]) if len(curve) else "baseline"
    for ax, ((model, task), cell) in zip(axes, panels, strict=True):
        sizes = cell.drop_duplicates(["size_key", "size"]).sort_values(["size_key", "size"])
        shown = [m for m in every if m in set(cell["method"])]
        span = np.log10(sizes["size"].max() / sizes["size"].min()) if len(sizes) > 1 else 1.0
        step = min(0.04, 0.25 / max(len(shown), 1)) * max(span, 1.0)  # dodge in log10 units
        for j, method in enumerate(shown):
            group = cell[cell["method"] == method].sort_values(["size_key", "size"])
            x = group["size"].to_numpy(dtype=float) * 10 ** ((j - (len(shown) - 1) / 2) * step)
            y = group["diff"].to_numpy(dtype=float) * scale
            low = (group["diff"] - group["ci_low"]).fillna(0).to_numpy(dtype=float) * scale
            high = (group["ci_high"] - group["diff"]).fillna(0).to_numpy(dtype=float) * scale
            handles[method] = ax.errorbar(
                x, y, yerr=[low, high], marker="o", capsize=3, label=method, color=f"C{(every.index(method) + 1) % 10}"
            )
        handles[baseline] = ax.axhline(0.0, color="0.3", linewidth=1, linestyle="--")
        ax.set_xscale("log")
        ax.set_xticks(
            sizes["size"].to_numpy(dtype=float),
            [_tick(k, v, n) for k, v, n in zip(sizes["size_key"], sizes["size"], sizes["n_train"], strict=True)],
        )
        ax.minorticks_off()
        keys = set(sizes["size_key"])
        ax.set_xlabel(_XLABELS[keys.pop()] if len(keys) == 1 else "training subset")
        ax.set_title(f"{model}: {task}" if model else task)
        ax.set_ylabel(f"method − {baseline} (paired, ×{scale:g})")
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    names = [m for m in every if m in handles and m != baseline]
    fig.legend([handles[m] for m in [*names, baseline]], [*names, f"{baseline} (= 0)"], loc="outside right upper",
               fontsize="small")  # fmt: skip
    fig.savefig(path, dpi=120)
    return fig


def curve_markdown(curve, trend=None, scale: float = 100.0) -> str:
    """Markdown of `stats.size_curve` (one row per model, task, size and method: the paired difference, its
    interval, p and the detectable effect) and, if given, of `stats.size_trend` (the slope per tenfold more data)."""
    head = ["model", "task", "size", "n train", "method", "pairs", "difference", "95% interval", "p (t-test)"]
    head += ["detectable (80%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mixed = curve["size_key"].nunique() > 1

    def num(x):
        return "n/a" if _missing(x) or math.isnan(x) else f"{x * scale:+.2f}"

    for _, r in curve.iterrows():
        n_train = "?" if _missing(r["n_train"]) else str(int(r["n_train"]))
        cells = [r["model"] or "–", r["task"], size_text(r["size_key"], r["size"], mixed), n_train,
                 r["method"] + (" (LoRA)" if r["lora"] else ""), str(int(r["n_pairs"])), num(r["diff"]),
                 f"{num(r['ci_low'])} to {num(r['ci_high'])}", _p_text(r["p_value"]),
                 "n/a" if math.isnan(r["detectable"]) else f"{r['detectable'] * scale:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if trend is not None and len(trend):
        head = ["model", "tasks", "method", "sizes", "pairs", "slope per 10× data", "its SE", "p (slope = 0)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in trend.iterrows():
            se = "n/a" if math.isnan(r["slope_se"]) else f"{r['slope_se'] * scale:.2f}"
            cells = [r["model"] or "–", r["scope"], r["method"] + (" (LoRA)" if r["lora"] else "")]
            cells += [str(int(r["n_sizes"])), str(int(r["n_pairs"])), num(r["slope"]), se, _p_text(r["p_value"])]
            lines.append("| " + " | ".join(cells) + " |")
        text += "\n\n" + "\n".join(lines)
    return text


def _plot_labels(summary, methods: list[str]):
    """The summary with the method labels of the plot (``model: method (LoRA)`` where needed) and their order."""
    summary = stats._with_defaults(summary)
    label = summary["method"] + np.where(summary["lora"], " (LoRA)", "")
    order = [m + suffix for suffix in ("", " (LoRA)") for m in methods]
    if summary["model"].nunique() > 1:
        label = summary["model"] + ": " + label
        order = list(dict.fromkeys(label))
    return summary.assign(method=label), [m for m in order if m in set(label)]


#: Every file `aggregate` writes into the output folder.
OUTPUTS = ("results.csv", "summary.csv", "summary.md", "pooled.csv", "contrasts.csv", "alpha.csv", "scores.png",
           "curve.csv", "curve.md", "curve.png")  # fmt: skip


def write_report(config: dict, runs: list[Run] | None = None) -> tuple[str, list[str]]:
    """Write results.csv, summary.csv, summary.md (best- and final-evaluation tables, pooled rows, contrasts,
    held-out curves, the α table), pooled.csv, contrasts.csv, alpha.csv and scores.png.

    Args:
        runs: The grid's runs: only their results, made with their settings, are reported (default: every
            ``result.json`` under ``output_dir``).

    Returns:
        The best-evaluation markdown table and the names of the files written (none without finished runs).
    """
    import pandas as pd

    out = Path(config["output_dir"])
    baseline = config.get("baseline", "ft")
    results = collect(out, runs)
    for name in OUTPUTS:  # what an earlier aggregation wrote: a file not written again would disagree with the rest
        (out / name).unlink(missing_ok=True)
    if results.empty:
        return "(no finished runs yet)", []
    named_sizes(results).to_csv(out / "results.csv", index=False)
    summaries = {score: stats.summarize(results, baseline=baseline, score=score) for score in ("best", "final")}
    both = pd.concat([s.assign(score=k) for k, s in summaries.items()])
    named_sizes(both).to_csv(out / "summary.csv", index=False)
    present = set(summaries["best"]["method"])
    methods = [m for m in dict.fromkeys([baseline, *config["methods"], *sorted(present)]) if m in present]
    tables = {k: markdown_table(s, methods, baseline=baseline) for k, s in summaries.items()}
    pools = {k: stats.pooled(results, baseline=baseline, score=k) for k in ("best", "final")}
    splits = sorted(set(results["eval_split"]))
    note = (
        f"Scores ×100 on the {' and '.join(splits)} split(s), mean ± std over seeds; '{baseline}' is the baseline. "
        "Differences are paired by seed (same training subset, same seed), with p from scipy.stats.ttest_rel and "
        "the sign count wins:losses of the method against the baseline. Best evaluation: the best of the "
        "evaluations of each run (picked on the evaluation set itself, so optimistic); final: the last evaluation."
    )
    text = f"Best evaluation:\n\n{tables['best']}\n\nFinal evaluation:\n\n{tables['final']}\n\n{note}\n"
    written = ["results.csv", "summary.csv", "summary.md"]
    if not pools["best"].empty:
        pd.concat([p.assign(score=k) for k, p in pools.items()]).to_csv(out / "pooled.csv", index=False)
        written.append("pooled.csv")
        text += (
            "\nPooled per model over every (task, size, seed) pair that both finished (paired t-test over all the "
            "pairs, and the exact two-sided sign test over the wins and losses; the scores are means over those "
            f"pairs):\n\nBest evaluation:\n\n{pooled_table(pools['best'], methods, baseline)}\n\n"
            f"Final evaluation:\n\n{pooled_table(pools['final'], methods, baseline)}\n"
        )
    pairs = contrasts(config)
    versus = {k: stats.contrast_frame(results, pairs, score=k) for k in ("best", "final")}
    if not versus["best"].empty:
        pd.concat([v.assign(score=k) for k, v in versus.items()]).to_csv(out / "contrasts.csv", index=False)
        written.append("contrasts.csv")
        text += (
            "\nContrasts (the config's `contrasts`, A − B paired by seed as above; pooled over every (task, size, "
            f"seed) pair both finished):\n\nBest evaluation:\n\n{contrast_table(versus['best'])}\n\n"
            f"Final evaluation:\n\n{contrast_table(versus['final'])}\n"
        )
    holdout = results[results["eval_split"] == "train_holdout"]
    if not holdout.empty:
        text += (
            "\nScore at each evaluation, mean over seeds, on held-out training examples (for choosing the learning "
            f"rate and epochs):\n\n{curves_markdown(stats.curves(holdout))}\n"
        )
    alphas = collect_alpha(out, runs)
    if not alphas.empty:
        named_sizes(alphas).to_csv(out / "alpha.csv", index=False)
        written.append("alpha.csv")
        text += (
            "\nTempBalance's α per block (from each run's tempbalance/history.jsonl): the spread over blocks at step "
            "0 against the noise of α: the standard error of a block's α from its power-law fits ((α − 1)/√n_tail "
            "per matrix; median over blocks; n/a in histories that predate it), and the run-to-run noise (std over "
            "seeds of each block's α, the largest over blocks; 0 at step 0 when every seed starts from the same "
            "pretrained weights):\n\n"
            f"{alpha_markdown(stats.alpha_spread(alphas))}\n"
        )
    (out / "summary.md").write_text(text)
    try:
        plotted, labels = _plot_labels(summaries["best"], methods)
        plot_scores(plotted, out / "scores.png", labels)
        written.append("scores.png")
    except ImportError:  # matplotlib is the optional [plot] extra
        pass
    written += write_curve(results, out, methods, baseline)
    return tables["best"], written


def write_curve(results, out: Path, methods: list[str], baseline: str = "ft") -> list[str]:
    """Where a task was run at several training-set sizes: the gain over the baseline against the size, as
    ``curve.csv`` (`stats.size_curve` for the final and the best evaluation), ``curve.md`` (the final evaluation's
    rows and the trend test, `stats.size_trend`) and ``curve.png`` (`plot_curve`, final evaluation). Returns the
    names of the files written (none when every task has one size)."""
    import pandas as pd

    sizes = stats._with_defaults(results).groupby(["model", "task", "lora"])["size"].nunique()
    if results.empty or sizes.max() < 2:
        return []
    order = {m: i for i, m in enumerate(methods)}
    curves = {}
    for score in ("final", "best"):
        curve = stats.size_curve(results, baseline=baseline, score=score)
        curve = curve.assign(_o=curve["method"].map(lambda m: order.get(m, len(order))))
        curves[score] = curve.sort_values(["model", "lora", "task", "_o", "size"], kind="stable").drop(columns="_o")
    if curves["final"].empty:
        return []
    pd.concat([c.assign(score=k) for k, c in curves.items()]).to_csv(out / "curve.csv", index=False)
    trend = stats.size_trend(results, baseline=baseline, score="final")
    (out / "curve.md").write_text(
        f"Each method − {baseline} against the training-set size, final evaluation, ×100: the mean of the paired "
        "differences over the seeds both finished, its 95% t-interval, the paired t-test's p and the difference "
        "those pairs detect with 80% power at α 0.05:\n\n"
        f"{curve_markdown(curves['final'], trend)}\n\n"
        "The trend (second table, where a task has several sizes): every paired difference regressed on log10 of "
        "the size, one intercept per task; a negative slope means the gain shrinks as the data grows.\n"
    )
    written = ["curve.csv", "curve.md"]
    try:
        plot_curve(curves["final"], out / "curve.png", methods, title="final evaluation")
        written.append("curve.png")
    except ImportError:
        pass
    return written


def aggregate(config: dict, runs: list[Run] | None = None) -> str:
    """`write_report`, returning the best-evaluation markdown table."""
    return write_report(config, runs)[0]
