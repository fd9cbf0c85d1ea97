"""The screen's decision rule (studies/llrd-vs-spectral/PROTOCOL.md), applied mechanically: of ``llrd-alpha``,
``tb-se`` and ``alphadecay``, the one with the largest pooled mean difference against ``llrd`` on the final
evaluation goes on to the confirmation (an exact tie goes to the one listed first). It is applied once, when every
pair is in (amendment 2); before that ``--interim`` shows the table and decides nothing.

    python studies/llrd-vs-spectral/screen_winner.py             # studies/llrd-vs-spectral/minilm-screen/contrasts.csv
    python studies/llrd-vs-spectral/screen_winner.py --interim   # while the screen runs

Prints the winner's name last (for ``make_study_configs mpnet-tune-methods --winner``); exit 2 when the screen is
not complete (without ``--interim``) or a comparison is missing.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

CONTRASTS = "studies/llrd-vs-spectral/minilm-screen/contrasts.csv"
CANDIDATES = ("llrd-alpha", "tb-se", "alphadecay")
BASELINE = "llrd"
PAIRS = 120  # 6 tasks × 20 seeds (amendment 1)


def pooled(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate: the pooled final-evaluation comparison against the baseline over every pair."""
    rows = frame[(frame["score"] == "final") & (frame["scope"] == "all")]
    out = []
    for name in CANDIDATES:
        row = rows[rows["contrast"] == f"{name} − {BASELINE}"]
        if len(row) != 1:
            raise ValueError(f"no pooled final comparison '{name} − {BASELINE}' in the contrasts (aggregate again)")
        r = row.iloc[0]
        out.append(
            {
                "method": name,
                "pairs": int(r["n_pairs"]),
                "difference": 100 * float(r["diff_vs_baseline"]),
                "p (t-test)": float(r["p_value"]),
                "wins:losses:ties": f"{int(r['wins'])}:{int(r['losses'])}:{int(r['ties'])}",
                "p (sign test)": float(r["sign_p"]),
            }
        )
    return pd.DataFrame(out)


def winner(table: pd.DataFrame) -> str:
    """The largest pooled difference; ``idxmax`` keeps the first of exact ties, the order of CANDIDATES."""
    return str(table.loc[table["difference"].idxmax(), "method"])


def _cell(column: str, value) -> str:
    if column == "difference":
        return f"{value:+.2f}"
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("csv", nargs="?", default=CONTRASTS, help=f"The screen's contrasts.csv (default {CONTRASTS}).")
    parser.add_argument("--interim", action="store_true", help="Show the table before every pair is in; no decision.")
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"Pairs of the complete screen (default {PAIRS}).")
    ns = parser.parse_args(argv)
    try:
        table = pooled(pd.read_csv(ns.csv))
    except (OSError, ValueError, KeyError) as err:
        print(f"screen_winner: {ns.csv}: {err}", file=sys.stderr)
        return 2
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for _, r in table.iterrows():
        cells = [_cell(k, v) for k, v in r.items()]
        print("| " + " | ".join(cells) + " |")
    done = table["pairs"].min()
    if done < ns.pairs or table["pairs"].nunique() != 1:
        print(f"\nInterim: {done} of {ns.pairs} pairs per comparison; the rule decides nothing until all are in.")
        return 0 if ns.interim else 2
    print(f"\nAll {ns.pairs} pairs in. Winner (largest pooled final difference against {BASELINE}):")
    print(winner(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
