"""From α per unit to a learning-rate factor per unit, and from factors to the optimizer's groups.

Data flows one way (``docs/method.md``, section 5)::

    spectra -> unit_metrics() -> metric per unit -> compute_factors() -> factor per unit -> apply_factors()

* `unit_metrics` averages a spectral metric (α by default) over the fitted matrices of each unit;
  `unit_alpha_se` is the standard error of that mean α from the fits themselves.
* `compute_factors` maps the metrics to learning-rate factors: ``"linear"`` (TempBalance), ``"sigmoid"`` (Model
  Balancing) or ``"se"`` (differences in units of α's standard error). All give higher factors to higher α. Units
  without a finite metric keep factor 1. `compute_wd_factors` maps α to weight-decay ratios (AlphaDecay).
* `apply_factors` writes the factors into the optimizer's param groups so that, under the Trainer's
  ordinary schedule, a unit's learning rate is ``tb_base_lr × factor × schedule(t)``; `apply_wd_factors` sets a
  unit's weight decay to ``tb_base_wd × ratio``.

The first two are pure functions of plain mappings; only `apply_factors` touches torch objects.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers.utils import logging

from .options import MAPPINGS, METRICS, BalanceOptions
from .spectral import LayerSpectrum, MatrixKey
from .state import BASE_LR, BASE_WD, FACTOR, UNIT, WD_FACTOR
from .values import FACTOR_RANGES, check_range

logger = logging.get_logger(__name__)

__all__ = [
    "MAPPINGS",
    "METRICS",
    "Balance",
    "apply_factors",
    "apply_wd_factors",
    "balance",
    "compute_factors",
    "compute_wd_factors",
    "permuted",
    "unit_alpha_se",
    "unit_metrics",
]


class _UnitLike(Protocol):
    """What `unit_metrics` needs from a unit (`tb_hf.layers` units satisfy it)."""

    @property
    def name(self) -> str: ...

    @property
    def matrices(self) -> tuple[str, ...]: ...


# --------------------------------------------------------------------------------------------------
# Metric per unit


def _spectra_by_matrix(spectra: Mapping) -> dict[str, list[LayerSpectrum]]:
    """Parameter name → its spectra: the matrix itself, or every ``MatrixKey(x, e)`` of a 3-D weight ``x``."""
    index: dict[str, list[LayerSpectrum]] = defaultdict(list)
    for key, spectrum in spectra.items():
        index[key.param if isinstance(key, MatrixKey) else key].append(spectrum)
    return index


def unit_metrics(
    spectra: Mapping[str, LayerSpectrum], units: Iterable[_UnitLike], *, metric: str = "alpha"
) -> dict[str, float]:
    """The mean of a spectral metric over the fitted matrices of each unit.

    Args:
        spectra: Matrix key → `LayerSpectrum`, as returned by `tb_hf.spectral.analyze` or the engine: a
            parameter name or a `MatrixKey`. A 3-D weight ``"x"`` appears as ``MatrixKey("x", 0)``,
            ``MatrixKey("x", 1)``, ...; all of them count for a unit listing ``"x"``.
        units: Objects with ``.name`` and ``.matrices`` (a tuple of matrix names), such as the units of
            `tb_hf.layers`.
        metric: One of `METRICS`.

    Returns:
        Unit name → mean metric over the unit's matrices whose fit succeeded (``status == "ok"``) and
        whose metric is finite (matrices too small or degenerate to fit are left out); NaN for a unit with
        no such matrix, and for a unit with NaN/Inf in any of its matrices (``status == "non_finite"``).
        Units keep their input order.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    out: dict[str, float] = {}
    for name, fitted in _fitted_by_unit(spectra, units, metric):
        out[name] = math.fsum(float(getattr(s, metric)) for s in fitted) / len(fitted) if fitted else math.nan
    return out


def _fitted_by_unit(spectra: Mapping[str, LayerSpectrum], units: Iterable[_UnitLike], metric: str = "alpha"):
    """(unit name, its matrices' spectra that a unit mean counts: fit ok, ``metric`` finite) in unit order; an
    empty list for a unit with NaN/Inf in any matrix (the whole unit is broken, not just one matrix)."""
    by_matrix = _spectra_by_matrix(spectra)
    seen: set[str] = set()
    for unit in units:
        if unit.name in seen:
            raise ValueError(f"duplicate unit name {unit.name!r}")
        seen.add(unit.name)
        unit_spectra = [spectrum for matrix in unit.matrices for spectrum in by_matrix.get(matrix, ())]
        if any(spectrum.status == "non_finite" for spectrum in unit_spectra):
            yield unit.name, []
            continue
        yield unit.name, [s for s in unit_spectra if s.status == "ok" and math.isfinite(float(getattr(s, metric)))]


def unit_alpha_se(spectra: Mapping[str, LayerSpectrum], units: Iterable[_UnitLike]) -> dict[str, float]:
    """The standard error of each unit's mean α (`unit_metrics`), from the power-law fits themselves.

    The maximum-likelihood α of a tail of n eigenvalues has standard error (α − 1)/√n (Clauset, Shalizi & Newman
    2009, eq. 3.2); the mean over a unit's k fitted matrices has √(Σ seᵢ²)/k, taking the fits as independent. It
    leaves out the error of choosing xmin, so it is a lower bound. Seeds that start from the same pretrained
    weights all see α exactly, so this (not the spread over seeds) says how well a unit's α is known: a difference
    between units of a few standard errors is mostly noise.

    Returns:
        Unit name → standard error; NaN where `unit_metrics` gives NaN (no fitted matrix, NaN weights).
    """
    out: dict[str, float] = {}
    for name, fitted in _fitted_by_unit(spectra, units):
        ses = [(float(s.alpha) - 1.0) / math.sqrt(s.num_tail) for s in fitted if s.num_tail > 0]
        out[name] = math.sqrt(math.fsum(x * x for x in ses)) / len(ses) if ses else math.nan
    return out


# --------------------------------------------------------------------------------------------------
# Factor per unit


def _check_factor_options(mapping: str, **values: float) -> None:
    """A ValueError naming the option for an unknown mapping, a non-finite value or one outside `FACTOR_RANGES`."""
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    for name, low, high, low_open in FACTOR_RANGES:
        check_range(name, values[name], low, high, low_open=low_open)
    if not values["lr_min"] <= values["lr_max"]:
        raise ValueError(f"lr_min must be <= lr_max, got {values['lr_min']} and {values['lr_max']}")


def _sigmoid(x: float) -> float:
    """Logistic function without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _linear_factors(fitted: Mapping[str, float], lr_min: float, lr_max: float) -> dict[str, float]:
    if lr_min == lr_max:  # a constant map: that constant for every fitted unit, whatever their α
        return dict.fromkeys(fitted, float(lr_min))
    lo, hi = min(fitted.values()), max(fitted.values())
    if hi == lo:
        return dict.fromkeys(fitted, 1.0)
    return {name: lr_min + (lr_max - lr_min) * (value - lo) / (hi - lo) for name, value in fitted.items()}


def _sigmoid_factors(fitted: Mapping[str, float], tau: float, s_low: float, s_high: float) -> dict[str, float]:
    mean = math.fsum(fitted.values()) / len(fitted)
    out = {}
    for name, value in fitted.items():
        s = s_low if value <= mean else s_high
        out[name] = 10.0 ** (s * (_sigmoid(tau * (value - mean)) - 0.5))
    return out


def _se_factors(
    fitted: Mapping[str, float], alpha_se: Mapping[str, float], lr_min: float, lr_max: float, threshold: float
) -> dict[str, float]:
    """The standard-error map: see `compute_factors`."""
    n = len(fitted)
    mean = math.fsum(fitted.values()) / n
    ses = {name: float(alpha_se.get(name, math.nan)) for name in fitted}
    if n < 2 or not all(math.isfinite(v) and v >= 0 for v in ses.values()):
        bad = [name for name, v in ses.items() if not (math.isfinite(v) and v >= 0)]
        if bad:
            logger.warning(
                f"TempBalance: tb_mapping='se' needs every fitted unit's standard error of alpha; {bad} have none, "
                "so every unit keeps factor 1 in this update."
            )
        return dict.fromkeys(fitted, 1.0)
    total = math.fsum(v * v for v in ses.values())
    out = {}
    for name, value in fitted.items():
        # Var(α_u − ᾱ) with independent fits: se_u²·(1 − 1/n)² + Σ_{v≠u} se_v² / n²
        var = ses[name] ** 2 * (1 - 1 / n) ** 2 + (total - ses[name] ** 2) / n**2
        z = (value - mean) / math.sqrt(var) if var > 0 else 0.0
        excess = math.copysign(max(0.0, abs(z) - threshold), z)
        phi = math.tanh(excess / threshold)
        out[name] = 1.0 + phi * ((lr_max - 1.0) if phi >= 0 else (1.0 - lr_min))
    return out


def _normalized(factors: Mapping[str, float], weights: Mapping[str, float] | None) -> dict[str, float]:
    """Rescale ``factors`` so that their ``weights``-weighted mean is 1 (equal weights if None)."""
    if weights is None:
        weights = dict.fromkeys(factors, 1.0)
    missing = [name for name in factors if name not in weights]
    if missing:
        raise ValueError(f"weights has no entry for the fitted units {missing}")
    if any(not (math.isfinite(weights[name]) and weights[name] >= 0) for name in factors):
        raise ValueError("weights must be finite and >= 0")
    total = math.fsum(weights[name] for name in factors)
    if not total > 0:
        raise ValueError("the weights of the fitted units sum to 0; cannot normalize")
    mean = math.fsum(weights[name] * factor for name, factor in factors.items()) / total
    return {name: factor / mean for name, factor in factors.items()}


_B = BalanceOptions()  # the defaults, defined once in tb_hf.options


def compute_factors(
    metrics: Mapping[str, float],
    *,
    mapping: str = _B.mapping,
    lr_min: float = _B.lr_min,
    lr_max: float = _B.lr_max,
    tau: float = _B.sigmoid_tau,
    s_low: float = _B.sigmoid_s_low,
    s_high: float = _B.sigmoid_s_high,
    se_threshold: float = _B.se_threshold,
    alpha_se: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    normalize: bool = _B.normalize,
) -> dict[str, float]:
    """Learning-rate factor per unit from its metric (``docs/method.md``, section 5).

    Only *fitted* units (finite metric) take part; the others get factor 1.0 and are left out of the
    minimum, maximum and mean below.

    * ``"none"``: factor 1 for every unit (a depth profile alone, e.g. LLRD).

    * ``"linear"`` (TempBalance): ``factor = lr_min + (lr_max − lr_min)·(α − α_min)/(α_max − α_min)``, so the
      lowest α gets ``lr_min`` and the highest ``lr_max``; if all α are equal every factor is 1. With
      ``lr_min == lr_max`` the map is constant: every fitted unit gets exactly that value.
    * ``"sigmoid"`` (Model Balancing's TB_Sigmoid): ``factor = 10^φ``, ``φ = s·(σ(τ·(α − ᾱ)) − 0.5)`` with ᾱ the
      mean α and ``s = s_low`` for α ≤ ᾱ, ``s_high`` above. Factors lie in ``(10^(−s_low/2), 10^(s_high/2))``
      and the unit at the mean gets 1. ``lr_min``/``lr_max`` do not apply.
    * ``"se"`` (the standard-error map): α differences count in units of their standard error. With ᾱ the mean α
      over the n fitted units and ``alpha_se`` the fits' standard errors (`unit_alpha_se`),
      ``z = (α − ᾱ) / sd(α − ᾱ)``, ``sd² = se_u²·(1 − 1/n)² + Σ_{v≠u} se_v²/n²``; a unit within ``se_threshold``
      (k) standard errors of the mean gets factor 1, and beyond it ``e = sign(z)·(|z| − k)``,
      ``factor = 1 + tanh(e/k)·(lr_max − 1)`` above the mean and ``1 + tanh(e/k)·(1 − lr_min)`` below: factors lie
      in ``(lr_min, lr_max)``, and two units whose α is within the noise of the mean get the same factor.

    Args:
        metrics: Unit name → metric (e.g. from `unit_metrics`); NaN/inf for units that could not be fitted.
        mapping: One of `MAPPINGS`.
        lr_min: Lower end of the linear (and 'se') map's factor range (``0 < lr_min <= lr_max``).
        lr_max: Upper end of the linear (and 'se') map's factor range.
        tau: Sigmoid temperature (> 0).
        s_low: Sigmoid scale below the mean (>= 0).
        s_high: Sigmoid scale above the mean (>= 0).
        se_threshold: Standard-error map: the dead zone (and the scale beyond it), in standard errors.
        alpha_se: Standard-error map: unit name → standard error of its α (required with ``mapping="se"``).
        weights: Unit name → weight for ``normalize`` (typically the unit's parameter count); equal weights
            if None.
        normalize: Rescale the fitted units' factors so that their weighted mean is exactly 1, keeping the
            average learning rate of the model at the base rate.

    Returns:
        Unit name → factor, in the order of ``metrics``.
    """
    _check_factor_options(mapping, lr_min=lr_min, lr_max=lr_max, tau=tau, s_low=s_low, s_high=s_high)
    if mapping == "se":
        check_range("se_threshold", se_threshold, 0, 100, low_open=True)
    fitted = {name: float(value) for name, value in metrics.items() if math.isfinite(value)}
    factors: dict[str, float] = {}
    if fitted and mapping != "none":
        if mapping == "linear":
            factors = _linear_factors(fitted, lr_min, lr_max)
        elif mapping == "sigmoid":
            factors = _sigmoid_factors(fitted, tau, s_low, s_high)
        else:
            if alpha_se is None:
                raise ValueError("mapping='se' needs alpha_se (each unit's standard error of alpha)")
            factors = _se_factors(fitted, alpha_se, lr_min, lr_max, se_threshold)
        if normalize:
            factors = _normalized(factors, weights)
    return {name: factors.get(name, 1.0) for name in metrics}


def compute_wd_factors(
    metrics: Mapping[str, float], *, wd_min_ratio: float = _B.wd_min_ratio, wd_max_ratio: float = _B.wd_max_ratio
) -> dict[str, float]:
    """Weight-decay ratio per unit (AlphaDecay, He et al., NeurIPS 2025): a linear map of α into
    ``[wd_min_ratio, wd_max_ratio]``, so the unit with the highest α (the lightest-tailed spectrum) gets the most
    weight decay and the lowest α the least; 1 for units that could not be fitted, and for all when every α is equal.
    """
    if not 0 <= wd_min_ratio <= wd_max_ratio:
        raise ValueError(f"need 0 <= wd_min_ratio <= wd_max_ratio, got {wd_min_ratio} and {wd_max_ratio}")
    fitted = {name: float(value) for name, value in metrics.items() if math.isfinite(value)}
    ratios = _linear_factors(fitted, wd_min_ratio, wd_max_ratio) if fitted else {}
    return {name: ratios.get(name, 1.0) for name in metrics}


def permuted(factors: Mapping[str, float], fitted: Iterable[str], seed: int) -> dict[str, float]:
    """The control experiment ``tb_permute_factors``: the ``fitted`` units' factors shuffled among them by one
    permutation seeded with ``seed`` (the same at every update)."""
    fitted = [name for name in factors if name in set(fitted)]
    order = random.Random(seed).sample(fitted, len(fitted))
    return {**factors, **{unit: factors[source] for unit, source in zip(fitted, order, strict=True)}}


@dataclass(frozen=True)
class Balance:
    """What one pass's metrics give each unit: its learning-rate factor and (when weight decay is balanced) its
    weight-decay ratio, and the units that could not be fitted (factor 1)."""

    factors: dict[str, float]
    wd_factors: dict[str, float]
    skipped: list[str]


def balance(
    metrics: Mapping[str, float],
    options: BalanceOptions,
    *,
    alphas: Mapping[str, float] | None = None,
    alpha_se: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Balance:
    """The factors of a pass under ``options`` (`tb_hf.options.BalanceOptions`, or a `TempBalanceArguments` /
    `TempBalanceOptions`, whose balancing options are taken): `compute_factors` of the metric when
    the learning rate is balanced (else 1), `compute_wd_factors` of α when the weight decay is, both permuted among
    the fitted units for ``permute_factors``."""
    if not isinstance(options, BalanceOptions):  # a TempBalanceArguments or TempBalanceOptions
        from .options import resolve_options

        options = resolve_options(options).balance
    alphas = metrics if alphas is None else alphas
    factors = dict.fromkeys(metrics, 1.0)
    if options.balances_lr:
        factors = compute_factors(metrics, alpha_se=alpha_se or {}, weights=weights, **options.factor_kwargs())
    wd_factors = {}
    if options.balances_wd:
        wd_factors = compute_wd_factors(alphas, wd_min_ratio=options.wd_min_ratio, wd_max_ratio=options.wd_max_ratio)
    fitted = [name for name, value in metrics.items() if math.isfinite(value)]
    if options.permute_factors:
        factors = permuted(factors, fitted, seed)
        wd_factors = permuted(wd_factors, fitted, seed) if wd_factors else {}
    return Balance(factors, wd_factors, [name for name in metrics if name not in set(fitted)])


# --------------------------------------------------------------------------------------------------
# Factors into the optimizer


def _set_value(container: dict | list, key: Any, value: float) -> None:
    """``container[key] = value``, filling a tensor in place (as torch's schedulers do) instead of replacing it."""
    current = container.get(key) if isinstance(container, dict) else container[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        container[key] = value


def _scale_value(container: dict | list, key: Any, ratio: float) -> None:
    current = container[key]
    if isinstance(current, torch.Tensor):
        current.mul_(ratio)
    else:
        container[key] = current * ratio


def apply_factors(optimizer, scheduler, factors: Mapping[str, float]) -> None:
    """Give each unit's param groups the learning rate ``tb_base_lr × factor × schedule(t)``.

    Param groups carry three keys (set when the optimizer is built, see `tb_hf.optim` and `tb_hf.state`): ``"tb_unit"``
    (unit name, or None for groups that are never scaled), ``"tb_base_lr"`` (the group's unscaled learning
    rate) and ``"tb_factor"`` (the factor in effect, updated here). Groups whose unit is not in
    ``factors`` are left alone.

    How the factor reaches the learning rate depends on the scheduler:

    * `torch.optim.lr_scheduler.LambdaLR` (every schedule of ``transformers.get_scheduler`` but
      ``"reduce_lr_on_plateau"``): the group's base rate becomes ``new_base = tb_base_lr × factor`` in
      ``scheduler.base_lrs[i]`` and ``group["initial_lr"]``, and ``group["lr"]`` (and the scheduler's last
      lr) becomes ``new_base × lr_lambdas[i](last_epoch)``. The lr is then exact now and after every later
      ``scheduler.step()``, and survives ``state_dict()``/``load_state_dict()`` of both objects. The lr
      lambdas are not wrapped, so ``scheduler.pt`` still loads with ``weights_only=True``.
    * ``None`` (no scheduler): ``group["lr"] = new_base``, a constant schedule.
    * Any other scheduler (``ReduceLROnPlateau``, ``SequentialLR``, ...) — fallback: the current
      ``group["lr"]`` (and ``group["initial_lr"]`` and ``scheduler.base_lrs[i]`` where present) is multiplied
      by ``new_factor / old_factor``. This is exact only for schedulers that update the lr multiplicatively
      from its current value; for others the factor may be lost or distorted at the scheduler's next step.

    Args:
        optimizer: A torch optimizer, or any object with ``.param_groups`` (e.g. accelerate's
            ``AcceleratedOptimizer``).
        scheduler: The scheduler driving ``optimizer``, or None. An accelerate ``AcceleratedScheduler`` is
            unwrapped through its ``.scheduler`` attribute.
        factors: Unit name → factor (finite, > 0), e.g. from `compute_factors`.
    """
    bad = {name: factor for name, factor in factors.items() if not (math.isfinite(factor) and factor > 0)}
    if bad:
        raise ValueError(f"factors must be finite and > 0, got {bad}")
    scheduler = getattr(scheduler, "scheduler", scheduler)
    groups = optimizer.param_groups
    is_lambda = isinstance(scheduler, LambdaLR)
    if is_lambda and len(scheduler.base_lrs) != len(groups):
        raise ValueError(
            f"the scheduler has {len(scheduler.base_lrs)} base lrs but the optimizer {len(groups)} param groups"
        )
    if scheduler is not None and not is_lambda:
        logger.info_once(
            f"apply_factors: {type(scheduler).__name__} is not a LambdaLR; learning-rate factors are applied by "
            "rescaling each group's current lr by new_factor / old_factor."
        )

    for i, group in enumerate(groups):
        unit = group.get(UNIT)
        if unit is None or unit not in factors:
            continue
        if BASE_LR not in group:
            raise KeyError(f"param group {i} (unit {unit!r}) has no 'tb_base_lr'")
        factor = float(factors[unit])
        new_base = float(group[BASE_LR]) * factor
        if is_lambda:
            lr = new_base * scheduler.lr_lambdas[i](scheduler.last_epoch)
            _set_value(group, "initial_lr", new_base)
            _set_value(scheduler.base_lrs, i, new_base)
            _set_value(group, "lr", lr)
            last_lr = getattr(scheduler, "_last_lr", None)
            if last_lr is not None and i < len(last_lr):
                _set_value(last_lr, i, lr)
        elif scheduler is None:
            _set_value(group, "lr", new_base)
        else:
            ratio = factor / float(group.get(FACTOR, 1.0))
            _scale_value(group, "lr", ratio)
            if "initial_lr" in group:
                _scale_value(group, "initial_lr", ratio)
            base_lrs = getattr(scheduler, "base_lrs", None)
            if base_lrs is not None and i < len(base_lrs):
                _scale_value(base_lrs, i, ratio)
            last_lr = getattr(scheduler, "_last_lr", None)
            if last_lr is not None and i < len(last_lr):
                _set_value(last_lr, i, float(group["lr"]))
        group[FACTOR] = factor


def apply_wd_factors(optimizer, factors: Mapping[str, float]) -> None:
    """Give each unit's weight-decay groups the weight decay ``tb_base_wd × factor`` (`compute_wd_factors`); groups
    without decay (biases, norms) and groups outside the units are left alone. The ratio in force is kept in the
    group as ``tb_wd_factor`` (and the weight decay itself is saved with the optimizer, so resuming keeps both)."""
    bad = {name: factor for name, factor in factors.items() if not (math.isfinite(factor) and factor >= 0)}
    if bad:
        raise ValueError(f"weight-decay factors must be finite and >= 0, got {bad}")
    for group in optimizer.param_groups:
        unit = group.get(UNIT)
        if unit is None or unit not in factors or not group.get(BASE_WD):
            continue
        _set_value(group, "weight_decay", float(group[BASE_WD]) * float(factors[unit]))
        group[WD_FACTOR] = float(factors[unit])
