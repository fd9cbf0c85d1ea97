"""The spectral pass: one engine that training, ``tb-hf analyze`` and distributed jobs all call.

Data flows one way::

    plan (typed keys, shapes, costs; no weight is read) -> each rank's cost-balanced share
    -> matrices, block by block (sharded weights gathered, W₀ + ΔW in float32 under LoRA)
    -> eigen-solve + fit (`tb_hf.spectral.analyze`) -> one exchange between ranks -> `PassResult`
    -> unit metrics (`tb_hf.balancing.unit_metrics`, adapted matrices only under LoRA if asked)

`SpectralEngine.run` does all of it synchronously. For asynchronous passes the same steps are split:
`SpectralEngine.snapshot` (training thread: copies of this rank's matrices), `SpectralEngine.compute` (any
thread: pure computation on the copies) and `SpectralEngine.finish` (training thread: the exchange, a
collective every rank joins at the same step, and the unit metrics).

Results are keyed by `tb_hf.spectral.MatrixKey` (parameter name, expert index), never by parsed strings.
`unit_matrices` gives the matrices of the pass by parameter name, built by the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.utils import logging

from . import distributed as dist_utils
from .balancing import unit_alpha_se, unit_metrics
from .blocks import parent_paths
from .layers import Partition, Unit
from .lora import lora_layers, lora_weight
from .options import LORA_VIEWS, SpectralOptions, resolve_options
from .quantized import can_dequantize, dense_weight, full_shape, is_packed
from .spectral import LayerSpectrum, MatrixKey, analyze, esd, farms_esd, farms_windows

logger = logging.get_logger(__name__)

__all__ = ["PassResult", "SpectralEngine", "Task", "analyze_shared", "analyze_tasks", "plan", "unit_matrices"]

_DEFAULT = SpectralOptions()
#: Smallest per-model FARMS window: below it matrices are analysed whole.
_MIN_MODEL_WINDOW = 32


@dataclass(frozen=True)
class Task:
    """One ESD of the pass.

    Attributes:
        key: Parameter name and, for a 3-D (experts) weight, the matrix index.
        label: How tables and figures name it: the parameter name, ``name[e]``, or ``<lora layer>.ΔW`` in the
            LoRA delta view.
        unit: The unit whose metric it feeds.
        block: Module path of the block whose gathering makes the parameter whole.
        shape: Full shape of the analysed matrix (2-D, or the 4-D kernel).
        cost: Relative cost of its ESD (`tb_hf.distributed.matrix_cost`), for splitting the pass between ranks.
        adapted: Whether peft LoRA adapts it.
        status: A status given without computing (``"quantized"``: a packed weight that cannot be dequantized),
            else None.
        packed: Whether the parameter is stored packed (`tb_hf.quantized.is_packed`: quantized, dequantized when read).
    """

    key: MatrixKey
    label: str
    unit: str
    block: str
    shape: tuple[int, ...]
    cost: int
    adapted: bool = False
    status: str | None = None
    packed: bool = False


@dataclass
class PassResult:
    """What one pass found.

    Attributes:
        spectra: Matrix key → `LayerSpectrum` (``name`` is the task's label), in model order.
        metrics: Unit → the metric that drives the factors (NaN for a unit that could not be fitted).
        alphas: Unit → mean α (the same as ``metrics`` when the metric is α).
        alpha_se: Unit → standard error of that α from the fits (`tb_hf.balancing.unit_alpha_se`).
        esds: Matrix key → eigenvalues (CPU float64) of the matrices asked for with ``esd_keys``.
        seconds: Wall time of the pass.
    """

    spectra: dict[MatrixKey, LayerSpectrum]
    metrics: dict[str, float]
    alphas: dict[str, float]
    esds: dict[MatrixKey, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    alpha_se: dict[str, float] = field(default_factory=dict)

    def statuses(self, unit: Unit) -> list[str]:
        """The distinct statuses of a unit's matrices (to say why a unit was not fitted); empty if none of its
        matrices was analysed (the LoRA delta view leaves out matrices without LoRA)."""
        return sorted({s.status for k, s in self.spectra.items() if k.param in unit.matrices})


# --------------------------------------------------------------------------------------------------
# The plan


def model_farms_window(shapes: Sequence[tuple[int, ...]], aspect_ratio: float) -> int | None:
    """FARMS's one window size for a whole model: half the smallest side among its matrices (the paper used
    one size per model, e.g. 2000 rows for LLaMA-7B's 4096-wide matrices). None if that is below 32 rows."""
    sides = [int(min(s[0], s[1] / aspect_ratio)) for s in shapes if min(s) > 0]  # a zero-size matrix is not fitted
    if not sides:
        return None
    window = min(sides) // 2
    return window if window >= _MIN_MODEL_WINDOW else None


def plan(model: nn.Module, partition: Partition, spectral: SpectralOptions = _DEFAULT) -> list[Task]:
    """Every ESD of the pass, in model order. Reads names, shapes and dtypes only: nothing is gathered.

    In the ``"delta"`` LoRA view (``spectral.lora_view``), matrices without LoRA are left out.
    """
    lora_view = spectral.lora_view
    if lora_view not in LORA_VIEWS:
        raise ValueError(f"lora_view must be one of {LORA_VIEWS}, got {lora_view!r}")
    params = dict(model.named_parameters())
    lora = lora_layers(model)
    modules = dict(model.named_modules())
    blocks = set(partition.blocks)
    tasks: list[Task] = []
    for unit in partition.units:
        block = next((b for b in partition.blocks if unit.name == b or unit.name.startswith(f"{b}.")), unit.name)
        for name in unit.matrices:
            param = params[name]
            adapted = id(param) in lora
            if lora_view == "delta" and not adapted:
                continue
            shape = full_shape(param)
            owner_block = next((p for p in parent_paths(name) if p in blocks), block)
            label = name
            if lora_view == "delta":
                layer = next(p for p in parent_paths(name) if p in modules and modules[p] in lora[id(param)])
                label = f"{layer}.ΔW"
            # Packed weights that cannot be dequantized (not bitsandbytes 4/8-bit) are not fitted; ΔW needs no W₀.
            packed = is_packed(param)
            undequantizable = packed and not can_dequantize(param, modules.get(name.rsplit(".", 1)[0]))
            status = "quantized" if undequantizable and not (lora_view == "delta" and adapted) else None
            parts = (
                [(MatrixKey(name, e), shape[1:]) for e in range(shape[0])]
                if len(shape) == 3
                else [(MatrixKey(name), shape)]
            )
            for key, part_shape in parts:
                part_label = label if key.index is None else f"{label}[{key.index}]"
                tasks.append(
                    Task(
                        key=key,
                        label=part_label,
                        unit=unit.name,
                        block=owner_block,
                        shape=tuple(part_shape),
                        cost=dist_utils.matrix_cost(
                            tuple(part_shape),
                            estimator=spectral.estimator,
                            farms_window=spectral.farms_window,
                            farms_aspect_ratio=spectral.farms_aspect_ratio,
                            farms_grid_size=spectral.farms_grid,
                        ),
                        adapted=adapted,
                        status=status,
                        packed=packed,
                    )
                )
    return tasks


# --------------------------------------------------------------------------------------------------
# Matrices


@torch.no_grad()
def _weights(model: nn.Module, tasks: Sequence[Task], lora_view: str) -> dict[str, torch.Tensor]:
    """The analysed weight of each task's parameter, ``{parameter name: tensor}`` (a 3-D expert weight whole), from
    the model's current full parameters; tasks with a status are left out. See `unit_matrices`."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    lora = lora_layers(model)
    out: dict[str, torch.Tensor] = {}
    for task in tasks:
        name = task.key.param
        if task.status is not None or name in out:
            continue
        param = params[name]
        if id(param) in lora and lora_view == "delta":  # ΔW alone: W₀ is not read (nor dequantized)
            out[name] = lora_weight(param, lora[id(param)], lora_view)
            continue
        weight = dense_weight(param, modules.get(name.rsplit(".", 1)[0]), name)
        out[name] = lora_weight(weight, lora[id(param)], lora_view) if id(param) in lora else weight
    return out


def unit_matrices(model: nn.Module, partition: Partition, *, lora_view: str = "effective") -> dict[str, torch.Tensor]:
    """The matrices the pass analyses, ``{matrix name: tensor}``, for every unit of ``partition`` (full weights: not
    for a sharded model), built as `SpectralEngine` builds them (its `plan`, then the same code).

    Tensors are detached, on the parameter's device and in its dtype (float32 for W₀ + ΔW and ΔW, see
    `tb_hf.lora.lora_weight`); a 3-D expert weight comes whole. For a matrix adapted by peft LoRA:

    * ``lora_view="effective"``: the weight the forward pass uses, W₀ + ΔW with ΔW = ``get_delta_weight`` (B·A
      times ``lora_alpha / r``, or ``/ √r`` with rsLoRA, in the base weight's layout, also for GPT-2's
      ``Conv1D``) summed over the layer's active adapters. Adapters already merged into W₀ are not added twice;
      merged adapters that are not active (or adapters disabled with ``disable_adapter()``) are taken out.
    * ``lora_view="delta"``: ΔW alone (zero while adapters are disabled). Matrices without LoRA are left out.

    Matrices without LoRA are returned as they are in the ``"effective"`` view. Quantized bitsandbytes weights (QLoRA)
    come dequantized (`tb_hf.quantized.dense_weight`: W₀ is the dequantized base); other packed formats
    (`tb_hf.quantized.can_dequantize` false, status ``"quantized"`` in the pass) are left out.
    """
    return _weights(model, plan(model, partition, SpectralOptions(lora_view=lora_view)), lora_view)


# --------------------------------------------------------------------------------------------------
# Computing a share and exchanging it


def _skipped(task: Task, estimator: str) -> LayerSpectrum:
    nan = math.nan
    return LayerSpectrum(
        alpha=nan, xmin=nan, ks_distance=nan, num_evals=0, num_tail=0, alpha_hat=nan, spectral_norm=nan,
        stable_rank=nan, status=task.status, name=task.label, shape=task.shape, estimator=estimator,
    )  # fmt: skip


def analyze_tasks(tasks: Sequence[Task], matrices: Mapping[MatrixKey, torch.Tensor], fit_kwargs: Mapping) -> dict:
    """`analyze` of the tasks' matrices with ``fit_kwargs`` (`SpectralOptions.fit_kwargs`), relabelled; tasks with a
    status are not computed."""
    estimator = fit_kwargs["estimator"]
    out = {t.key: _skipped(t, estimator) for t in tasks if t.status is not None}
    todo = [t for t in tasks if t.status is None]
    if todo:
        spectra = analyze({t.key: matrices[t.key] for t in todo}, **fit_kwargs)
        out.update({t.key: dataclasses.replace(spectra[t.key], name=t.label) for t in todo})
    return {t.key: out[t.key] for t in tasks}


def analyze_shared(
    tasks: Sequence[Task], local: Callable[[Sequence[Task]], Mapping[MatrixKey, LayerSpectrum]]
) -> dict[MatrixKey, LayerSpectrum]:
    """Every task's spectrum, each rank computing its cost-balanced share with ``local(share)``; one exchange.

    Alone (no process group of several ranks) this is ``local(tasks)``. A rank whose ``local`` raises still
    joins the exchange, and then every rank raises (no rank goes on with different factors).
    """
    split = dist_utils.Split.of(tasks)
    return split.shared(lambda: local(split.mine) if split.mine else {})


# --------------------------------------------------------------------------------------------------
# The engine


class SpectralEngine:
    """The spectral pass of one model and partition, with fixed options.

    Args:
        model: The model the Trainer hands to callbacks (unwrapped under DDP/DeepSpeed, FSDP2-sharded or not),
            peft-wrapped or not.
        partition: From `tb_hf.layers.partition_model`.
        spectral: `tb_hf.options.SpectralOptions` (or a `TempBalanceArguments` / `TempBalanceOptions`, whose
            spectral options are taken): estimator, fit, precision, LoRA view and averaging, metric.

    Example:
        ```python
        from tb_hf import SpectralEngine, partition_model
        from tb_hf.options import SpectralOptions

        engine = SpectralEngine(model, partition_model(model), SpectralOptions())
        result = engine.run(model)          # PassResult: spectra, unit metrics
        ```
    """

    def __init__(self, model: nn.Module, partition: Partition, spectral):
        if not isinstance(spectral, SpectralOptions):  # a TempBalanceArguments or TempBalanceOptions
            spectral = resolve_options(spectral).spectral
        dist_utils.check_supported(model)
        self.partition = partition
        self.spectral = spectral
        self.sharding = dist_utils.sharding_kind(model)
        device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
        self.device = device
        self.tasks = plan(model, partition, spectral)
        if spectral.lora_view == "delta" and not lora_layers(model):
            logger.warning_once(
                f"TempBalance: {type(model).__name__} has no LoRA adapters, so tb_lora_view='delta' has nothing to "
                "analyse (it looks at the LoRA update ΔW alone) and every unit keeps factor 1. Use "
                "tb_lora_view='effective' (the default) for a model without LoRA, or add adapters with "
                "peft.get_peft_model before training."
            )
        if spectral.estimator == "farms" and spectral.farms_window is None:
            window = model_farms_window([t.shape for t in self.tasks], spectral.farms_aspect_ratio)
            if window is not None:  # the costs depend on the window: plan again with it
                self.spectral = dataclasses.replace(spectral, farms_window=window)
                self.tasks = plan(model, partition, self.spectral)
                logger.info(f"TempBalance: FARMS window {window} rows for every matrix.")
        #: The keyword arguments of `tb_hf.spectral.analyze` (the FARMS window decided, the precision for the device).
        self.fit_kwargs = self.spectral.fit_kwargs(device)
        if self.spectral.estimator == "farms":
            for t in self.tasks:  # say once per shape which matrices FARMS cannot window
                if min(t.shape) == 0:  # zero-size: status "too_small", nothing to window
                    continue
                farms_windows(
                    t.shape[:2],
                    name=t.label,
                    window=self.spectral.farms_window,
                    aspect_ratio=self.spectral.farms_aspect_ratio,
                    grid=self.spectral.farms_grid,
                )
        #: Which rank computes which task: fixed for the plan and the process group, so every pass shares it.
        self.split = dist_utils.Split.of(self.tasks)
        # Quantized weights (QLoRA) are dequantized one block at a time, never all at once.
        self.packed = any(t.packed for t in self.tasks)
        quantized = [t.label for t in self.tasks if t.status == "quantized"]
        if quantized:
            logger.warning_once(
                f"TempBalance: {len(quantized)} quantized weight(s) (e.g. {quantized[0]}) are not analysed (status "
                "'quantized'): they are stored in a packed format TempBalance cannot dequantize (it dequantizes "
                "bitsandbytes 4-bit and 8-bit weights, not e.g. GPTQ or AWQ), and their bytes are not the matrix. A "
                "unit with no other matrix keeps factor 1. To analyse such a model, analyse an unquantized copy of "
                "the base with the adapter: tb-hf analyze BASE --adapter RUN --dtype bfloat16."
            )

    # ------------------------------------------------------------------------------------------------
    # Matrices

    def _matrices(self, model: nn.Module, tasks: Sequence[Task]) -> dict:
        """The tasks' matrices from the model's current full parameters (`unit_matrices`: W₀ + ΔW under LoRA, in
        float32; a bitsandbytes-quantized W₀ dequantized), one per expert of a 3-D weight; tasks with a status are
        left out."""
        weights = _weights(model, tasks, self.spectral.lora_view)
        return {
            t.key: weights[t.key.param] if t.key.index is None else weights[t.key.param][t.key.index]
            for t in tasks
            if t.status is None
        }

    def _blocks(self, model: nn.Module, tasks: Sequence[Task]) -> Iterator[tuple[list[Task], dict]]:
        """``(tasks of a block, their matrices)``, one block at a time, each gathered while it is consumed.
        Under sharding every rank must iterate to the end in step (each gathering is a collective)."""
        wanted = {t.key for t in tasks}
        for block in dict.fromkeys(t.block for t in self.tasks):
            share = [t for t in self.tasks if t.block == block and t.key in wanted]
            with dist_utils.gathered(model, block, self.sharding):
                yield share, self._matrices(model, share) if share else {}

    def _share(self, model: nn.Module, tasks: Sequence[Task], *, by_block: bool, esd_keys, esds, progress) -> dict:
        """Spectra of ``tasks`` computed here (this rank's share)."""
        from tqdm.auto import tqdm

        if not by_block and self.sharding is None and not self.packed:
            mats = self._matrices(model, tasks)
            self._keep_esds(mats, esd_keys, esds)
            return analyze_tasks(tasks, mats, self.fit_kwargs)
        out, error = {}, None
        n_blocks = len(dict.fromkeys(t.block for t in self.tasks))
        for share, mats in tqdm(
            self._blocks(model, tasks), total=n_blocks, desc="spectral pass", unit="block", disable=not progress
        ):
            if share and error is None:
                try:
                    out.update(analyze_tasks(share, mats, self.fit_kwargs))
                    self._keep_esds(mats, esd_keys, esds)
                except Exception as err:  # noqa: BLE001 - keep gathering in step with the other ranks
                    error = err
            del mats
        if error is not None:
            raise error
        return out

    def _keep_esds(self, mats: Mapping, esd_keys, esds: dict) -> None:
        for key in [k for k in mats if k in esd_keys]:
            esds[key] = self.esd(mats[key])

    def esd(self, matrix: torch.Tensor) -> torch.Tensor:
        """The eigenvalues the fit of ``matrix`` uses (FARMS-pooled or plain), as CPU float64."""
        o, dtype = self.spectral, self.fit_kwargs["dtype"]
        if matrix.numel() == 0:  # a zero-size matrix has no eigenvalues
            return torch.empty(0, dtype=torch.float64)
        window = dict(window=o.farms_window, aspect_ratio=o.farms_aspect_ratio, grid=o.farms_grid)
        if o.estimator == "farms" and farms_windows(tuple(matrix.shape[:2]), **window) is not None:
            evals = farms_esd(matrix, **window, dtype=dtype, filter_zeros=o.filter_zeros)
        else:
            evals = esd(matrix, dtype=dtype, filter_zeros=o.filter_zeros)
        return evals.to("cpu", torch.float64)

    # ------------------------------------------------------------------------------------------------
    # Passes

    def run(self, model: nn.Module, *, by_block: bool = False, progress: bool = False, esd_keys=()) -> PassResult:
        """One synchronous pass, shared between the ranks (call it on every rank at the same step).

        Args:
            by_block: Build and analyse one block's matrices at a time (bounds memory to one block's copies;
                always so under FSDP2/ZeRO-3 and with quantized weights, which are dequantized block by block).
            progress: A progress bar over the blocks.
            esd_keys: Matrix keys whose eigenvalues to keep (for figures), in ``PassResult.esds``.
        """
        start = time.perf_counter()
        esd_keys, esds = set(esd_keys), {}
        mine = self.split.mine

        def compute() -> dict:
            if not mine and self.sharding is None:
                return {}
            # Under sharding every rank gathers every block (a collective), in step with the other ranks even with
            # no share or after a local failure, and computes its own share inside it.
            return self._share(model, mine, by_block=by_block, esd_keys=esd_keys, esds=esds, progress=progress)

        spectra = self.split.shared(compute)
        return self.result(spectra, esds=esds, seconds=time.perf_counter() - start)

    def snapshot(self, model: nn.Module) -> dict[MatrixKey, torch.Tensor]:
        """Copies of this rank's share of the matrices, for `compute` in another thread (training thread only).

        On CUDA the copies go to pinned host memory on a side stream (the training stream is not
        synchronised); the host computes them. Elsewhere they are plain copies.
        """
        out: dict[MatrixKey, torch.Tensor] = {}
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _share, mats in self._blocks(model, self.split.mine):
                for key, mat in mats.items():
                    if cuda:
                        host = torch.empty(mat.shape, dtype=mat.dtype, device="cpu", pin_memory=True)
                        host.copy_(mat, non_blocking=True)
                        out[key] = host
                    else:
                        out[key] = mat.detach().clone()
        if stream is not None:
            stream.synchronize()
        return out

    def compute(self, snapshot: Mapping[MatrixKey, torch.Tensor]) -> dict[MatrixKey, LayerSpectrum]:
        """This rank's spectra from a `snapshot` (safe in a background thread: no collective, no model access).
        A snapshot of CUDA weights is computed on the host in the precision chosen for CUDA."""
        tasks = [t for t in self.split.mine if t.key in snapshot or t.status is not None]
        return analyze_tasks(tasks, snapshot, self.fit_kwargs)

    def finish(
        self, local: Mapping[MatrixKey, LayerSpectrum] | None, error: BaseException | None = None
    ) -> PassResult:
        """Exchange the results of `compute` (or its ``error``) between the ranks (every rank, same step) and build
        the result; every rank raises if any rank's computation failed."""

        def computed() -> Mapping[MatrixKey, LayerSpectrum]:  # `compute` ran in another thread: its outcome again
            if error is not None:
                raise error
            return local or {}

        return self.result(self.split.shared(computed))

    # ------------------------------------------------------------------------------------------------
    # Unit metrics

    def metric_units(self) -> list[Unit]:
        """The units as `unit_metrics` sees them: under LoRA with ``tb_lora_average='adapted'`` a unit that has
        adapted matrices averages over those only (Model Balancing); frozen, unadapted ones do not count."""
        if self.spectral.lora_average != "adapted":
            return list(self.partition.units)
        adapted: dict[str, list[str]] = {}
        for t in self.tasks:
            if t.adapted:
                adapted.setdefault(t.unit, []).append(t.key.param)
        return [
            dataclasses.replace(u, matrices=tuple(dict.fromkeys(adapted[u.name]))) if u.name in adapted else u
            for u in self.partition.units
        ]

    def result(self, spectra: dict, *, esds=None, seconds: float = 0.0) -> PassResult:
        units = self.metric_units()
        metrics = unit_metrics(spectra, units, metric=self.spectral.metric)
        alphas = metrics if self.spectral.metric == "alpha" else unit_metrics(spectra, units, metric="alpha")
        return PassResult(
            spectra=spectra,
            metrics=metrics,
            alphas=alphas,
            esds=esds or {},
            seconds=seconds,
            alpha_se=unit_alpha_se(spectra, units),
        )
