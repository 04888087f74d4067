"""``python -m benchmarks``: the same as ``tollway bench``."""

import sys

from .cli import main

sys.exit(main())
