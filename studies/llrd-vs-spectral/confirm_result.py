"""The confirmation's primary result (studies/llrd-vs-spectral/PROTOCOL.md, stage 2), read off the sweep's tables
mechanically: the screen's winner − tuned LLRD on the final dev score, pooled over every task × seed pair, with the
paired t-test, the sign test, the std of the differences and the effect the pairs can detect; beside it the per-task
differences, the secondary arm (tempbalance-mb) − LLRD, each method − FT, and the SST-2 controls. It states the
verdict only when all the pairs are in (the protocol's fixed size); before that ``--interim`` shows the tables and
concludes nothing.

    python studies/llrd-vs-spectral/confirm_result.py             # studies/llrd-vs-spectral/mpnet-confirm
    python studies/llrd-vs-spectral/confirm_result.py --interim   # while the confirmation runs

Verdict (two-sided, level 0.05): the winner beats tuned LLRD if p < 0.05 and its mean difference is positive,
LLRD beats it if p < 0.05 and the difference is negative, and otherwise no difference was found (with the effect
the pairs could have detected). Exit 2 when the confirmation is incomplete (without ``--interim``) or a table is
missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from detectable_effect import detectable  # this folder is on sys.path when run as a script

STAGE = Path("studies/llrd-vs-spectral/mpnet-confirm")
BASELINE = "llrd"
PAIRS = 60  # 4 tasks × 15 seeds
LEVEL = 0.05
REFERENCE = "tempbalance-mb"  # the secondary arm (amendment 4): reported, no verdict


def _winner(contrasts: pd.DataFrame) -> str:
    names = sorted({c.split(" − ")[0] for c in contrasts["contrast"] if c.endswith(f" − {BASELINE}")} - {REFERENCE})
    if len(names) != 1:
        raise ValueError(f"expected one comparison '<winner> − {BASELINE}' in contrasts.csv, found {names}")
    return names[0]


def _row(frame: pd.DataFrame, label: str, value: str) -> pd.Series | None:
    """The final-score row of ``value`` pooled over every pair: the sweep names that scope ``all``, or, when the
    stage has one size only (the confirmation: 16 per class), after that size ("16 (shots per class)")."""
    rows = frame[(frame[label] == value) & (frame["scope"] != "cell") & (frame["score"] == "final")]
    if (rows["scope"] == "all").any():
        rows = rows[rows["scope"] == "all"]
    elif rows["scope"].nunique() > 1:
        raise ValueError(f"'{value}' is pooled over several sizes {sorted(set(rows['scope']))} and no 'all' row")
    return None if rows.empty else rows.iloc[0]


def _line(name: str, r: pd.Series) -> dict:
    n, sd = int(r["n_pairs"]), 100 * float(r["diff_std"])
    return {
        "comparison": name,
        "pairs": n,
        "difference": f"{100 * float(r['diff_vs_baseline']):+.2f}",
        "std": f"{sd:.2f}",
        "p (t-test)": f"{float(r['p_value']):.2g}",
        "wins:losses:ties": f"{int(r['wins'])}:{int(r['losses'])}:{int(r['ties'])}",
        "p (sign test)": f"{float(r['sign_p']):.2g}" if pd.notna(r["sign_p"]) else "",
        "detectable (80%)": f"{detectable(sd, n):.2f}",
    }


def _markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def verdict(winner: str, r: pd.Series) -> str:
    diff, p, n = 100 * float(r["diff_vs_baseline"]), float(r["p_value"]), int(r["n_pairs"])
    mde = detectable(100 * float(r["diff_std"]), n)
    said = f"{diff:+.2f} points (p {p:.2g}, {n} pairs)"
    if p < LEVEL and diff > 0:
        return f"{winner} beats tuned LLRD: {said}."
    if p < LEVEL:
        return f"Tuned LLRD beats {winner}: {said}."
    return (
        f"No difference found between {winner} and tuned LLRD: {said}; these pairs would detect a true difference "
        f"of {mde:.2f} points with 80% power."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("stage", nargs="?", type=Path, default=STAGE, help=f"The stage folder (default {STAGE}).")
    parser.add_argument("--interim", action="store_true", help="Show the tables before every pair is in.")
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"Pairs of the complete confirmation ({PAIRS}).")
    ns = parser.parse_args(argv)
    try:
        contrasts = pd.read_csv(ns.stage / "contrasts.csv")
        pooled = pd.read_csv(ns.stage / "pooled.csv")
        winner = _winner(contrasts)
        primary = _row(contrasts, "contrast", f"{winner} − {BASELINE}")
        if primary is None:
            raise ValueError(f"no pooled final comparison '{winner} − {BASELINE}' (aggregate again)")
    except (OSError, ValueError, KeyError) as err:
        print(f"confirm_result: {ns.stage}: {err}", file=sys.stderr)
        return 2
    print(f"## Primary: {winner} − {BASELINE} (final dev score ×100)\n")
    print(_markdown([_line(f"{winner} − {BASELINE}", primary)]))
    cells = contrasts[
        (contrasts["contrast"] == f"{winner} − {BASELINE}")
        & (contrasts["scope"] == "cell")
        & (contrasts["score"] == "final")
    ]
    if not cells.empty:
        print("\nPer task:\n")
        print(_markdown([{"task": r["task"], **_line(f"{winner} − {BASELINE}", r)} for _, r in cells.iterrows()]))
    secondary = []
    r = _row(contrasts, "contrast", f"{REFERENCE} − {BASELINE}")
    if r is not None:
        secondary.append(_line(f"{REFERENCE} − {BASELINE}", r))
    for method in (winner, REFERENCE, BASELINE):
        r = _row(pooled, "method", method)
        if r is not None:
            secondary.append(_line(f"{method} − ft", r))
    for name in (f"{winner} − {winner}-once", f"{winner}-once − {winner}-permuted"):
        r = _row(contrasts, "contrast", name)
        if r is not None:
            secondary.append(_line(name, r))
    if secondary:
        print("\nSecondary (no conclusion rides on them):\n")
        print(_markdown(secondary))
    n = int(primary["n_pairs"])
    if n < ns.pairs:
        print(f"\nInterim: {n} of {ns.pairs} pairs; nothing is concluded until all are in.")
        return 0 if ns.interim else 2
    print(f"\nAll {ns.pairs} pairs in. " + verdict(winner, primary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
