"""tb_hf: TempBalance for the Hugging Face fine-tuning stack."""

from .balancing import apply_factors, compute_factors, unit_metrics
from .callback import TempBalanceCallback, create_tempbalance_optimizer
from .config import TempBalanceArguments, TempBalanceConfig
from .layers import Partition, Unit, build_param_groups, find_blocks, partition_model, unit_matrices
from .spectral import LayerSpectrum, PowerLawFit, analyze, esd, farms_esd, fit_power_law
from .trainer import TempBalanceMixin, TempBalanceTrainer

__version__ = "0.1.0"

__all__ = [
    "LayerSpectrum",
    "Partition",
    "PowerLawFit",
    "TempBalanceArguments",
    "TempBalanceCallback",
    "TempBalanceConfig",
    "TempBalanceMixin",
    "TempBalanceTrainer",
    "Unit",
    "analyze",
    "apply_factors",
    "build_param_groups",
    "compute_factors",
    "create_tempbalance_optimizer",
    "esd",
    "farms_esd",
    "find_blocks",
    "fit_power_law",
    "partition_model",
    "unit_matrices",
    "unit_metrics",
]
