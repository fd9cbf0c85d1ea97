"""The pre-registered paired comparisons of a one-stage study, from its results.csv: for each "A − B" the mean
difference of the final scores (×100) over the task × seed pairs both finished, its 95% interval, the two-sided
paired t-test, the exact sign test, the effect the pairs could detect (80% power, α 0.05), per task and pooled,
and each method's mean wall time per run.

    python studies/paired_verdict.py studies/profile-search/minilm/results.csv "llrd-search - llrd" "llrd - ft"

A study's protocol names its primary comparison first; this prints a markdown table per comparison.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict

from scipy import stats


def read(path: str) -> tuple[dict[tuple[str, str, int], float], dict[str, list[float]]]:
    """``(task, method, seed) -> final score ×100`` and ``method -> run seconds``."""
    scores, seconds = {}, defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["final"] in ("", "nan"):
                continue
            scores[(row["task"], row["method"], int(row["seed"]))] = 100 * float(row["final"])
            seconds[row["method"]].append(float(row["run_seconds"]))
    return scores, seconds


def compare(diffs: list[float]) -> dict[str, float]:
    """Mean, std, 95% interval, paired t-test p, sign-test p and detectable effect (80% power) of differences."""
    n = len(diffs)
    mean = math.fsum(diffs) / n
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    p = stats.ttest_1samp(diffs, 0.0).pvalue if n > 1 and std > 0 else (1.0 if n > 1 else math.nan)
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    sign = stats.binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
    detect = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return dict(n=n, mean=mean, std=std, low=mean - half, high=mean + half, p=float(p), wins=wins, losses=losses,
                ties=n - wins - losses, sign_p=float(sign), detectable=detect)  # fmt: skip


def table(scores: dict, a: str, b: str) -> list[tuple[str, dict[str, float]]]:
    """Per task and pooled: ``compare`` of a − b over the (task, seed) pairs both finished."""
    pairs = defaultdict(list)
    for (task, method, seed), score in scores.items():
        if method == a and (task, b, seed) in scores:
            pairs[task].append(score - scores[(task, b, seed)])
    rows = [(task, compare(d)) for task, d in sorted(pairs.items())]
    pooled = [d for ds in pairs.values() for d in ds]
    return rows + ([("**pooled**", compare(pooled))] if pooled else [])


def markdown(scores: dict, comparison: str) -> str:
    a, b = (x.strip() for x in comparison.replace("−", "-").split(" - "))
    lines = [f"**{a} − {b}** (final score ×100)", "",
             "| scope | pairs | diff | 95% interval | std | p (t) | w:l:t | p (sign) | detectable (80%) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for scope, r in table(scores, a, b):
        lines.append(
            f"| {scope} | {r['n']} | {r['mean']:+.2f} | {r['low']:+.2f} to {r['high']:+.2f} | {r['std']:.2f} | "
            f"{r['p']:.3g} | {r['wins']}:{r['losses']}:{r['ties']} | {r['sign_p']:.3g} | {r['detectable']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the study stage's results.csv")
    parser.add_argument("comparisons", nargs="+", help='"A - B", the primary first')
    args = parser.parse_args(argv)
    scores, seconds = read(args.results)
    for comparison in args.comparisons:
        print(markdown(scores, comparison), end="\n\n")
    print("| method | runs | mean wall time per run (s) |\n|---|---|---|")
    for method, times in sorted(seconds.items()):
        print(f"| {method} | {len(times)} | {math.fsum(times) / len(times):.0f} |")


if __name__ == "__main__":
    main()
