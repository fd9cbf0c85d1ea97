"""Speed and agreement of `tb_hf.spectral.analyze` against WeightWatcher 0.7.7, side by side in one run.

    python scripts/bench_spectral.py                      # roberta-base-shaped model + one LLaMA-7B block, CPU
    python scripts/bench_spectral.py --device cuda --llama-blocks 32   # a whole LLaMA-7B-shaped pass on a GPU

1. roberta-base shapes: all 74 Linear weights of a random-init `RobertaForSequenceClassification`. Both
   tools analyse exactly these matrices on the CPU (WeightWatcher with `layers=[LAYER_TYPE.DENSE]`), in
   WeightWatcher's mode (KS-chosen xmin, eigenvalues ≤ 1e-5 dropped), tb_hf with a float32 (default) and a
   float64 eigen-solve. Prints both wall times, their ratio and the largest |Δα| over the matrices both
   fitted. `--whole-model` adds WeightWatcher's default call (Linear + Embedding layers) against tb_hf on
   the same matrices.
2. LLaMA-7B shapes: per block q/k/v/o 4096×4096, gate/up 11008×4096, down 4096×11008 (random init,
   std 0.02), `--llama-blocks` blocks, on `--device`, in both xmin modes.

Weights are random (this measures speed and numerical agreement, not trained spectra).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from tb_hf.spectral import analyze

ROBERTA_BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    num_labels=2,
)
LLAMA_7B_BLOCK = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 4096),
    "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (11008, 4096),
    "mlp.up_proj": (11008, 4096),
    "mlp.down_proj": (4096, 11008),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(name: str, model, matrices: dict, ww_layers: list, repeats: int, dtype: torch.dtype) -> None:
    """Time both tools on the same matrices (interleaved, best of ``repeats``) and compare α."""
    import weightwatcher as ww

    ours_times, ww_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = analyze(matrices, xmin_method="ks", filter_zeros=True, dtype=dtype)
        ours_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        df = ww.WeightWatcher(model=model).analyze(layers=ww_layers)
        ww_times.append(time.perf_counter() - t0)
    ww_alpha = {row.longname: float(row.alpha) for row in df.itertuples() if row.alpha > 0}
    common = [n for n in matrices if n in ww_alpha and ours[n].ok]
    delta = {n: abs(ours[n].alpha - ww_alpha[n]) for n in common}
    worst = max(delta, key=delta.get)
    rel = max(delta[n] / ww_alpha[n] for n in common)
    t_ours, t_ww = min(ours_times), min(ww_times)
    print(f"{name}: {len(matrices)} matrices, tb_hf eigen-solve in {dtype}")
    print(f"  WeightWatcher 0.7.7: {t_ww:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ww_times)})")
    print(f"  tb_hf analyze:       {t_ours:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ours_times)})")
    print(f"  speed-up: {t_ww / t_ours:.1f}x; fitted by both: {len(common)} (WeightWatcher skips < 50 eigenvalues)")
    print(
        f"  largest |Δα| {delta[worst]:.1e} at α = {ww_alpha[worst]:.2f} ({worst}); largest |Δα|/α {rel:.1e};"
        f" α range {min(ww_alpha[n] for n in common):.2f} .. {max(ww_alpha[n] for n in common):.2f}"
    )


def bench_roberta(repeats: int, whole_model: bool) -> None:
    warnings.filterwarnings("ignore")
    import weightwatcher as ww
    from transformers import RobertaConfig, RobertaForSequenceClassification

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(**ROBERTA_BASE)).eval()
    print(
        f"roberta-base shapes, random init, CPU, {torch.get_num_threads()} threads, best of {repeats} interleaved runs"
    )
    linears = {name: m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for dtype in (torch.float32, torch.float64):
        compare("Linear weights", model, linears, [ww.LAYER_TYPE.DENSE], repeats, dtype)
    if whole_model:
        # WeightWatcher's default call also analyses the embeddings (word embeddings: 50265×768).
        everything = {
            name: m.weight for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
        }
        compare(
            "WeightWatcher(model).analyze() defaults: Linear + Embedding",
            model,
            everything,
            [],
            repeats,
            torch.float32,
        )


def bench_llama(device: torch.device, blocks: int, dtype: torch.dtype, repeats: int) -> None:
    torch.manual_seed(0)
    mats = {
        f"model.layers.{b}.{name}.weight": (torch.randn(shape, device=device, dtype=dtype) * 0.02)
        for b in range(blocks)
        for name, shape in LLAMA_7B_BLOCK.items()
    }
    print(f"LLaMA-7B shapes: {blocks} block(s), {len(mats)} matrices, {device}, weights {dtype}")
    for method in ("median", "ks"):
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            res = analyze(mats, xmin_method=method)
            sync(device)
            times.append(time.perf_counter() - t0)
        ok = sum(r.ok for r in res.values())
        print(
            f"  xmin_method={method:6s}: best {min(times):7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)}),"
            f" {min(times) / blocks:.3f} s/block, {ok}/{len(res)} fitted"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="device for the LLaMA-shaped pass (cpu, cuda, ...)")
    parser.add_argument("--llama-blocks", type=int, default=1, help="LLaMA-7B-shaped blocks (32 = whole model)")
    parser.add_argument("--llama-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-roberta", action="store_true")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--whole-model", action="store_true", help="also time WeightWatcher's default call")
    args = parser.parse_args()
    if not args.skip_roberta:
        bench_roberta(args.repeats, args.whole_model)
    if not args.skip_llama:
        bench_llama(torch.device(args.device), args.llama_blocks, getattr(torch, args.llama_dtype), args.repeats)


if __name__ == "__main__":
    main()
