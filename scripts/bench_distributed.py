"""Wall time of TempBalance's spectral pass with 1 and N processes, side by side (tb_hf.distributed).

    OMP_NUM_THREADS=1 python scripts/bench_distributed.py                      # CPU: 1 and 2 processes (gloo)
    OMP_NUM_THREADS=1 python scripts/bench_distributed.py --nprocs 1 2 --llama-blocks 0   # roberta-base only
    python scripts/bench_distributed.py --device cuda --nprocs 1 2 4 8 --llama-blocks 32  # GPUs (NCCL)

For each process count the script launches ``torchrun --standalone --nproc_per_node N`` on itself. Every rank
builds the same random-init weights (seeded) and runs the shared pass ``--repeats`` times:

1. roberta-base shapes: a random-init ``RobertaForSequenceClassification`` (no Hub), partitioned by
   `tb_hf.partition_model` into its 12 blocks, through the training pass `tb_hf.engine.SpectralEngine.run` (72
   matrices: 768×768 and 768×3072; default options: median xmin, float32 on CPU, float64 on CUDA).
2. LLaMA-7B shapes (``--llama-blocks`` blocks): q/k/v/o 4096×4096, gate/up 11008×4096, down 4096×11008 per
   block, held by every rank, through `tb_hf.engine.analyze_shared` (the same split and exchange).

Times are the best of ``--repeats``; each is taken between two barriers and is the slowest rank's time, the
collective included. ``share`` is the slowest rank's own eigen-solve time. The α of every N-process run is
compared with the 1-process run (largest |Δα|). Weights are random: this measures speed, not trained spectra.
The environment's ``OMP_NUM_THREADS`` is passed to every rank (set it to 1 for a fair per-rank comparison on a
CPU: N processes then use N cores, the 1-process run one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_spectral import LLAMA_7B_BLOCK  # scripts/ is on sys.path when run as a script


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    import transformers as tf

    import tb_hf.distributed as tbd
    import tb_hf.engine as tbe
    from tb_hf import TempBalanceArguments, partition_model
    from tb_hf.spectral import MatrixKey

    tf.utils.logging.set_verbosity_error()
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # Each rank's own eigen-solve time: wrap the analyze that the engine calls.
    local_seconds = [0.0]
    real_analyze = tbe.analyze

    def timed_analyze(matrices, **options):
        start = time.perf_counter()
        out = real_analyze(matrices, **options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        local_seconds[0] += time.perf_counter() - start
        return out

    tbe.analyze = timed_analyze

    def bench(run) -> dict:
        best, best_share, spectra = float("inf"), float("inf"), None
        for _ in range(args.repeats):
            local_seconds[0] = 0.0
            dist.barrier()
            start = time.perf_counter()
            spectra = run()
            dist.barrier()
            wall = torch.tensor([time.perf_counter() - start, local_seconds[0]], dtype=torch.float64, device=device)
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)  # the slowest rank
            best, best_share = min(best, wall[0].item()), min(best_share, wall[1].item())
        return {
            "seconds": best,
            "share_seconds": best_share,
            "matrices": len(spectra),
            "alpha": {str(k): s.alpha for k, s in spectra.items()},
        }

    results = {}
    torch.manual_seed(0)
    config = tf.RobertaConfig(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, num_labels=2,
    )  # fmt: skip
    model = tf.RobertaForSequenceClassification(config).to(device)
    engine = tbe.SpectralEngine(model, partition_model(model, "block"), TempBalanceArguments())
    results["roberta-base (12 blocks, 72 matrices)"] = bench(lambda: engine.run(model).spectra)
    model = engine = None  # free the weights before the next part

    if args.llama_blocks:
        g = torch.Generator(device=device).manual_seed(0)
        mats = {
            MatrixKey(f"model.layers.{b}.{name}.weight"): torch.randn(shape, generator=g, device=device) * 0.02
            for b in range(args.llama_blocks)
            for name, shape in LLAMA_7B_BLOCK.items()
        }
        options = TempBalanceArguments().spectral_options(device)
        tasks = [
            tbe.Task(key=k, label=str(k), unit="", block="", shape=tuple(m.shape), cost=tbd.matrix_cost(m.shape))
            for k, m in mats.items()
        ]
        results[f"LLaMA-7B shapes ({args.llama_blocks} blocks, {len(mats)} matrices)"] = bench(
            lambda: tbe.analyze_shared(tasks, lambda share: tbe.analyze_tasks(share, mats, options))
        )
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"world_size": world, "results": results}, f)
    dist.destroy_process_group()


def launch(args) -> None:
    threads = os.environ.get("OMP_NUM_THREADS")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nprocs:
            out = os.path.join(tmp, f"n{n}.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
            cmd += [__file__, "--worker", "--out", out, "--device", args.device, "--repeats", str(args.repeats)]
            cmd += ["--llama-blocks", str(args.llama_blocks)]
            print(f"$ OMP_NUM_THREADS={threads} {' '.join(cmd[1:4])} ... --nproc_per_node {n}", flush=True)
            subprocess.run(cmd, check=True)
            with open(out) as f:
                runs[n] = json.load(f)["results"]
    base = args.nprocs[0]
    print(
        f"\nSpectral pass, best of {args.repeats}, device {args.device}, OMP_NUM_THREADS={threads} per process; "
        f"speed-up vs {base} process(es)."
    )
    print(f"{'model':<42} {'procs':>5} {'wall s':>8} {'speed-up':>8} {'share s':>8} {'max |Δα| vs base':>17}")
    for name in runs[base]:
        ref = runs[base][name]
        for n in args.nprocs:
            r = runs[n][name]
            diff = max(
                (
                    abs(a - ref["alpha"][k])
                    for k, a in r["alpha"].items()
                    if a == a and ref["alpha"][k] == ref["alpha"][k]
                ),
                default=0.0,
            )
            speed = ref["seconds"] / r["seconds"]
            print(f"{name:<42} {n:>5} {r['seconds']:>8.2f} {speed:>7.2f}x {r['share_seconds']:>8.2f} {diff:>17.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-blocks", type=int, default=1, help="LLaMA-7B-shaped blocks (0: skip)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        launch(args)


if __name__ == "__main__":
    main()
