"""Is TempBalance spreading learning rates over α differences that are mostly estimation noise?

At step 0 every seed of a fine-tuning run sees the same pretrained weights, so the run-to-run noise of α is exactly
zero and says nothing about how well α is known. What does is the standard error of the power-law fit itself: the
maximum-likelihood α of a tail of n eigenvalues has standard error (α − 1)/√n (Clauset, Shalizi & Newman 2009,
eq. 3.2). This script fits the model once with the given TempBalance options, propagates that error to each
unit's mean α and, by Monte Carlo (each matrix's α drawn from N(α, se²), independently), to the learning-rate
factors, and prints per unit: α ± se, the factor, and the 5-95% range of the factor over the draws; then the spread
of unit α (max − min, std) against the typical unit se, and how often the top and bottom units stay the same.

    python scripts/alpha_noise.py ~/.cache/tb_hf/mpnet-base --tb_mapping sigmoid --tb_xmin_pos 1.5
    python scripts/alpha_noise.py ~/.cache/tb_hf/mpnet-base                      # library defaults
    python scripts/alpha_noise.py ~/.cache/tb_hf/smollm2-135m --lora --tb_mapping sigmoid --tb_xmin_pos 1.5

Every tb_* option of TempBalanceArguments is accepted (--help lists them).

The standard error assumes the tail really is a power law above the fitted xmin; it leaves out the error of
choosing xmin, so it is a lower bound on the noise.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    from tb_hf.arguments import TempBalanceArguments

    parser = HfArgumentParser(TempBalanceArguments, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", help="path or hub id of a checkpoint (loaded with AutoModelForSequenceClassification)"
    )
    parser.add_argument("--lora", action="store_true", help="wrap in peft LoRA (r 8, every linear layer) first")
    parser.add_argument("--draws", type=int, default=2000, help="Monte Carlo draws (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) to this file")
    argv = sys.argv[1:] if argv is None else argv
    try:  # every tb_* option, with its type, choices and range checks
        tb, args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    options = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith(("--tb_", "--tb-"))}
    options = {name: getattr(tb, name) for name in sorted(options)}

    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()  # the load report of a new classifier head

    from tb_hf.analysis import analyze_model
    from tb_hf.balancing import compute_factors, unit_alpha_se
    from tb_hf.layers import unit_weights

    model = AutoModelForSequenceClassification.from_pretrained(
        str(Path(args.model).expanduser()), num_labels=2, dtype=torch.float32
    )
    if args.lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="SEQ_CLS")
        model = get_peft_model(model, config)
    with torch.no_grad():
        analysis = analyze_model(model, tb)

    units = [u for u in analysis.partition.units if math.isfinite(analysis.metrics.get(u.name, math.nan))]
    fits = {}  # unit -> (alphas, standard errors) of its fitted matrices
    for unit in units:
        rows = [analysis.spectra[k] for k in analysis.spectra if (k.param in unit.matrices)]
        ok = [s for s in rows if s.status == "ok" and math.isfinite(s.alpha) and s.num_tail > 0]
        fits[unit.name] = (
            np.array([s.alpha for s in ok]),
            np.array([(s.alpha - 1.0) / math.sqrt(s.num_tail) for s in ok]),
        )
    weights = {name: w for name, w in unit_weights(model, analysis.partition).items() if name in fits}
    factor_options = tb.tb_options.balance.factor_kwargs()

    def factors_of(alphas: dict[str, float]) -> dict[str, float]:
        return compute_factors(alphas, weights=weights, **factor_options)

    point = {name: float(a.mean()) for name, (a, _) in fits.items()}
    unit_se = unit_alpha_se(analysis.spectra, units)  # the same (α − 1)/√n_tail as `fits`, as the history records
    point_factors = factors_of(point)
    rng = np.random.default_rng(args.seed)
    names = list(fits)
    drawn = np.empty((args.draws, len(names)))
    drawn_alpha = np.empty((args.draws, len(names)))
    for d in range(args.draws):
        sample = {name: float((a + se * rng.standard_normal(a.shape)).mean()) for name, (a, se) in fits.items()}
        f = factors_of(sample)
        drawn[d] = [f[n] for n in names]
        drawn_alpha[d] = [sample[n] for n in names]
    lo, hi = np.percentile(drawn, [5, 95], axis=0)
    top = int(np.argmax([point_factors[n] for n in names]))
    bottom = int(np.argmin([point_factors[n] for n in names]))
    same_top = float(np.mean(np.argmax(drawn, axis=1) == top))
    same_bottom = float(np.mean(np.argmin(drawn, axis=1) == bottom))
    corr = float(np.mean([np.corrcoef(row, [point_factors[n] for n in names])[0, 1] for row in drawn]))
    alpha_values = np.array([point[n] for n in names])
    ses = np.array([unit_se[n] for n in names])

    lines = [
        f"Model {args.model}{' + LoRA' if args.lora else ''}; options: "
        + (", ".join(f"{k}={v}" for k, v in options.items()) or "library defaults")
        + f"; {args.draws} draws",
        "",
        "| unit | matrices | α (mean) | se of α | factor | factor 5-95% over draws |",
        "|---|---|---|---|---|---|",
    ]
    for i, n in enumerate(names):
        lines.append(
            f"| {n} | {len(fits[n][0])} | {point[n]:.3f} | {unit_se[n]:.3f} | {point_factors[n]:.2f} | "
            f"{lo[i]:.2f}-{hi[i]:.2f} |"
        )
    lines += [
        "",
        f"Spread of unit α: max − min {alpha_values.max() - alpha_values.min():.3f}, std {alpha_values.std():.3f}; "
        f"standard error of a unit's α: median {np.median(ses):.3f} (range {ses.min():.3f}-{ses.max():.3f}); "
        f"std over units / median se = {alpha_values.std() / np.median(ses):.1f}.",
        f"Over the draws: the unit with the largest factor stays {names[top]} in {same_top:.0%}, the smallest "
        f"stays {names[bottom]} in {same_bottom:.0%}; mean correlation of a drawn factor profile with the fitted "
        f"one {corr:.2f}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
