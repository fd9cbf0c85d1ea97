"""Choose each method's setting per task from a tuning sweep evaluated on held-out training examples.

    python studies/llrd-vs-spectral/choose_settings.py studies/llrd-vs-spectral/minilm_tune_ft.yaml   # from the root

A tuning sweep names its variants ``<family>_<setting>`` (``ft_lr2e-4_ep10``, ``llrd_d0.9``): the variants of one
family are the trials of one method. Per task and family the variant with the highest mean **final** score on the
held-out training examples (``--eval_on_train_holdout``) wins, over the seeds every variant of the family finished;
a tie (equal to 4 decimals) goes to the variant listed first in the config. Refuses a sweep evaluated on dev, and
one with unfinished trials (unless ``--partial``).

Writes ``<output_dir>/selection.md`` (every trial's mean and std, the chosen ones in bold) and
``<output_dir>/chosen.yaml`` (per task and family the chosen variant's settings: its ``method_args`` entry, with the
task's own ``method_args`` for it, without ``method``), and prints the latter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # run as a script: `recipes` is in the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from recipes.sweep import collect, expand_grid, load_config  # noqa: E402


def family(method: str) -> str:
    return method.split("_", 1)[0]


def choose(config: dict, *, partial: bool = False, families: list[str] | None = None) -> tuple[dict, str]:
    """(task -> family -> {"variant": name, **settings}, the selection table in markdown); ``families``: only these
    methods (e.g. the one a later tuning step needs first)."""
    runs = expand_grid(config)
    results = collect(config["output_dir"], runs)
    if results.empty:
        raise ValueError(f"no finished runs in {config['output_dir']}: run the tuning sweep first")
    splits = set(results["eval_split"])
    if splits != {"train_holdout"}:
        raise ValueError(
            f"the runs were evaluated on {sorted(splits)}, not only on held-out training examples "
            "(--eval_on_train_holdout N): settings chosen on dev would leak it into the comparison"
        )
    expected = {(r.task, r.method) for r in runs}
    order = {m: i for i, m in enumerate(config["methods"])}
    method_args = config.get("method_args") or {}
    chosen: dict = {}
    lines = ["| task | method | trial | final holdout score (mean ± std ×100) | seeds |", "|---|---|---|---|---|"]
    for task in dict.fromkeys(r.task for r in runs):
        part = results[results["task"] == task]
        wide = part.pivot_table(index="seed", columns="method", values="final")
        for fam in dict.fromkeys(family(m) for m in config["methods"]):
            if families is not None and fam not in families:
                continue
            variants = [m for m in config["methods"] if family(m) == fam and (task, m) in expected]
            missing = [m for m in variants if m not in wide.columns]
            if missing and not partial:
                raise ValueError(f"{task}: {missing} have no finished run yet (or pass --partial)")
            table = wide[[m for m in variants if m in wide.columns]].dropna()
            if table.empty and partial:  # nothing to choose from yet: the other methods can be chosen already
                continue
            if table.empty:
                raise ValueError(f"{task}, {fam}: no seed finished every trial")
            if len(table) < len(set(r.seed for r in runs)) and not partial:
                raise ValueError(f"{task}, {fam}: only seeds {list(table.index)} finished every trial")
            means = table.mean().round(4)
            best = max(means.index, key=lambda m: (means[m], -order[m]))
            task_args = ((config["tasks"].get(task) or {}).get("method_args") or {}).get(best) or {}
            merged = {**(method_args.get(best) or {}), **task_args}  # the trial's settings, the task's own included
            entry = {k: v for k, v in merged.items() if k != "method"}
            chosen.setdefault(task, {})[fam] = {"variant": best, **entry}
            for m in sorted(table.columns, key=order.get):
                text = f"{100 * table[m].mean():.2f} ± {100 * table[m].std(ddof=1):.2f}"
                name = f"**{m}**" if m == best else m
                lines.append(f"| {task} | {fam} | {name} | {text} | {len(table)} |")
    note = (
        "\nChosen (bold): the trial with the highest mean final score on 200 held-out training examples, over the "
        "seeds that finished every trial of the method; a tie goes to the trial listed first "
        "(studies/llrd-vs-spectral/choose_settings.py).\n"
    )
    return chosen, "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("config", help="The tuning sweep's YAML config.")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="A preview: choose from the seeds that finished every trial so far (methods with none left out), and "
        "print it without writing selection.md or chosen.yaml.",
    )
    parser.add_argument("--families", help="Comma-separated: choose only these methods (e.g. llrd).")
    ns = parser.parse_args(argv)
    families = [f.strip() for f in ns.families.split(",")] if ns.families else None
    try:
        config = load_config(ns.config)
        chosen, table = choose(config, partial=ns.partial, families=families)
    except (ValueError, OSError) as err:
        print(f"choose_settings: {err}", file=sys.stderr)
        return 2
    if ns.partial:  # a preview: the files are only written from complete trials
        print(table, file=sys.stderr)
        print(yaml.safe_dump(chosen, sort_keys=False))
        return 0
    out = Path(config["output_dir"])
    (out / "selection.md").write_text(f"Tuning on held-out training examples ({ns.config}):\n\n{table}")
    text = yaml.safe_dump(chosen, sort_keys=False)
    (out / "chosen.yaml").write_text(text)
    print(table, file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
