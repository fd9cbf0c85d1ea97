"""Who computes what on which rank, and the pieces of a distributed spectral pass.

Under ``accelerate launch``/``torchrun`` with DDP, FSDP or DeepSpeed every rank runs the Trainer and its
callbacks. The pass itself is `tb_hf.engine.SpectralEngine`; this module gives it:

* `matrix_cost` and `assign_by_cost`: a deterministic, cost-balanced split of the matrices between the ranks
  (greedy longest-processing-time by the cost of the eigen-solve, k³ + m·n·k for an m×n matrix, k = min(m, n)).
  The plan is a pure function of the model, identical on every rank, so the split needs no communication.
  `Split` holds it for one plan and process group: the owners, and this rank's share.
* `exchange`: each rank packs the numeric fields of its results into one float64 tensor and a single
  ``all_gather`` gives every rank all results, bit for bit the numbers the owning rank computed. A rank whose
  computation failed still joins; then every rank raises the same error, so no rank ever goes on with
  different learning rates. `Split.shared` is the whole protocol: compute this rank's share, exchange, raise
  everywhere if any rank failed.
* `gathered`: full weights of one block at a time, on all ranks in the same order: FSDP2 (``fully_shard``,
  DTensor parameters) with ``DTensor.full_tensor()``, DeepSpeed ZeRO-3 with
  ``deepspeed.zero.GatheredParameters(modifier_rank=None)`` (read-only). DDP and ZeRO-1/2 hold full weights.
* FSDP1 is refused with a clear error (`check_supported`): its flattened 1-D shards hide the blocks.

Every function here that communicates must be called on all ranks at the same point (never behind
``is_world_process_zero``), or the job deadlocks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.distributed as dist
from torch import nn
from transformers.utils import logging

from .options import ESTIMATORS, SpectralOptions
from .powerlaw import STATUSES
from .spectral import LayerSpectrum, farms_grid

_S = SpectralOptions()  # the defaults, defined once in tb_hf.options

logger = logging.get_logger(__name__)

__all__ = [
    "Split",
    "assign_by_cost",
    "check_supported",
    "deepspeed_config_sections",
    "exchange",
    "max_over_ranks",
    "gathered",
    "is_distributed",
    "matrix_cost",
    "rank_and_world",
    "sharding_kind",
]

FSDP1_MESSAGE = (
    "TempBalance does not support FSDP1 (FullyShardedDataParallel, fsdp_version 1): it flattens the parameters into "
    "1-D shards, so the transformer blocks, their matrices and the per-block optimizer groups cannot be found. Use "
    "FSDP2 (fully_shard; fsdp_version 2, the default of transformers 5: `--fsdp_version 2` in the accelerate config, "
    "or `fsdp_config={'version': 2}`), whose DTensor parameters keep their names and shapes."
)

# Numeric fields of a LayerSpectrum in the packed exchange tensor (float64: integers below 2**53 are exact).
_FIELDS = (
    "alpha",
    "xmin",
    "ks_distance",
    "num_evals",
    "num_tail",
    "alpha_hat",
    "spectral_norm",
    "stable_rank",
    "status",
    "num_windows",
    "estimator",
)
_INT_FIELDS = {"num_evals", "num_tail", "num_windows", "status", "estimator"}


# --------------------------------------------------------------------------------------------------
# Process group


def is_distributed() -> bool:
    """Whether a torch.distributed process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def _collective_device(hint: torch.device | None) -> torch.device:
    """The device of the exchange tensor: CPU for gloo, the current CUDA device for NCCL, else ``hint``."""
    backend = str(dist.get_backend()).lower()
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return hint if hint is not None else torch.device("cpu")  # e.g. "cpu:gloo,cuda:nccl": the weights' device


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over all ranks (a collective; ``value`` itself alone). Decisions that set when the
    next collective pass happens (the 'auto' interval, measured per rank) must be the same on every rank."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device(None))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


# --------------------------------------------------------------------------------------------------
# Cost and assignment


def matrix_cost(
    shape: Sequence[int],
    *,
    estimator: str = _S.estimator,
    farms_window: int | None = None,
    farms_aspect_ratio: float = _S.farms_aspect_ratio,
    farms_grid_size: int = _S.farms_grid,
) -> int:
    """Relative cost of the ESD of one matrix: k³ (eigen-solve) + m·n·k (Gram product), k = min(m, n).

    ``shape`` is a 2-D matrix or a 4-D kernel (out, in, kh, kw: kh·kw slices of out×in). With
    ``estimator="farms"`` the cost is that of all the FARMS windows.
    """
    if len(shape) not in (2, 4):
        raise ValueError(f"shape must be 2-D or 4-D, got {tuple(shape)}")
    m, n = int(shape[0]), int(shape[1])
    slices = 1 if len(shape) == 2 else int(shape[2]) * int(shape[3])
    windows = 1
    if estimator == "farms":
        (m, n), rows, cols = farms_grid(
            (m, n), window=farms_window, aspect_ratio=farms_aspect_ratio, grid=farms_grid_size
        )
        windows = len(rows) * len(cols)
    k = min(m, n)
    return slices * windows * (k**3 + m * n * k)


def assign_by_cost(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank of each task: greedy longest-processing-time, deterministic.

    Tasks are taken in order of decreasing cost (ties: lower index first) and each goes to the rank with
    the least total cost so far (ties: lower rank). The largest rank load is at most 4/3 of the optimum.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0] * world_size
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += costs[i]
    return owners


@dataclass(frozen=True)
class Split:
    """Which rank computes which task of a pass. The plan and the process group are fixed, so it is made once
    (`Split.of`) and every pass of the plan uses it.

    Attributes:
        tasks: The pass's tasks (`tb_hf.engine.Task`: ``key``, ``label``, ``shape``, ``cost``), identical on every
            rank.
        owners: The rank computing each task (`assign_by_cost` of the costs).
        rank: This process's rank (0 alone).
        world: The number of ranks (1 alone: no process group of several ranks).
    """

    tasks: tuple
    owners: tuple[int, ...]
    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, tasks: Sequence) -> Split:
        """The cost-balanced split of ``tasks`` over the ranks of the current process group (all to rank 0 alone)."""
        rank, world = rank_and_world()
        return cls(tuple(tasks), tuple(assign_by_cost([t.cost for t in tasks], world)), rank, world)

    @cached_property
    def mine(self) -> list:
        """This rank's share: its tasks, in task order (every task alone)."""
        return [t for t, o in zip(self.tasks, self.owners, strict=True) if o == self.rank]

    def shared(self, compute: Callable[[], Mapping]) -> dict:
        """Every task's result, this rank's share computed by ``compute()`` (task key → `LayerSpectrum`), the rest
        from the other ranks in one `exchange` (call it on every rank at the same point).

        Alone this is ``compute()``. A rank whose ``compute`` raises still joins the exchange, and then every rank
        raises (no rank goes on with different factors).
        """
        if self.world == 1:
            return dict(compute())
        local: Mapping = {}
        error: BaseException | None = None
        try:
            local = compute()
        except Exception as err:  # noqa: BLE001 - must still join the collective, then fail on every rank
            error = err
        return exchange(self.tasks, self.owners, local, error)


# --------------------------------------------------------------------------------------------------
# Sharded parameters


def _is_dtensor(param: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed tensors
        return False
    return isinstance(param, DTensor)


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") and hasattr(param, "ds_shape")


def _fsdp1_class():
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    return FullyShardedDataParallel


def sharding_kind(model: nn.Module) -> str | None:
    """``"fsdp2"`` (DTensor parameters), ``"zero3"``, ``"fsdp1"`` (unsupported) or None (full weights)."""
    params = list(model.parameters())
    if any(_is_dtensor(p) for p in params):
        return "fsdp2"
    if any(_is_zero3(p) for p in params):
        return "zero3"
    fsdp = _fsdp1_class()
    if fsdp is not None and any(isinstance(m, fsdp) for m in model.modules()):
        return "fsdp1"
    return None


@contextlib.contextmanager
def _swapped_full_dtensors(module: nn.Module) -> Iterator[None]:
    """Replace every DTensor parameter under ``module`` by its full tensor (a collective), then restore.

    Parameters are visited in ``named_modules`` order, the same on every rank. No forward or backward may
    run inside (the callback runs between optimizer steps).
    """
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and _is_dtensor(param):
                    full = param.detach().full_tensor()
                    swapped.append((sub, name, param))
                    sub._parameters[name] = nn.Parameter(full, requires_grad=False)
        yield
    finally:
        for sub, name, param in reversed(swapped):
            sub._parameters[name] = param


@contextlib.contextmanager
def gathered(model: nn.Module, path: str, kind: str | None) -> Iterator[None]:
    """Full weights of the block at ``path`` for the duration of the context (all ranks must enter it)."""
    block = dict(model.named_modules())[path] if path else model
    if kind == "fsdp2":
        with _swapped_full_dtensors(block):
            yield
    elif kind == "zero3":
        import deepspeed

        params = [p for p in block.parameters() if _is_zero3(p)]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
    else:
        yield


def check_supported(model: nn.Module) -> None:
    """Raise a clear error for a model TempBalance cannot partition: one wrapped by FSDP1."""
    if sharding_kind(model) == "fsdp1":
        raise ValueError(FSDP1_MESSAGE)


# --------------------------------------------------------------------------------------------------
# The exchange


def _pack(spectra: Mapping, tasks: Sequence, rows: int, device, header) -> torch.Tensor:
    out = torch.zeros(rows + 1, len(_FIELDS), dtype=torch.float64)
    out[0, : len(header)] = torch.tensor(header, dtype=torch.float64)
    values = []
    for task in tasks:
        s = spectra.get(task.key)
        if s is None:  # local failure: the header says so, the row is never read
            values.append([math.nan] * len(_FIELDS))
        else:
            values.append([_encode(s, f) for f in _FIELDS])
    if values:
        out[1 : len(values) + 1] = torch.tensor(values, dtype=torch.float64)
    return out.to(device)


def _encode(spectrum: LayerSpectrum, name: str) -> float:
    if name == "status":
        return float(STATUSES.index(spectrum.status))
    if name == "estimator":
        return float(ESTIMATORS.index(spectrum.estimator))
    return float(getattr(spectrum, name))


def _plan_digest(tasks: Sequence) -> float:
    """A number every rank computes from its own plan; all ranks must agree on it."""
    digest = len(tasks)
    for task in tasks:
        digest = (digest * 1_000_003 + task.cost + sum(task.shape) + len(str(task.key))) % (1 << 52)
    return float(digest)


def exchange(
    tasks: Sequence,
    owners: Sequence[int],
    local: Mapping,
    error: BaseException | None,
    *,
    device: torch.device | None = None,
) -> dict:
    """One all_gather of every rank's packed results; every rank rebuilds all results from it.

    Args:
        tasks: The pass's tasks (`tb_hf.engine.Task`: ``key``, ``label``, ``shape``, ``cost``), identical on
            every rank.
        owners: The rank computing each task (`assign_by_cost`).
        local: This rank's results, task key → `LayerSpectrum`.
        error: This rank's failure, if any: every rank then raises.
        device: Device of the exchange tensor for a mixed backend (e.g. "cpu:gloo,cuda:nccl").

    Returns:
        Task key → `LayerSpectrum`, in task order, the same on every rank.
    """
    rank, world = rank_and_world()
    per_rank = [[t for t, o in zip(tasks, owners, strict=True) if o == r] for r in range(world)]
    rows = max(len(p) for p in per_rank)
    header = (1.0 if error is not None else 0.0, float(len(per_rank[rank])), _plan_digest(tasks))
    mine = _pack(local, per_rank[rank], rows, _collective_device(device), header)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    parts = [g.cpu() for g in parts]

    failed = [r for r, g in enumerate(parts) if g[0, 0].item() != 0]
    if failed:
        detail = f": {error!r}" if error is not None else ""
        raise RuntimeError(f"spectral pass failed on rank(s) {failed} (this is rank {rank}){detail}") from error
    digests = {g[0, 2].item() for g in parts}
    if len(digests) != 1:
        raise RuntimeError(
            "the ranks disagree on the matrices to analyse (different models or partitions on different ranks)"
        )

    results = {}
    for r, rank_tasks in enumerate(per_rank):
        for task, row in zip(rank_tasks, parts[r][1:].tolist(), strict=False):
            fields = dict(zip(_FIELDS, row, strict=True))
            fields = {k: int(v) if k in _INT_FIELDS else v for k, v in fields.items()}
            fields["status"] = STATUSES[int(fields["status"])]
            fields["estimator"] = ESTIMATORS[int(fields["estimator"])]
            results[task.key] = LayerSpectrum(**fields, name=task.label, shape=task.shape)
    return {task.key: results[task.key] for task in tasks}


# --------------------------------------------------------------------------------------------------
# DeepSpeed


def deepspeed_config_sections(args) -> set[str]:
    """The top-level sections of the DeepSpeed config of ``args`` (TrainingArguments), empty without one."""
    hf_config = getattr(args, "hf_deepspeed_config", None)
    config = getattr(hf_config, "config", None) if hf_config is not None else getattr(args, "deepspeed", None)
    if isinstance(config, str | os.PathLike) and os.path.isfile(config):
        with open(config) as f:
            config = json.load(f)
    return set(config) if isinstance(config, Mapping) else set()
