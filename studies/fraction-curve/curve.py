"""The fraction-curve study's analysis (PROTOCOL.md beside this file): the gain of each method over FT and over LLRD
against the data fraction, per protocol and model, from every finished stage; the trend tests; how far α moved at
each fraction; the frozen-profile control; and the primary verdict once every planned pair is in.

    python studies/fraction-curve/curve.py              # writes curve.md, curve.csv, alpha.csv and the figures
    python studies/fraction-curve/curve.py --interim    # the same while runs are missing: concludes nothing

Protocol (a) (``mb_*.yaml``) is scored on its best epoch, as Model Balancing reports; protocol (b) (``ours_*.yaml``)
on its final evaluation. Scores ×100 in the tables.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

try:
    from recipes import sweep
except ImportError:  # run as a script from the repository root without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from recipes import sweep

import make_configs as make

PROTOCOLS = {"mb": ("protocol (a): Model Balancing's, as published", "best"), "ours": ("protocol (b): ours", "final")}
SPECTRAL = ("tempbalance-mb", "llrd-alpha", "tempbalance-mb-farms", "tempbalance-mb-once")
PRIMARY = [("tempbalance-mb", "ft"), ("tempbalance-mb", "llrd")]  # the two pre-registered trend tests (protocol b)
PRIMARY_MODEL = "minilm"
LEVEL = 0.05


def planned(kind: str, model: str) -> dict[float, int]:
    """Fraction -> the number of seeds the plan runs there, for one protocol and model."""
    return {f: len(p[kind]) for (m, _, f), p in make.PLAN.items() if m == model and p.get(kind)}


def tuned_fractions(model: str) -> list[float]:
    """The fractions of protocol (b) whose settings were tuned there (the primary tests' fractions)."""
    return sorted(f for (m, _, f), p in make.PLAN.items() if m == model and p.get("tune") and p.get("ours"))


def gather(kind: str, model: str):
    """Every finished run of one protocol and model over its configs, as one results frame (sweep.collect's rows)."""
    import pandas as pd

    frames = []
    for path in sorted(make.HERE.glob(f"{kind}_{model}_*.yaml")):
        config = sweep.load_config(path)
        if Path(config["output_dir"]).is_dir():
            frames.append(sweep.collect(config["output_dir"], sweep.expand_grid(config)))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gather_alpha(kind: str, model: str):
    import pandas as pd

    frames = []
    for path in sorted(make.HERE.glob(f"{kind}_{model}_*.yaml")):
        config = sweep.load_config(path)
        if Path(config["output_dir"]).is_dir():
            frames.append(sweep.collect_alpha(config["output_dir"], sweep.expand_grid(config)))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def alpha_movement(alphas):
    """Per (model, fraction, method): sweep.stats.alpha_spread's columns, and whether α moved: the largest change of
    a block's α from step 0 to the last pass (mean over seeds) against twice the fit's standard error of a block's α
    and against the spread of α over blocks at step 0."""
    spread = sweep.alpha_spread(alphas)
    spread["move_over_fit_se"] = spread["max_move"] / spread["fit_se_step0"]
    spread["move_over_spread"] = spread["max_move"] / spread["spread_step0"]
    spread["moved"] = spread["max_move"] > 2 * spread["fit_se_step0"]
    return spread


def verdict(trend, complete: bool) -> list[str]:
    """The primary tests (PROTOCOL.md): per pair of PRIMARY, the pooled slope of the paired difference on log10
    fraction, Holm-adjusted over the two tests at LEVEL; stated only when ``complete``."""
    lines = []
    rows = []
    for method, base in PRIMARY:
        part = trend[(trend["method"] == method) & (trend["baseline"] == base)]
        pooled = part[part["scope"] == "all"] if (part["scope"] == "all").any() else part
        if pooled.empty:
            return ["Primary tests: no data yet."]
        rows.append((method, base, pooled.iloc[0]))
    order = sorted(range(len(rows)), key=lambda i: rows[i][2]["p_value"])
    holm, running = {}, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(rows) - rank) * rows[i][2]["p_value"]))
        holm[i] = running
    for i, (method, base, row) in enumerate(rows):
        slope, se, p = 100 * row["slope"], 100 * row["slope_se"], holm[i]
        if not complete:
            state = "interim, decides nothing"
        elif p < LEVEL:
            state = "the gain shrinks as the fraction grows" if slope < 0 else "the gain grows as the fraction grows"
        else:
            state = "no trend found"
        lines.append(
            f"- {method} − {base}: slope {slope:+.2f} points per tenfold more data (SE {se:.2f}, "
            f"95% interval {slope - 1.96 * se:+.2f} to {slope + 1.96 * se:+.2f}), {int(row['n_pairs'])} pairs, "
            f"Holm-adjusted p {p:.2g}: **{state}**"
        )
    return lines


def _complete(results, kind: str, model: str, fractions) -> bool:
    """Every planned (fraction, method, seed) of ft, llrd and tempbalance-mb finished at these fractions."""
    need = planned(kind, model)
    for f in fractions:
        part = results[(results["size"] == f)] if not results.empty else results
        for method in ("ft", "llrd", "tempbalance-mb"):
            if part.empty or (part["method"] == method).sum() < need.get(f, 0):
                return False
    return True


def analyse(interim: bool = False) -> str:
    """Write curve.md, curve.csv, alpha.csv and the figures into the study folder; return curve.md's text."""
    import pandas as pd

    out = make.HERE
    text = ["# The fraction curve: tables (written by curve.py)", ""]
    curves, alphas = [], []
    for model in make.MODELS:
        for kind, (title, score) in PROTOCOLS.items():
            results = gather(kind, model)
            if results.empty:
                continue
            methods = [m for m in ("ft", "llrd", *SPECTRAL) if m in set(results["method"])]
            text += [f"## {model}, {title} ({score} evaluation)", ""]
            for base in ("ft", "llrd"):
                if base not in set(results["method"]):
                    continue
                curve = sweep.stats.size_curve(results, baseline=base, score=score)
                trend = sweep.stats.size_trend(results, baseline=base, score=score)
                curves.append(curve.assign(protocol=kind, score=score))
                text += [f"Each method − {base}:", "", sweep.report.curve_markdown(curve, trend), ""]
                if len(set(curve["size"])) > 1:
                    name = f"curve_{kind}_{model}" + ("" if base == "ft" else f"_vs_{base}") + ".png"
                    shown = [m for m in methods if m != base]
                    sweep.report.plot_curve(curve, out / name, shown, title=f"{model}, {title}, {score} evaluation")
                    text += [f"![{name}]({name})", ""]
            if kind == "ours" and model == PRIMARY_MODEL:
                fractions = tuned_fractions(model)
                core = results[results["size"].isin(fractions)]
                complete = _complete(results, kind, model, fractions)
                trends = pd.concat(
                    [sweep.stats.size_trend(core, baseline=b, score=score) for b in ("ft", "llrd")], ignore_index=True
                )
                text += [
                    f"**Primary tests** (protocol (b), {model}, the tuned fractions "
                    f"{', '.join(f'{100 * f:g}%' for f in fractions)}; slope of the paired difference on log10 "
                    "fraction, two tests, Holm at 0.05):",
                    "",
                    *verdict(trends, complete and not interim),
                    "",
                ]
            alpha = gather_alpha(kind, model)
            if not alpha.empty:
                alphas.append(alpha_movement(alpha).assign(protocol=kind))
    if alphas:
        table = pd.concat(alphas, ignore_index=True)
        table.to_csv(out / "alpha.csv", index=False)
        text += ["## How far α moved (spectral runs)", "", _alpha_markdown(table), ""]
    if curves:
        pd.concat(curves, ignore_index=True).to_csv(out / "curve.csv", index=False)
    body = "\n".join(text) + "\n"
    (out / "curve.md").write_text(body)
    return body


def _alpha_markdown(table) -> str:
    head = ["protocol", "model", "fraction", "method", "seeds", "passes", "α spread over blocks (step 0)",
            "fit SE of a block's α", "max over blocks of abs(α_last − α_0)", "÷ fit SE", "÷ spread",
            "moved (> 2 fit SE)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        se = "n/a" if math.isnan(r["fit_se_step0"]) else f"{r['fit_se_step0']:.3f}"
        ratio = "n/a" if math.isnan(r["move_over_fit_se"]) else f"{r['move_over_fit_se']:.2f}"
        cells = [r["protocol"], r["model"], f"{100 * r['size']:g}%", r["method"], str(r["n_seeds"]),
                 f"{r['updates']:.0f}", f"{r['spread_step0']:.3f}", se, f"{r['max_move']:.4f}", ratio,
                 f"{r['move_over_spread']:.3f}", "yes" if r["moved"] else "no"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--interim", action="store_true", help="runs are missing: state no verdict")
    ns = parser.parse_args(argv)
    print(analyse(interim=ns.interim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
