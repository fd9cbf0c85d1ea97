"""TempBalance's options, without importing torch or transformers (so ``--help`` answers at once).

Every option is a ``tb_*`` field with help text, so `transformers.HfArgumentParser` turns them into
command-line flags (``--tb_mapping sigmoid``) and YAML keys for free. Defaults follow the TempBalance paper
(median xmin over the top half, linear map 0.5-1.5, block units); Model Balancing's GLUE runs used
``tb_xmin_pos=1.5`` and the sigmoid map, noted in the help texts. The choices and sane ranges live here too,
and the modules that use them (`tb_hf.spectral`, `tb_hf.layers`, `tb_hf.balancing`) import them from here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import re
from dataclasses import dataclass, field

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
    "TempBalanceArguments",
    "check_factor_options",
    "check_int",
    "check_range",
    "tb_arguments",
]

XMIN_METHODS = ("median", "ks")
ESTIMATORS = ("plain", "farms")
UNIT_KINDS = ("block", "matrix")
LORA_VIEWS = ("effective", "delta")
#: Which matrices of a block set its α under LoRA: the "adapted" ones (Model Balancing) or "all".
LORA_AVERAGES = ("adapted", "all")
#: Maps from a unit's metric to its learning-rate factor: TempBalance's linear map, Model Balancing's sigmoid, and
#: the standard-error map (α differences counted in units of their standard error, with a dead zone).
MAPPINGS = ("linear", "sigmoid", "se")
#: What the factors balance: the learning rate (TempBalance), the weight decay (AlphaDecay), or both.
BALANCED = ("lr", "weight_decay", "both")
#: `LayerSpectrum` fields that can drive the mapping (α is the paper's choice; the others are ablations).
METRICS = ("alpha", "alpha_hat", "spectral_norm", "stable_rank")
ESD_DTYPE_CHOICES = ("auto", "float32", "float64")
#: Named settings of the profile, each a method of the study in results/llrd-vs-spectral (its name there in
#: brackets) at a middle value of the one free parameter the study tuned per task (its README has the table; tune it
#: per task as the study did). None of them beat LLRD with a tuned decay there (docs/results.md), so the project
#: recommends `tb_hf.baselines.LLRDTrainer`; these stay as measured options. A preset fills the options it names
#: that are still at their defaults; an option set away from its default keeps that value, except the map and the
#: balanced quantity, which define the preset. The recompute interval is not part of a preset (the study used
#: tb_update_steps=4).
PRESETS: dict[str, dict] = {
    # TempBalance's own defaults: linear map 0.5-1.5 of alpha, median xmin over the top half
    "tempbalance": {},
    # [tempbalance-mb] Model Balancing's GLUE setting: sigmoid map (tau 10, s 2 below / 1 above), top third
    "model-balancing": {"tb_mapping": "sigmoid", "tb_xmin_pos": 1.5},
    # [llrd-alpha] alpha on top of depth: LLRD 0.9 times a linear alpha correction in 1 -/+ 0.35
    "llrd-alpha": {"tb_llrd_decay": 0.9, "tb_lr_min": 0.65, "tb_lr_max": 1.35},
    # [tb-se] the standard-error map: units beyond 2 standard errors of the mean alpha move within 1/2..2
    "se": {"tb_mapping": "se", "tb_se_threshold": 2.0, "tb_lr_min": 0.5, "tb_lr_max": 2.0},
    # [alphadecay] AlphaDecay: flat learning rates, each unit's weight decay x a linear map of alpha into 0.75..1.25
    "alphadecay": {"tb_balance": "weight_decay", "tb_wd_min_ratio": 0.75, "tb_wd_max_ratio": 1.25},
}
#: Options that define a preset: setting one away from the preset's value is refused, not silently mixed.
PRESET_SHAPE = ("tb_mapping", "tb_balance")

logger = logging.getLogger(__name__)

#: Model Balancing's recompute rule: about ten times per epoch, at most every 100 steps.
MAX_AUTO_INTERVAL = 100

#: tb_min_evals / min_evals: a fit needs two eigenvalues; above 10^7 no matrix could ever be fitted.
MIN_EVALS_RANGE = (2, 10**7)
MIN_EVALS_WHY = " (a fit needs two eigenvalues; matrices with fewer are not fitted)"
#: Largest FARMS window (rows): far above any matrix side in use.
MAX_FARMS_WINDOW = 10**6

#: Sane ranges of the factor options (name, low, high, low open): factors stay within 1e-3..1e3 of the base
#: learning rate. Model Balancing used s in 0.25..2 and τ = 10; TempBalance 0.5..1.5.
FACTOR_RANGES = (
    ("lr_min", 0.0, 100.0, True),
    ("lr_max", 0.0, 100.0, True),
    ("tau", 0.0, 1000.0, True),
    ("s_low", 0.0, 6.0, False),
    ("s_high", 0.0, 6.0, False),
)


def check_range(name: str, value, low: float, high: float, *, low_open: bool = False, why: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite number in [low, high] ((low, high] with
    ``low_open``). The message states the range, so a typo or an absurd setting is caught before training."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a finite number in {bracket}{low:g}, {high:g}]{why}, got {value!r}")


def check_int(name: str, value, low: int, high: int, *, why: str = "") -> int:
    """``value`` as an int, or a ValueError naming ``name`` and the range [low, high]. Any integer type counts (a
    numpy integer from a config or a sweep grid); bool does not (numpy's bool is no `numbers.Integral` either), nor
    does a float, even 50.0."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high):
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{why}, got {value!r}")
    return int(value)


def check_factor_options(mapping: str, *, prefix: str = "", **values: float) -> None:
    """Raise a ValueError naming the option (``prefix`` + name, e.g. ``tb_sigmoid_``) for an unknown mapping,
    a non-finite value or one outside `FACTOR_RANGES`."""
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    for name, low, high, low_open in FACTOR_RANGES:
        if name in values:
            check_range(f"{prefix}{name}", values[name], low, high, low_open=low_open)
    if "lr_min" in values and "lr_max" in values and not values["lr_min"] <= values["lr_max"]:
        raise ValueError(f"{prefix}lr_min must be <= {prefix}lr_max, got {values['lr_min']} and {values['lr_max']}")


@dataclass
class TempBalanceArguments:
    """The TempBalance options alone (for `tb-hf analyze`, the callback, or your own argument parser)."""

    tb_preset: str | None = field(
        default=None,
        metadata={
            "help": "A named setting of the options below, one per method of the project's study "
            "(results/llrd-vs-spectral): 'tempbalance' (the defaults), 'model-balancing' (sigmoid map, tb_xmin_pos "
            "1.5), 'llrd-alpha' (tb_llrd_decay 0.9 x a linear alpha map in 0.65..1.35), 'se' (the standard-error "
            "map in 0.5..2) or 'alphadecay' (weight decay x alpha's map into 0.75..1.25). It fills the options still "
            "at their defaults; options you set keep your value (e.g. tb_llrd_decay=0.8), except tb_mapping and "
            "tb_balance, which define the preset (an option at its default value counts as not set).",
            "choices": list(PRESETS),
        },
    )
    tb_xmin_method: str = field(
        default="median",
        metadata={
            "help": "How xmin of the power-law fit is chosen: 'median' (xmin = evals[floor(N / tb_xmin_pos)], "
            "TempBalance) or 'ks' (Kolmogorov-Smirnov scan over every cut, WeightWatcher).",
            "choices": list(XMIN_METHODS),
        },
    )
    tb_xmin_pos: float = field(
        default=2.0,
        metadata={"help": "Position of xmin for 'median': 2 fits the top half, 1.5 the top third (Model Balancing)."},
    )
    tb_min_evals: int = field(
        default=50, metadata={"help": "Matrices with fewer eigenvalues are not fitted (their unit keeps factor 1)."}
    )
    tb_filter_zeros: bool = field(
        default=False, metadata={"help": "Drop eigenvalues <= 1e-5 before fitting (WeightWatcher's convention)."}
    )
    tb_estimator: str = field(
        default="plain",
        metadata={
            "help": "'plain': ESD of the whole matrix; 'farms': pooled ESD of fixed-aspect-ratio windows, "
            "which removes the bias that matrix shape puts into alpha.",
            "choices": list(ESTIMATORS),
        },
    )
    tb_farms_window: int | None = field(
        default=None,
        metadata={
            "help": "FARMS window rows r. Default: one size for the whole model, as in the FARMS paper: half the "
            "smallest side among the analysed matrices (so q, k and v of a block are windowed alike)."
        },
    )
    tb_farms_aspect_ratio: float = field(default=1.0, metadata={"help": "FARMS window columns / rows (Q)."})
    tb_farms_grid: int = field(default=9, metadata={"help": "FARMS grid: up to P x P window positions."})
    tb_esd_dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the eigen-solve: 'auto' = float64 on CUDA (it costs about the same as float32 "
            "there, and matches WeightWatcher to rounding), float32 elsewhere.",
            "choices": list(ESD_DTYPE_CHOICES),
        },
    )
    tb_unit: str = field(
        default="block",
        metadata={
            "help": "What shares one learning-rate factor: a transformer 'block' (its alpha is the mean over "
            "its matrices) or each analysed 'matrix' module.",
            "choices": list(UNIT_KINDS),
        },
    )
    tb_lora_view: str = field(
        default="effective",
        metadata={
            "help": "With peft LoRA, analyse the 'effective' weight W0 + scaling*B@A (what the forward pass "
            "uses) or the 'delta' alone.",
            "choices": list(LORA_VIEWS),
        },
    )
    tb_lora_average: str = field(
        default="adapted",
        metadata={
            "help": "With peft LoRA and block units: a block's alpha is the mean over its 'adapted' matrices "
            "(Model Balancing; frozen matrices do not move) or over 'all' its matrices.",
            "choices": list(LORA_AVERAGES),
        },
    )
    tb_metric: str = field(
        default="alpha",
        metadata={"help": "Spectral metric that drives the factors.", "choices": list(METRICS)},
    )
    tb_mapping: str = field(
        default="linear",
        metadata={
            "help": "Metric -> factor: 'linear' (TempBalance, tb_lr_min..tb_lr_max), 'sigmoid' (Model Balancing's "
            "TB_Sigmoid, tb_sigmoid_*) or 'se' (alpha differences in units of their standard error, within "
            "tb_lr_min..tb_lr_max; see tb_se_threshold).",
            "choices": list(MAPPINGS),
        },
    )
    tb_lr_min: float = field(
        default=0.5, metadata={"help": "Linear map: factor of the lowest-alpha unit ('se' map: the lower bound)."}
    )
    tb_lr_max: float = field(
        default=1.5, metadata={"help": "Linear map: factor of the highest-alpha unit ('se' map: the upper bound)."}
    )
    tb_sigmoid_tau: float = field(default=10.0, metadata={"help": "Sigmoid map: temperature tau."})
    tb_sigmoid_s_low: float = field(
        default=2.0, metadata={"help": "Sigmoid map: scale below the mean alpha (factor >= 10^(-s_low/2))."}
    )
    tb_sigmoid_s_high: float = field(
        default=1.0, metadata={"help": "Sigmoid map: scale above the mean alpha (factor <= 10^(s_high/2))."}
    )
    tb_se_threshold: float = field(
        default=2.0,
        metadata={
            "help": "Standard-error map (tb_mapping='se'): a unit whose alpha is within this many standard errors of "
            "the mean alpha gets factor 1; beyond, its factor moves towards tb_lr_max (above) or tb_lr_min (below) as "
            "tanh(excess / threshold)."
        },
    )
    tb_llrd_decay: float = field(
        default=1.0,
        metadata={
            "help": "Depth profile under the alpha factors (layer-wise lr decay): the unit in block b of L gets base "
            "rate learning_rate * decay^(L-1-b), parameters before the first block decay^L, after the last 1, and "
            "the alpha factor multiplies that. 1: no depth profile (TempBalance)."
        },
    )
    tb_balance: str = field(
        default="lr",
        metadata={
            "help": "What alpha balances: the learning rate ('lr', TempBalance), the weight decay ('weight_decay', "
            "AlphaDecay: a unit's decay is weight_decay * a linear map of alpha into tb_wd_min_ratio.."
            "tb_wd_max_ratio, more decay for higher alpha), or 'both'.",
            "choices": list(BALANCED),
        },
    )
    tb_wd_min_ratio: float = field(
        default=0.5, metadata={"help": "Weight-decay balancing: ratio of the lowest-alpha unit's weight decay."}
    )
    tb_wd_max_ratio: float = field(
        default=1.5, metadata={"help": "Weight-decay balancing: ratio of the highest-alpha unit's weight decay."}
    )
    tb_auto_interval: int | None = field(
        default=None,
        metadata={
            "help": "Replay a tb_update_steps='auto' run exactly: use this interval (the one the run recorded as "
            "tb_update_interval) instead of deciding it from timed steps. Only with tb_update_steps='auto'."
        },
    )
    tb_normalize: bool = field(
        default=False,
        metadata={"help": "Rescale factors so their parameter-count-weighted mean is 1."},
    )
    tb_update_steps: str = field(
        default="auto",
        metadata={
            "help": "When to recompute alpha (always once before the first step). An integer N: every N optimizer "
            "steps, exactly. 'once': never again (the step-0 factors hold for the whole run). 'auto': Model "
            "Balancing's min(100, max(1, steps_per_epoch // 10)), but never more often than tb_max_overhead "
            "allows, judged from the measured cost of the first pass and of the first steps."
        },
    )
    tb_max_overhead: float = field(
        default=0.03,
        metadata={
            "help": "Budget for tb_update_steps='auto': spectral passes may cost at most this fraction of the "
            "training time (0.03: 3 percent). The pass before the first step is always made."
        },
    )
    tb_permute_factors: bool = field(
        default=False,
        metadata={
            "help": "Control experiment, not for training: give each fitted unit the factor computed for another, "
            "by a random permutation seeded with the TrainingArguments seed (the same at every update). With "
            "tb_update_steps='once' it tests whether alpha's ordering of the units matters, or only that the "
            "learning rates differ across units."
        },
    )
    tb_async: bool = field(
        default=False,
        metadata={
            "help": "Compute passes after the first in a background thread on a snapshot of the weights taken at "
            "step s, and apply the factors at the fixed step s + lag (waiting if late), so training does not "
            "stop for the eigen-solves. Off by default: on a CPU-only machine the thread competes with training."
        },
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # TrainingArguments' checks, when mixed into TempBalanceConfig
        self._apply_preset()
        for name, allowed in [
            ("tb_xmin_method", XMIN_METHODS),
            ("tb_estimator", ESTIMATORS),
            ("tb_unit", UNIT_KINDS),
            ("tb_lora_view", LORA_VIEWS),
            ("tb_metric", METRICS),
            ("tb_mapping", MAPPINGS),
            ("tb_esd_dtype", ESD_DTYPE_CHOICES),
            ("tb_lora_average", LORA_AVERAGES),
            ("tb_balance", BALANCED),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("tb_filter_zeros", "tb_normalize", "tb_async", "tb_permute_factors"):
            if not isinstance(getattr(self, name), bool):  # a string such as "false" would count as True
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_range("tb_xmin_pos", self.tb_xmin_pos, 1, 100, low_open=True, why=" (2: top half, 1.5: top third)")
        self.tb_min_evals = check_int("tb_min_evals", self.tb_min_evals, *MIN_EVALS_RANGE, why=MIN_EVALS_WHY)
        check_factor_options(
            self.tb_mapping,
            prefix="tb_",
            lr_min=self.tb_lr_min,
            lr_max=self.tb_lr_max,
        )
        check_factor_options(
            self.tb_mapping,
            prefix="tb_sigmoid_",
            tau=self.tb_sigmoid_tau,
            s_low=self.tb_sigmoid_s_low,
            s_high=self.tb_sigmoid_s_high,
        )
        if self.tb_farms_window is not None:
            self.tb_farms_window = check_int(
                "tb_farms_window", self.tb_farms_window, 1, MAX_FARMS_WINDOW, why=" (window rows; None: per model)"
            )
        check_range("tb_farms_aspect_ratio", self.tb_farms_aspect_ratio, 0, 100, low_open=True)
        self.tb_farms_grid = check_int("tb_farms_grid", self.tb_farms_grid, 1, 64, why=" (up to P x P windows)")
        if self.tb_estimator == "plain":  # the FARMS options would be ignored: say so rather than run without them
            for name, default in (("tb_farms_window", None), ("tb_farms_aspect_ratio", 1.0), ("tb_farms_grid", 9)):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name} is set but tb_estimator is 'plain', which does not use it: set "
                        f"tb_estimator='farms' too, or leave {name} at its default ({default!r}); got "
                        f"{getattr(self, name)!r}"
                    )
        check_range("tb_se_threshold", self.tb_se_threshold, 0, 100, low_open=True, why=" (standard errors)")
        check_range("tb_llrd_decay", self.tb_llrd_decay, 0, 1, low_open=True, why=" (1: no depth profile)")
        for name in ("tb_wd_min_ratio", "tb_wd_max_ratio"):
            check_range(name, getattr(self, name), 0, 100, why=" (a multiple of weight_decay)")
        if not self.tb_wd_min_ratio <= self.tb_wd_max_ratio:
            raise ValueError(
                f"tb_wd_min_ratio must be <= tb_wd_max_ratio, got {self.tb_wd_min_ratio} and {self.tb_wd_max_ratio}"
            )
        if self.tb_mapping == "se" and self.tb_metric != "alpha":
            raise ValueError(
                f"tb_mapping='se' counts alpha differences in units of alpha's standard error, so it needs "
                f"tb_metric='alpha', got tb_metric={self.tb_metric!r}"
            )
        if self.tb_mapping == "se" and not self.tb_lr_min <= 1 <= self.tb_lr_max:
            raise ValueError(
                "tb_mapping='se' gives factor 1 to units within the noise, so it needs tb_lr_min <= 1 <= tb_lr_max, "
                f"got {self.tb_lr_min} and {self.tb_lr_max}"
            )
        if self.tb_xmin_method == "ks" and self.tb_xmin_pos != 2.0:
            raise ValueError("tb_xmin_pos only applies to tb_xmin_method='median'; the 'ks' scan chooses xmin itself")
        check_range("tb_max_overhead", self.tb_max_overhead, 0, 1, low_open=True, why=" (0.03 = 3% of training time)")
        self.tb_update_steps = str(self.tb_update_steps).strip()
        # ASCII digits only: '²' and other Unicode digits pass str.isdigit() but not int()
        if self.tb_update_steps not in ("auto", "once") and not (
            re.fullmatch(r"[0-9]+", self.tb_update_steps) and int(self.tb_update_steps) > 0
        ):
            raise ValueError(
                f"tb_update_steps must be 'auto', 'once' or a positive integer, got {self.tb_update_steps!r}"
            )
        if self.tb_auto_interval is not None:
            self.tb_auto_interval = check_int("tb_auto_interval", self.tb_auto_interval, 1, 10**9)
            if self.tb_update_steps != "auto":
                raise ValueError(
                    "tb_auto_interval replays a tb_update_steps='auto' run; with tb_update_steps="
                    f"{self.tb_update_steps!r} the interval is already fixed: drop tb_auto_interval"
                )
        self._refuse_unused_options()
        if self.balances_wd and getattr(self, "weight_decay", None) == 0:  # TempBalanceConfig: TrainingArguments'
            preset = PRESETS.get(self.tb_preset, {})
            origin = f" (set by tb_preset={self.tb_preset!r})" if "tb_balance" in preset else ""
            raise ValueError(
                f"tb_balance={self.tb_balance!r}{origin} scales each unit's weight_decay, which is 0 here "
                "(TrainingArguments' default): set weight_decay (e.g. 0.1), or tb_balance='lr'"
            )

    def _apply_preset(self) -> None:
        """Fill the preset's options that are still at their defaults (a copy of filled options changes nothing)."""
        if self.tb_preset is None:
            return
        if self.tb_preset not in PRESETS:
            raise ValueError(f"tb_preset must be one of {list(PRESETS)} or None, got {self.tb_preset!r}")
        fields = TempBalanceArguments.__dataclass_fields__
        filled, kept = [], []
        for name, value in PRESETS[self.tb_preset].items():
            current, default = getattr(self, name), fields[name].default
            if current == value:
                continue
            if current == default:
                setattr(self, name, value)
                filled.append(f"{name}={value!r}")
            elif name in PRESET_SHAPE:
                raise ValueError(
                    f"tb_preset={self.tb_preset!r} sets {name}={value!r}, and {name} is {current!r}: drop one of "
                    f"the two (tb_preset=None and your own options, or the preset as it is)"
                )
            else:
                kept.append(f"{name}={current!r}")
        if filled:  # once: a copy of the filled options fills nothing
            logger.info(
                "tb_preset=%r: %s%s", self.tb_preset, ", ".join(filled) or "nothing filled",
                f"; kept as set: {', '.join(kept)}" if kept else "",
            )  # fmt: skip

    def _refuse_unused_options(self) -> None:
        """An option set away from its default that this configuration does not use is refused, naming what would
        make it apply (as for the FARMS options): it would otherwise be ignored without a word."""
        mapping = self.tb_mapping
        # option -> the mappings of the learning-rate map that use it (None: every mapping)
        lr_options = {
            "tb_mapping": None, "tb_metric": None, "tb_normalize": None,
            "tb_lr_min": ("linear", "se"), "tb_lr_max": ("linear", "se"),
            "tb_sigmoid_tau": ("sigmoid",), "tb_sigmoid_s_low": ("sigmoid",), "tb_sigmoid_s_high": ("sigmoid",),
            "tb_se_threshold": ("se",),
        }  # fmt: skip
        defaults = {f.name: f.default for f in dataclasses.fields(TempBalanceArguments)}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value == default:
                continue
            if name in lr_options and not self.balances_lr:
                needs = "tb_balance='lr' or 'both' (only the weight decay is balanced now, by a linear map of alpha)"
            elif name in lr_options and lr_options[name] is not None and mapping not in lr_options[name]:
                needs = " or ".join(f"tb_mapping={m!r}" for m in lr_options[name])
                if name in ("tb_lr_min", "tb_lr_max"):
                    needs += " (the sigmoid map's range is set by tb_sigmoid_s_low / tb_sigmoid_s_high)"
            elif name in ("tb_wd_min_ratio", "tb_wd_max_ratio") and not self.balances_wd:
                needs = "tb_balance='weight_decay' or 'both'"
            elif name == "tb_max_overhead" and self.tb_update_steps != "auto":
                needs = "tb_update_steps='auto' (the budget caps its passes; a fixed interval or 'once' has none)"
            else:
                continue
            preset = PRESETS.get(self.tb_preset, {})
            origin = f" (tb_preset={self.tb_preset!r} sets it)" if name in preset and preset[name] == value else ""
            raise ValueError(
                f"{name}={value!r}{origin} has no effect with tb_balance={self.tb_balance!r}, tb_mapping={mapping!r}, "
                f"tb_update_steps={self.tb_update_steps!r}: it applies with {needs}. Set that, or leave {name} at its "
                f"default ({default!r})."
            )

    # Options in the form the library functions take them.

    def esd_dtype(self, device=None):
        """The eigen-solve precision on ``device``: 'auto' is float64 on CUDA, float32 elsewhere."""
        import torch

        if self.tb_esd_dtype != "auto":
            return getattr(torch, self.tb_esd_dtype)
        return torch.float64 if device is not None and torch.device(device).type == "cuda" else torch.float32

    def spectral_options(self, device=None) -> dict:
        """Keyword arguments for `tb_hf.spectral.analyze`, for weights on ``device``."""
        return dict(
            estimator=self.tb_estimator,
            xmin_method=self.tb_xmin_method,
            xmin_pos=self.tb_xmin_pos,
            min_evals=self.tb_min_evals,
            filter_zeros=self.tb_filter_zeros,
            dtype=self.esd_dtype(device),
            farms_window=self.tb_farms_window,
            farms_aspect_ratio=self.tb_farms_aspect_ratio,
            farms_grid_size=self.tb_farms_grid,
        )

    def factor_options(self) -> dict:
        """Keyword arguments for `tb_hf.balancing.compute_factors` (without ``weights``)."""
        return dict(
            mapping=self.tb_mapping,
            lr_min=self.tb_lr_min,
            lr_max=self.tb_lr_max,
            tau=self.tb_sigmoid_tau,
            s_low=self.tb_sigmoid_s_low,
            s_high=self.tb_sigmoid_s_high,
            se_threshold=self.tb_se_threshold,
            normalize=self.tb_normalize,
        )

    def wd_factor_options(self) -> dict:
        """Keyword arguments for `tb_hf.balancing.compute_wd_factors`: AlphaDecay's linear map of α."""
        return dict(wd_min_ratio=self.tb_wd_min_ratio, wd_max_ratio=self.tb_wd_max_ratio)

    @property
    def balances_lr(self) -> bool:
        return self.tb_balance in ("lr", "both")

    @property
    def balances_wd(self) -> bool:
        return self.tb_balance in ("weight_decay", "both")

    def update_interval(self, steps_per_epoch: int | None) -> int | None:
        """Optimizer steps between two spectral updates before any budget: an integer as given, None for 'once',
        and for 'auto' Model Balancing's ``min(100, max(1, steps_per_epoch // 10))`` (100 if unknown)."""
        if self.tb_update_steps == "once":
            return None
        if self.tb_update_steps != "auto":
            return int(self.tb_update_steps)
        if steps_per_epoch is None or steps_per_epoch <= 0 or not math.isfinite(steps_per_epoch):
            return MAX_AUTO_INTERVAL
        return min(MAX_AUTO_INTERVAL, max(1, int(steps_per_epoch) // 10))

    def tempbalance_arguments(self) -> TempBalanceArguments:
        """Only the ``tb_*`` options, as a standalone `TempBalanceArguments`."""
        return tb_arguments(tb_args=self)


def tb_arguments(args=None, tb_args: TempBalanceArguments | None = None) -> TempBalanceArguments:
    """The TempBalance options in force: ``tb_args`` if given (only its ``tb_*`` fields, also when it is a whole
    `TempBalanceConfig`), else those of ``args`` when it is a `TempBalanceConfig`, else the defaults."""
    for source in (tb_args, args):
        if isinstance(source, TempBalanceArguments):
            if type(source) is TempBalanceArguments:
                return source
            return TempBalanceArguments(
                **{name: getattr(source, name) for name in TempBalanceArguments.__dataclass_fields__}
            )
        if source is tb_args and source is not None:
            raise TypeError(f"tb_args must be TempBalanceArguments or TempBalanceConfig, got {type(source).__name__}")
    return TempBalanceArguments()
