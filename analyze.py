"""Analyses: ``python analyze.py npmi`` (rank k-mers of a genome by PMI), ``python analyze.py masks``
(a figure of every masking strategy on one sequence). ``python analyze.py --help`` lists them.

Thin entry point: the work is in :mod:`gm.analyze`.
"""

import sys

from gm.analyze import main

if __name__ == "__main__":
    sys.exit(main())
