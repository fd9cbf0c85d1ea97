"""Who computes what on which rank: the spectral pass shared between the processes of a distributed job.

Under ``accelerate launch``/``torchrun`` with DDP, FSDP or DeepSpeed every rank runs the Trainer and its
callbacks, so every rank would run the whole spectral pass. `spectral_pass` splits it instead::

    plan (names, full shapes, costs) -> assign_by_cost() -> each rank: gather its blocks, analyze its share
    -> one all_gather of the packed results -> every rank holds every LayerSpectrum -> identical factors

* The plan is a pure function of the model and the partition, identical on every rank, so the assignment
  needs no communication: greedy longest-processing-time by the cost of the eigen-solve
  (`matrix_cost`: k³ + m·n·k for an m×n matrix with Gram size k = min(m, n)).
* Each rank computes on its own device, packs the numeric fields of its results (status as an integer code)
  into one float64 tensor and a single ``all_gather`` gives every rank all results, bit for bit the numbers
  the owning rank computed. A rank whose local computation raises still joins the collective; then every
  rank raises the same error, so no rank ever goes on with different learning rates (the callback catches
  it and keeps every factor at 1 on every rank).
* Sharded weights are gathered one block at a time, on all ranks in the same order: FSDP2 (``fully_shard``,
  DTensor parameters) with ``DTensor.full_tensor()``, DeepSpeed ZeRO-3 with
  ``deepspeed.zero.GatheredParameters(modifier_rank=None)`` (read-only). DDP and ZeRO-1/2 hold full weights and
  gather nothing. peft LoRA matrices (W₀ + ΔW) are built from the gathered base and adapter weights of the
  block, so they are exact under sharding too. A block is gathered whole (all its parameters), so the peak
  extra memory is one full block per rank.
* FSDP1 is refused with a clear error (`check_supported`): its flattened 1-D shards hide the blocks and the
  matrices from the partition itself, before any gathering could help. Use FSDP2.

Without an initialised process group of more than one rank and without sharded parameters, `spectral_pass`
is exactly ``analyze(unit_matrices(model, partition), **options)``.

Every function here that communicates must be called on all ranks at the same point (never behind
``is_world_process_zero``), or the job deadlocks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from transformers.utils import logging

from .layers import Partition, Unit, _innermost, _lora_layers, full_shape, unit_matrices
from .spectral import STATUSES, LayerSpectrum, analyze, farms_grid

logger = logging.get_logger(__name__)

__all__ = [
    "assign_by_cost",
    "check_supported",
    "deepspeed_config_sections",
    "distributed_analyze",
    "gathered_blocks",
    "is_distributed",
    "matrix_cost",
    "sharding_kind",
    "spectral_pass",
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
)
_INT_FIELDS = {"num_evals", "num_tail", "num_windows"}


# --------------------------------------------------------------------------------------------------
# Process group


def is_distributed() -> bool:
    """Whether a torch.distributed process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def _collective_device(hint: torch.device | None) -> torch.device:
    """The device of the exchange tensor: CPU for gloo, the current CUDA device for NCCL, else ``hint``."""
    backend = str(dist.get_backend()).lower()
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return hint if hint is not None else torch.device("cpu")  # e.g. "cpu:gloo,cuda:nccl": the weights' device


# --------------------------------------------------------------------------------------------------
# Cost and assignment


def matrix_cost(
    shape: Sequence[int],
    *,
    estimator: str = "plain",
    farms_window: int | None = None,
    farms_aspect_ratio: float = 1.0,
    farms_grid_size: int = 9,
    **_ignored,
) -> int:
    """Relative cost of the ESD of one matrix: k³ (eigen-solve) + m·n·k (Gram product), k = min(m, n).

    ``shape`` is a 2-D matrix or a 4-D kernel (out, in, kh, kw: kh·kw slices of out×in). With
    ``estimator="farms"`` the cost is that of all the FARMS windows. Extra keyword arguments (the other
    options of `tb_hf.spectral.analyze`) are accepted and ignored.
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
def _gathered(model: nn.Module, path: str, kind: str | None) -> Iterator[None]:
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
# The plan


@dataclass(frozen=True)
class _Task:
    """One ESD of the pass."""

    name: str  # result key: the parameter name, or "name[e]" for matrix e of a 3-D weight
    param: str  # parameter name
    index: int | None  # e for a 3-D weight
    shape: tuple[int, ...]  # shape of the analysed matrix (2-D, or the 4-D kernel)
    block: str  # module path of the block whose gathering makes the parameter whole
    cost: int


def _plan(model: nn.Module, partition: Partition, lora_view: str, options: Mapping) -> list[_Task]:
    """Every ESD of the pass, in `analyze`'s output order. Reads shapes only: nothing is gathered."""
    params = dict(model.named_parameters())
    lora = _lora_layers(model) if lora_view == "delta" else {}
    blocks = set(partition.blocks)
    tasks = []
    for unit in partition.units:
        for name in unit.matrices:
            param = params[name]
            if lora_view == "delta" and id(param) not in lora:
                continue  # unit_matrices leaves matrices without LoRA out of the delta view
            shape = full_shape(param)
            block = _innermost(name, blocks) or unit.name
            if len(shape) == 3:
                cost = matrix_cost(shape[1:], **options)
                tasks.extend(_Task(f"{name}[{e}]", name, e, shape[1:], block, cost) for e in range(shape[0]))
            else:
                tasks.append(_Task(name, name, None, shape, block, matrix_cost(shape, **options)))
    return tasks


def _local_matrices(model: nn.Module, tasks: Sequence[_Task], lora_view: str) -> dict[str, torch.Tensor]:
    """The matrices of ``tasks`` from the model's current (full) parameters, W₀ + ΔW under LoRA."""
    wanted = tuple(dict.fromkeys(task.param for task in tasks))
    if not wanted:
        return {}
    sub = Partition(units=(Unit(name="", matrices=wanted, params=()),), outside=(), blocks=())
    mats = unit_matrices(model, sub, lora_view=lora_view)
    return {task.name: mats[task.param] if task.index is None else mats[task.param][task.index] for task in tasks}


# --------------------------------------------------------------------------------------------------
# The exchange


def _pack(spectra: Mapping[str, LayerSpectrum], tasks: Sequence[_Task], rows: int, device, header) -> torch.Tensor:
    out = torch.zeros(rows + 1, len(_FIELDS), dtype=torch.float64)
    out[0, : len(header)] = torch.tensor(header, dtype=torch.float64)
    values = []
    for task in tasks:
        s = spectra.get(task.name)
        if s is None:  # local failure: the header says so, the row is never read
            values.append([math.nan] * len(_FIELDS))
        else:
            values.append(
                [float(STATUSES.index(s.status)) if f == "status" else float(getattr(s, f)) for f in _FIELDS]
            )
    if values:
        out[1 : len(values) + 1] = torch.tensor(values, dtype=torch.float64)
    return out.to(device)


def _plan_digest(tasks: Sequence[_Task]) -> float:
    """A number every rank computes from its own plan; all ranks must agree on it."""
    digest = len(tasks)
    for task in tasks:
        digest = (digest * 1_000_003 + task.cost + sum(task.shape) + len(task.name)) % (1 << 52)
    return float(digest)


def _exchange(
    tasks: Sequence[_Task],
    owners: Sequence[int],
    local: Mapping[str, LayerSpectrum],
    error: BaseException | None,
    device: torch.device | None,
    estimator: str,
) -> dict[str, LayerSpectrum]:
    """One all_gather of every rank's packed results; every rank rebuilds all results from it."""
    rank, world = _rank_and_world()
    per_rank = [[t for t, o in zip(tasks, owners, strict=True) if o == r] for r in range(world)]
    rows = max(len(p) for p in per_rank)
    header = (1.0 if error is not None else 0.0, float(len(per_rank[rank])), _plan_digest(tasks))
    mine = _pack(local, per_rank[rank], rows, _collective_device(device), header)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    gathered = [g.cpu() for g in gathered]

    failed = [r for r, g in enumerate(gathered) if g[0, 0].item() != 0]
    if failed:
        detail = f": {error!r}" if error is not None else ""
        raise RuntimeError(f"spectral pass failed on rank(s) {failed} (this is rank {rank}){detail}") from error
    digests = {g[0, 2].item() for g in gathered}
    if len(digests) != 1:
        raise RuntimeError(
            "the ranks disagree on the matrices to analyse (different models or partitions on different ranks)"
        )

    results: dict[str, LayerSpectrum] = {}
    for r, rank_tasks in enumerate(per_rank):
        for task, row in zip(rank_tasks, gathered[r][1:].tolist(), strict=False):
            fields = dict(zip(_FIELDS, row, strict=True))
            fields = {k: int(v) if k in _INT_FIELDS else v for k, v in fields.items()}
            fields["status"] = STATUSES[int(row[_FIELDS.index("status")])]
            results[task.name] = LayerSpectrum(**fields, name=task.name, shape=task.shape, estimator=estimator)
    return {task.name: results[task.name] for task in tasks}


# --------------------------------------------------------------------------------------------------
# The passes


def spectral_pass(
    model: nn.Module, partition: Partition, *, lora_view: str = "effective", **options
) -> dict[str, LayerSpectrum]:
    """The spectra of every matrix of ``partition``, computed jointly by all ranks; the same result on each.

    Single process, full weights: ``analyze(unit_matrices(model, partition, lora_view=lora_view), **options)``.
    Otherwise every rank analyses its cost-balanced share (`assign_by_cost`) on its own device, gathering
    sharded weights one block at a time, and one ``all_gather`` gives every rank all results. Call it on
    all ranks at the same step.

    Args:
        model: The model the Trainer hands to callbacks (unwrapped under DDP/DeepSpeed, FSDP-wrapped under FSDP).
        partition: From `tb_hf.layers.partition_model` on that model.
        lora_view: As for `tb_hf.layers.unit_matrices`.
        **options: Options of `tb_hf.spectral.analyze`.

    Returns:
        Result name → `LayerSpectrum`, in the order `analyze` gives them.

    Raises:
        RuntimeError: On every rank, if the local computation failed on any rank (the message names the ranks).
    """
    kind = sharding_kind(model)
    if not is_distributed() and kind is None:
        return analyze(unit_matrices(model, partition, lora_view=lora_view), **options)
    check_supported(model)

    rank, world = _rank_and_world()
    tasks = _plan(model, partition, lora_view, options)
    owners = assign_by_cost([t.cost for t in tasks], world)
    mine = [t for t, o in zip(tasks, owners, strict=True) if o == rank]
    local: dict[str, LayerSpectrum] = {}
    error: BaseException | None = None
    device = None

    def compute(share: Sequence[_Task]) -> None:
        nonlocal error, device
        if error is not None or not share:
            return
        try:
            mats = _local_matrices(model, share, lora_view)
            device = device or next(iter(mats.values())).device
            local.update(analyze(mats, **options))
        except Exception as err:  # noqa: BLE001 - must still join the collective, then fail on every rank
            error = err

    if kind is None:
        compute(mine)
    else:
        # One block at a time, every rank in the same order, even a rank with nothing to compute in it.
        for block in dict.fromkeys(t.block for t in tasks):
            with _gathered(model, block, kind):
                compute([t for t in mine if t.block == block])
    if not is_distributed():
        if error is not None:
            raise error
        return {t.name: local[t.name] for t in tasks}
    logger.debug(f"TempBalance: rank {rank}/{world} analysed {len(mine)} of {len(tasks)} matrices")
    return _exchange(tasks, owners, local, error, device, options.get("estimator", "plain"))


def distributed_analyze(matrices: Mapping[str, torch.Tensor], **options) -> dict[str, LayerSpectrum]:
    """`tb_hf.spectral.analyze` of matrices that every rank holds in full, shared between the ranks.

    Each rank analyses its cost-balanced share; one ``all_gather`` gives every rank all results, in the
    order `analyze` gives them (a 3-D tensor ``x`` gives ``"x[0]"``, ``"x[1]"``, ...). Without a process
    group of more than one rank this is `analyze`. Call it on all ranks with the same names and shapes.
    """
    if not is_distributed():
        return analyze(matrices, **options)
    rank, world = _rank_and_world()
    tasks = []
    for name, weight in matrices.items():
        if weight.ndim == 3:
            cost = matrix_cost(tuple(weight.shape[1:]), **options)
            tasks.extend(_Task(f"{name}[{e}]", name, e, tuple(weight.shape[1:]), "", cost) for e in range(len(weight)))
        else:
            tasks.append(_Task(name, name, None, tuple(weight.shape), "", matrix_cost(tuple(weight.shape), **options)))
    owners = assign_by_cost([t.cost for t in tasks], world)
    mine = [t for t, o in zip(tasks, owners, strict=True) if o == rank]
    local: dict[str, LayerSpectrum] = {}
    error = None
    try:
        local = analyze(
            {t.name: matrices[t.param] if t.index is None else matrices[t.param][t.index] for t in mine}, **options
        )
    except Exception as err:  # noqa: BLE001 - must still join the collective, then fail on every rank
        error = err
    device = next(iter(matrices.values())).device if matrices else None
    return _exchange(tasks, owners, local, error, device, options.get("estimator", "plain"))


def gathered_blocks(
    model: nn.Module, partition: Partition, *, lora_view: str = "effective"
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """``(block path, {result name: full matrix})`` for each block of ``partition``, one block at a time.

    Under FSDP/ZeRO-3 each block's weights are gathered while its item is being consumed and freed when the
    iteration moves on: copy what you keep. All ranks must iterate to the end, in step (each step may be a
    collective). Names are those of `spectral_pass` (``"x[e]"`` for matrix e of a 3-D weight).
    """
    kind = sharding_kind(model)
    check_supported(model)
    tasks = _plan(model, partition, lora_view, {})
    for block in dict.fromkeys(t.block for t in tasks):
        with _gathered(model, block, kind):
            yield block, _local_matrices(model, [t for t in tasks if t.block == block], lora_view)


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
