"""What TempBalance sees in a model: the per-matrix table, per-unit α and factors, and their files and figures.

`analyze_model` runs the same spectral pass as training (`tb_hf.engine.SpectralEngine`, one block at a time so
memory stays bounded), then the factors TempBalance would assign; `print_table`, `write_report` and
`write_figures` present the result. The ``tb-hf analyze`` command (`tb_hf.cli`) loads the model and calls them.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arguments import TempBalanceArguments
from .balancer import Balancer
from .balancing import balance
from .engine import SpectralEngine
from .layers import Partition
from .options import TempBalanceOptions, resolve_options
from .spectral import LayerSpectrum, MatrixKey

__all__ = [
    "MatrixRow",
    "ModelAnalysis",
    "analyze_model",
    "default_esd_matrices",
    "print_table",
    "write_figures",
    "write_report",
]


@dataclass(frozen=True)
class MatrixRow:
    """One line of the analysis table."""

    unit: str
    matrix: str
    shape: tuple[int, ...]
    alpha: float
    xmin: float
    ks_distance: float
    num_evals: int
    status: str
    unit_alpha: float
    factor: float  # the unit's α factor
    lr_scale: float  # the unit's learning rate relative to the run's: depth profile × α factor
    wd_factor: float  # the unit's weight-decay ratio (1 when the weight decay is not balanced)


@dataclass
class ModelAnalysis:
    """Everything one analysis pass found: per-matrix spectra, per-unit metric and factor, chosen ESDs."""

    partition: Partition
    spectra: dict[MatrixKey, LayerSpectrum]
    metrics: dict[str, float]  # unit -> the metric that drives the factors (tb_metric)
    unit_alpha: dict[str, float]  # unit -> mean α (for the figures, whatever tb_metric is)
    factors: dict[str, float]  # unit -> α factor
    rows: list[MatrixRow]
    esds: dict[MatrixKey, torch.Tensor] = field(default_factory=dict)  # matrix -> eigenvalues (CPU, float64)
    seconds: float = 0.0
    wd_factors: dict[str, float] = field(default_factory=dict)  # unit -> weight-decay ratio (tb_balance)
    lr_scales: dict[str, float] = field(default_factory=dict)  # unit -> depth profile × α factor
    options: TempBalanceOptions = field(default_factory=TempBalanceOptions)


# --------------------------------------------------------------------------------------------------
# The pass


def _matches(name: str, patterns: list[str]) -> bool:
    """A glob matches a matrix by its full name or any dotted suffix, with or without ``.weight``."""
    return any(
        fnmatch.fnmatchcase(name, p)
        or fnmatch.fnmatchcase(name, f"*.{p}")
        or fnmatch.fnmatchcase(name, f"*.{p}.weight")
        for p in patterns
    )


def default_esd_matrices(partition: Partition) -> list[str]:
    """A few representative matrices: the first and the last analysed matrix of the first, middle and last unit."""
    units = partition.units
    picked = [units[i] for i in sorted({0, len(units) // 2, len(units) - 1})] if units else []
    names = [n for unit in picked for n in dict.fromkeys((unit.matrices[0], unit.matrices[-1]))]
    return list(dict.fromkeys(names))


def analyze_model(
    model: torch.nn.Module,
    tb: TempBalanceArguments | TempBalanceOptions,
    *,
    esd_matrices: list[str] | None = None,
    progress: bool = False,
) -> ModelAnalysis:
    """What training with options ``tb`` would see and do on ``model``, computed one block at a time.

    The same partition, base rates, engine, matrices, fits, unit metrics and factors as training at step 0: each unit's
    α factor, its learning rate relative to the run's (``lr_scales``: depth profile × α factor) and, when the weight
    decay is balanced, its weight-decay ratio. The pass runs whatever the profile (with ``tb_mapping='none'``
    training makes none, and its factors are 1). ``esd_matrices``: globs (see `_matches`) of matrices whose eigenvalues
    to keep for figures; None keeps none, ``[]`` a default set (`default_esd_matrices`).

    Raises:
        ValueError: If ``esd_matrices`` matches none of the analysed matrices.
    """
    options = resolve_options(tb)
    balancer = Balancer(model, options)
    partition = balancer.partition
    engine = SpectralEngine(model, partition, options.spectral)
    wanted: set[str] = set()
    if esd_matrices is not None:
        names = [n for u in partition.units for n in u.matrices]
        wanted = set(
            default_esd_matrices(partition) if not esd_matrices else [n for n in names if _matches(n, esd_matrices)]
        )
        if esd_matrices and not wanted:
            raise ValueError(
                f"--esd-matrices {' '.join(esd_matrices)} matched none of the {len(names)} analysed matrices, e.g. "
                f"{', '.join(names[:3])}. Use a name, a dotted suffix (self_attn.q_proj) or a glob ('*.0.*query*')."
            )
    result = engine.run(
        model, by_block=True, progress=progress, esd_keys=[t.key for t in engine.tasks if t.key.param in wanted]
    )
    outcome = balance(result.metrics, options.balance, alphas=result.alphas, alpha_se=result.alpha_se,
                      weights=balancer.unit_weights)  # fmt: skip # what training gives each unit at step 0
    factors = outcome.factors
    lr_scales = {unit: balancer.lr_ratios[unit] * factor for unit, factor in factors.items()}
    rows = []
    for task in engine.tasks:
        s = result.spectra[task.key]
        rows.append(
            MatrixRow(
                unit=task.unit,
                matrix=s.name,
                shape=s.shape,
                alpha=s.alpha,
                xmin=s.xmin,
                ks_distance=s.ks_distance,
                num_evals=s.num_evals,
                status=s.status,
                unit_alpha=result.metrics[task.unit],
                factor=factors[task.unit],
                lr_scale=lr_scales[task.unit],
                wd_factor=outcome.wd_factors.get(task.unit, 1.0),
            )
        )
    return ModelAnalysis(
        partition=partition,
        spectra=result.spectra,
        metrics=result.metrics,
        unit_alpha=result.alphas,
        factors=factors,
        rows=rows,
        esds=result.esds,
        seconds=result.seconds,
        wd_factors=outcome.wd_factors,
        lr_scales=lr_scales,
        options=options,
    )


# --------------------------------------------------------------------------------------------------
# Output


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _relative(matrix: str, unit: str) -> str:
    return matrix[len(unit) + 1 :] if matrix.startswith(f"{unit}.") else matrix


def print_table(rows: list[MatrixRow], metric: str = "alpha", file=None, *, weight_decay: bool = False) -> None:
    """One line per matrix, grouped by unit; on its first line the unit's metric, its α factor, its learning rate
    relative to the run's (``lr ×``: depth profile × α factor) and, with ``weight_decay``, its weight-decay ratio."""
    if not rows:
        print("(no matrices analysed)", file=file)
        return
    uw = max(4, *(len(r.unit) for r in rows))
    mw = max(6, *(len(_relative(r.matrix, r.unit)) for r in rows))
    unit_col = "unit α" if metric == "alpha" else f"unit {metric}"
    header = (
        f"{'unit':<{uw}}  {'matrix':<{mw}}  {'shape':>11}  {'α':>7}  {'xmin':>9}  {'KS':>6}  {'status':<10}  "
        f"{unit_col:>10}  {'factor':>6}  {'lr ×':>6}" + (f"  {'wd ×':>6}" if weight_decay else "")
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    last_unit = None
    for r in rows:
        first = r.unit != last_unit
        last_unit = r.unit
        shape = "x".join(map(str, r.shape))
        xmin = "nan" if math.isnan(r.xmin) else f"{r.xmin:.3g}"
        tail = f"{_fmt(r.unit_alpha):>10}  {r.factor:6.3f}  {r.lr_scale:6.3f}" if first else ""
        if first and weight_decay:
            tail += f"  {r.wd_factor:6.3f}"
        print(
            f"{r.unit if first else '':<{uw}}  {_relative(r.matrix, r.unit):<{mw}}  {shape:>11}  {_fmt(r.alpha):>7}  "
            f"{xmin:>9}  {_fmt(r.ks_distance):>6}  {r.status:<10}  {tail}".rstrip(),
            file=file,
        )


def _json_value(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, tuple):
        return list(x)
    return x


def write_report(rows: list[MatrixRow], out: Path, meta: dict | None = None, analysis: ModelAnalysis | None = None):
    """``alpha.csv`` (one row per matrix) and ``alpha.json`` (``meta``, per-unit results and the rows; NaN as null)."""
    out.mkdir(parents=True, exist_ok=True)
    fields = list(MatrixRow.__dataclass_fields__)
    with open(out / "alpha.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            writer.writerow(["x".join(map(str, r.shape)) if k == "shape" else getattr(r, k) for k in fields])
    units = []
    if analysis is not None:
        units = [
            {
                "unit": u.name,
                "metric": _json_value(analysis.metrics[u.name]),
                "alpha": _json_value(analysis.unit_alpha[u.name]),
                "factor": analysis.factors[u.name],
                "lr_scale": analysis.lr_scales[u.name],
                "wd_factor": analysis.wd_factors.get(u.name, 1.0),
                "matrices": list(u.matrices),
            }
            for u in analysis.partition.units
        ]
    report = {
        **(meta or {}),
        "units": units,
        "matrices": [{k: _json_value(getattr(r, k)) for k in fields} for r in rows],
    }
    with open(out / "alpha.json", "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)


def write_figures(analysis: ModelAnalysis, out: Path, *, label: str, fmt: str = "png") -> list[Path]:
    """``esd``, ``alpha`` and ``factors`` figures of an analysis (and ``wd_factors`` when the weight decay is
    balanced); returns the paths written. Titles name the options the analysis used (``analysis.options``)."""
    from . import plotting

    options = analysis.options
    s, b = options.spectral, options.balance
    out.mkdir(parents=True, exist_ok=True)
    how = f"{s.xmin_method} xmin, {s.estimator} ESD" + (", λ > 1e-5" if s.filter_zeros else "")
    if s.lora_view == "delta":
        how += ", ΔW only"
    paths = []
    if analysis.esds:
        panels = {}
        for key, evals in analysis.esds.items():
            spectrum = analysis.spectra[key]
            panels[spectrum.name.removeprefix("base_model.model.")] = (evals, spectrum)
        fig = plotting.plot_esds(panels, suptitle=f"{label}: empirical spectral densities ({how})")
        paths.append(plotting.save_figure(fig, out / f"esd.{fmt}"))
    matrix_alpha = None
    if b.unit == "block":
        matrix_alpha = {u.name: {} for u in analysis.partition.units}
        for r in analysis.rows:
            matrix_alpha[r.unit][_relative(r.matrix, r.unit).removesuffix(".weight")] = r.alpha
    fig = plotting.plot_alpha(analysis.unit_alpha, matrix_alpha, title=f"{label}: α per {b.unit} ({how})")
    paths.append(plotting.save_figure(fig, out / f"alpha.{fmt}"))
    parts = [b.map_text() + ("" if s.metric == "alpha" or not b.balances_lr else f" of {s.metric}")]
    if b.llrd_decay != 1:
        parts.insert(0, f"depth profile {b.llrd_decay:g}^depth")
    fig = plotting.plot_factors(analysis.lr_scales, title=f"{label}: learning rate ÷ base rate ({' × '.join(parts)})")
    paths.append(plotting.save_figure(fig, out / f"factors.{fmt}"))
    if b.balances_wd:
        title = f"{label}: weight decay ÷ base ({b.wd_min_ratio:g}-{b.wd_max_ratio:g} linear map of α)"
        fig = plotting.plot_factors(analysis.wd_factors, title=title)
        paths.append(plotting.save_figure(fig, out / f"wd_factors.{fmt}"))
    return paths
