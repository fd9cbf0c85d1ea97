"""tb_hf: TempBalance for the Hugging Face fine-tuning stack.

Names are imported on first use (PEP 562), so ``import tb_hf`` and ``tb-hf --help`` do not pay for torch and
transformers' training stack until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "apply_factors": "balancing",
    "apply_wd_factors": "balancing",
    "compute_factors": "balancing",
    "compute_wd_factors": "balancing",
    "unit_metrics": "balancing",
    "TempBalanceCallback": "callback",
    "TempBalanceConfig": "config",
    "PassResult": "engine",
    "SpectralEngine": "engine",
    "unit_matrices": "engine",
    "Partition": "layers",
    "Unit": "layers",
    "find_blocks": "blocks",
    "partition_model": "layers",
    "LLRDTrainer": "baselines",
    "Balancer": "balancer",
    "TempBalanceOptions": "options",
    "resolve_options": "options",
    "build_param_groups": "optim",
    "create_tempbalance_optimizer": "optim",
    "tempbalance_param_groups": "optim",
    "TempBalanceArguments": "arguments",
    "LayerSpectrum": "spectral",
    "MatrixKey": "spectral",
    "PowerLawFit": "powerlaw",
    "analyze": "spectral",
    "esd": "spectral",
    "farms_esd": "spectral",
    "fit_power_law": "powerlaw",
    "TempBalanceMixin": "trainer",
    "builtin_model_path": "loading",
    "TempBalanceTrainer": "trainer",
}

__all__ = [
    "Balancer",
    "LLRDTrainer",
    "LayerSpectrum",
    "MatrixKey",
    "Partition",
    "PassResult",
    "PowerLawFit",
    "SpectralEngine",
    "TempBalanceArguments",
    "TempBalanceCallback",
    "TempBalanceConfig",
    "TempBalanceMixin",
    "TempBalanceOptions",
    "TempBalanceTrainer",
    "Unit",
    "analyze",
    "apply_factors",
    "apply_wd_factors",
    "builtin_model_path",
    "build_param_groups",
    "compute_factors",
    "compute_wd_factors",
    "create_tempbalance_optimizer",
    "esd",
    "farms_esd",
    "find_blocks",
    "fit_power_law",
    "partition_model",
    "resolve_options",
    "tempbalance_param_groups",
    "unit_matrices",
    "unit_metrics",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .arguments import TempBalanceArguments
    from .balancer import Balancer
    from .balancing import apply_factors, apply_wd_factors, compute_factors, compute_wd_factors, unit_metrics
    from .baselines import LLRDTrainer
    from .blocks import find_blocks
    from .callback import TempBalanceCallback
    from .config import TempBalanceConfig
    from .engine import PassResult, SpectralEngine, unit_matrices
    from .layers import Partition, Unit, partition_model
    from .loading import builtin_model_path
    from .optim import build_param_groups, create_tempbalance_optimizer, tempbalance_param_groups
    from .options import TempBalanceOptions, resolve_options
    from .powerlaw import PowerLawFit, fit_power_law
    from .spectral import LayerSpectrum, MatrixKey, analyze, esd, farms_esd
    from .trainer import TempBalanceMixin, TempBalanceTrainer
