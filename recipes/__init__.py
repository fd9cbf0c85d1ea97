"""tb_hf's recipes: few-shot GLUE fine-tuning (`recipes.glue.run_glue`) and sweeps over it (`recipes.sweep`).

Run them from the repository root: ``python recipes/glue/run_glue.py ...`` and ``python -m recipes.sweep CONFIG``.
"""
