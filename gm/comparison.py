"""``python -m gm.comparison``: the masking comparison (:mod:`gm.experiments.comparison`), by its short name."""

from __future__ import annotations

import sys

from gm.experiments.comparison import main

if __name__ == "__main__":
    sys.exit(main())
