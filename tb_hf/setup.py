"""What TempBalance decides once per trainer: the options in force, the model's units, their sizes.

`TempBalanceMixin` builds it when it creates the optimizer (so the param groups and the spectral passes use one
partition) and hands it to its `TempBalanceCallback`; a callback used with a plain Trainer and an optimizer of its
own builds it at the start of training and checks the optimizer against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .distributed import check_supported
from .layers import Partition, partition_model, unit_weights
from .options import TempBalanceArguments, tb_arguments

__all__ = ["Setup", "build_setup"]


@dataclass(frozen=True)
class Setup:
    """The options in force (`TempBalanceArguments`), the partition of the model into units and the units' sizes."""

    tb: TempBalanceArguments
    partition: Partition
    unit_weights: dict[str, float]

    @property
    def units(self) -> set[str]:
        return {u.name for u in self.partition.units}


def build_setup(model: nn.Module, args=None, tb_args: TempBalanceArguments | None = None) -> Setup:
    """The setup of ``model`` for the options of ``tb_args``, else those of ``args`` (a `TempBalanceConfig`), else the
    defaults. Raises for a model TempBalance cannot balance (no blocks; FSDP1's flat shards)."""
    check_supported(model)
    tb = tb_arguments(args, tb_args)
    partition = partition_model(model, tb.tb_unit)
    return Setup(tb, partition, unit_weights(model, partition))
