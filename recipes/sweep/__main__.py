"""``python -m recipes.sweep CONFIG``: see `recipes.sweep`."""

import sys

from .cli import main

sys.exit(main())
