"""Eigenvalue spectra of weight matrices and their power-law exponent α.

Pure torch, no Hugging Face imports. Data flows one way::

    weight -> esd()/farms_esd() -> eigenvalues -> fit_power_law() -> PowerLawFit

and `analyze()` runs that whole chain for many matrices at once: equal shapes share one batched
eigen-solve on the weights' own device, all fits of a group run as tensor operations, and results come
back to the host once per group.

Conventions (``docs/method.md``, sections 2-4):

* The ESD of an m×n matrix W is the min(m, n) eigenvalues of its smaller Gram matrix (W Wᵀ or Wᵀ W),
  i.e. the squared singular values, with no 1/N normalisation, clamped at 0.
* The eigen-solve runs in ``dtype`` (float32 by default). The fit statistics (logarithms, suffix sums,
  Kolmogorov-Smirnov distances) are O(N) or O(N²) elementwise work and always accumulate in float64, so
  the choice of ``dtype`` only changes the eigenvalues themselves.
* α is the Hill / maximum-likelihood estimate of a continuous power law above xmin, with xmin chosen
  either at a fixed quantile (``"median"``, TempBalance) or by the Kolmogorov-Smirnov scan
  (``"ks"``, WeightWatcher).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .options import ESTIMATORS, SpectralOptions
from .powerlaw import EVALS_THRESH, PowerLawFit, _check_options, _fit_batch, fit_power_law

_S = SpectralOptions()  # the defaults, defined once in tb_hf.options

__all__ = [
    "EVALS_THRESH",
    "LayerSpectrum",
    "MatrixKey",
    "PowerLawFit",
    "analyze",
    "esd",
    "farms_esd",
    "farms_grid",
    "fit_power_law",
]

logger = logging.getLogger(__name__)

# Smallest default FARMS window: below this a matrix is analysed whole.
_MIN_DEFAULT_WINDOW = 32


@dataclass(frozen=True, order=True)
class MatrixKey:
    """Which matrix a result belongs to: a parameter name, and the matrix index for a 3-D (experts) weight.

    ``str(key)`` is ``"name"`` or ``"name[e]"``, the label used in tables and logs; code compares keys.
    """

    param: str
    index: int | None = None

    def __str__(self) -> str:
        return self.param if self.index is None else f"{self.param}[{self.index}]"


@dataclass(frozen=True, kw_only=True)
class LayerSpectrum(PowerLawFit):
    """The fit of one named matrix, as returned by `analyze`.

    Attributes:
        name: Label of the matrix: its key in the mapping given to `analyze` as a string (``"name[e]"`` for
            matrix ``e`` of a 3-D batch, whose result is keyed by ``MatrixKey(name, e)``).
        shape: Shape of the analysed matrix (for a 4-D kernel, the whole kernel shape).
        estimator: "plain" or "farms"; "plain" also for a matrix that FARMS analysed whole because it is
            smaller than the window (a warning names it).
        num_windows: FARMS windows pooled into the ESD (1 for the plain estimator).
    """

    name: str
    shape: tuple[int, ...]
    estimator: str = "plain"
    num_windows: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


# --------------------------------------------------------------------------------------------------
# Input checks


def _check_matrix(weight, *, name: str = "weight", allow_empty: bool = False) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim not in (2, 3, 4):
        raise ValueError(
            f"{name} must be a 2-D matrix, a 3-D batch of matrices or a 4-D convolution kernel; "
            f"got a {weight.ndim}-D tensor of shape {tuple(weight.shape)}"
        )
    if weight.is_complex():
        raise TypeError(f"{name} must be real, got dtype {weight.dtype}")
    if weight.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(weight.shape)})")
    return weight


# --------------------------------------------------------------------------------------------------
# Eigenvalues


def _gram(mats: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smaller Gram matrix (W Wᵀ or Wᵀ W) of each matrix in a (B, m, n) batch, in ``dtype``."""
    x = mats.to(dtype)
    return x @ x.mT if x.shape[-2] <= x.shape[-1] else x.mT @ x


def _gram_eigvals(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending eigenvalues of a (B, k, k) stack of Gram matrices, clamped at 0.

    Returns ``(evals, finite)`` with a (B,) mask of matrices without NaN/Inf. A Gram matrix's diagonal holds
    the squared row norms of its matrix, so a NaN or Inf anywhere in the matrix (or an overflow in the
    Gram) shows on the diagonal: the check costs O(k), not O(k²). Non-finite Grams are zeroed in place
    rather than failing the eigen-solve of the whole batch; callers read ``finite``.
    """
    finite = torch.isfinite(gram.diagonal(dim1=-2, dim2=-1).sum(-1))
    gram.masked_fill_(~finite[:, None, None], 0)
    with _one_cpu_thread(gram.device):
        evals = torch.linalg.eigvalsh(gram)
    return evals.clamp_min_(0), finite


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Run a CPU eigen-solve on one thread.

    LAPACK's tridiagonal reduction is memory-bound and gains little from a second thread on an idle CPU,
    but next to other work (the training step's own threads, other ranks, dataloader workers) OpenMP
    threads make it 4-8x slower (measured on 2 cores: 36 Grams of 384×384 took 0.18 s on one thread and
    1.5 s on two under load). GPU solves are unaffected.
    """
    if (
        device.type != "cpu"
        or torch.get_num_threads() == 1
        or threading.current_thread() is not threading.main_thread()
    ):
        yield  # the thread count is process-wide: a background pass must not change the training thread's
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_batch(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """View a 2-D/3-D/4-D weight as a (B, m, n) batch and the eigenvalue scale of its slices."""
    if weight.ndim == 2:
        return weight.unsqueeze(0), 1.0
    if weight.ndim == 3:
        return weight, 1.0
    # (out, in, kh, kw) -> kh·kw slices of out×in, each scaled by √0.5: eigenvalues × 0.5.
    out_ch, in_ch = weight.shape[:2]
    return weight.permute(2, 3, 0, 1).reshape(-1, out_ch, in_ch), 0.5


def esd(
    weight: torch.Tensor, *, dtype: torch.dtype = torch.float32, filter_zeros: bool = _S.filter_zeros
) -> torch.Tensor:
    """Ascending eigenvalues of WᵀW, computed through the smaller Gram matrix on the weight's device.

    Args:
        weight: A 2-D matrix (m×n: min(m, n) eigenvalues), a 3-D batch of matrices (one ESD per matrix,
            shape (B, min(m, n))) or a 4-D convolution kernel (out, in, kh, kw: the kh·kw slices, each
            scaled by √0.5, pooled into one ESD). bf16/fp16 input is upcast to ``dtype``.
        dtype: Precision of the eigen-solve (float32 or float64).
        filter_zeros: Drop eigenvalues ≤ `EVALS_THRESH` (1e-5), as WeightWatcher does. Not available for
            a 3-D batch, whose ESDs would then differ in length.

    Returns:
        A 1-D tensor (2-D and 4-D input) or a 2-D tensor (3-D input) of eigenvalues on ``weight.device``.
        Non-finite matrices give NaN eigenvalues.
    """
    _check_matrix(weight)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if filter_zeros and weight.ndim == 3:
        raise ValueError(
            "filter_zeros=True would give ESDs of different lengths for a 3-D batch; "
            "filter each matrix instead: [esd(w, filter_zeros=True) for w in weight]"
        )
    with torch.no_grad():
        batch, scale = _as_batch(weight.detach())
        evals, finite = _gram_eigvals(_gram(batch, dtype))
        evals = torch.where(finite[:, None], evals, torch.full((), math.nan, dtype=dtype, device=evals.device))
        if scale != 1.0:
            evals = evals * scale
        if weight.ndim == 3:
            return evals
        evals = evals.flatten().sort().values
        if filter_zeros:
            evals = evals[~(evals <= EVALS_THRESH)]  # keeps NaN, so a non-finite input stays visible
        return evals


def farms_grid(
    shape: tuple[int, int],
    *,
    window: int | None = None,
    aspect_ratio: float = _S.farms_aspect_ratio,
    grid: int = _S.farms_grid,
) -> tuple[tuple[int, int], list[int], list[int]]:
    """FARMS window size and start positions for an m×n matrix (``docs/method.md``, section 4).

    Windows are ``r`` rows × ``round(r·aspect_ratio)`` columns. Along each dimension of length ``dim``
    there are up to ``grid`` starts ``min(k·step, dim − w)`` with ``step = max(1, (dim − w) // (grid − 1))``;
    duplicates are removed. A matrix smaller than the window gets one window: the whole matrix.

    ``window=None`` uses ``r = min(m, n // aspect_ratio) // 2``; if that is below 32 the matrix is
    analysed whole.

    Returns:
        ``((rows, cols), row_starts, col_starts)``; the windows are all (row, col) start pairs.
    """
    m, n = int(shape[0]), int(shape[1])
    if aspect_ratio <= 0:
        raise ValueError(f"aspect_ratio must be > 0, got {aspect_ratio}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if window is None:
        window = int(min(m, n / aspect_ratio)) // 2
        if window < _MIN_DEFAULT_WINDOW:
            return (m, n), [0], [0]
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows, cols = window, max(1, round(window * aspect_ratio))
    if rows > m or cols > n:
        return (m, n), [0], [0]

    def starts(dim: int, w: int) -> list[int]:
        if grid == 1 or dim == w:
            return [0]
        step = max(1, (dim - w) // (grid - 1))
        return sorted({min(k * step, dim - w) for k in range(grid)})

    return (rows, cols), starts(m, rows), starts(n, cols)


def farms_esd(
    weight: torch.Tensor,
    *,
    window: int | None = None,
    aspect_ratio: float = _S.farms_aspect_ratio,
    grid: int = _S.farms_grid,
    dtype: torch.dtype = torch.float32,
    filter_zeros: bool = _S.filter_zeros,
) -> torch.Tensor:
    """FARMS pooled ESD: eigenvalues of all fixed-aspect-ratio windows of a matrix, pooled and sorted.

    See `farms_grid` for the window placement. A 4-D kernel is analysed slice by slice (each slice's
    windows scaled by √0.5, as in `esd`); a 3-D batch pools the windows of all its matrices.
    """
    _check_matrix(weight)
    weight = weight.detach()
    with torch.no_grad():
        mats = weight if weight.ndim == 3 else weight[None]
        grid_ = farms_grid(
            tuple(weight.shape[-2:] if weight.ndim == 3 else weight.shape[:2]),
            window=window,
            aspect_ratio=aspect_ratio,
            grid=grid,
        )
        items = [_Item("", "", tuple(m.shape), m, grid_) for m in mats]
        evals, finite = _gram_eigvals(torch.cat([_gram(item.source(), dtype) for item in items]))
        if not bool(finite.all()):
            return torch.full((evals.numel(),), math.nan, dtype=dtype, device=evals.device)
        evals = (evals * items[0].scale).flatten().sort().values
        if filter_zeros:
            evals = evals[evals > EVALS_THRESH]
        return evals


# --------------------------------------------------------------------------------------------------
# The whole-model pass


@dataclass(frozen=True)
class _Item:
    """One ESD of the pass: the pooled eigenvalues of the (B, m, n) batch that `source()` builds."""

    key: object  # the result's key: the input key, or MatrixKey(key, e) for matrix e of a 3-D input
    name: str  # str(key)
    shape: tuple[int, ...]
    weight: torch.Tensor  # 2-D matrix or 4-D kernel
    windows: tuple | None  # FARMS ((rows, cols), row_starts, col_starts), None for the plain ESD

    @property
    def scale(self) -> float:
        return 0.5 if self.weight.ndim == 4 else 1.0

    @property
    def num_windows(self) -> int:
        return 1 if self.windows is None else len(self.windows[1]) * len(self.windows[2])

    @property
    def source_shape(self) -> tuple[int, int, int]:
        slices = 1 if self.weight.ndim == 2 else self.weight.shape[2] * self.weight.shape[3]
        rows, cols = self.weight.shape[:2] if self.windows is None else self.windows[0]
        return slices * self.num_windows, rows, cols

    def source(self) -> torch.Tensor:
        batch, _ = _as_batch(self.weight)
        if self.windows is None:
            return batch
        (rows, cols), row_starts, col_starts = self.windows
        return torch.stack([mat[r : r + rows, c : c + cols] for mat in batch for r in row_starts for c in col_starts])


def farms_windows(
    shape: tuple[int, int],
    *,
    name: str = "matrix",
    window=None,
    aspect_ratio=_S.farms_aspect_ratio,
    grid=_S.farms_grid,
):
    """`farms_grid` for one matrix of the pass, or None (and a warning) when FARMS analyses it whole.

    A matrix smaller than the window (or than 64 rows/columns, under the default window) has only one
    window, the matrix itself: its α is the plain estimator's. That is said once per shape and option.
    """
    windows = farms_grid(shape, window=window, aspect_ratio=aspect_ratio, grid=grid)
    if windows[0] != tuple(shape) or (len(windows[1]) * len(windows[2])) > 1:
        return windows
    why = (
        f"tb_farms_window={window} rows x tb_farms_aspect_ratio={aspect_ratio:g} does not fit in it"
        if window is not None
        else f"half its smaller side is below {_MIN_DEFAULT_WINDOW} rows (tb_farms_aspect_ratio={aspect_ratio:g})"
    )
    _warn_once(
        ("farms", tuple(shape), window, aspect_ratio),
        f"FARMS: {name} ({shape[0]}x{shape[1]}, and every matrix of that shape) is analysed whole, with the plain "
        f"estimator, because {why}. Choose a smaller tb_farms_window to window it.",
    )
    return None


_WARNED: set = set()


def _warn_once(key, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def _plan(matrices: Mapping, estimator, window, aspect_ratio, grid) -> list[_Item]:
    items = []
    for key, weight in matrices.items():
        # A zero-size matrix (e.g. a fully pruned projection) has no eigenvalues: it gets status "too_small" in
        # `analyze`, and the pass goes on with the other matrices.
        _check_matrix(weight, name=f"matrices[{str(key)!r}]", allow_empty=True)
        weight = weight.detach()
        if weight.ndim == 3:
            parts = [(MatrixKey(str(key), e), weight[e]) for e in range(weight.shape[0])]
        else:
            parts = [(key, weight)]
        for part_key, w in parts:
            windows = None
            if estimator == "farms" and w.numel() > 0:
                windows = farms_windows(
                    tuple(w.shape[:2]), name=str(part_key), window=window, aspect_ratio=aspect_ratio, grid=grid
                )
            items.append(_Item(part_key, str(part_key), tuple(w.shape), w, windows))
    return items


def analyze(
    matrices: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    *,
    estimator: str = _S.estimator,
    xmin_method: str = _S.xmin_method,
    xmin_pos: float = _S.xmin_pos,
    min_evals: int = _S.min_evals,
    filter_zeros: bool = _S.filter_zeros,
    dtype: torch.dtype = torch.float32,
    farms_window: int | None = None,
    farms_aspect_ratio: float = _S.farms_aspect_ratio,
    farms_grid_size: int = _S.farms_grid,
    max_batch_bytes: int = 1 << 30,
    progress: bool = False,
) -> dict[str, LayerSpectrum]:
    """Spectral analysis of many matrices at once: the pass the Trainer runs every few steps.

    Matrices are grouped by device and shape; each group's Gram matrices go through one batched
    ``torch.linalg.eigvalsh`` on that device (split only to keep a group's Gram stack under
    ``max_batch_bytes``), the fits of a group run as tensor operations on the same device, and each
    group's results reach the host in one transfer.

    Args:
        matrices: key → tensor (2-D matrix, 3-D batch of matrices or 4-D kernel), on any device. Keys are
            parameter names or `MatrixKey`s; a 3-D tensor gives one result per matrix, keyed
            ``MatrixKey(str(key), e)`` and labelled ``"name[e]"``. A zero-size matrix (a fully pruned
            projection, ``nn.Linear(32, 0)``) has no eigenvalues: its status is "too_small" and the others are
            fitted as usual.
        estimator: ``"plain"`` (ESD of the whole matrix) or ``"farms"`` (pooled fixed-aspect windows).
        xmin_method: See `fit_power_law`.
        xmin_pos: See `fit_power_law`.
        min_evals: See `fit_power_law`.
        filter_zeros: See `fit_power_law`.
        dtype: Precision of the eigen-solve; float64 only when asked for.
        farms_window: FARMS window rows r (None: per-matrix default, see `farms_grid`).
        farms_aspect_ratio: FARMS window column/row ratio Q.
        farms_grid_size: FARMS grid size P (up to P × P window positions).
        max_batch_bytes: Upper bound on the Gram matrices stacked for one eigen-solve call.
        progress: Show a tqdm bar over the eigen-solve groups.

    Returns:
        key → `LayerSpectrum`, in input order.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    _check_options(xmin_method, xmin_pos, min_evals)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(matrices, Mapping):
        matrices = dict(matrices)

    with torch.no_grad():
        items = _plan(matrices, estimator, farms_window, farms_aspect_ratio, farms_grid_size)
        results: dict = {}
        # Items whose ESDs come from equally shaped sources on one device share one eigen-solve.
        groups: dict[tuple, list[_Item]] = defaultdict(list)
        for item in items:
            if item.weight.numel() == 0:  # no eigenvalues: not fitted, and never part of a batched solve
                results[item.key] = fit_power_law(torch.empty(0), min_evals=min_evals)
            else:
                groups[(item.weight.device, item.source_shape, item.scale)].append(item)

        itemsize = torch.tensor([], dtype=dtype).element_size()
        bar = tqdm(total=len(items) - len(results), desc="spectra", unit="matrix", disable=not progress)
        for (_device, (per_item, m, n), scale), members in groups.items():
            gram_bytes = per_item * min(m, n) ** 2 * itemsize
            per_call = max(1, max_batch_bytes // max(1, gram_bytes))
            for c0 in range(0, len(members), per_call):
                chunk = members[c0 : c0 + per_call]
                # Grams one item at a time (the upcast copy of a weight never outlives its matmul),
                # then one batched eigen-solve.
                evals, finite = _gram_eigvals(torch.cat([_gram(item.source(), dtype) for item in chunk]))
                evals = evals.reshape(len(chunk), -1)
                if per_item > 1:
                    evals = evals.sort(-1).values
                if scale != 1.0:
                    evals = evals * scale
                fit = _fit_batch(
                    evals,
                    finite.reshape(len(chunk), -1).all(-1),
                    xmin_method=xmin_method,
                    xmin_pos=xmin_pos,
                    min_evals=min_evals,
                    filter_zeros=filter_zeros,
                )
                for item, row in zip(chunk, fit.rows(), strict=True):
                    results[item.key] = row
                bar.update(len(chunk))
        bar.close()

    return {
        item.key: LayerSpectrum(
            **asdict(results[item.key]),
            name=item.name,
            shape=item.shape,
            estimator=estimator if item.windows is not None or estimator == "plain" else "plain",
            num_windows=item.num_windows,
        )
        for item in items
    }
