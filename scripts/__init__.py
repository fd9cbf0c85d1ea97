"""Set-up, benchmark, validation and study scripts. Those that import the recipes run from the repository root as
``python -m scripts.<name>``; the others also as ``python scripts/<name>.py``."""
