"""`TempBalanceConfig`: `transformers.TrainingArguments` plus every TempBalance option.

The options themselves (`TempBalanceArguments`, with their help texts, choices and ranges) live in
`tb_hf.options`, which imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from .arguments import TempBalanceArguments

__all__ = ["TempBalanceArguments", "TempBalanceConfig"]


@dataclass
class TempBalanceConfig(TempBalanceArguments, TrainingArguments):
    """`TrainingArguments` plus every TempBalance option (``tb_*``), for `tb_hf.TempBalanceTrainer`.

    Example:
        ```python
        from tb_hf import TempBalanceConfig

        args = TempBalanceConfig(output_dir="out", learning_rate=2e-5, tb_preset="llrd", tb_llrd_decay=0.9)
        ```

    The ``tb_*`` fields keep what you set (None: unset); ``args.tb_options`` is what the run uses (preset and
    defaults filled in), and ``args.to_dict()`` shows it.
    """
