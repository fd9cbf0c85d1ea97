"""On a CUDA GPU: the spectral pass gives the CPU's α and TempBalanceTrainer trains there. Skipped without one."""

from __future__ import annotations

import json

import pytest
import torch

from tb_hf import TempBalanceTrainer, analyze
from tb_hf.testing import ARCHS, dataset_for, tiny_training_args

require_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = require_cuda


def heavy_tailed_matrices() -> dict[str, torch.Tensor]:
    """Student-t matrices of the shapes a pass meets: square, tall, wide, two of one shape, a 3-D expert batch."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return _student_t(shape, g)

    return {
        "square": t(256, 256),
        "tall": t(384, 128),
        "wide": t(128, 512),
        "wide_2": t(128, 512),  # same shape: batched into one eigen-solve with "wide"
        "experts": t(4, 96, 160),
    }


def _student_t(shape, g: torch.Generator, df: float = 3.0) -> torch.Tensor:
    z = torch.randn(*shape, generator=g, dtype=torch.float64)
    chi2 = torch.randn(*shape, int(df), generator=g, dtype=torch.float64).pow(2).sum(-1)
    return (z / (chi2 / df).sqrt()).float()


@pytest.mark.parametrize(
    "options",
    [
        dict(xmin_method="median"),
        dict(xmin_method="ks", filter_zeros=True),
        dict(estimator="farms", farms_window=64, xmin_method="median"),
    ],
    ids=["median", "ks", "farms"],
)
def test_spectral_pass_on_cuda_matches_cpu(options, device="cuda"):
    cpu_mats = heavy_tailed_matrices()
    dev_mats = {k: v.to(device) for k, v in cpu_mats.items()}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    on_cpu = analyze(cpu_mats, dtype=torch.float64, min_evals=20, **options)
    on_dev = analyze(dev_mats, dtype=torch.float64, min_evals=20, **options)
    if device == "cuda":  # the float64 Gram matrices were formed on the GPU (256² × 8 bytes for "square" alone)
        assert torch.cuda.max_memory_allocated() - before >= 256 * 256 * 8
    assert len(on_cpu) == len(on_dev) == 8  # 4 matrices + 4 experts
    for (k_cpu, r_cpu), (k_dev, r_dev) in zip(on_cpu.items(), on_dev.items(), strict=True):
        assert str(k_cpu) == str(k_dev)
        assert r_cpu.status == r_dev.status == "ok", (k_cpu, r_cpu.status, r_dev.status)
        assert r_dev.num_evals == r_cpu.num_evals
        assert r_dev.alpha == pytest.approx(r_cpu.alpha, rel=1e-6, abs=1e-6), k_cpu
        assert r_dev.xmin == pytest.approx(r_cpu.xmin, rel=1e-6), k_cpu
        assert r_dev.spectral_norm == pytest.approx(r_cpu.spectral_norm, rel=1e-9), k_cpu


def _history(output_dir) -> list[dict]:
    with open(output_dir / "tempbalance" / "history.jsonl") as f:
        return [json.loads(line) for line in f]


def _train(output_dir, use_cpu: bool, max_steps: int):
    torch.manual_seed(0)
    model = ARCHS["llama"][0]()
    args = tiny_training_args(output_dir, use_cpu=use_cpu, max_steps=max_steps)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
    trainer.train()
    return trainer


def test_trainer_update_on_cuda(tmp_path, device="cuda"):
    trainer = _train(tmp_path / "gpu", use_cpu=device == "cpu", max_steps=3)
    assert trainer.state.global_step == 3
    assert {p.device.type for p in trainer.model.parameters()} == {device}
    records = _history(tmp_path / "gpu")
    assert [r["step"] for r in records] == [0, 2]
    blocks = ARCHS["llama"][1]
    for r in records:
        assert set(r["alpha"]) == set(blocks) and all(a is not None and a > 1 for a in r["alpha"].values())
        lo, hi = min(r["alpha"].values()), max(r["alpha"].values())
        expected = {b: 0.5 + (a - lo) / (hi - lo) for b, a in r["alpha"].items()}  # linear map, 0.5..1.5
        assert r["factor"] == pytest.approx(expected)
    groups = trainer.optimizer.param_groups
    assert {g["tb_unit"]: g["tb_factor"] for g in groups if g["tb_unit"]} == pytest.approx(records[-1]["factor"])
    assert {g["tb_base_lr"] for g in groups} == {trainer.args.learning_rate}
    # α before the first step (same initial weights) agrees with a CPU run: float32 Grams on both devices
    _train(tmp_path / "cpu", use_cpu=True, max_steps=1)
    assert records[0]["alpha"] == pytest.approx(_history(tmp_path / "cpu")[0]["alpha"], rel=1e-4)
