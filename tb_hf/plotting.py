"""Figures of weight spectra and of TempBalance's balancing (optional: ``pip install 'tb-hf[plot]'``).

Every function draws with matplotlib's object API (`matplotlib.figure.Figure`, never pyplot's global state),
takes ``ax=None`` (a new figure) or an existing axes to draw into, and returns the figure. Nothing is shown;
save with ``fig.savefig(path)`` or `save_figure`.

* `plot_esd`: one matrix's eigenvalue density on log-log axes with the fitted power law and xmin.
* `plot_esds`: a grid of `plot_esd` panels.
* `plot_alpha`: α per unit (bars, mean over the unit's matrices) and per matrix (points), with the HT-SR
  reference lines at α = 2 and α = 6.
* `plot_factors`: the learning-rate factor per unit that the mapping assigns.
* `plot_history`, `plot_history_heatmap`, `plot_history_lines`: α or factor per unit over training steps,
  from ``<output_dir>/tempbalance/history.jsonl`` (`read_history`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .history import read_history
from .powerlaw import PowerLawFit

__all__ = [
    "plot_alpha",
    "plot_esd",
    "plot_esds",
    "plot_factors",
    "plot_history",
    "plot_history_heatmap",
    "plot_history_lines",
    "read_history",
    "save_figure",
    "short_names",
]

#: HT-SR reading of α: about 2 is well trained (or over-trained), above about 6 under-trained.
REFERENCE_ALPHAS = (2.0, 6.0)

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
}

_QUANTITIES = {
    "alpha": ("power-law exponent α", "viridis"),
    "factor": ("learning-rate factor", "coolwarm"),
}


def _mpl():
    """Import matplotlib (Agg-safe: only the object API is used), or say how to install it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "tb_hf's figures need matplotlib: pip install 'tb-hf[plot]' (or pip install matplotlib)."
        ) from err
    return matplotlib, Figure


def _new_axes(ax, figsize: tuple[float, float]):
    """``(figure, axes)``: the given axes and its figure, or a new single-axes figure in tb_hf's style."""
    matplotlib, Figure = _mpl()
    if ax is not None:
        return ax.figure, ax
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.subplots()


def _styled(fn):
    """Run a drawing function under tb_hf's rc style (fonts, spines), so figures look alike."""

    def wrapper(*args, **kwargs):
        matplotlib, _ = _mpl()
        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = fn.__name__, fn.__doc__, fn
    return wrapper


def save_figure(fig, path: str | os.PathLike) -> str:
    """Save ``fig`` (format from the file suffix) in tb_hf's style (200 dpi, tight box) and return the path."""
    matplotlib, _ = _mpl()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with matplotlib.rc_context(_STYLE):
        fig.savefig(path)
    return str(path)


def short_names(names: Sequence[str]) -> tuple[list[str], str]:
    """Drop the dotted prefix that all ``names`` share: ``(short names, prefix)``.

    ``["bert.encoder.layer.0", "bert.encoder.layer.1"]`` -> ``(["0", "1"], "bert.encoder.layer.")``.
    A name is never shortened to nothing.
    """
    if len(names) < 2:
        return list(names), ""
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    prefix = ".".join(parts[0][:common]) + "." if common else ""
    return [n[len(prefix) :] for n in names], prefix


def _unit_label(prefix: str) -> str:
    """Axis label for units named ``prefix + <short name>``."""
    return f"unit ({prefix}*)" if prefix else "unit"


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


# --------------------------------------------------------------------------------------------------
# Spectra


@_styled
def plot_esd(evals: torch.Tensor | Sequence[float], fit: PowerLawFit | None = None, *, title: str | None = None,
             bins: int = 60, ax=None):  # fmt: skip
    """The ESD of one matrix as a log-log density histogram, with the fitted power law and xmin.

    Args:
        evals: Eigenvalues of WᵀW (e.g. `tb_hf.spectral.esd`); zeros and non-finite values are not drawn.
        fit: The fit to overlay (`tb_hf.spectral.fit_power_law` or a `LayerSpectrum`). The line is the
            fitted density p(λ) = (n_tail / N)·(α − 1)/xmin·(λ/xmin)^(−α) over the tail, so it lies on the
            histogram where the law fits.
        title: Panel title (e.g. the matrix name).
        bins: Number of logarithmically spaced bins.
        ax: Axes to draw into; a new figure if None.
    """
    fig, ax = _new_axes(ax, (5.0, 3.6))
    ev = np.asarray(torch.as_tensor(evals, dtype=torch.float64).flatten().cpu())
    ev = np.sort(ev[np.isfinite(ev) & (ev > 0)])
    if ev.size < 2:
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", va="center", transform=ax.transAxes)
    else:
        lo, hi = float(ev[0]), float(ev[-1])
        if hi <= lo:
            hi = lo * 1.01
        edges = np.logspace(math.log10(lo), math.log10(hi), bins + 1)
        edges[0], edges[-1] = lo * 0.999, hi * 1.001
        counts, _ = np.histogram(ev, bins=edges)
        density = counts / (ev.size * np.diff(edges))
        ax.stairs(density, edges, fill=True, color="#9ecae1", alpha=0.9, label="ESD")
        ax.stairs(density, edges, color="#3182bd", linewidth=0.8)
        if fit is not None and fit.status == "ok" and math.isfinite(fit.alpha) and fit.xmin > 0:
            alpha, xmin = fit.alpha, fit.xmin
            frac = float((ev >= xmin * (1 - 1e-9)).mean())  # tail share of the drawn (positive) eigenvalues
            xs = np.logspace(math.log10(xmin), math.log10(hi), 100)
            ys = frac * (alpha - 1) / xmin * (xs / xmin) ** (-alpha)
            ax.plot(xs, ys, color="#d62728", linewidth=1.8, label=f"power law, α = {alpha:.2f}")
            ax.axvline(xmin, color="#555555", linestyle="--", linewidth=1.0, label=f"xmin = {xmin:.3g}")
            ax.plot([], [], " ", label=f"KS D = {fit.ks_distance:.3f}, tail {fit.num_tail}/{fit.num_evals}")
        elif fit is not None:
            ax.plot([], [], " ", label=f"not fitted: {fit.status}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(loc="best", frameon=True, framealpha=0.9, edgecolor="none", handlelength=1.6)
    ax.set_xlabel("eigenvalue λ of WᵀW")
    ax.set_ylabel("density p(λ)")
    if title:
        ax.set_title(title)
    return fig


def _wrap_title(name: str, width: int = 44) -> str:
    """A long dotted matrix name broken at dots into lines of at most ``width`` characters, so the titles of
    neighbouring panels never run into each other."""
    lines, line = [], ""
    for part in name.split("."):
        piece = f"{line}.{part}" if line else part
        if line and len(piece) > width:
            lines.append(line + ".")
            piece = part
        line = piece
    lines.append(line)
    return "\n".join(lines)


@_styled
def plot_esds(esds: Mapping[str, tuple], *, ncols: int = 3, suptitle: str | None = None, fig=None):
    """A grid of `plot_esd` panels: ``esds`` maps a panel title to ``(evals, fit)``. Returns the figure."""
    _, Figure = _mpl()
    n = len(esds)
    if n == 0:
        raise ValueError("plot_esds needs at least one matrix")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    if fig is None:
        fig = Figure(figsize=(4.6 * ncols, 3.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, (name, (evals, fit)) in zip(axes, esds.items(), strict=False):
        plot_esd(evals, fit, title=_wrap_title(name), ax=ax)
        ax.title.set_fontsize(9)
    for ax in axes[n:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    return fig


# --------------------------------------------------------------------------------------------------
# α and factors of one analysis


def _reference_lines(ax, lo: float = -math.inf, hi: float = math.inf) -> None:
    """Dashed lines at α = 2 and α = 6 (those within ``[lo, hi]``)."""
    for ref, label, color in zip(REFERENCE_ALPHAS, ("α = 2: well trained", "α = 6: under-trained"),
                                 ("#2ca02c", "#d62728"), strict=True):  # fmt: skip
        if lo <= ref <= hi:
            ax.axhline(ref, color=color, linestyle="--", linewidth=1.0, label=label, zorder=1)


@_styled
def plot_alpha(
    unit_alpha: Mapping[str, float],
    matrix_alpha: Mapping[str, Mapping[str, float]] | None = None,
    *,
    title: str | None = None,
    log_scale: bool | None = None,
    ax=None,
):
    """α per unit as bars, optionally with each matrix's α as points, and reference lines at α = 2 and 6.

    Args:
        unit_alpha: Unit name -> α of the unit (NaN/None for units that were not fitted: drawn as a gap).
        matrix_alpha: Unit name -> {matrix kind (e.g. ``"self_attn.q_proj"``): α}. Kinds get one marker
            colour each across units, so trends of one matrix type through depth are visible.
        title: Axes title.
        log_scale: Logarithmic α axis; by default when the largest α exceeds 8× the smallest.
        ax: Axes to draw into; a new figure if None.
    """
    units = list(unit_alpha)
    labels, prefix = short_names(units)
    fig, ax = _new_axes(ax, (max(5.5, 0.28 * len(units) + 2.5), 3.8))
    xs = list(range(len(units)))
    heights = [float(v) if v is not None else math.nan for v in unit_alpha.values()]
    ax.bar(xs, heights, width=0.75, color="#c6dbef", edgecolor="#6baed6", linewidth=0.6, label="unit α (mean)",
           zorder=2)  # fmt: skip
    values = _finite(heights)
    if matrix_alpha:
        cm = _mpl()[0].colormaps["tab10"]
        kinds = list(dict.fromkeys(kind for unit in units for kind in (matrix_alpha.get(unit) or {})))
        markers = "os^Dv<>pPX*h"
        for k, kind in enumerate(kinds):
            pts = [
                (x, matrix_alpha[u][kind])
                for x, u in zip(xs, units, strict=True)
                if kind in (matrix_alpha.get(u) or {})
            ]
            pts = [(x, float(a)) for x, a in pts if a is not None and math.isfinite(float(a))]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, marker=markers[k % len(markers)],
                           color=cm(k % 10), label=kind, zorder=3, linewidths=0)  # fmt: skip
                values += [p[1] for p in pts]
    _reference_lines(ax)
    if log_scale is None:
        log_scale = bool(values) and min(values) > 0 and max(values) / min(values) > 8
    if log_scale:
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

        ax.set_yscale("log")
        lo, hi = min(values), max(values)
        nice = [v * 10**e for e in range(-1, 4) for v in (1, 1.5, 2, 3, 4, 6)]
        ax.yaxis.set_major_locator(FixedLocator([v for v in nice if lo / 1.6 <= v <= hi * 1.6]))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs, labels, rotation=90 if max(map(len, labels), default=0) > 3 or len(units) > 40 else 0)
    ax.set_xlim(-0.7, len(units) - 0.3)
    ax.set_xlabel(_unit_label(prefix))
    ax.set_ylabel("power-law exponent α")
    if title:
        ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: (names[i] != "unit α (mean)", names[i].startswith("α = ")))
    ax.legend([handles[i] for i in order], [names[i] for i in order], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, borderaxespad=0)  # fmt: skip
    return fig


@_styled
def plot_factors(factors: Mapping[str, float], *, title: str | None = None, ax=None):
    """The learning-rate factor of each unit as bars around 1 (blue: slowed down, red: sped up)."""
    units = list(factors)
    labels, prefix = short_names(units)
    fig, ax = _new_axes(ax, (max(5.5, 0.28 * len(units) + 1.5), 3.4))
    xs = list(range(len(units)))
    vals = [float(v) for v in factors.values()]
    colors = ["#d6604d" if v > 1 else "#4393c3" if v < 1 else "#999999" for v in vals]
    ax.bar(xs, [v - 1 for v in vals], bottom=1.0, width=0.75, color=colors, edgecolor="none", zorder=2)
    ax.axhline(1.0, color="black", linewidth=0.8, zorder=3)
    lo, hi = min(vals + [1.0]), max(vals + [1.0])
    pad = 0.1 * (hi - lo or 1.0)
    if len(units) <= 16:
        for x, v in zip(xs, vals, strict=True):
            ax.annotate(f"{v:.2f}", (x, v), xytext=(0, 3 if v >= 1 else -3), textcoords="offset points",
                        ha="center", va="bottom" if v >= 1 else "top", fontsize=8)  # fmt: skip
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(xs, labels, rotation=90 if max(map(len, labels), default=0) > 3 or len(units) > 40 else 0)
    ax.set_xlim(-0.7, len(units) - 0.3)
    ax.set_xlabel(_unit_label(prefix))
    ax.set_ylabel("learning-rate factor (× base lr)")
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------------
# Training history (read by `tb_hf.history.read_history`, re-exported here)


def _history_matrix(records: Sequence[Mapping], key: str) -> tuple[list[int], list[str], list[list[float]]]:
    """``(steps, units, values[unit][update])`` of ``key`` ("alpha" or "factor"); missing values are NaN."""
    if key not in _QUANTITIES:
        raise ValueError(f"key must be one of {tuple(_QUANTITIES)}, got {key!r}")
    steps = [int(r["step"]) for r in records]
    units = list(dict.fromkeys(u for r in records for u in (r.get(key) or {})))
    values = []
    for unit in units:
        row = []
        for r in records:
            v = (r.get(key) or {}).get(unit)
            row.append(float(v) if v is not None else math.nan)
        values.append(row)
    return steps, units, values


def _step_edges(steps: Sequence[int]) -> list[float]:
    """Cell edges: each update's values hold from its step until the next update (the factors do exactly that);
    the last cell is as wide as the gap before it."""
    gap = steps[-1] - steps[-2] if len(steps) > 1 else 1
    return [float(s) for s in steps] + [float(steps[-1] + max(gap, 1))]


@_styled
def plot_history_heatmap(records: Sequence[Mapping], key: str = "alpha", *, ax=None):
    """``key`` ("alpha" or "factor") of every unit (rows) at every update step (columns) as a heatmap.

    Factors use a diverging colour map centred at 1; units that were not fitted at an update are blank.
    """
    _mpl()
    from matplotlib.colors import TwoSlopeNorm

    steps, units, values = _history_matrix(records, key)
    labels, prefix = short_names(units)
    fig, ax = _new_axes(ax, (7.0, max(2.8, 0.22 * len(units) + 1.4)))
    data = np.ma.masked_invalid(np.array(values, dtype=float))
    label, cmap = _QUANTITIES[key]
    norm = None
    finite = data.compressed()
    if key == "factor" and finite.size and finite.min() < 1 < finite.max():
        norm = TwoSlopeNorm(vcenter=1.0, vmin=float(finite.min()), vmax=float(finite.max()))
    mesh = ax.pcolormesh(_step_edges(steps), np.arange(len(units) + 1) - 0.5, data, cmap=cmap, norm=norm,
                         shading="flat")  # fmt: skip
    every = max(1, math.ceil(len(units) / 16))
    ax.set_yticks(range(0, len(units), every), labels[::every])
    ax.set_ylim(len(units) - 0.5, -0.5)  # first unit (input side) on top
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(_unit_label(prefix))
    fig.colorbar(mesh, ax=ax, label=label, pad=0.02)
    return fig


@_styled
def plot_history_lines(records: Sequence[Mapping], key: str = "alpha", *, ax=None):
    """``key`` ("alpha" or "factor") of every unit over the update steps, one line per unit coloured by
    depth (a colour bar instead of a legend, which stays legible for 30+ units). Factors are drawn as steps: they
    hold from one update to the next."""
    matplotlib, _ = _mpl()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    steps, units, values = _history_matrix(records, key)
    labels, prefix = short_names(units)
    fig, ax = _new_axes(ax, (7.0, 3.6))
    n = len(units)
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 1, max(n, 2)))[:n] if n > 1 else ["#440154"])
    norm = BoundaryNorm(np.arange(n + 1) - 0.5, cmap.N)
    end = _step_edges(steps)[-1]
    for i, row in enumerate(values):
        if key == "factor":  # held from one update to the next
            ax.step(steps + [end], row + row[-1:], where="post", color=cmap(i), linewidth=1.3)
        else:
            ax.plot(steps, row, color=cmap(i), linewidth=1.3, marker="o" if len(steps) <= 30 else None, markersize=3)
    if key == "alpha":
        finite = _finite(v for row in values for v in row)
        if finite:
            _reference_lines(ax, lo=0.8 * min(finite), hi=1.25 * max(finite))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", frameon=False)
    else:
        ax.axhline(1.0, color="black", linewidth=0.8, zorder=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(_QUANTITIES[key][0])
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label(_unit_label(prefix))
    ticks = sorted({0, n - 1, *range(0, n, max(1, math.ceil(n / 12)))})
    bar.set_ticks(ticks, labels=[labels[t] for t in ticks])
    bar.ax.tick_params(length=0)
    return fig


@_styled
def plot_history(records: Sequence[Mapping], key: str = "alpha", *, title: str | None = None, fig=None):
    """Heatmap (top) and lines (bottom) of ``key`` ("alpha" or "factor") per unit over training."""
    _, Figure = _mpl()
    steps, units, _ = _history_matrix(records, key)
    if fig is None:
        fig = Figure(figsize=(7.5, max(2.6, 0.13 * len(units) + 1.2) + 3.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[max(2.6, 0.13 * len(units) + 1.2), 3.4], sharex=True)
    plot_history_heatmap(records, key, ax=top)
    top.set_xlabel("")
    plot_history_lines(records, key, ax=bottom)
    if title is None:
        title = f"TempBalance: {_QUANTITIES[key][0]} per unit over training ({len(steps)} updates)"
    fig.suptitle(title, fontsize=12)
    return fig
