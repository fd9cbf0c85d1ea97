from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import pairwise

import pytest
import torch
from transformers import get_scheduler

from tb_hf.balancing import (
    MAPPINGS,
    METRICS,
    apply_factors,
    apply_wd_factors,
    compute_factors,
    compute_wd_factors,
    unit_alpha_se,
    unit_metrics,
)
from tb_hf.spectral import LayerSpectrum, MatrixKey


def spectrum(name: str, alpha: float, *, status: str = "ok", spectral_norm: float = 10.0) -> LayerSpectrum:
    fitted = status == "ok"
    return LayerSpectrum(
        name=name,
        shape=(8, 8),
        alpha=alpha if fitted else math.nan,
        xmin=1.0 if fitted else math.nan,
        ks_distance=0.1 if fitted else math.nan,
        num_evals=8,
        num_tail=4 if fitted else 0,
        alpha_hat=alpha * math.log10(spectral_norm) if fitted else math.nan,
        spectral_norm=spectral_norm,
        stable_rank=2.0,
        status=status,
    )


@dataclass(frozen=True)
class Unit:
    name: str
    matrices: tuple[str, ...]


# --------------------------------------------------------------------------------------------------
# unit_metrics


def test_unit_metrics_mean_over_fitted_matrices():
    spectra = {
        "b0.q": spectrum("b0.q", 2.0),
        "b0.k": spectrum("b0.k", 4.0),
        "b0.v": spectrum("b0.v", math.nan, status="too_small"),
        "b1.o": spectrum("b1.o", 4.0),
        MatrixKey("b1.experts", 0): spectrum("b1.experts[0]", 2.0),
        MatrixKey("b1.experts", 1): spectrum("b1.experts[1]", 3.0),
        MatrixKey("b1.experts", 2): spectrum("b1.experts[2]", 11.0),
        "b1.experts[0]": spectrum("b1.experts[0]", 100.0),  # a plain name, not a 3-D item: not b1.experts
        "b2.q": spectrum("b2.q", math.nan, status="degenerate"),
        "b4.q": spectrum("b4.q", 3.0),
        "b4.k": spectrum("b4.k", math.nan, status="non_finite"),
    }
    units = [
        Unit("b0", ("b0.q", "b0.k", "b0.v")),
        Unit("b1", ("b1.o", "b1.experts")),
        Unit("b2", ("b2.q",)),
        Unit("b3", ("b3.not_analysed",)),
        Unit("b4", ("b4.q", "b4.k")),
    ]
    out = unit_metrics(spectra, units)
    assert list(out) == ["b0", "b1", "b2", "b3", "b4"]
    assert out["b0"] == 3.0
    assert out["b1"] == 5.0  # (4 + 2 + 3 + 11) / 4
    assert math.isnan(out["b2"]) and math.isnan(out["b3"])
    assert math.isnan(out["b4"])  # one non-finite matrix disqualifies its unit


def test_unit_alpha_se_from_the_fits():
    """(α − 1)/√n_tail per fitted matrix (n_tail 4 in these spectra), combined as √Σse²/k, over exactly the
    matrices whose α `unit_metrics` averages."""
    spectra = {
        "b0.q": spectrum("b0.q", 2.0),  # se (2 - 1)/2 = 0.5
        "b0.k": spectrum("b0.k", 5.0),  # se 2.0
        "b0.v": spectrum("b0.v", math.nan, status="too_small"),  # not fitted: not counted
        MatrixKey("b1.experts", 0): spectrum("b1.experts[0]", 3.0),  # se 1.0
        MatrixKey("b1.experts", 1): spectrum("b1.experts[1]", 3.0),
        "b2.q": spectrum("b2.q", 3.0),
        "b2.k": spectrum("b2.k", math.nan, status="non_finite"),
    }
    units = [Unit("b0", ("b0.q", "b0.k", "b0.v")), Unit("b1", ("b1.experts",)), Unit("b2", ("b2.q", "b2.k")),
             Unit("b3", ("b3.q",))]  # fmt: skip
    se = unit_alpha_se(spectra, units)
    assert se["b0"] == pytest.approx(math.sqrt(0.5**2 + 2.0**2) / 2)
    assert se["b1"] == pytest.approx(math.sqrt(2) / 2)
    assert math.isnan(se["b2"]) and math.isnan(se["b3"])  # NaN exactly where unit_metrics is NaN
    metrics = unit_metrics(spectra, units)
    assert [math.isnan(metrics[u]) for u in se] == [math.isnan(v) for v in se.values()]


def test_unit_metrics_other_metric_ignores_unfitted_matrices():
    spectra = {
        "a": spectrum("a", 2.0, spectral_norm=100.0),
        "b": spectrum("b", 3.0, spectral_norm=1000.0),
        "c": spectrum("c", math.nan, status="too_small", spectral_norm=1e6),  # finite, but not fitted
    }
    units = [Unit("u", ("a", "b", "c"))]
    assert unit_metrics(spectra, units, metric="spectral_norm") == {"u": 550.0}
    assert unit_metrics(spectra, units, metric="alpha_hat")["u"] == pytest.approx((2 * 2 + 3 * 3) / 2)


def test_unit_metrics_validation():
    with pytest.raises(ValueError, match="metric must be one of"):
        unit_metrics({}, [], metric="kurtosis")
    with pytest.raises(ValueError, match="duplicate"):
        unit_metrics({}, [Unit("u", ()), Unit("u", ())])
    assert set(METRICS) == {"alpha", "alpha_hat", "spectral_norm", "stable_rank"}


# --------------------------------------------------------------------------------------------------
# compute_factors


def test_linear_endpoints_midpoint_and_unfitted():
    metrics = {"a": 2.0, "nan": math.nan, "b": 3.0, "inf": math.inf, "c": 4.0}
    factors = compute_factors(metrics)
    assert list(factors) == list(metrics)
    assert factors == {"a": 0.5, "nan": 1.0, "b": 1.0, "inf": 1.0, "c": 1.5}
    # The unfitted units do not widen the range.
    factors = compute_factors({"a": 2.0, "b": 2.5, "x": math.nan}, lr_min=0.2, lr_max=2.0)
    assert factors == {"a": 0.2, "b": 2.0, "x": 1.0}


def test_linear_all_equal_single_and_empty():
    assert compute_factors({"a": 3.0, "b": 3.0, "c": math.nan}) == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert compute_factors({"a": 3.0}) == {"a": 1.0}
    assert compute_factors({"a": math.nan}) == {"a": 1.0}
    assert compute_factors({}) == {}


def sigmoid_factor(alpha: float, mean: float, tau: float, s_low: float, s_high: float) -> float:
    s = s_low if alpha <= mean else s_high
    return 10 ** (s * (1 / (1 + math.exp(-tau * (alpha - mean))) - 0.5))


def test_sigmoid_matches_formula():
    metrics = {"a": 2.0, "b": 3.0, "c": 4.5, "x": math.nan}
    mean = (2.0 + 3.0 + 4.5) / 3
    factors = compute_factors(metrics, mapping="sigmoid", tau=2.0, s_low=1.5, s_high=0.5)
    for name in "abc":
        assert factors[name] == pytest.approx(sigmoid_factor(metrics[name], mean, 2.0, 1.5, 0.5), rel=1e-12)
    assert factors["x"] == 1.0
    assert factors["a"] < 1.0 < factors["c"]
    # The unit at the mean gets exactly 1.
    assert compute_factors({"a": 1.0, "b": 2.0, "c": 3.0}, mapping="sigmoid")["b"] == 1.0


def test_sigmoid_bounds_and_monotone():
    s_low, s_high = 2.0, 1.0
    lo, hi = 10 ** (-s_low / 2), 10 ** (s_high / 2)
    extreme = compute_factors({"a": -1e3, "b": 0.0, "c": 1e3}, mapping="sigmoid", s_low=s_low, s_high=s_high)
    assert extreme["a"] == pytest.approx(lo) and extreme["c"] == pytest.approx(hi)

    alphas = torch.linspace(1.5, 6.0, 40, dtype=torch.float64)
    alphas = alphas[torch.randperm(40, generator=torch.Generator().manual_seed(0))].tolist()
    factors = compute_factors({f"u{i}": a for i, a in enumerate(alphas)}, mapping="sigmoid", tau=3.0)
    pairs = sorted((a, factors[f"u{i}"]) for i, a in enumerate(alphas))
    values = [f for _, f in pairs]
    assert all(lo <= f <= hi for f in values)
    assert all(f0 < f1 for f0, f1 in pairwise(values))


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_normalize_weighted_mean_is_one(mapping):
    metrics = {"a": 2.0, "b": 3.5, "c": 5.0, "x": math.nan}
    weights = {"a": 10.0, "b": 1.0, "c": 100.0, "x": 7.0}
    se = {"a": 0.05, "b": 0.05, "c": 0.05, "x": math.nan}  # used by the 'se' map only
    raw = compute_factors(metrics, mapping=mapping, alpha_se=se)
    factors = compute_factors(metrics, mapping=mapping, alpha_se=se, weights=weights, normalize=True)
    mean = sum(weights[n] * factors[n] for n in "abc") / sum(weights[n] for n in "abc")
    assert mean == pytest.approx(1.0, rel=1e-14)
    assert factors["x"] == 1.0
    # Ratios between units are kept.
    assert factors["c"] / factors["a"] == pytest.approx(raw["c"] / raw["a"], rel=1e-14)
    # Equal weights by default.
    factors = compute_factors(metrics, mapping=mapping, alpha_se=se, normalize=True)
    assert sum(factors[n] for n in "abc") / 3 == pytest.approx(1.0, rel=1e-14)


def test_compute_factors_validation():
    with pytest.raises(ValueError, match=r"mapping must be one of \('none', 'linear', 'sigmoid', 'se'\)"):
        compute_factors({"a": 1.0}, mapping="step")
    with pytest.raises(ValueError, match=r"lr_min must be a finite number in \(0, 100\], got 0.0"):
        compute_factors({"a": 1.0}, lr_min=0.0)
    with pytest.raises(ValueError, match="lr_min must be <= lr_max"):
        compute_factors({"a": 1.0}, lr_min=2.0, lr_max=1.0)
    with pytest.raises(ValueError, match=r"tau must be a finite number in \(0, 1000\]"):
        compute_factors({"a": 1.0}, mapping="sigmoid", tau=0.0)
    with pytest.raises(ValueError, match=r"s_low must be a finite number in \[0, 6\]"):
        compute_factors({"a": 1.0}, mapping="sigmoid", s_low=-1.0)
    with pytest.raises(ValueError, match=r"s_high must be a finite number in \[0, 6\]"):
        compute_factors({"a": 1.0}, mapping="sigmoid", s_high=-0.1)
    # unbounded values would explode the learning rate (1e-190 .. 1e198 for s = 2000): refused
    with pytest.raises(ValueError, match=r"s_low must be a finite number in \[0, 6\], got 2000"):
        compute_factors({"a": 1.0}, mapping="sigmoid", s_low=2000, s_high=2000)
    with pytest.raises(ValueError, match="lr_max must be a finite number"):
        compute_factors({"a": 1.0}, lr_max=math.inf)
    with pytest.raises(ValueError, match="weights has no entry"):
        compute_factors({"a": 1.0, "b": 2.0}, weights={"a": 1.0}, normalize=True)


# --------------------------------------------------------------------------------------------------
# apply_factors with real optimizers and HF schedules

BASE_LR = 1e-3
WARMUP, TOTAL = 5, 30
# unit of each param group (None: never scaled) and its base lr
GROUPS = [(None, BASE_LR), ("a", BASE_LR), ("b", BASE_LR), ("c", 2 * BASE_LR), ("d", BASE_LR)]


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in GROUPS])


def make_optimizer(model: torch.nn.Module, **kwargs) -> torch.optim.Optimizer:
    groups = [
        {"params": list(layer.parameters()), "lr": base, "tb_unit": unit, "tb_base_lr": base, "tb_factor": 1.0}
        for layer, (unit, base) in zip(model, GROUPS, strict=True)
    ]
    return torch.optim.AdamW(groups, lr=BASE_LR, **kwargs)


def schedule(name: str, t: int) -> float:
    """The HF schedules, written out by hand."""
    if t < WARMUP:
        return t / WARMUP
    progress = (t - WARMUP) / (TOTAL - WARMUP)
    if name == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_step(model, optimizer, scheduler, mid_step=None):
    model(torch.ones(2, 4)).pow(2).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    if mid_step is not None:  # where the callback's on_optimizer_step runs
        mid_step()
    scheduler.step()


def assert_lrs(optimizer, scheduler, name, factors):
    t = scheduler.last_epoch
    for group in optimizer.param_groups:
        factor = 1.0 if group["tb_unit"] is None else factors.get(group["tb_unit"], 1.0)
        expected = group["tb_base_lr"] * factor * schedule(name, t)
        assert math.isclose(group["lr"], expected, rel_tol=1e-12, abs_tol=1e-18), (t, group["tb_unit"])
        assert group["tb_factor"] == factor
    assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR * schedule(name, t), rel=1e-12, abs=1e-18)
    assert scheduler.get_last_lr() == [group["lr"] for group in optimizer.param_groups]


PLAN = {0: {"a": 0.5, "b": 1.5, "c": 1.2}, 3: {"a": 0.7}, 7: {"a": 1.4, "b": 0.6, "c": 0.9}, 19: {"b": 1.1}}
MID_PLAN = {12: {"a": 0.8, "c": 1.3}}  # applied between optimizer.step() and scheduler.step()


def run(model, optimizer, scheduler, name, factors, steps):
    for t in steps:
        assert scheduler.last_epoch == t
        if t in PLAN:
            apply_factors(optimizer, scheduler, PLAN[t])
            factors.update(PLAN[t])
        assert_lrs(optimizer, scheduler, name, factors)

        def mid_step(t=t):
            if t in MID_PLAN:
                apply_factors(optimizer, scheduler, MID_PLAN[t])
                factors.update(MID_PLAN[t])

        train_step(model, optimizer, scheduler, mid_step)
        assert_lrs(optimizer, scheduler, name, factors)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_apply_factors_follows_hf_schedule(name):
    model = make_model()
    optimizer = make_optimizer(model)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    factors: dict[str, float] = {}
    run(model, optimizer, scheduler, name, factors, range(TOTAL))
    assert scheduler.last_epoch == TOTAL
    assert optimizer.param_groups[4]["tb_factor"] == 1.0  # unit "d" never got a factor


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_apply_factors_survives_state_dict_round_trip(name, tmp_path):
    model = make_model()
    optimizer = make_optimizer(model)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    factors: dict[str, float] = {}
    run(model, optimizer, scheduler, name, factors, range(14))
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")

    # Resume as the Trainer does: fresh optimizer and scheduler, then load both states.
    resumed_model = make_model()
    resumed_model.load_state_dict(model.state_dict())
    resumed_optimizer = make_optimizer(resumed_model)
    resumed_scheduler = get_scheduler(name, resumed_optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    resumed_optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    resumed_scheduler.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    resumed_factors = dict(factors)
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]

    run(model, optimizer, scheduler, name, factors, range(14, TOTAL))
    lrs = [g["lr"] for g in optimizer.param_groups]
    run(resumed_model, resumed_optimizer, resumed_scheduler, name, resumed_factors, range(14, TOTAL))
    assert [g["lr"] for g in resumed_optimizer.param_groups] == lrs
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_apply_factors_through_accelerate_wrappers():
    class OptimizerProxy:  # like accelerate's AcceleratedOptimizer: only param_groups is forwarded
        def __init__(self, optimizer):
            self._optimizer = optimizer

        @property
        def param_groups(self):
            return self._optimizer.param_groups

    class SchedulerProxy:  # like accelerate's AcceleratedScheduler
        def __init__(self, scheduler):
            self.scheduler = scheduler

    optimizer = make_optimizer(make_model())
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    apply_factors(OptimizerProxy(optimizer), SchedulerProxy(scheduler), {"a": 1.25})
    assert_lrs(optimizer, scheduler, "linear", {"a": 1.25})
    assert scheduler.base_lrs[1] == BASE_LR * 1.25


def test_apply_factors_tensor_lr():
    model = make_model()
    groups = [
        {"params": list(layer.parameters()), "lr": torch.tensor(base), "tb_unit": unit, "tb_base_lr": base}
        for layer, (unit, base) in zip(model, GROUPS, strict=True)
    ]
    optimizer = torch.optim.AdamW(groups, lr=torch.tensor(BASE_LR))
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    for _ in range(9):
        train_step(model, optimizer, scheduler)
    lr_tensor = optimizer.param_groups[1]["lr"]
    apply_factors(optimizer, scheduler, {"a": 0.5})
    assert optimizer.param_groups[1]["lr"] is lr_tensor  # filled in place, as torch's schedulers do
    assert float(lr_tensor) == pytest.approx(BASE_LR * 0.5 * schedule("cosine", 9), rel=1e-6)
    train_step(model, optimizer, scheduler)
    assert float(lr_tensor) == pytest.approx(BASE_LR * 0.5 * schedule("cosine", 10), rel=1e-6)


def test_apply_factors_without_scheduler_sets_constant_lr():
    optimizer = make_optimizer(make_model())
    apply_factors(optimizer, None, {"a": 0.5, "c": 1.5, "unknown": 2.0})
    assert [g["lr"] for g in optimizer.param_groups] == [BASE_LR, BASE_LR * 0.5, BASE_LR, 2 * BASE_LR * 1.5, BASE_LR]
    apply_factors(optimizer, None, {"a": 1.2})
    assert optimizer.param_groups[1]["lr"] == BASE_LR * 1.2
    assert optimizer.param_groups[1]["tb_factor"] == 1.2


def test_apply_factors_reduce_on_plateau_falls_back_to_ratio(caplog):
    model = make_model()
    optimizer = make_optimizer(model)
    scheduler = get_scheduler("reduce_lr_on_plateau", optimizer, scheduler_specific_kwargs={"patience": 0})
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    with caplog.at_level(logging.INFO, logger="tb_hf.balancing"):
        apply_factors(optimizer, scheduler, {"a": 2.0, "c": 0.5})
    assert "ReduceLROnPlateau is not a LambdaLR" in caplog.text
    assert optimizer.param_groups[1]["lr"] == pytest.approx(BASE_LR * 2.0, rel=1e-12)
    assert optimizer.param_groups[3]["lr"] == pytest.approx(2 * BASE_LR * 0.5, rel=1e-12)

    # The plateau scheduler cuts every lr by 10x; a later factor change rescales from there.
    scheduler.step(1.0)
    scheduler.step(2.0)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[0] == pytest.approx(BASE_LR * 0.1, rel=1e-12)
    apply_factors(optimizer, scheduler, {"a": 0.5, "c": 1.0})
    assert optimizer.param_groups[0]["lr"] == lrs[0]
    assert optimizer.param_groups[1]["lr"] == pytest.approx(lrs[1] * 0.25, rel=1e-12)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(BASE_LR * 0.1 * 0.5, rel=1e-12)
    assert optimizer.param_groups[3]["lr"] == pytest.approx(2 * BASE_LR * 0.1 * 1.0, rel=1e-12)
    assert optimizer.param_groups[1]["tb_factor"] == 0.5
    assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups]


def test_apply_factors_leaves_other_groups_alone_and_validates():
    optimizer = make_optimizer(make_model())
    optimizer.param_groups[0]["tb_unit"] = None
    before = [dict(g, params=None) for g in optimizer.param_groups]
    apply_factors(optimizer, None, {})
    assert [dict(g, params=None) for g in optimizer.param_groups] == before
    with pytest.raises(ValueError, match="finite and > 0"):
        apply_factors(optimizer, None, {"a": 0.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        apply_factors(optimizer, None, {"a": math.nan})
    del optimizer.param_groups[1]["tb_base_lr"]
    with pytest.raises(KeyError, match="tb_base_lr"):
        apply_factors(optimizer, None, {"a": 1.5})


# --------------------------------------------------------------------------------------------------
# The standard-error map and AlphaDecay's weight-decay ratios


def _se_map_by_hand(alphas: dict, ses: dict, lo: float, hi: float, k: float) -> dict:
    """The 'se' map written out independently: z of α − ᾱ (independent fits), a dead zone of k, tanh beyond."""
    n = len(alphas)
    mean = sum(alphas.values()) / n
    out = {}
    for u, a in alphas.items():
        var = ses[u] ** 2 * ((n - 1) / n) ** 2 + sum(ses[v] ** 2 for v in alphas if v != u) / n**2
        z = (a - mean) / math.sqrt(var)
        e = max(0.0, abs(z) - k) * (1 if z > 0 else -1)
        out[u] = 1 + math.tanh(e / k) * (hi - 1 if e >= 0 else 1 - lo)
    return out


def test_se_map_counts_alpha_differences_in_standard_errors():
    alphas = {"a": 3.0, "b": 3.1, "c": 4.0, "d": 2.0, "e": 3.3}
    ses = {"a": 0.1, "b": 0.1, "c": 0.3, "d": 0.1, "e": 0.05}
    factors = compute_factors(alphas, mapping="se", alpha_se=ses, lr_min=0.6, lr_max=1.8, se_threshold=2.0)
    expected = _se_map_by_hand(alphas, ses, 0.6, 1.8, 2.0)
    assert factors == pytest.approx(expected, rel=1e-12)
    # exact values: a and b lie within 2 standard errors of the mean (3.08): the same factor, 1
    assert factors["a"] == factors["b"] == 1.0
    assert factors["c"] == pytest.approx(1.571239, abs=1e-6) and factors["d"] == pytest.approx(0.600190, abs=1e-6)
    assert 1.0 < factors["e"] < factors["c"] and 0.6 < factors["d"] < 1.0
    # ten times noisier fits: every difference is within the noise, every factor 1
    noisy = {u: 10 * s for u, s in ses.items()}
    assert set(compute_factors(alphas, mapping="se", alpha_se=noisy).values()) == {1.0}
    # a unit that could not be fitted keeps 1 and is left out of the mean
    with_nan = compute_factors({**alphas, "x": math.nan}, mapping="se", alpha_se={**ses, "x": math.nan})
    assert with_nan["x"] == 1.0 and with_nan["c"] == pytest.approx(
        compute_factors(alphas, mapping="se", alpha_se=ses)["c"], rel=1e-12
    )


def test_se_map_without_standard_errors(caplog):
    with pytest.raises(ValueError, match="mapping='se' needs alpha_se"):
        compute_factors({"a": 2.0, "b": 3.0}, mapping="se")
    with caplog.at_level(logging.WARNING, logger="tb_hf"):
        factors = compute_factors({"a": 2.0, "b": 3.0}, mapping="se", alpha_se={"a": 0.1})
    assert factors == {"a": 1.0, "b": 1.0} and "['b'] have none" in caplog.text
    with pytest.raises(ValueError, match="se_threshold must be a finite number"):
        compute_factors({"a": 2.0}, mapping="se", alpha_se={"a": 0.1}, se_threshold=0)


def test_wd_factors_give_higher_alpha_more_decay():
    factors = compute_wd_factors({"a": 2.0, "b": 3.0, "c": 6.0, "x": math.nan}, wd_min_ratio=0.2, wd_max_ratio=1.8)
    assert factors == pytest.approx({"a": 0.2, "b": 0.6, "c": 1.8, "x": 1.0}, rel=1e-12)
    assert compute_wd_factors({"a": 3.0, "b": 3.0}) == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="wd_min_ratio <= wd_max_ratio"):
        compute_wd_factors({"a": 1.0}, wd_min_ratio=2.0, wd_max_ratio=1.0)


def test_apply_wd_factors_scales_only_the_units_decay_groups():
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(4)]
    groups = [
        {"params": [params[0]], "tb_unit": None, "weight_decay": 0.1, "tb_base_wd": 0.1},
        {"params": [params[1]], "tb_unit": "u0", "weight_decay": 0.1, "tb_base_wd": 0.1},
        {"params": [params[2]], "tb_unit": "u0", "weight_decay": 0.0, "tb_base_wd": 0.0},  # biases, norms
        {"params": [params[3]], "tb_unit": "u1", "weight_decay": 0.1, "tb_base_wd": 0.1},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    apply_wd_factors(optimizer, {"u0": 0.5, "u1": 1.5})
    assert [g["weight_decay"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.05, 0.0, 0.15])
    assert optimizer.param_groups[1]["tb_wd_factor"] == 0.5 and "tb_wd_factor" not in optimizer.param_groups[2]
    apply_wd_factors(optimizer, {"u0": 2.0})  # from the base, not compounded
    assert optimizer.param_groups[1]["weight_decay"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        apply_wd_factors(optimizer, {"u0": math.inf})


def test_constant_linear_map_gives_the_constant_also_for_tied_alpha():
    """tb_lr_min == tb_lr_max is a constant map: every fitted unit gets exactly that constant. With tied α it used to
    give 1.0 (issue 18 C)."""
    constant = {"a": 0.7, "b": 0.7, "x": 1.0}  # x is not fitted: factor 1
    assert compute_factors({"a": 2.0, "b": 3.0, "x": math.nan}, lr_min=0.7, lr_max=0.7) == constant
    assert compute_factors({"a": 3.0, "b": 3.0, "x": math.nan}, lr_min=0.7, lr_max=0.7) == constant
    assert compute_factors({"a": 3.0}, lr_min=2.0, lr_max=2.0) == {"a": 2.0}
    assert compute_factors({"a": 3.0, "b": 3.0}) == {"a": 1.0, "b": 1.0}  # a real range with tied α: still 1
