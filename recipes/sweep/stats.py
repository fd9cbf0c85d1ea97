"""Paired statistics of a sweep: per cell (model, task, size, LoRA) and pooled over cells, each method against the
baseline (and the config's contrasts, A against B) with the paired t-test and the sign count over seeds; the
learning-rate curves of held-out runs; the spread of TempBalance's block α against its noise."""

from __future__ import annotations

import math

import numpy as np

from .grid import SIZES
from .results import CELL


def size_text(key: str, size, mixed: bool) -> str:
    text = f"{size:g}" if key == "fraction" else str(int(size))
    return f"{text} ({SIZES[key].label})" if mixed else text


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean difference a - b and the paired t-test p-value (nan with < 2 pairs or no variation)."""
    from scipy.stats import ttest_rel

    diff = float(np.mean(np.subtract(a, b)))
    if len(a) < 2 or np.allclose(np.subtract(a, b), np.subtract(a, b)[0]):
        return diff, math.nan
    return diff, float(ttest_rel(a, b).pvalue)


def signs(a: list[float], b: list[float]) -> dict[str, int]:
    """Sign count of the paired differences a - b: wins (a > b), losses (a < b) and ties."""
    d = np.subtract(a, b)
    return {"wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum())}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (ties left out): the p-value of ``wins`` against ``losses`` under 50:50."""
    from scipy.stats import binomtest

    n = wins + losses
    return float(binomtest(wins, n, 0.5).pvalue) if n else math.nan


def _cell(key: tuple, method: str) -> dict:
    """The columns of a cell (`CELL`: model, task, size_key, size, lora) and the method, from a groupby key."""
    row = dict(zip(CELL, key, strict=True))
    return {**row, "lora": bool(row["lora"]), "method": method}


def _with_defaults(frame):
    """Frames from before the model or LoRA columns (tests, old records): one unnamed model, no LoRA."""
    if "model" not in frame.columns:
        frame = frame.assign(model="")
    if "lora" not in frame.columns:
        frame = frame.assign(lora=False)
    return frame


def summarize(results, baseline: str = "ft", score: str = "best"):
    """Per (model, task, size, LoRA): mean ± std over seeds per method, and each method − baseline with its p-value
    (paired t-test) and sign count (wins, losses, ties over the seeds).

    Differences are paired by seed (only seeds that both methods finished: ``n_pairs``). Returns a DataFrame with
    one row per (model, task, size, LoRA, method).
    """
    import pandas as pd

    results = _with_defaults(results)
    rows = []
    for key, cell in results.groupby(CELL, sort=True):
        base = cell[cell["method"] == baseline].set_index("seed")[score]
        for method, group in cell.groupby("method", sort=False):
            scores = group.set_index("seed")[score]
            row = {
                **_cell(key, method),
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
                row["diff_vs_baseline"], row["p_value"] = paired(a, b)
                row |= {"n_pairs": len(seeds), **signs(a, b)}
            rows.append(row)
    return pd.DataFrame(rows)


POOLED_COLUMNS = [
    "model", "lora", "scope", "method", "n_cells", "n_pairs", "baseline_mean", "mean", "diff_vs_baseline", "p_value",
    "wins", "losses", "ties", "sign_p", "diff_std",
]  # fmt: skip


def pooled(results, baseline: str = "ft", score: str = "best"):
    """Per model (and LoRA or not), each method − baseline pooled over every (task, size, seed) pair both finished:
    the mean score of each over those pairs, the mean difference and its std, a paired t-test over all the pairs,
    the sign count and the exact sign test. One row per model, LoRA, scope (``all`` sizes, then each size on its
    own) and method."""
    import pandas as pd

    results = _with_defaults(results)
    rows = []
    for (model, lora), frame in results.groupby(["model", "lora"], sort=True):
        scopes = [("all", frame)]
        for (key, size), part in frame.groupby(["size_key", "size"], sort=True):
            scopes.append((size_text(key, size, True), part))
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
                diff, p = paired(a, b)
                count = signs(a, b)
                cells = both.reset_index()[["task", "size_key", "size"]].drop_duplicates()
                rows.append(
                    {
                        "model": model,
                        "lora": bool(lora),
                        "scope": scope,
                        "method": method,
                        "n_cells": len(cells),
                        "n_pairs": len(both),
                        "baseline_mean": float(np.mean(b)),
                        "mean": float(np.mean(a)),
                        "diff_vs_baseline": diff,
                        "p_value": p,
                        **count,
                        "sign_p": sign_test(count["wins"], count["losses"]),
                        "diff_std": float(np.std(np.subtract(a, b), ddof=1)) if len(a) > 1 else math.nan,
                    }
                )
    return pd.DataFrame(rows, columns=POOLED_COLUMNS)


CONTRAST_COLUMNS = [
    "contrast", "model", "lora", "scope", "task", "size_key", "size", "n_pairs", "diff_vs_baseline", "p_value",
    "wins", "losses", "ties", "sign_p", "diff_std",
]  # fmt: skip


def contrast_frame(results, pairs: list[tuple[str, str]], score: str = "best"):
    """Each contrast A − B paired by seed: one row per (model, task, size, LoRA) where both finished, then the pooled
    rows (scope ``all``, then each size) over every (task, size, seed) pair, as `summarize` and `pooled` compute them.
    Plain runs are paired with plain runs and LoRA runs with LoRA runs (``lora`` is part of every cell)."""
    import pandas as pd

    results = _with_defaults(results)
    present = set(results["method"])
    frames = []
    for a, b in pairs:
        if a not in present or b not in present:
            continue
        both = results[results["method"].isin([a, b])]
        cells = summarize(both, baseline=b, score=score)
        cells = cells[(cells["method"] == a) & (cells["n_pairs"] > 0)].assign(scope="cell")
        pools = pooled(both, baseline=b, score=score)
        frames += [cells.assign(contrast=f"{a} − {b}"), pools.assign(contrast=f"{a} − {b}")]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=CONTRAST_COLUMNS)
    return pd.concat(frames, ignore_index=True).reindex(columns=CONTRAST_COLUMNS)


def curves(results):
    """Per (model, task, size, LoRA, method): the mean over seeds of each evaluation's score (``epoch_scores``; runs
    with another number of evaluations than the cell's first are left out), the best evaluation and its number
    (1-based). For choosing the learning rate and epochs on held-out training examples."""
    import pandas as pd

    rows = []
    for key, group in _with_defaults(results).groupby([*CELL, "method"], sort=True):
        lists = [[float(x) for x in str(text).split()] for text in group["epoch_scores"] if str(text).strip()]
        lists = [x for x in lists if lists and len(x) == len(lists[0])]
        if not lists:
            continue
        mean = np.mean(lists, axis=0)
        rows.append(
            {
                **_cell(key[:-1], key[-1]), "learning_rate": group["learning_rate"].iloc[0], "n_seeds": len(lists),
                "mean_scores": mean.tolist(), "best_eval": int(np.argmax(mean)) + 1, "best_mean": float(mean.max()),
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def alpha_spread(alphas):
    """Per (model, task, size, LoRA, method): the spread of block α at step 0 (max − min over blocks, mean over
    seeds) against the noise of α: the standard error of a block's α from its fits (median over blocks, mean over
    seeds; NaN for histories that do not record it) and the run-to-run noise (std over seeds of each block's α, the
    largest over blocks) at step 0 and at the last update; and how far α moved during training (the largest
    |α_last − α_step0| over blocks, mean over seeds). Seeds that start from the same pretrained weights have the
    same α at step 0 (seed std 0): there only the fit error says whether the spread is more than noise."""
    import pandas as pd

    rows = []
    for key, cell in _with_defaults(alphas).groupby([*CELL, "method"], sort=True):
        wide0 = cell.pivot_table(index="seed", columns="block", values="alpha_step0")
        wide_last = cell.pivot_table(index="seed", columns="block", values="alpha_last")
        factors = cell.pivot_table(index="seed", columns="block", values="factor_step0")
        se0 = cell.pivot_table(index="seed", columns="block", values="alpha_se_step0", dropna=False)
        moved = (wide_last - wide0).abs().max(axis=1)
        rows.append(
            {
                **_cell(key[:-1], key[-1]),
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


CURVE_COLUMNS = [
    "model", "lora", "task", "size_key", "size", "n_train", "method", "baseline", "n_pairs", "diff", "diff_std",
    "ci_low", "ci_high", "p_value", "detectable",
]  # fmt: skip


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at level ``alpha`` detects with ``power``, from
    ``n`` pairs whose differences have std ``sd``: (t_{1−α/2, n−1} + t_{power, n−1}) · sd / √n (NaN with < 2 pairs)."""
    from scipy.stats import t

    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n))


def size_curve(results, baseline: str = "ft", score: str = "final", level: float = 0.95):
    """The gain over the baseline as a function of the training-set size: per (model, LoRA, task, size, method),
    the mean of the paired differences method − baseline over the seeds both finished, their std, the ``level``
    t-interval of the mean, the paired t-test's p and the difference those pairs detect with 80% power at α 0.05
    (`detectable_effect`). One row per method other than the baseline (the baseline is 0 by construction)."""
    import pandas as pd
    from scipy.stats import t

    rows = []
    frame = _with_defaults(results)
    for key, cell in frame.groupby(CELL, sort=True):
        wide = cell.pivot_table(index="seed", columns="method", values=score)
        if baseline not in wide.columns:
            continue
        n_train = cell["n_train"].dropna()
        for method in [m for m in dict.fromkeys(cell["method"]) if m != baseline]:
            both = wide[[baseline, method]].dropna()
            if both.empty:
                continue
            d = (both[method] - both[baseline]).to_numpy(dtype=float)
            n = len(d)
            sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
            half = float(t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
            mean, p = paired(both[method].tolist(), both[baseline].tolist())
            row = _cell(key, method)
            rows.append(
                {
                    **row, "n_train": int(n_train.iloc[0]) if len(n_train) else math.nan, "baseline": baseline,
                    "n_pairs": n, "diff": mean, "diff_std": sd, "ci_low": mean - half, "ci_high": mean + half,
                    "p_value": p, "detectable": detectable_effect(sd, n),
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


TREND_COLUMNS = [
    "model", "lora", "scope", "method", "baseline", "n_sizes", "n_pairs", "slope", "slope_se", "p_value",
    "diff_at_smallest", "diff_at_largest",
]  # fmt: skip


def _ols_slope(x, y, groups) -> tuple[float, float, float]:
    """Slope of y on x with one intercept per group (ordinary least squares), its standard error and the two-sided
    p of slope = 0 (t with n − groups − 1 degrees of freedom); NaN where the data cannot say."""
    from scipy.stats import t

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    levels = list(dict.fromkeys(groups))
    design = np.column_stack([x, *[(np.asarray(groups) == g).astype(float) for g in levels]])
    dof = len(y) - design.shape[1]
    if dof < 1 or np.linalg.matrix_rank(design) < design.shape[1]:
        return math.nan, math.nan, math.nan
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    sigma2 = float(resid @ resid) / dof
    se = math.sqrt(sigma2 * np.linalg.inv(design.T @ design)[0, 0])
    if se == 0:
        return float(coef[0]), 0.0, math.nan
    return float(coef[0]), se, float(2 * t.sf(abs(coef[0] / se), dof))


def size_trend(results, baseline: str = "ft", score: str = "final"):
    """Does the gain over the baseline change with the training-set size? Per (model, LoRA, method), for each task
    on its own and pooled over the tasks (scope ``all``, one intercept per task), the regression of every paired
    difference method − baseline on log10 of the size (the fraction, shots or examples of the task's subset): the
    slope per tenfold more data, its standard error and the p of slope = 0. A negative slope: the gain shrinks as
    the data grows. Cells with one size are left out (nothing to regress on)."""
    import pandas as pd

    frame = _with_defaults(results)
    pairs = []
    for key, cell in frame.groupby(CELL, sort=True):
        wide = cell.pivot_table(index="seed", columns="method", values=score)
        if baseline not in wide.columns:
            continue
        for method in wide.columns.drop(baseline):
            both = wide[[baseline, method]].dropna()
            row = _cell(key, method)
            pairs += [{**row, "x": math.log10(row["size"]), "d": d} for d in both[method] - both[baseline]]
    if not pairs:
        return pd.DataFrame(columns=TREND_COLUMNS)
    pairs = pd.DataFrame(pairs)
    rows = []
    for (model, lora, method), part in pairs.groupby(["model", "lora", "method"], sort=True):
        sized = part.groupby("task")["x"].nunique()
        part = part[part["task"].isin(sized[sized > 1].index)]
        scopes = [(task, group) for task, group in part.groupby("task", sort=True)]
        if len(scopes) > 1:
            scopes = [("all", part), *scopes]
        for scope, group in scopes:
            slope, se, p = _ols_slope(group["x"], group["d"], group["task"])
            means = group.groupby("x")["d"].mean() if scope != "all" else pd.Series([math.nan])  # x is per task
            rows.append(
                {
                    "model": model, "lora": bool(lora), "scope": scope, "method": method, "baseline": baseline,
                    "n_sizes": group.groupby("task")["x"].nunique().sum(), "n_pairs": len(group), "slope": slope,
                    "slope_se": se, "p_value": p, "diff_at_smallest": float(means.iloc[0]),
                    "diff_at_largest": float(means.iloc[-1]),
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=TREND_COLUMNS)
