"""The path one spectral update takes through tb_hf's modules: a call trace of one recompute of α during training.

    python scripts/trace_update.py            # from the repository root

A tiny BERT trains 3 steps with ``tb_update_steps=2``; the trace covers the Trainer event at which the update runs
(``TempBalanceCallback.on_optimizer_step`` after step 2) and prints each tb_hf module it entered, in the order first
entered, with the number of calls into its functions and their names. Only the public API is used, so the same
script traces another version of tb_hf (a ``git worktree`` of an older commit) for a before/after comparison.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import tb_hf
    from tb_hf import TempBalanceCallback, TempBalanceTrainer
    from tb_hf.testing import ARCHS, dataset_for, tiny_training_args

    package = str(Path(tb_hf.__file__).parent)
    calls: collections.Counter = collections.Counter()
    functions: dict[str, set[str]] = collections.defaultdict(set)
    order: list[str] = []

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(package):
            return
        module = frame.f_globals.get("__name__", "?")
        if module not in calls:
            order.append(module)
        calls[module] += 1
        functions[module].add(frame.f_code.co_name)

    original = TempBalanceCallback.on_optimizer_step

    def traced(self, args, state, control, **kwargs):
        if state.global_step + 1 != 2:  # the step after which the update is due
            return original(self, args, state, control, **kwargs)
        sys.setprofile(profile)
        try:
            return original(self, args, state, control, **kwargs)
        finally:
            sys.setprofile(None)

    TempBalanceCallback.on_optimizer_step = traced
    model = ARCHS["bert"][0]()
    with tempfile.TemporaryDirectory() as out:
        args = tiny_training_args(out, max_steps=3, tb_update_steps="2")
        TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model)).train()
    print(f"one spectral update: {len(order)} modules, {sum(calls.values())} calls into tb_hf")
    for module in order:
        names = ", ".join(sorted(functions[module]))
        print(f"  {module:22s} {calls[module]:5d}  {names[:150]}")


if __name__ == "__main__":
    main()
