"""Choose one learning rate for a model from a selection sweep evaluated on held-out training examples.

    python studies/minilm-gpu/choose_lr.py studies/minilm-gpu/select/results.csv

Reads the sweep's ``results.csv`` (one row per run, with ``learning_rate`` and the ``final`` score on the
``train_holdout`` split), prints the mean final-epoch holdout score of each rate over the (task, seed) runs that
finished at every rate and, on the last line, the rate with the highest mean (the smaller rate on a tie). Refuses
a sweep that was evaluated on dev: choosing on dev would leak the test set into the comparison.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd


def choose(frame: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """The chosen rate and the per-rate table (mean and std of the final holdout score, number of runs)."""
    missing = sorted({"task", "seed", "learning_rate", "final", "eval_split"} - set(frame.columns))
    if missing:
        raise ValueError(f"no column(s) {missing}: give the results.csv that `python -m recipes.sweep` writes")
    if frame.empty:
        raise ValueError("no finished runs to choose from")
    splits = set(frame["eval_split"].dropna())
    if splits != {"train_holdout"}:
        raise ValueError(
            f"the runs were evaluated on {sorted(splits) or 'an unknown split'}, not only on held-out training "
            "examples (run_glue --eval_on_train_holdout N): a rate chosen on dev would leak it into the comparison"
        )
    # Only the (task, seed) runs that finished at every rate: a rate missing its hard task would look better.
    wide = frame.pivot_table(index=["task", "seed"], columns="learning_rate", values="final").dropna()
    if wide.empty:
        raise ValueError("no (task, seed) finished at every learning rate: run the rest of the selection sweep")
    table = pd.DataFrame({"mean": wide.mean(), "std": wide.std(), "runs": wide.count()}).sort_index()
    best = table["mean"].max()
    return float(table.index[table["mean"] == best][0]), table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_csv", help="The selection sweep's results.csv.")
    ns = parser.parse_args(argv)
    try:
        lr, table = choose(pd.read_csv(ns.results_csv))
    except (ValueError, OSError) as err:
        print(f"choose_lr: {err}", file=sys.stderr)
        return 2
    shown = table.assign(mean=100 * table["mean"], std=100 * table["std"])
    shown.index = [f"{x:g}" for x in shown.index]
    shown.index.name = "learning_rate"
    print(shown.to_string(float_format=lambda x: f"{x:.2f}"), file=sys.stderr)
    print(f"{lr:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
