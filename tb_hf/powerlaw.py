"""The power-law exponent α of an empirical spectral density: the Hill / maximum-likelihood fit above xmin, xmin at a
fixed quantile (``"median"``, TempBalance) or chosen by the Kolmogorov-Smirnov scan (``"ks"``, WeightWatcher), for one
ESD (`fit_power_law`) or a batch of equal-length ESDs at once (`tb_hf.spectral.analyze`). Pure torch; the fit
statistics accumulate in float64 (``docs/method.md``, section 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .options import MIN_EVALS_RANGE, MIN_EVALS_WHY, XMIN_METHODS, SpectralOptions
from .values import check_int, check_range

_S = SpectralOptions()  # the defaults, defined once in tb_hf.options

__all__ = ["EVALS_THRESH", "STATUSES", "PowerLawFit", "fit_power_law"]

#: Eigenvalues at or below this are dropped when ``filter_zeros=True`` (WeightWatcher's threshold).
EVALS_THRESH = 1e-5
#: Fit outcomes. Everything but "ok" leaves ``alpha`` at NaN.
#: "rank_deficient": fewer than ``min_evals`` eigenvalues (or the tail's xmin) rise above the eigen-solve's
#: round-off floor λmax·k·eps, e.g. a rank-r LoRA update ΔW; "quantized": a packed (integer) weight, not fitted.
STATUSES = ("ok", "too_small", "non_finite", "zero", "degenerate", "rank_deficient", "quantized")
# Elements per chunk of the Kolmogorov-Smirnov scan (float64: 128 MiB).
_KS_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True, kw_only=True)
class PowerLawFit:
    """Power-law fit of one ESD.

    Attributes:
        alpha: Hill/MLE exponent of p(λ) ∝ λ^-α above ``xmin``; NaN unless ``status == "ok"``.
        xmin: Eigenvalue where the tail starts (NaN if not fitted).
        ks_distance: Kolmogorov-Smirnov distance between the tail and the fitted law (NaN if not fitted).
        num_evals: Eigenvalues in the ESD (after the optional zero filter).
        num_tail: Eigenvalues at or above ``xmin`` (0 if not fitted).
        alpha_hat: ``alpha * log10(spectral_norm)`` (WeightWatcher's ``alpha_weighted``).
        spectral_norm: Largest eigenvalue λmax (the squared largest singular value).
        stable_rank: Σλ / λmax.
        status: "ok", "too_small" (fewer than ``min_evals`` eigenvalues), "non_finite" (NaN/Inf in the
            input), "zero" (all eigenvalues zero), "degenerate" (no valid xmin: the tail is constant),
            "rank_deficient" (fewer than ``min_evals`` eigenvalues, or the xmin of the fit, above the
            eigen-solve's round-off floor λmax·k·eps: the rest are numerically zero, e.g. a rank-r LoRA ΔW) or
            "quantized" (a packed integer weight, never fitted).
    """

    alpha: float
    xmin: float
    ks_distance: float
    num_evals: int
    num_tail: int
    alpha_hat: float
    spectral_norm: float
    stable_rank: float
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _check_options(xmin_method: str, xmin_pos: float, min_evals: int) -> None:
    if xmin_method not in XMIN_METHODS:
        raise ValueError(f"xmin_method must be one of {XMIN_METHODS}, got {xmin_method!r}")
    check_range("xmin_pos", xmin_pos, 1, 100, low_open=True, why=" (xmin = evals[floor(N / xmin_pos)])")
    check_int("min_evals", min_evals, *MIN_EVALS_RANGE, why=MIN_EVALS_WHY)


# --------------------------------------------------------------------------------------------------
# Power-law fits (batched)


@dataclass(frozen=True)
class _BatchFit:
    """Fit results for a batch of ESDs, as float64/long tensors of shape (B,) on the ESDs' device."""

    alpha: torch.Tensor
    xmin: torch.Tensor
    ks_distance: torch.Tensor
    num_evals: torch.Tensor
    num_tail: torch.Tensor
    spectral_norm: torch.Tensor
    stable_rank: torch.Tensor
    status: torch.Tensor  # index into STATUSES

    def rows(self) -> list[PowerLawFit]:
        """Move everything to the host in one transfer and build one `PowerLawFit` per row."""
        floats = torch.stack([self.alpha, self.xmin, self.ks_distance, self.spectral_norm, self.stable_rank])
        ints = torch.stack([self.num_evals, self.num_tail, self.status])
        floats, ints = floats.cpu().tolist(), ints.cpu().tolist()
        out = []
        for alpha, xmin, ks, lmax, srank, n_ev, n_tail, st in zip(*floats, *ints, strict=True):
            fitted = STATUSES[st] == "ok"
            out.append(
                PowerLawFit(
                    alpha=alpha if fitted else math.nan,
                    xmin=xmin if fitted else math.nan,
                    ks_distance=ks if fitted else math.nan,
                    num_evals=int(n_ev),
                    num_tail=int(n_tail) if fitted else 0,
                    alpha_hat=alpha * math.log10(lmax) if fitted and lmax > 0 else math.nan,
                    spectral_norm=lmax,
                    stable_rank=srank,
                    status=STATUSES[st],
                )
            )
        return out


def _ks_distance_at(logs: torch.Tensor, alpha: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """KS distance of the tail beginning at index ``idx`` (per row) for exponent ``alpha`` (per row)."""
    n_all = logs.shape[-1]
    j = torch.arange(n_all, device=logs.device)
    n = (n_all - idx).to(logs.dtype)
    rel = (logs - logs.gather(-1, idx[:, None])).clamp_min(0)
    theo = 1 - torch.exp((1 - alpha)[:, None] * rel)
    emp = (j[None, :] - idx[:, None]).to(logs.dtype) / n[:, None]
    dist = torch.where(j[None, :] >= idx[:, None], (theo - emp).abs(), torch.zeros((), dtype=logs.dtype))
    return dist.amax(-1)


def _ks_scan(logs: torch.Tensor, alphas: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """D(i) for every candidate cut i of every row, chunked over i so memory stays bounded.

    D(i) = max_{k=0..n-1} |1 − (λ_{i+k}/λ_i)^(1−α(i)) − k/n|, n = N − i. Invalid candidates get +inf,
    candidates with α ≤ 1 get D = 1 (WeightWatcher's convention).

    A chunk of rows i ∈ [c0, c1) is compared with every j ≥ c0. For j < i both terms are made 0 (the
    log-ratio is clamped at 0 and the empirical CDF at 0), so no mask is needed; all work is in place.
    """
    batch, n_all = logs.shape
    n_cand = alphas.shape[-1]
    dev, dt = logs.device, logs.dtype
    dists = torch.empty(batch, n_cand, dtype=dt, device=dev)
    chunk = max(1, _KS_CHUNK_ELEMENTS // max(1, batch * n_all))
    j = torch.arange(n_all, device=dev, dtype=dt)
    for c0 in range(0, n_cand, chunk):
        c1 = min(n_cand, c0 + chunk)
        i = torch.arange(c0, c1, device=dev, dtype=dt)[:, None]
        emp = ((j[None, c0:] - i) / (n_all - i)).clamp_min_(0)  # (c, N − c0): k / n, 0 for j < i
        x = logs[:, None, c0:] - logs[:, c0:c1, None]  # (B, c, N − c0): ln(λ_j / λ_i)
        x.clamp_min_(0).mul_(1 - alphas[:, c0:c1, None]).exp_()  # (λ_j / λ_i)^(1 − α)
        x.neg_().add_(1).sub_(emp).abs_()
        dists[:, c0:c1] = x.amax(-1)
    dists = torch.where(alphas > 1, dists, torch.ones((), dtype=dt, device=dev))
    return torch.where(valid, dists, torch.full((), math.inf, dtype=dt, device=dev))


def _fit_batch(
    evals: torch.Tensor,
    finite: torch.Tensor,
    *,
    xmin_method: str,
    xmin_pos: float,
    min_evals: int,
    filter_zeros: bool,
    eps: float | None = None,
) -> _BatchFit:
    """Fit every row of an ascending (B, N) eigenvalue tensor. No host synchronisation.

    ``eps`` is the machine epsilon of the eigen-solve (default: that of ``evals.dtype``). Eigenvalues at or
    below the round-off floor λmax·N·eps are numerically zero: they never start a tail (xmin), and a row with
    fewer than ``min_evals`` eigenvalues above it is "rank_deficient".
    """
    dev = evals.device
    if eps is None:
        eps = torch.finfo(evals.dtype).eps if evals.dtype.is_floating_point else torch.finfo(torch.float64).eps
    ev = evals.to(torch.float64)
    batch, n_all = ev.shape
    # Filtering drops the smallest values, so the kept eigenvalues are a suffix of each sorted row:
    # row b keeps indices >= offset[b].
    if filter_zeros:
        offset = (ev <= EVALS_THRESH).sum(-1)
    else:
        offset = torch.zeros(batch, dtype=torch.long, device=dev)
    num_evals = n_all - offset
    lmax = ev[:, -1]
    floor = lmax * (n_all * eps)  # round-off level of the eigen-solve: smaller eigenvalues are noise
    above_floor = ev > floor[:, None]
    num_resolved = above_floor.sum(-1)
    total = torch.where(torch.arange(n_all, device=dev)[None, :] >= offset[:, None], ev, 0).sum(-1)
    stable_rank = torch.where(lmax > 0, total / lmax.clamp_min(torch.finfo(ev.dtype).tiny), math.nan)

    positive = ev > 0
    logs = torch.log(torch.where(positive, ev, 1.0))
    # suffix[b, i] = Σ_{j ≥ i} ln λ_j
    suffix = logs.flip(-1).cumsum(-1).flip(-1)
    tail_n = (n_all - torch.arange(n_all, device=dev)).to(ev.dtype)  # n(i) = N − i
    denom = suffix - tail_n * logs
    alphas = 1 + tail_n / denom  # +inf where the tail is constant (denom = 0)

    if xmin_method == "median":
        # xmin = λ[offset + floor(N_kept / xmin_pos)]; the tail is every λ ≥ xmin (ties included, as
        # powerlaw.Fit does), i.e. starts at the first index holding that value.
        pos = (offset + torch.floor(num_evals.to(ev.dtype) / xmin_pos).long()).clamp(max=n_all - 1)
        xmin_val = ev.gather(-1, pos[:, None])
        idx = torch.searchsorted(ev.contiguous(), xmin_val.contiguous(), right=False).squeeze(-1)
        idx = torch.maximum(idx, offset).clamp(max=n_all - 1)
        alpha = alphas.gather(-1, idx[:, None]).squeeze(-1)
        ks = _ks_distance_at(logs, alpha, idx)
        valid_cut = positive.gather(-1, idx[:, None]).squeeze(-1) & torch.isfinite(alpha) & (alpha > 1)
        resolved_cut = above_floor.gather(-1, idx[:, None]).squeeze(-1)
    else:
        # Every cut i in [offset, N − 2] with λ_i > 0 is a candidate; take the smallest D (first on ties).
        cand = torch.arange(n_all - 1, device=dev)
        valid = (cand[None, :] >= offset[:, None]) & above_floor[:, :-1] & torch.isfinite(alphas[:, :-1])
        if n_all > 1:
            ks, idx = _ks_scan(logs, alphas[:, :-1], valid).min(-1)
        else:  # a single eigenvalue: no cut to scan
            ks = torch.full((batch,), math.inf, dtype=ev.dtype, device=dev)
            idx = torch.zeros(batch, dtype=torch.long, device=dev)
        alpha = alphas.gather(-1, idx[:, None]).squeeze(-1)
        valid_cut = torch.isfinite(ks) & (alpha > 1)
        resolved_cut = torch.ones_like(valid_cut)  # candidates were above the floor already
    xmin = ev.gather(-1, idx[:, None]).squeeze(-1)

    status = torch.full((batch,), STATUSES.index("ok"), dtype=torch.long, device=dev)
    status = torch.where(valid_cut, status, STATUSES.index("degenerate"))
    rank_deficient = (num_resolved < min_evals) | ~resolved_cut
    status = torch.where(rank_deficient, STATUSES.index("rank_deficient"), status)
    status = torch.where(num_evals < min_evals, STATUSES.index("too_small"), status)
    status = torch.where(lmax <= 0, STATUSES.index("zero"), status)
    status = torch.where(finite & torch.isfinite(ev).all(-1), status, STATUSES.index("non_finite"))
    return _BatchFit(
        alpha=alpha,
        xmin=xmin,
        ks_distance=ks,
        num_evals=num_evals,
        num_tail=n_all - idx,
        spectral_norm=lmax,
        stable_rank=stable_rank,
        status=status,
    )


def fit_power_law(
    evals: torch.Tensor,
    *,
    xmin_method: str = _S.xmin_method,
    xmin_pos: float = _S.xmin_pos,
    min_evals: int = _S.min_evals,
    filter_zeros: bool = _S.filter_zeros,
) -> PowerLawFit:
    """Hill / maximum-likelihood power-law fit of one ESD.

    For a cut index i of the ascending eigenvalues (xmin = λ_i, n = N − i points):
    α(i) = 1 + n / Σ_{j≥i} ln(λ_j / λ_i).

    Args:
        evals: 1-D tensor of eigenvalues (any order; sorted here).
        xmin_method: ``"median"``: i = floor(N / xmin_pos), one fit (TempBalance); ``"ks"``: the i that
            minimises the Kolmogorov-Smirnov distance over every i < N − 1 (WeightWatcher).
        xmin_pos: Position of xmin for ``"median"`` (2 = top half, 1.5 = top third).
        min_evals: Fewer eigenvalues than this (after filtering) gives status "too_small"; fewer above the
            round-off floor λmax·N·eps (eps of ``evals.dtype``, the eigen-solve's precision) gives
            "rank_deficient", and so does a median xmin below that floor.
        filter_zeros: Drop eigenvalues ≤ 1e-5 first (WeightWatcher's convention).

    Degenerate input never raises: the status says what went wrong and alpha is NaN.
    """
    if not isinstance(evals, torch.Tensor):
        raise TypeError(f"evals must be a torch.Tensor, got {type(evals).__name__}")
    if evals.ndim != 1:
        raise ValueError(f"evals must be 1-D, got shape {tuple(evals.shape)}; use esd() to get eigenvalues")
    _check_options(xmin_method, xmin_pos, min_evals)
    if evals.numel() == 0:
        return PowerLawFit(
            alpha=math.nan, xmin=math.nan, ks_distance=math.nan, num_evals=0, num_tail=0,
            alpha_hat=math.nan, spectral_norm=math.nan, stable_rank=math.nan, status="too_small",
        )  # fmt: skip
    eps = torch.finfo(evals.dtype).eps if evals.dtype.is_floating_point else torch.finfo(torch.float64).eps
    ev = evals.detach().to(torch.float64)
    finite = torch.isfinite(ev).all().reshape(1)
    ev = torch.where(torch.isfinite(ev), ev, 0.0).clamp_min(0).sort().values[None, :]
    fit = _fit_batch(
        ev,
        finite,
        xmin_method=xmin_method,
        xmin_pos=xmin_pos,
        min_evals=min_evals,
        filter_zeros=filter_zeros,
        eps=eps,
    )
    return fit.rows()[0]
