"""Analyses: ``python analyze.py <command>`` with npmi (rank the k-mers of a genome by PMI), masks (every
masking strategy on one sequence), results (few-shot result tables), motifs (NPMI against known
motifs), enrichment (class-discriminative k-mers of the tasks against NPMI), curves (pretraining
curves). ``python analyze.py --help`` lists them.

Thin entry point: the work is in :mod:`gm.analysis.cli`.
"""

import sys

from gm.analysis.cli import main
from gm.config import exit_on_user_error

if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))  # a full disk or a read-only folder: one line, not a traceback
