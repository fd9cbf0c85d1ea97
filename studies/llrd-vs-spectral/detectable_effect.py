"""The effect a paired comparison could detect: from a sweep's ``contrasts.csv`` (or ``pooled.csv``), per pooled row
the observed mean difference, its std over the pairs, and the smallest true difference a two-sided paired t-test at
level α would detect with the given power with that many pairs and that std.

    python studies/llrd-vs-spectral/detectable_effect.py studies/llrd-vs-spectral/mpnet-confirm/contrasts.csv
    python studies/llrd-vs-spectral/detectable_effect.py studies/llrd-vs-spectral/minilm-screen/pooled.csv --score best

MDE = (t_{1−α/2, n−1} + t_{power, n−1}) × sd / √n (the normal approximation with t quantiles); scores ×100.
"""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd
from scipy.stats import t


def detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n)


def table(frame: pd.DataFrame, score: str, alpha: float, power: float) -> pd.DataFrame:
    rows = frame[(frame["score"] == score) & (frame["scope"] != "cell")].copy()
    label = "contrast" if "contrast" in rows.columns else "method"
    out = pd.DataFrame(
        {
            "comparison": rows[label],
            "scope": rows["scope"],
            "pairs": rows["n_pairs"].astype(int),
            "difference": 100 * rows["diff_vs_baseline"],
            "sd": 100 * rows["diff_std"],
            "p (t-test)": rows["p_value"],
            "p (sign test)": rows["sign_p"],
        }
    )
    out["detectable"] = [detectable(sd, n, alpha, power) for sd, n in zip(out["sd"], out["pairs"], strict=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("csv", help="A sweep's contrasts.csv or pooled.csv (with diff_std and sign_p columns).")
    parser.add_argument("--score", default="final", choices=["final", "best"])
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    ns = parser.parse_args(argv)
    frame = pd.read_csv(ns.csv)
    missing = sorted({"score", "scope", "n_pairs", "diff_vs_baseline", "diff_std", "sign_p"} - set(frame.columns))
    if missing:
        print(f"detectable_effect: {ns.csv} has no column(s) {missing} (aggregate it again)", file=sys.stderr)
        return 2
    rows = table(frame, ns.score, ns.alpha, ns.power)
    head = list(rows.columns)
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for _, r in rows.iterrows():  # markdown without pandas' optional tabulate
        cells = [str(v) if isinstance(v, str | int) else f"{v:.3g}" for v in r.tolist()]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
