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
