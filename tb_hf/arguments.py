"""`TempBalanceArguments`: every option as a ``tb_*`` field with help text, so `transformers.HfArgumentParser` turns
them into command-line flags (``--tb_mapping sigmoid``) and YAML keys. Every field defaults to ``None``, *unset*:
`tb_hf.options.resolve_options` fills it from ``tb_preset``, else from the default its help names. Torch- and
transformers-free (``--help`` answers at once)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .options import (
    BALANCED,
    DEFAULTS,
    ESD_DTYPE_CHOICES,
    ESTIMATORS,
    LORA_AVERAGES,
    LORA_VIEWS,
    MAPPINGS,
    METRICS,
    PRESETS,
    UNIT_KINDS,
    XMIN_METHODS,
    TempBalanceOptions,
    explicit_options,
    resolve_options,
)

__all__ = ["TempBalanceArguments", "tb_source"]


def _option(name: str, help: str, *, choices=None):
    """A ``tb_*`` field: unset (None) by default; its help names the default (and the presets that set it)."""
    default = DEFAULTS[name]
    setters = [preset for preset, values in PRESETS.items() if name in values and values[name] != default]
    default_text = f"Default: {default!r}" + (f" (or the preset's: {', '.join(setters)})" if setters else "") + "."
    metadata = {"help": f"{help} {default_text}"}
    if choices is not None:
        metadata["choices"] = list(choices)
    if isinstance(default, bool):  # a flag: --tb_async alone means true (HfArgumentParser gives bool | None none)
        metadata.update(nargs="?", const=True)
    return field(default=None, metadata=metadata)


@dataclass
class TempBalanceArguments:
    """The TempBalance options alone (for `tb-hf analyze`, the callback, or your own argument parser).

    Every field defaults to None, *unset*: `resolve_options` fills it from ``tb_preset``, else from the default its
    help names. The options in force are `tb_options` (typed, resolved), and ``to_dict()`` shows them.
    """

    # The profile: what shares a factor, the base rates under it, and how alpha sets it.
    tb_preset: str | None = field(
        default=None,
        metadata={
            "help": "A named profile, one per method of the project's study: 'tempbalance' (the defaults), "
            "'model-balancing' (sigmoid map, tb_xmin_pos 1.5), 'llrd' (layer-wise lr decay 0.9, no spectral pass), "
            "'llrd-alpha' (tb_llrd_decay 0.9 x a linear alpha map in 0.65..1.35), 'se' (the standard-error map in "
            "0.5..2) or 'alphadecay' (weight decay x alpha's map into 0.75..1.25). It fills the options you leave "
            "unset; an option you set keeps your value, except that tb_mapping and tb_balance must agree with it.",
            "choices": list(PRESETS),
        },
    )
    tb_unit: str | None = _option(
        "tb_unit",
        "What shares one learning-rate factor: a transformer 'block' (its alpha is the mean over its matrices) or "
        "each analysed 'matrix' module.",
        choices=UNIT_KINDS,
    )
    tb_balance: str | None = _option(
        "tb_balance",
        "What alpha balances: the learning rate ('lr', TempBalance), the weight decay ('weight_decay', AlphaDecay: a "
        "unit's decay is weight_decay * a linear map of alpha into tb_wd_min_ratio..tb_wd_max_ratio, more decay for "
        "higher alpha), or 'both'.",
        choices=BALANCED,
    )
    tb_mapping: str | None = _option(
        "tb_mapping",
        "Metric -> learning-rate factor: 'none' (factor 1: the depth profile alone, as LLRD; no spectral pass unless "
        "weight decay is balanced), 'linear' (TempBalance, tb_lr_min..tb_lr_max), 'sigmoid' (Model Balancing's "
        "TB_Sigmoid, tb_sigmoid_*) or 'se' (alpha differences in units of their standard error, within "
        "tb_lr_min..tb_lr_max; see tb_se_threshold).",
        choices=MAPPINGS,
    )
    tb_llrd_decay: float | None = _option(
        "tb_llrd_decay",
        "Depth profile under the alpha factors (layer-wise lr decay): the unit in block b of a stack of L gets base "
        "rate learning_rate * decay^(L-1-b), the embeddings decay^L, the head and final norm 1, and the alpha factor "
        "multiplies that. 1: no depth profile (TempBalance).",
    )
    tb_head_lr_ratio: float | None = _option(
        "tb_head_lr_ratio",
        "The learning rate of the parameters above the blocks (classification head, pooler, final norm) relative to "
        "the top block's, for every profile (as LoRA+ gives LoRA's B matrices their own rate).",
    )
    tb_embeddings_lr_ratio: float | None = _option(
        "tb_embeddings_lr_ratio",
        "A multiplier on the embeddings' learning rate (on top of the depth profile, which puts them one below the "
        "first block), for every profile.",
    )
    # The learning-rate map's parameters.
    tb_lr_min: float | None = _option(
        "tb_lr_min", "Linear map: factor of the lowest-alpha unit ('se' map: the lower bound)."
    )
    tb_lr_max: float | None = _option(
        "tb_lr_max", "Linear map: factor of the highest-alpha unit ('se' map: the upper bound)."
    )
    tb_sigmoid_tau: float | None = _option("tb_sigmoid_tau", "Sigmoid map: temperature tau.")
    tb_sigmoid_s_low: float | None = _option(
        "tb_sigmoid_s_low", "Sigmoid map: scale below the mean alpha (factor >= 10^(-s_low/2))."
    )
    tb_sigmoid_s_high: float | None = _option(
        "tb_sigmoid_s_high", "Sigmoid map: scale above the mean alpha (factor <= 10^(s_high/2))."
    )
    tb_se_threshold: float | None = _option(
        "tb_se_threshold",
        "Standard-error map (tb_mapping='se'): a unit whose alpha is within this many standard errors of the mean "
        "alpha gets factor 1; beyond, its factor moves towards tb_lr_max (above) or tb_lr_min (below) as "
        "tanh(excess / threshold).",
    )
    tb_normalize: bool | None = _option("tb_normalize", "Rescale factors so their parameter-count-weighted mean is 1.")
    tb_wd_min_ratio: float | None = _option(
        "tb_wd_min_ratio", "Weight-decay balancing: ratio of the lowest-alpha unit's weight decay."
    )
    tb_wd_max_ratio: float | None = _option(
        "tb_wd_max_ratio", "Weight-decay balancing: ratio of the highest-alpha unit's weight decay."
    )
    tb_permute_factors: bool | None = _option(
        "tb_permute_factors",
        "Control experiment, not for training: give each fitted unit the factor computed for another, by a random "
        "permutation seeded with the TrainingArguments seed (the same at every update). With tb_update_steps='once' "
        "it tests whether alpha's ordering of the units matters, or only that the learning rates differ.",
    )
    # How alpha is measured.
    tb_metric: str | None = _option("tb_metric", "Spectral metric that drives the factors.", choices=METRICS)
    tb_xmin_method: str | None = _option(
        "tb_xmin_method",
        "How xmin of the power-law fit is chosen: 'median' (xmin = evals[floor(N / tb_xmin_pos)], TempBalance) or "
        "'ks' (Kolmogorov-Smirnov scan over every cut, WeightWatcher).",
        choices=XMIN_METHODS,
    )
    tb_xmin_pos: float | None = _option(
        "tb_xmin_pos", "Position of xmin for 'median': 2 fits the top half, 1.5 the top third (Model Balancing)."
    )
    tb_min_evals: int | None = _option(
        "tb_min_evals", "Matrices with fewer eigenvalues are not fitted (their unit keeps factor 1)."
    )
    tb_filter_zeros: bool | None = _option(
        "tb_filter_zeros", "Drop eigenvalues <= 1e-5 before fitting (WeightWatcher's convention)."
    )
    tb_estimator: str | None = _option(
        "tb_estimator",
        "'plain': ESD of the whole matrix; 'farms': pooled ESD of fixed-aspect-ratio windows, which removes the bias "
        "that matrix shape puts into alpha.",
        choices=ESTIMATORS,
    )
    tb_farms_window: int | None = _option(
        "tb_farms_window",
        "FARMS window rows r. None: one size for the whole model, as in the FARMS paper: half the smallest side "
        "among the analysed matrices (so q, k and v of a block are windowed alike).",
    )
    tb_farms_aspect_ratio: float | None = _option("tb_farms_aspect_ratio", "FARMS window columns / rows (Q).")
    tb_farms_grid: int | None = _option("tb_farms_grid", "FARMS grid: up to P x P window positions.")
    tb_esd_dtype: str | None = _option(
        "tb_esd_dtype",
        "Precision of the eigen-solve: 'auto' = float64 on CUDA (it costs about the same as float32 there, and "
        "matches WeightWatcher to rounding), float32 elsewhere.",
        choices=ESD_DTYPE_CHOICES,
    )
    tb_lora_view: str | None = _option(
        "tb_lora_view",
        "With peft LoRA, analyse the 'effective' weight W0 + scaling*B@A (what the forward pass uses) or the "
        "'delta' alone.",
        choices=LORA_VIEWS,
    )
    tb_lora_average: str | None = _option(
        "tb_lora_average",
        "With peft LoRA and block units: a block's alpha is the mean over its 'adapted' matrices (Model Balancing; "
        "frozen matrices do not move) or over 'all' its matrices.",
        choices=LORA_AVERAGES,
    )
    # When alpha is recomputed.
    tb_update_steps: str | None = _option(
        "tb_update_steps",
        "When to recompute alpha (always once before the first step). An integer N: every N optimizer steps, "
        "exactly. 'once': never again (the step-0 factors hold for the whole run). 'auto': Model Balancing's "
        "min(100, max(1, steps_per_epoch // 10)), but never more often than tb_max_overhead allows, judged from the "
        "measured cost of the first pass and of the first steps.",
    )
    tb_max_overhead: float | None = _option(
        "tb_max_overhead",
        "Budget for tb_update_steps='auto': spectral passes may cost at most this fraction of the training time "
        "(0.03: 3 percent). The pass before the first step is always made.",
    )
    tb_auto_interval: int | None = _option(
        "tb_auto_interval",
        "Replay a tb_update_steps='auto' run exactly: use this interval (the one the run recorded as "
        "tb_update_interval) instead of deciding it from timed steps. Only with tb_update_steps='auto'.",
    )
    tb_async: bool | None = _option(
        "tb_async",
        "Compute passes after the first in a background thread on a snapshot of the weights taken at step s, and "
        "apply the factors at the fixed step s + lag (waiting if late), so training does not stop for the "
        "eigen-solves. Off by default: on a CPU-only machine the thread competes with training.",
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # TrainingArguments' checks, when mixed into TempBalanceConfig
        for name, value in explicit_options(self).items():  # Python numbers: checkpoints must store them
            setattr(self, name, value)
        self.tb_options  # noqa: B018 - every refusal now, at construction, not at the first training step

    @property
    def tb_options(self) -> TempBalanceOptions:
        """The options in force (`resolve_options`), from the fields as they are now (a hyperparameter search sets
        fields after construction: they are resolved again)."""
        return resolve_options(self, weight_decay=getattr(self, "weight_decay", None))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, the ``tb_*`` options as resolved (what the run uses; None for an option this
        configuration does not use), so the dict can be passed back as arguments."""
        parent = getattr(super(), "to_dict", None)
        out = parent() if parent is not None else {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, **self.tb_options.in_use()}


def tb_source(args=None, tb_args=None):
    """Where the options come from: the ``tb_*`` fields ``args`` sets (when it is a `TempBalanceConfig`) with those
    ``tb_args`` sets on top (a `TempBalanceArguments` or a whole `TempBalanceConfig`; `TempBalanceOptions` replace
    them all), or None: the defaults."""
    base = args if isinstance(args, TempBalanceArguments) else None
    if tb_args is None:
        return base
    if not isinstance(tb_args, TempBalanceArguments | TempBalanceOptions):
        raise TypeError(f"tb_args must be TempBalanceArguments or TempBalanceConfig, got {type(tb_args).__name__}")
    if base is None or isinstance(tb_args, TempBalanceOptions):
        return tb_args
    return TempBalanceArguments(**{**explicit_options(base), **explicit_options(tb_args)})
