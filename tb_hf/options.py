"""TempBalance's options: the flags a user sets, and the one typed description the library runs on.

Two layers, without importing torch or transformers (so ``--help`` answers at once):

* `tb_hf.arguments.TempBalanceArguments`: every option as a ``tb_*`` field with help text, so
  `transformers.HfArgumentParser` turns them into command-line flags (``--tb_mapping sigmoid``) and YAML keys. Every
  field defaults to ``None``, meaning *unset*: what you set is kept exactly as you set it (numbers converted to
  Python numbers, `tb_hf.values`), and `resolve_options` fills the rest from ``tb_preset`` and then from the
  defaults below.
* `TempBalanceOptions`: frozen and typed, one object per concern (`SpectralOptions`: how α is measured;
  `BalanceOptions`: which units share a factor and how α becomes a factor; `ScheduleOptions`: when α is
  recomputed), built once by `resolve_options` and passed down to the engine, the balancing, the schedule, the
  callback and ``tb-hf analyze``. Each option's default is defined here, once: the field default of these dataclasses.

`resolve_options` is the only place where a preset meets explicit values: an option you set always wins over the
preset; an option that contradicts the preset's defining choice (its map, what it balances) is refused, naming both;
an option the configuration does not use is refused, naming what would make it apply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .values import FACTOR_RANGES, check_int, check_range, choice, flag, integer, real, to_float
from .values import update_steps as _update_steps

__all__ = [
    "BALANCED",
    "ESTIMATORS",
    "FACTOR_RANGES",
    "LORA_AVERAGES",
    "LORA_VIEWS",
    "MAPPINGS",
    "METRICS",
    "PRESETS",
    "UNIT_KINDS",
    "XMIN_METHODS",
    "BalanceOptions",
    "ScheduleOptions",
    "SpectralOptions",
    "TempBalanceOptions",
    "check_int",
    "check_range",
    "explicit_options",
    "resolve_options",
    "to_float",
]

XminMethod = Literal["median", "ks"]
Estimator = Literal["plain", "farms"]
UnitKind = Literal["block", "matrix"]
LoraView = Literal["effective", "delta"]
#: Which matrices of a block set its α under LoRA: the "adapted" ones (Model Balancing) or "all".
LoraAverage = Literal["adapted", "all"]
#: From a unit's metric to its learning-rate factor: none (factor 1: a depth profile alone, e.g. LLRD), TempBalance's
#: linear map, Model Balancing's sigmoid, and the standard-error map (α differences in units of their standard error).
Mapping = Literal["none", "linear", "sigmoid", "se"]
#: What the factors balance: the learning rate (TempBalance), the weight decay (AlphaDecay), or both.
Balanced = Literal["lr", "weight_decay", "both"]
#: `LayerSpectrum` fields that can drive the mapping (α is the paper's choice; the others are ablations).
Metric = Literal["alpha", "alpha_hat", "spectral_norm", "stable_rank"]
EsdDtype = Literal["auto", "float32", "float64"]

XMIN_METHODS, ESTIMATORS, UNIT_KINDS = get_args(XminMethod), get_args(Estimator), get_args(UnitKind)
LORA_VIEWS, LORA_AVERAGES, MAPPINGS = get_args(LoraView), get_args(LoraAverage), get_args(Mapping)
BALANCED, METRICS, ESD_DTYPE_CHOICES = get_args(Balanced), get_args(Metric), get_args(EsdDtype)

#: Model Balancing's recompute rule: about ten times per epoch, at most every 100 steps.
MAX_AUTO_INTERVAL = 100
#: tb_min_evals: a fit needs two eigenvalues; above 10^7 no matrix could ever be fitted.
MIN_EVALS_RANGE = (2, 10**7)
MIN_EVALS_WHY = " (a fit needs two eigenvalues; matrices with fewer are not fitted)"
#: Largest FARMS window (rows): far above any matrix side in use.
MAX_FARMS_WINDOW = 10**6


# --------------------------------------------------------------------------------------------------
# The typed options: one frozen object per concern; their field defaults are THE defaults


@dataclass(frozen=True)
class SpectralOptions:
    """How α is measured: which matrices, which ESD, which fit, which metric per unit."""

    xmin_method: XminMethod = "median"
    xmin_pos: float = 2.0
    min_evals: int = 50
    filter_zeros: bool = False
    estimator: Estimator = "plain"
    farms_window: int | None = None  # None: one size per model (the engine decides it)
    farms_aspect_ratio: float = 1.0
    farms_grid: int = 9
    esd_dtype: EsdDtype = "auto"
    metric: Metric = "alpha"
    lora_view: LoraView = "effective"
    lora_average: LoraAverage = "adapted"

    def dtype(self, device=None):
        """The eigen-solve precision on ``device``: 'auto' is float64 on CUDA, float32 elsewhere."""
        import torch

        if self.esd_dtype != "auto":
            return getattr(torch, self.esd_dtype)
        return torch.float64 if device is not None and torch.device(device).type == "cuda" else torch.float32

    def fit_kwargs(self, device=None) -> dict[str, Any]:
        """The keyword arguments of `tb_hf.spectral.analyze` for weights on ``device``."""
        return dict(
            estimator=self.estimator,
            xmin_method=self.xmin_method,
            xmin_pos=self.xmin_pos,
            min_evals=self.min_evals,
            filter_zeros=self.filter_zeros,
            dtype=self.dtype(device),
            farms_window=self.farms_window,
            farms_aspect_ratio=self.farms_aspect_ratio,
            farms_grid_size=self.farms_grid,
        )


@dataclass(frozen=True)
class BalanceOptions:
    """Which parameters share a factor, their base rates (a depth profile), and how α becomes a factor."""

    unit: UnitKind = "block"
    balance: Balanced = "lr"
    mapping: Mapping = "linear"
    llrd_decay: float = 1.0
    head_lr_ratio: float = 1.0
    embeddings_lr_ratio: float = 1.0
    lr_min: float = 0.5
    lr_max: float = 1.5
    sigmoid_tau: float = 10.0
    sigmoid_s_low: float = 2.0
    sigmoid_s_high: float = 1.0
    se_threshold: float = 2.0
    normalize: bool = False
    wd_min_ratio: float = 0.5
    wd_max_ratio: float = 1.5
    permute_factors: bool = False

    @property
    def balances_lr(self) -> bool:
        """Whether α sets learning-rate factors (a map other than 'none', balancing 'lr' or 'both')."""
        return self.balance in ("lr", "both") and self.mapping != "none"

    @property
    def balances_wd(self) -> bool:
        return self.balance in ("weight_decay", "both")

    @property
    def needs_alpha(self) -> bool:
        """Whether any factor depends on α: without, there is no spectral pass at all (e.g. LLRD)."""
        return self.balances_lr or self.balances_wd

    def factor_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `tb_hf.balancing.compute_factors` (without ``weights``)."""
        return dict(
            mapping=self.mapping,
            lr_min=self.lr_min,
            lr_max=self.lr_max,
            tau=self.sigmoid_tau,
            s_low=self.sigmoid_s_low,
            s_high=self.sigmoid_s_high,
            se_threshold=self.se_threshold,
            normalize=self.normalize,
        )

    def map_text(self) -> str:
        """The learning-rate map in words, as figures and logs name it."""
        if not self.balances_lr:
            return "no α map"
        if self.mapping == "linear":
            text = f"linear map {self.lr_min:g}-{self.lr_max:g}"
        elif self.mapping == "sigmoid":
            text = f"sigmoid map, τ={self.sigmoid_tau:g}, s={self.sigmoid_s_low:g}/{self.sigmoid_s_high:g}"
        else:
            text = f"standard-error map {self.lr_min:g}-{self.lr_max:g}, {self.se_threshold:g} SE"
        return text + (", normalized" if self.normalize else "")


@dataclass(frozen=True)
class ScheduleOptions:
    """When α is recomputed (always once before the first step)."""

    update_steps: str = "auto"  # "auto", "once" or a positive integer, as a string
    max_overhead: float = 0.03
    auto_interval: int | None = None
    asynchronous: bool = False

    def interval_rule(self, steps_per_epoch: int | None) -> int | None:
        """Optimizer steps between two passes before any budget: an integer as given, None for 'once', and for 'auto'
        Model Balancing's ``min(100, max(1, steps_per_epoch // 10))`` (100 if unknown)."""
        if self.update_steps == "once":
            return None
        if self.update_steps != "auto":
            return int(self.update_steps)
        if steps_per_epoch is None or steps_per_epoch <= 0 or not math.isfinite(steps_per_epoch):
            return MAX_AUTO_INTERVAL
        return min(MAX_AUTO_INTERVAL, max(1, int(steps_per_epoch) // 10))


#: tb_* option -> (concern, attribute of its typed object).
OPTION_FIELDS: dict[str, tuple[str, str]] = {
    **{f"tb_{f.name}": ("spectral", f.name) for f in dataclasses.fields(SpectralOptions)},
    **{f"tb_{f.name}": ("balance", f.name) for f in dataclasses.fields(BalanceOptions)},
    **{f"tb_{f.name}": ("schedule", f.name) for f in dataclasses.fields(ScheduleOptions) if f.name != "asynchronous"},
    "tb_async": ("schedule", "asynchronous"),
}
_TYPED = {"spectral": SpectralOptions, "balance": BalanceOptions, "schedule": ScheduleOptions}
#: Every tb_* option's default (tb_preset's is None).
DEFAULTS: dict[str, Any] = {name: getattr(_TYPED[concern](), attr) for name, (concern, attr) in OPTION_FIELDS.items()}


@dataclass(frozen=True)
class TempBalanceOptions:
    """Every option in force, resolved (`resolve_options`): the preset's name and one typed object per concern."""

    preset: str | None = None
    spectral: SpectralOptions = field(default_factory=SpectralOptions)
    balance: BalanceOptions = field(default_factory=BalanceOptions)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)

    def to_dict(self) -> dict[str, Any]:
        """``{"tb_preset": ..., "tb_xmin_method": ..., ...}``: every option by its flag name, as resolved (what
        ``to_dict()``, the logs, ``history.jsonl`` and a checkpoint record)."""
        values = {name: getattr(getattr(self, concern), attr) for name, (concern, attr) in OPTION_FIELDS.items()}
        return {"tb_preset": self.preset, **values}

    def in_use(self) -> dict[str, Any]:
        """`to_dict` with None for the options this configuration does not use (what ``to_dict()`` of the arguments
        shows: it can be passed back as arguments)."""
        values = self.to_dict()
        return {name: None if name != "tb_preset" and _unused_because(name, values, self.balance) else value
                for name, value in values.items()}  # fmt: skip

    def text(self) -> str:
        """One line for logs: the preset and what it resolved to."""
        b, s = self.balance, self.spectral
        parts = [f"tb_preset={self.preset!r}" if self.preset else "no preset", f"{b.unit} units"]
        if b.llrd_decay != 1:
            parts.append(f"depth profile llrd_decay={b.llrd_decay:g}")
        if b.head_lr_ratio != 1 or b.embeddings_lr_ratio != 1:
            parts.append(f"head x{b.head_lr_ratio:g}, embeddings x{b.embeddings_lr_ratio:g}")
        if b.balances_lr:
            parts.append(b.map_text())
        if b.balances_wd:
            parts.append(f"weight decay × α map {b.wd_min_ratio:g}-{b.wd_max_ratio:g}")
        if b.needs_alpha:
            parts.append(f"{s.xmin_method} xmin, {s.estimator} ESD")
        else:
            parts.append("no spectral pass (no factor depends on α)")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# Presets

#: Named settings, each a method of the project's study (its name there in brackets) at a middle value of the one
#: free parameter the study tuned per task. Every preset names its map and what it balances (its defining choice:
#: an explicit other value is refused); an option you set keeps your value. The recompute interval is not part of
#: a preset. None of the spectral presets beat LLRD with a tuned decay in the study (docs/results.md).
PRESETS: dict[str, dict[str, Any]] = {
    # TempBalance's own defaults: linear map 0.5-1.5 of alpha, median xmin over the top half
    "tempbalance": {"tb_mapping": "linear", "tb_balance": "lr"},
    # [tempbalance-mb] Model Balancing's GLUE setting: sigmoid map (tau 10, s 2 below / 1 above), top third
    "model-balancing": {"tb_mapping": "sigmoid", "tb_balance": "lr", "tb_xmin_pos": 1.5},
    # [llrd] layer-wise lr decay 0.9: a depth profile alone, no spectral pass
    "llrd": {"tb_mapping": "none", "tb_balance": "lr", "tb_llrd_decay": 0.9},
    # [llrd-alpha] alpha on top of depth: LLRD 0.9 times a linear alpha correction in 1 -/+ 0.35
    "llrd-alpha": {"tb_mapping": "linear", "tb_balance": "lr", "tb_llrd_decay": 0.9, "tb_lr_min": 0.65,
                   "tb_lr_max": 1.35},
    # [tb-se] the standard-error map: units beyond 2 standard errors of the mean alpha move within 1/2..2
    "se": {"tb_mapping": "se", "tb_balance": "lr", "tb_se_threshold": 2.0, "tb_lr_min": 0.5, "tb_lr_max": 2.0},
    # [alphadecay] AlphaDecay: flat learning rates, each unit's weight decay x a linear map of alpha into 0.75..1.25
    "alphadecay": {"tb_balance": "weight_decay", "tb_wd_min_ratio": 0.75, "tb_wd_max_ratio": 1.25},
}  # fmt: skip
#: Options that define a preset: an explicit other value is refused, not silently mixed.
PRESET_SHAPE = ("tb_mapping", "tb_balance")


# --------------------------------------------------------------------------------------------------
#: Each option's check, which also converts it (numbers to Python numbers, integers to int).
_CHECKS = {
    "tb_xmin_method": choice(XMIN_METHODS),
    "tb_xmin_pos": real(1, 100, low_open=True, why=" (2: top half, 1.5: top third)"),
    "tb_min_evals": integer(*MIN_EVALS_RANGE, why=MIN_EVALS_WHY),
    "tb_filter_zeros": flag,
    "tb_estimator": choice(ESTIMATORS),
    "tb_farms_window": integer(1, MAX_FARMS_WINDOW, why=" (window rows; None: per model)", optional=True),
    "tb_farms_aspect_ratio": real(0, 100, low_open=True),
    "tb_farms_grid": integer(1, 64, why=" (up to P x P windows)"),
    "tb_esd_dtype": choice(ESD_DTYPE_CHOICES),
    "tb_metric": choice(METRICS),
    "tb_lora_view": choice(LORA_VIEWS),
    "tb_lora_average": choice(LORA_AVERAGES),
    "tb_unit": choice(UNIT_KINDS),
    "tb_balance": choice(BALANCED),
    "tb_mapping": choice(MAPPINGS),
    "tb_llrd_decay": real(0, 1, low_open=True, why=" (1: no depth profile)"),
    "tb_head_lr_ratio": real(0, 100, low_open=True, why=" (the head's rate / the top block's)"),
    "tb_embeddings_lr_ratio": real(0, 100, low_open=True, why=" (a multiple of the embeddings' rate)"),
    "tb_lr_min": real(0, 100, low_open=True),
    "tb_lr_max": real(0, 100, low_open=True),
    "tb_sigmoid_tau": real(0, 1000, low_open=True),
    "tb_sigmoid_s_low": real(0, 6),
    "tb_sigmoid_s_high": real(0, 6),
    "tb_se_threshold": real(0, 100, low_open=True, why=" (standard errors)"),
    "tb_normalize": flag,
    "tb_wd_min_ratio": real(0, 100, why=" (a multiple of weight_decay)"),
    "tb_wd_max_ratio": real(0, 100, why=" (a multiple of weight_decay)"),
    "tb_permute_factors": flag,
    "tb_update_steps": _update_steps,
    "tb_max_overhead": real(0, 1, low_open=True, why=" (0.03 = 3% of training time)"),
    "tb_auto_interval": integer(1, 10**9, optional=True),
    "tb_async": flag,
}
assert set(_CHECKS) == set(OPTION_FIELDS), "every option has its check"

#: Options of the learning-rate map -> the maps that use them (None: every map but 'none').
_LR_MAP_OPTIONS = {
    "tb_mapping": None, "tb_metric": None, "tb_normalize": None,
    "tb_lr_min": ("linear", "se"), "tb_lr_max": ("linear", "se"),
    "tb_sigmoid_tau": ("sigmoid",), "tb_sigmoid_s_low": ("sigmoid",), "tb_sigmoid_s_high": ("sigmoid",),
    "tb_se_threshold": ("se",),
}  # fmt: skip
#: Options of the spectral pass and its schedule: unused when no factor depends on α.
_PASS_OPTIONS = tuple(n for n, (c, _) in OPTION_FIELDS.items() if c in ("spectral", "schedule")) + (
    "tb_permute_factors",
)
_FARMS_OPTIONS = ("tb_farms_window", "tb_farms_aspect_ratio", "tb_farms_grid")


def explicit_options(source) -> dict[str, Any]:
    """The options ``source`` (a `TempBalanceArguments` or `TempBalanceConfig`) sets, checked and converted: every
    ``tb_*`` field that is not None."""
    out = {}
    for name in ("tb_preset", *OPTION_FIELDS):
        value = getattr(source, name)
        if value is not None:
            out[name] = value if name == "tb_preset" else _CHECKS[name](name, value)
    return out


def resolve_options(source=None, *, weight_decay: float | None = None) -> TempBalanceOptions:
    """The options in force: what ``source`` sets, else its ``tb_preset``'s value, else the default. The one place
    presets and explicit values meet.

    Args:
        source: A `TempBalanceArguments` (or `TempBalanceConfig`), a `TempBalanceOptions` (returned as is), or None
            (the defaults).
        weight_decay: The run's weight decay, if known: weight-decay balancing with 0 is refused.

    Raises:
        ValueError: For an unknown preset or option value, a value out of range, an explicit value that contradicts
            the preset's map or balanced quantity, an option this configuration does not use, or an impossible
            combination; the message names the options and what to do.
    """
    if isinstance(source, TempBalanceOptions):
        return source
    explicit = {} if source is None else explicit_options(source)
    preset = explicit.pop("tb_preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"tb_preset must be one of {list(PRESETS)} or None, got {preset!r}")
    filled = PRESETS.get(preset, {})
    for name in PRESET_SHAPE:
        if name in explicit and name in filled and explicit[name] != filled[name]:
            raise ValueError(
                f"tb_preset={preset!r} is defined by {name}={filled[name]!r}, and you set {name}={explicit[name]!r}: "
                f"drop one of the two (tb_preset=None with your own options, or the preset with its {name})."
            )
    values = {**DEFAULTS, **filled, **explicit}
    _check_combinations(values, explicit, preset, weight_decay)
    typed = {concern: {} for concern in _TYPED}
    for name, (concern, attr) in OPTION_FIELDS.items():
        typed[concern][attr] = values[name]
    return TempBalanceOptions(preset, *(cls(**typed[concern]) for concern, cls in _TYPED.items()))


def _check_combinations(values: dict, explicit: dict, preset: str | None, weight_decay: float | None) -> None:
    """Refuse combinations that cannot run, and explicit options this configuration does not use."""
    v = values
    if not v["tb_lr_min"] <= v["tb_lr_max"]:
        raise ValueError(f"tb_lr_min must be <= tb_lr_max, got {v['tb_lr_min']} and {v['tb_lr_max']}")
    if not v["tb_wd_min_ratio"] <= v["tb_wd_max_ratio"]:
        raise ValueError(
            f"tb_wd_min_ratio must be <= tb_wd_max_ratio, got {v['tb_wd_min_ratio']} and {v['tb_wd_max_ratio']}"
        )
    if v["tb_mapping"] == "se" and v["tb_metric"] != "alpha":
        raise ValueError(
            "tb_mapping='se' counts alpha differences in units of alpha's standard error, so it needs "
            f"tb_metric='alpha', got tb_metric={v['tb_metric']!r}"
        )
    if v["tb_mapping"] == "se" and not v["tb_lr_min"] <= 1 <= v["tb_lr_max"]:
        raise ValueError(
            "tb_mapping='se' gives factor 1 to units within the noise, so it needs tb_lr_min <= 1 <= tb_lr_max, "
            f"got {v['tb_lr_min']} and {v['tb_lr_max']}"
        )
    if v["tb_auto_interval"] is not None and v["tb_update_steps"] != "auto":
        raise ValueError(
            "tb_auto_interval replays a tb_update_steps='auto' run; with tb_update_steps="
            f"{v['tb_update_steps']!r} the interval is already fixed: drop tb_auto_interval"
        )
    balance = BalanceOptions(mapping=v["tb_mapping"], balance=v["tb_balance"])
    origin = f" (set by tb_preset={preset!r})" if "tb_balance" in PRESETS.get(preset, {}) else ""
    if balance.balances_wd and weight_decay == 0:
        raise ValueError(
            f"tb_balance={v['tb_balance']!r}{origin} scales each unit's weight_decay, which is 0 here "
            "(TrainingArguments' default): set weight_decay (e.g. 0.1), or tb_balance='lr'"
        )
    if v["tb_mapping"] == "none" and v["tb_balance"] == "both":
        raise ValueError(
            "tb_balance='both' balances the learning rate too, and tb_mapping='none' gives it no α map: set "
            "tb_balance='weight_decay', or a map (tb_mapping='linear')"
        )
    unused = {name: _unused_because(name, v, balance) for name in explicit}
    unused = {name: needs for name, needs in unused.items() if needs}
    if unused:  # every explicit option this configuration does not use, even at its default value
        where = (
            f"tb_balance={v['tb_balance']!r}, tb_mapping={v['tb_mapping']!r}, tb_estimator={v['tb_estimator']!r}, "
            f"tb_update_steps={v['tb_update_steps']!r}, tb_unit={v['tb_unit']!r}"
            + (f", tb_preset={preset!r}" if preset else "")
        )
        lines = [
            f"{name}={explicit[name]!r} has no effect here: it applies with {needs}" for name, needs in unused.items()
        ]
        defaults = ", ".join(f"{name}={DEFAULTS[name]!r}" for name in unused)
        them = "them" if len(unused) > 1 else "it"
        raise ValueError(
            "; ".join(lines) + f" (the configuration: {where}). Set what would make {them} apply, or leave {them} "
            f"unset (default: {defaults})."
        )


def _unused_because(name: str, v: dict, balance: BalanceOptions) -> str | None:
    """What would make the explicit option ``name`` apply, or None if it applies now."""
    if name == "tb_mapping" and v["tb_mapping"] == "none":
        return None  # no learning-rate map is never a map left unused
    if not balance.needs_alpha and name in _PASS_OPTIONS + tuple(_LR_MAP_OPTIONS):
        return (
            "an α map (tb_mapping 'linear', 'sigmoid' or 'se'), or tb_balance='weight_decay': no factor depends on α "
            "now, so there is no spectral pass"
        )
    if name in _LR_MAP_OPTIONS and not balance.balances_lr:
        if v["tb_mapping"] == "none" and v["tb_balance"] != "weight_decay":
            return "an α map (tb_mapping 'linear', 'sigmoid' or 'se'): tb_mapping='none' sets no learning-rate factor"
        return "tb_balance='lr' or 'both' (only the weight decay is balanced now, by a linear map of alpha)"
    if name in _LR_MAP_OPTIONS and _LR_MAP_OPTIONS[name] is not None and v["tb_mapping"] not in _LR_MAP_OPTIONS[name]:
        needs = " or ".join(f"tb_mapping={m!r}" for m in _LR_MAP_OPTIONS[name])
        if name in ("tb_lr_min", "tb_lr_max"):
            needs += " (the sigmoid map's range is set by tb_sigmoid_s_low / tb_sigmoid_s_high)"
        return needs
    if name in ("tb_wd_min_ratio", "tb_wd_max_ratio") and not balance.balances_wd:
        return "tb_balance='weight_decay' or 'both'"
    if name in _FARMS_OPTIONS and v["tb_estimator"] != "farms":
        return "tb_estimator='farms' (the 'plain' ESD does not window the matrix)"
    if name == "tb_xmin_pos" and v["tb_xmin_method"] != "median":
        return "tb_xmin_method='median' (the 'ks' scan chooses xmin itself)"
    if name == "tb_max_overhead" and v["tb_update_steps"] != "auto":
        return "tb_update_steps='auto' (the budget caps its passes; a fixed interval or 'once' has none)"
    if name == "tb_max_overhead" and v["tb_auto_interval"] is not None:
        return "tb_auto_interval unset (a replayed interval is not timed against the budget)"
    if name == "tb_async" and v["tb_update_steps"] == "once":
        return "passes after the first (tb_update_steps 'auto' or an integer; 'once' makes only the first, in line)"
    if name == "tb_lora_average" and v["tb_unit"] != "block":
        return "tb_unit='block' (it says which matrices of a block set its alpha)"
    return None
