"""tb_hf.spectral against closed forms, powerlaw 1.5 and WeightWatcher 0.7.7."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import torch

from tb_hf import powerlaw
from tb_hf.spectral import MatrixKey, analyze, esd, farms_esd, farms_grid, fit_power_law


def pareto(alpha: float, n: int, seed: int) -> torch.Tensor:
    """n draws of a continuous power law p(x) ∝ x^-alpha on [1, ∞)."""
    u = np.random.default_rng(seed).random(n)
    return torch.from_numpy((1 - u) ** (-1 / (alpha - 1)))


def heavy_tailed(m: int, n: int, seed: int, mu: float = 3.0) -> torch.Tensor:
    """A matrix with Pareto-tailed entries: its ESD has a heavy (power-law) tail."""
    g = torch.Generator().manual_seed(seed)
    return 0.02 * torch.randn(m, n, generator=g) * (1 - torch.rand(m, n, generator=g)) ** (-1 / mu)


@pytest.fixture(scope="module")
def ww():
    warnings.filterwarnings("ignore")
    weightwatcher = pytest.importorskip("weightwatcher")
    assert weightwatcher.__version__ == "0.7.7", "the reference is WeightWatcher 0.7.7"
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return weightwatcher


# --------------------------------------------------------------------------------------------------
# ESD


@pytest.mark.parametrize("shape", [(60, 60), (40, 90), (90, 40)])
def test_esd_is_squared_singular_values(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    expected = torch.linalg.svdvals(w).square().flip(0)
    got = esd(w, dtype=torch.float64)
    assert got.shape == (min(shape),)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert torch.all(got[1:] >= got[:-1]), "ascending"
    # float32 agrees on the top of the spectrum
    torch.testing.assert_close(esd(w.float())[-10:].double(), expected[-10:], rtol=1e-5, atol=0)


def test_esd_batch_conv_and_half_precision():
    w3 = torch.randn(3, 40, 70)
    batch = esd(w3)
    assert batch.shape == (3, 40)
    for e in range(3):
        torch.testing.assert_close(batch[e], esd(w3[e]))

    k = torch.randn(8, 5, 3, 3)
    pooled = esd(k)
    slices = [k[:, :, i, j] for i in range(3) for j in range(3)]
    expected = torch.cat([0.5 * esd(s) for s in slices]).sort().values
    assert pooled.shape == (9 * 5,)
    torch.testing.assert_close(pooled, expected)

    wb = torch.randn(64, 96).bfloat16()
    torch.testing.assert_close(esd(wb), esd(wb.float()), rtol=0, atol=0)
    assert esd(wb).dtype == torch.float32


def test_esd_filter_and_non_finite():
    w = torch.zeros(50, 80)
    w[:10] = torch.randn(10, 80)  # rank 10: 40 zero eigenvalues
    assert esd(w, filter_zeros=True).numel() == 10
    assert esd(w).numel() == 50
    w[3, 3] = math.nan
    assert torch.isnan(esd(w)).all()
    with pytest.raises(ValueError, match="3-D batch"):
        esd(torch.randn(2, 10, 10), filter_zeros=True)


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.randn(10), ValueError),
        (torch.randn(2, 2, 2, 2, 2), ValueError),
        ([[1.0, 2.0], [3.0, 4.0]], TypeError),
        (np.ones((4, 4)), TypeError),
        (torch.zeros(0, 5), ValueError),
    ],
)
def test_wrong_input_types(bad, error):
    with pytest.raises(error):
        esd(bad)
    if isinstance(bad, torch.Tensor) and bad.ndim == 2 and bad.numel() == 0:
        # In the whole-model pass a zero-size matrix is that matrix's status, not a failed pass (issue 18).
        assert analyze({"w": bad})["w"].status == "too_small"
        return
    with pytest.raises(error):
        analyze({"w": bad})


def test_fit_input_checks():
    with pytest.raises(TypeError):
        fit_power_law([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-D"):
        fit_power_law(torch.rand(5, 5))
    with pytest.raises(ValueError, match="xmin_method"):
        fit_power_law(torch.rand(100), xmin_method="mean")
    with pytest.raises(ValueError, match="xmin_pos"):
        fit_power_law(torch.rand(100), xmin_pos=1.0)
    with pytest.raises(ValueError, match="estimator"):
        analyze({"w": torch.randn(60, 60)}, estimator="fast")


# --------------------------------------------------------------------------------------------------
# Power-law fits


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
@pytest.mark.parametrize("method", ["median", "ks"])
def test_pareto_alpha_recovered(alpha, method):
    fits = [fit_power_law(pareto(alpha, 4000, seed), xmin_method=method) for seed in range(5)]
    for fit in fits:
        assert fit.ok
        # MLE standard error is (α − 1)/√n_tail; allow 4σ for each draw
        assert abs(fit.alpha - alpha) < 4 * (alpha - 1) / math.sqrt(fit.num_tail) + 0.02, fit
    mean = sum(f.alpha for f in fits) / len(fits)
    assert abs(mean - alpha) < 0.1 * alpha


@pytest.mark.parametrize("xmin_pos", [2.0, 1.5])
def test_median_equals_powerlaw_package(xmin_pos):
    powerlaw = pytest.importorskip("powerlaw")
    samples = [pareto(3.0, 1500, 0), pareto(5.0, 777, 1), esd(heavy_tailed(300, 500, 2)).double()]
    for evals in samples:
        x = np.sort(evals.numpy())
        xmin = x[math.floor(len(x) / xmin_pos)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = powerlaw.Fit(x, xmin=xmin, verbose=False).power_law.alpha
        fit = fit_power_law(evals, xmin_method="median", xmin_pos=xmin_pos)
        assert fit.xmin == xmin
        assert fit.alpha == pytest.approx(reference, abs=1e-6)


def test_ks_scan_equals_weightwatcher_fit_on_eigenvalues(ww, monkeypatch):
    """The vectorised, chunked scan picks the same xmin, α and D as WeightWatcher's loop."""
    from weightwatcher.WW_powerlaw import WWFit

    for seed, alpha in enumerate([2.5, 3.5, 6.0]):
        evals = pareto(alpha, 900, seed) * 0.1
        reference = WWFit(evals.numpy())
        fit = fit_power_law(evals, xmin_method="ks")
        assert fit.alpha == pytest.approx(reference.alpha, abs=1e-9)
        assert fit.xmin == pytest.approx(reference.xmin, rel=1e-12)
        assert fit.ks_distance == pytest.approx(reference.D, abs=1e-9)
        # many small chunks give the same answer: memory stays bounded without changing the result
        monkeypatch.setattr(powerlaw, "_KS_CHUNK_ELEMENTS", 5000)
        assert fit_power_law(evals, xmin_method="ks") == fit
        monkeypatch.undo()


def test_ks_scan_large_spectrum_bounded_memory(monkeypatch):
    """N = 11008 (LLaMA-7B's MLP width): the scan runs in chunks and still finds the true α."""
    monkeypatch.setattr(powerlaw, "_KS_CHUNK_ELEMENTS", 1 << 22)  # 32 MiB chunks instead of the full 970 MB
    fit = fit_power_law(pareto(3.0, 11008, 7), xmin_method="ks")
    assert fit.ok and fit.num_evals == 11008
    assert abs(fit.alpha - 3.0) < 4 * 2 / math.sqrt(fit.num_tail) + 0.02


@pytest.mark.parametrize("shape", [(768, 768), (3072, 768), (768, 3072)])
def test_ks_equals_weightwatcher_on_heavy_tailed_matrices(ww, shape):
    layer = torch.nn.Linear(shape[1], shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(heavy_tailed(*shape, seed=sum(shape)))
    df = ww.WeightWatcher(model=torch.nn.Sequential(layer)).analyze()
    assert len(df) == 1
    ours = analyze({"w": layer.weight}, xmin_method="ks", filter_zeros=True)["w"]
    assert ours.ok
    assert ours.alpha == pytest.approx(float(df.alpha.iloc[0]), abs=1e-3)
    assert ours.xmin == pytest.approx(float(df.xmin.iloc[0]), rel=1e-4)


def test_ks_equals_weightwatcher_on_random_init_model(ww):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256
    )
    model = BertForSequenceClassification(config).eval()
    df = ww.WeightWatcher(model=model).analyze(layers=[ww.LAYER_TYPE.DENSE])
    linears = {name: m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    ours = analyze(linears, xmin_method="ks", filter_zeros=True)
    reference = {row.longname: float(row.alpha) for row in df.itertuples()}
    assert len(reference) == 13  # 2 × 6 block matrices + pooler; the 2-row classifier is too small
    for name, alpha in reference.items():
        assert ours[name].alpha == pytest.approx(alpha, abs=1e-3), name
    assert ours["classifier"].status == "too_small"


@pytest.mark.parametrize("method", ["median", "ks"])
def test_float32_and_float64_agree(method):
    mats = {f"h{i}": heavy_tailed(*s, seed=i) for i, s in enumerate([(256, 256), (512, 256), (256, 512)])}
    mats.update({f"g{i}": torch.randn(*s) * 0.02 for i, s in enumerate([(256, 256), (512, 256)])})
    if method == "ks":  # KS on a Gaussian ESD picks tails of a few points (α ≫ 10): keep to heavy tails
        mats = {k: v for k, v in mats.items() if k.startswith("h")}
    r32 = analyze(mats, xmin_method=method)
    r64 = analyze(mats, xmin_method=method, dtype=torch.float64)
    for name in mats:
        assert r32[name].ok and r64[name].ok
        assert r32[name].alpha == pytest.approx(r64[name].alpha, abs=1e-4), name


@pytest.mark.parametrize("method", ["median", "ks"])
def test_degenerate_inputs_never_raise(method):
    fits = analyze(
        {
            "nan": torch.full((60, 60), math.nan),
            "inf": torch.randn(60, 60).index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(math.inf)),
            "zero": torch.zeros(70, 70),
            "tiny": torch.randn(10, 300),
            "row": torch.randn(1, 300),
            "identity": torch.eye(64),
            "fine": torch.randn(64, 64),
        },
        xmin_method=method,
    )
    assert {k: v.status for k, v in fits.items()} == {
        "nan": "non_finite",
        "inf": "non_finite",
        "zero": "zero",
        "tiny": "too_small",
        "row": "too_small",
        "identity": "degenerate",  # all eigenvalues equal: no tail to fit
        "fine": "ok",
    }
    for name, fit in fits.items():
        assert math.isnan(fit.alpha) == (name != "fine")
    assert fits["tiny"].num_evals == 10
    assert fit_power_law(torch.tensor([])).status == "too_small"
    assert fit_power_law(torch.tensor([1.0, math.nan] * 40)).status == "non_finite"


def test_metrics_and_filter():
    w = heavy_tailed(200, 300, seed=3)
    evals = esd(w, dtype=torch.float64)
    fit = fit_power_law(evals)
    assert fit.num_evals == 200 and fit.num_tail == 100
    assert fit.spectral_norm == pytest.approx(float(evals[-1]))
    assert fit.stable_rank == pytest.approx(float(evals.sum() / evals[-1]))
    assert fit.alpha_hat == pytest.approx(fit.alpha * math.log10(fit.spectral_norm))
    low_rank = torch.randn(200, 60, dtype=torch.float64) @ torch.randn(60, 300, dtype=torch.float64)
    assert fit_power_law(esd(low_rank, dtype=torch.float64), filter_zeros=True).num_evals == 60


# --------------------------------------------------------------------------------------------------
# analyze


def test_analyze_matches_single_fits_and_chunking():
    torch.manual_seed(0)
    mats = {
        "a": torch.randn(120, 80),
        "b": torch.randn(80, 120),
        "c": torch.randn(120, 80),
        "experts": torch.randn(3, 64, 96),
        "conv": torch.randn(16, 12, 3, 3),
        "half": torch.randn(100, 100).half(),
    }
    res = analyze(mats, xmin_method="median", min_evals=10)
    experts = [MatrixKey("experts", e) for e in range(3)]
    assert list(res) == ["a", "b", "c", *experts, "conv", "half"]
    assert [res[k].name for k in experts] == ["experts[0]", "experts[1]", "experts[2]"]
    singles = {k: mats["experts"][k.index] for k in experts}
    singles.update({k: v for k, v in mats.items() if k != "experts"})
    for name, w in singles.items():
        fit = fit_power_law(esd(w), min_evals=10)
        assert res[name].alpha == pytest.approx(fit.alpha, abs=1e-12), name
        assert res[name].shape == tuple(w.shape)
    assert res["conv"].num_evals == 9 * 12
    # one matrix per eigen-solve call gives identical results
    tiny_batches = analyze(mats, xmin_method="median", min_evals=10, max_batch_bytes=1)
    assert {k: v.alpha for k, v in tiny_batches.items()} == {k: v.alpha for k, v in res.items()}
    assert res["a"].to_dict()["shape"] == [120, 80]


# --------------------------------------------------------------------------------------------------
# FARMS


# FARMS windows worked out by hand from docs/method.md, section 4: r × round(r·Q) windows starting at
# min(k·step, dim − w), step = max(1, (dim − w) // (P − 1)), k < P, duplicates dropped.
# (shape, window r, Q, P, window size, row starts, column starts)
FARMS_GRIDS = [
    # rows: step 512 // 8 = 64; columns: step 2816 // 8 = 352, the last window ends at the edge
    ((768, 3072), 256, 1.0, 9, (256, 256), [0, 64, 128, 192, 256, 320, 384, 448, 512],
     [0, 352, 704, 1056, 1408, 1760, 2112, 2464, 2816]),
    # 100 × 150 windows; columns: step 50 // 4 = 12, so the last window starts at 48 and stops 2 short of the edge
    ((300, 200), 100, 1.5, 5, (100, 150), [0, 50, 100, 150, 200], [0, 12, 24, 36, 48]),
    # rows: step max(1, 2 // 8) = 1, clipped at 20 − 18 = 2 (duplicates dropped); columns: step 22 // 8 = 2
    ((20, 40), 18, 1.0, 9, (18, 18), [0, 1, 2], [0, 2, 4, 6, 8, 10, 12, 14, 16]),
    # a window as tall as the matrix: one row start; columns: step 256 // 8 = 32
    ((256, 512), 256, 1.0, 9, (256, 256), [0], [0, 32, 64, 96, 128, 160, 192, 224, 256]),
    # Q = 2: 64 × 128 windows, columns: step 512 // 2 = 256
    ((64, 640), 64, 2.0, 3, (64, 128), [0], [0, 256, 512]),
    # default window: min(768, 3072 / Q) // 2 = 384; rows: step 384 // 8 = 48; columns: step 2688 // 8 = 336
    ((768, 3072), None, 1.0, 9, (384, 384), [0, 48, 96, 144, 192, 240, 288, 336, 384],
     [0, 336, 672, 1008, 1344, 1680, 2016, 2352, 2688]),
    # P = 1: one window in the corner
    ((100, 100), 50, 1.0, 1, (50, 50), [0], [0]),
]  # fmt: skip


@pytest.mark.parametrize("shape, window, q, p, size, row_starts, col_starts", FARMS_GRIDS)
def test_farms_grid_matches_hand_computed_windows(shape, window, q, p, size, row_starts, col_starts):
    assert farms_grid(shape, window=window, aspect_ratio=q, grid=p) == (size, row_starts, col_starts)


@pytest.mark.parametrize("shape, window, q, p", [((768, 3072), 256, 1.0, 9), ((300, 200), 100, 1.5, 5)])
def test_farms_window_count_and_pooled_size(shape, window, q, p):
    (rows, cols), row_starts, col_starts = farms_grid(shape, window=window, aspect_ratio=q, grid=p)
    w = torch.randn(*shape)
    pooled = farms_esd(w, window=window, aspect_ratio=q, grid=p)
    n_windows = len(row_starts) * len(col_starts)
    assert pooled.numel() == n_windows * min(rows, cols)
    # the pooled ESD is exactly the eigenvalues of those windows
    expected = torch.cat([esd(w[r : r + rows, c : c + cols]) for r in row_starts for c in col_starts]).sort().values
    torch.testing.assert_close(pooled, expected)
    res = analyze({"w": w}, estimator="farms", farms_window=window, farms_aspect_ratio=q, farms_grid_size=p)["w"]
    assert res.num_windows == n_windows and res.num_evals == pooled.numel()
    assert res.alpha == pytest.approx(fit_power_law(pooled).alpha, abs=1e-9)


def test_farms_small_matrix_is_analysed_whole():
    w = torch.randn(60, 80)
    torch.testing.assert_close(farms_esd(w, window=100), esd(w))
    res = analyze({"w": w}, estimator="farms", farms_window=100)["w"]
    assert res.num_windows == 1 and res.num_evals == 60


def test_farms_removes_aspect_ratio_bias():
    """Plain α of i.i.d. Gaussian matrices drifts with the aspect ratio; FARMS α does not (much)."""
    torch.manual_seed(0)
    mats = {f"q{q}": torch.randn(256, 256 * q) for q in (1, 2, 4)}
    plain = [r.alpha for r in analyze(mats).values()]
    farms = [r.alpha for r in analyze(mats, estimator="farms", farms_window=128).values()]
    assert max(farms) - min(farms) < 0.5 * (max(plain) - min(plain)), (plain, farms)
