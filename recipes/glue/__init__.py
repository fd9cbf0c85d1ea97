"""Few-shot GLUE (and custom-task) fine-tuning: `recipes.glue.run_glue`."""
