"""How tests/data/checkpoints/ was made, with the code of commit d86cb70 (before the resume state moved into
tb_hf.state and before tb_base_wd existed): resuming them with later code must give the same run (tests/test_state.py).

    git checkout d86cb70 && python tests/data/make_checkpoints.py   # from the repository root; not run by the tests

Each folder is the checkpoint (without training_args.bin) and the run's whole history as history.full.jsonl.
"""

import shutil
from pathlib import Path

import torch

from tb_hf import TempBalanceTrainer
from tb_hf.testing import ARCHS, dataset_for, tiny_training_args


def run(out, async_, update, save_steps, max_steps=8):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = tiny_training_args(
        out,
        max_steps=max_steps,
        learning_rate=2e-2,
        warmup_steps=2,
        tb_update_steps=update,
        tb_async=async_,
        save_strategy="steps",
        save_steps=save_steps,
    )
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=32))
    trainer.train()


dest = Path("tests/data/checkpoints")
dest.mkdir(parents=True, exist_ok=True)
for name, async_, update, step in (("async-pending-step5", True, "4", 5), ("auto-undecided-step2", False, "auto", 2)):
    out = Path("/tmp/ckpt") / name
    shutil.rmtree(out, ignore_errors=True)
    run(out, async_, update, step)
    target = dest / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out / f"checkpoint-{step}", target, ignore=shutil.ignore_patterns("training_args.bin"))
    shutil.copy(out / "tempbalance" / "history.jsonl", target / "history.full.jsonl")
    print(name, sorted(p.name for p in target.iterdir()), sum(p.stat().st_size for p in target.iterdir()))
