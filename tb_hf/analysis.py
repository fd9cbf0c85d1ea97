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

from .balancing import balance
from .engine import SpectralEngine
from .layers import Partition, partition_model, unit_weights
from .options import TempBalanceArguments
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
    factor: float


@dataclass
class ModelAnalysis:
    """Everything one analysis pass found: per-matrix spectra, per-unit metric and factor, chosen ESDs."""

    partition: Partition
    spectra: dict[MatrixKey, LayerSpectrum]
    metrics: dict[str, float]  # unit -> the metric that drives the factors (tb_metric)
    unit_alpha: dict[str, float]  # unit -> mean α (for the figures, whatever tb_metric is)
    factors: dict[str, float]
    rows: list[MatrixRow]
    esds: dict[MatrixKey, torch.Tensor] = field(default_factory=dict)  # matrix -> eigenvalues (CPU, float64)
    seconds: float = 0.0
    wd_factors: dict[str, float] = field(default_factory=dict)  # unit -> weight-decay ratio (tb_balance)


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
    tb: TempBalanceArguments,
    *,
    esd_matrices: list[str] | None = None,
    progress: bool = False,
) -> ModelAnalysis:
    """What TempBalance would see and do on ``model`` with options ``tb``, computed one block at a time.

    The same engine, partition, matrices, fits, unit metrics and factors as training. ``esd_matrices``: globs
    (see `_matches`) of matrices whose eigenvalues to keep for figures; None keeps none, ``[]`` a default set
    (`default_esd_matrices`).

    Raises:
        ValueError: If ``esd_matrices`` matches none of the analysed matrices.
    """
    partition = partition_model(model, tb.tb_unit)
    engine = SpectralEngine(model, partition, tb)
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
    outcome = balance(
        result.metrics, tb, alphas=result.alphas, alpha_se=result.alpha_se, weights=unit_weights(model, partition)
    )  # what training would give each unit, the 'se' map and weight-decay balancing included
    factors = outcome.factors
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
    )


# --------------------------------------------------------------------------------------------------
# Output


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _relative(matrix: str, unit: str) -> str:
    return matrix[len(unit) + 1 :] if matrix.startswith(f"{unit}.") else matrix


def print_table(rows: list[MatrixRow], metric: str = "alpha", file=None) -> None:
    """One line per matrix, grouped by unit; the unit's metric and factor on its first line."""
    if not rows:
        print("(no matrices analysed)", file=file)
        return
    uw = max(4, *(len(r.unit) for r in rows))
    mw = max(6, *(len(_relative(r.matrix, r.unit)) for r in rows))
    unit_col = "unit α" if metric == "alpha" else f"unit {metric}"
    header = (
        f"{'unit':<{uw}}  {'matrix':<{mw}}  {'shape':>11}  {'α':>7}  {'xmin':>9}  {'KS':>6}  {'status':<10}  "
        f"{unit_col:>10}  {'factor':>6}"
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    last_unit = None
    for r in rows:
        first = r.unit != last_unit
        last_unit = r.unit
        shape = "x".join(map(str, r.shape))
        xmin = "nan" if math.isnan(r.xmin) else f"{r.xmin:.3g}"
        tail = f"{_fmt(r.unit_alpha):>10}  {r.factor:6.3f}" if first else ""
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


def write_figures(analysis: ModelAnalysis, tb: TempBalanceArguments, out: Path, *, label: str, fmt: str = "png"):
    """``esd``, ``alpha`` and ``factors`` figures of an analysis; returns the paths written."""
    from . import plotting

    out.mkdir(parents=True, exist_ok=True)
    how = f"{tb.tb_xmin_method} xmin, {tb.tb_estimator} ESD" + (", λ > 1e-5" if tb.tb_filter_zeros else "")
    if tb.tb_lora_view == "delta":
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
    if tb.tb_unit == "block":
        matrix_alpha = {u.name: {} for u in analysis.partition.units}
        for r in analysis.rows:
            matrix_alpha[r.unit][_relative(r.matrix, r.unit).removesuffix(".weight")] = r.alpha
    fig = plotting.plot_alpha(analysis.unit_alpha, matrix_alpha, title=f"{label}: α per {tb.tb_unit} ({how})")
    paths.append(plotting.save_figure(fig, out / f"alpha.{fmt}"))
    if tb.tb_mapping == "linear":
        mapping = f"linear map {tb.tb_lr_min:g}-{tb.tb_lr_max:g}"
    else:
        mapping = f"sigmoid map, τ={tb.tb_sigmoid_tau:g}, s={tb.tb_sigmoid_s_low:g}/{tb.tb_sigmoid_s_high:g}"
    driver = "" if tb.tb_metric == "alpha" else f" of {tb.tb_metric}"
    fig = plotting.plot_factors(
        analysis.factors,
        title=f"{label}: learning-rate factors ({mapping}{driver}{', normalized' if tb.tb_normalize else ''})",
    )
    paths.append(plotting.save_figure(fig, out / f"factors.{fmt}"))
    return paths
