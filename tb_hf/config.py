"""TempBalance options: a standalone dataclass and its `TrainingArguments` subclass.

Every option is a ``tb_*`` field with help text, so `transformers.HfArgumentParser` turns them into
command-line flags (``--tb_mapping sigmoid``) and YAML keys for free. Defaults follow the TempBalance paper
(median xmin over the top half, linear map 0.5-1.5, block units); Model Balancing's GLUE runs used
``tb_xmin_pos=1.5`` and the sigmoid map, noted in the help texts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .balancing import MAPPINGS, METRICS
from .layers import LORA_VIEWS, UNIT_KINDS
from .spectral import ESTIMATORS, XMIN_METHODS

__all__ = ["TempBalanceArguments", "TempBalanceConfig"]

_ESD_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TempBalanceArguments:
    """The TempBalance options alone (for `tb-hf analyze`, the callback, or your own argument parser)."""

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
        default=None, metadata={"help": "FARMS window rows r (default: half the smaller side of each matrix)."}
    )
    tb_farms_aspect_ratio: float = field(default=1.0, metadata={"help": "FARMS window columns / rows (Q)."})
    tb_farms_grid: int = field(default=9, metadata={"help": "FARMS grid: up to P x P window positions."})
    tb_esd_dtype: str = field(
        default="float32",
        metadata={"help": "Precision of the eigen-solve (float64 only on request).", "choices": list(_ESD_DTYPES)},
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
    tb_metric: str = field(
        default="alpha",
        metadata={"help": "Spectral metric that drives the factors.", "choices": list(METRICS)},
    )
    tb_mapping: str = field(
        default="linear",
        metadata={
            "help": "Metric -> factor: 'linear' (TempBalance, tb_lr_min..tb_lr_max) or 'sigmoid' (Model "
            "Balancing's TB_Sigmoid, tb_sigmoid_*).",
            "choices": list(MAPPINGS),
        },
    )
    tb_lr_min: float = field(default=0.5, metadata={"help": "Linear map: factor of the lowest-alpha unit."})
    tb_lr_max: float = field(default=1.5, metadata={"help": "Linear map: factor of the highest-alpha unit."})
    tb_sigmoid_tau: float = field(default=10.0, metadata={"help": "Sigmoid map: temperature tau."})
    tb_sigmoid_s_low: float = field(
        default=2.0, metadata={"help": "Sigmoid map: scale below the mean alpha (factor >= 10^(-s_low/2))."}
    )
    tb_sigmoid_s_high: float = field(
        default=1.0, metadata={"help": "Sigmoid map: scale above the mean alpha (factor <= 10^(s_high/2))."}
    )
    tb_normalize: bool = field(
        default=False,
        metadata={"help": "Rescale factors so their parameter-count-weighted mean is 1."},
    )
    tb_update_steps: str = field(
        default="auto",
        metadata={
            "help": "Recompute alpha every N optimizer steps (and before the first). 'auto' = "
            "min(100, max(1, steps_per_epoch // 10)), about ten times per epoch as in Model Balancing."
        },
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # TrainingArguments' checks, when mixed into TempBalanceConfig
        for name, allowed in [
            ("tb_xmin_method", XMIN_METHODS),
            ("tb_estimator", ESTIMATORS),
            ("tb_unit", UNIT_KINDS),
            ("tb_lora_view", LORA_VIEWS),
            ("tb_metric", METRICS),
            ("tb_mapping", MAPPINGS),
            ("tb_esd_dtype", tuple(_ESD_DTYPES)),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.tb_xmin_pos > 1:
            raise ValueError(f"tb_xmin_pos must be > 1 (xmin = evals[floor(N / tb_xmin_pos)]), got {self.tb_xmin_pos}")
        if self.tb_min_evals < 2:
            raise ValueError(f"tb_min_evals must be >= 2, got {self.tb_min_evals}")
        if not 0 < self.tb_lr_min <= self.tb_lr_max:
            raise ValueError(f"need 0 < tb_lr_min <= tb_lr_max, got {self.tb_lr_min} and {self.tb_lr_max}")
        if not self.tb_sigmoid_tau > 0 or self.tb_sigmoid_s_low < 0 or self.tb_sigmoid_s_high < 0:
            raise ValueError("need tb_sigmoid_tau > 0 and tb_sigmoid_s_low, tb_sigmoid_s_high >= 0")
        if self.tb_estimator == "farms":
            if self.tb_farms_window is not None and self.tb_farms_window < 1:
                raise ValueError(f"tb_farms_window must be >= 1, got {self.tb_farms_window}")
            if not self.tb_farms_aspect_ratio > 0 or self.tb_farms_grid < 1:
                raise ValueError("need tb_farms_aspect_ratio > 0 and tb_farms_grid >= 1")
        elif self.tb_farms_window is not None:
            raise ValueError("tb_farms_window is set but tb_estimator is 'plain': set tb_estimator='farms' too")
        if self.tb_xmin_method == "ks" and self.tb_xmin_pos != 2.0:
            raise ValueError("tb_xmin_pos only applies to tb_xmin_method='median'; the 'ks' scan chooses xmin itself")
        self.tb_update_steps = str(self.tb_update_steps)
        if self.tb_update_steps != "auto" and not (self.tb_update_steps.isdigit() and int(self.tb_update_steps) > 0):
            raise ValueError(f"tb_update_steps must be 'auto' or a positive integer, got {self.tb_update_steps!r}")

    # Options in the form the library functions take them.

    def spectral_options(self) -> dict:
        """Keyword arguments for `tb_hf.spectral.analyze`."""
        return dict(
            estimator=self.tb_estimator,
            xmin_method=self.tb_xmin_method,
            xmin_pos=self.tb_xmin_pos,
            min_evals=self.tb_min_evals,
            filter_zeros=self.tb_filter_zeros,
            dtype=_ESD_DTYPES[self.tb_esd_dtype],
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
            normalize=self.tb_normalize,
        )

    def update_interval(self, steps_per_epoch: int | None) -> int:
        """Optimizer steps between two spectral updates (resolving ``"auto"``)."""
        if self.tb_update_steps != "auto":
            return int(self.tb_update_steps)
        if steps_per_epoch is None or steps_per_epoch <= 0 or not math.isfinite(steps_per_epoch):
            return 100
        return min(100, max(1, int(steps_per_epoch) // 10))

    def tempbalance_arguments(self) -> TempBalanceArguments:
        """Only the ``tb_*`` options, as a standalone `TempBalanceArguments`."""
        return TempBalanceArguments(
            **{name: getattr(self, name) for name in TempBalanceArguments.__dataclass_fields__}
        )


@dataclass
class TempBalanceConfig(TempBalanceArguments, TrainingArguments):
    """`TrainingArguments` plus every TempBalance option (``tb_*``), for `tb_hf.TempBalanceTrainer`.

    Example:
        ```python
        from tb_hf import TempBalanceConfig

        args = TempBalanceConfig(output_dir="out", learning_rate=2e-5, tb_mapping="sigmoid", tb_xmin_pos=1.5)
        ```
    """
