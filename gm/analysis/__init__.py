"""Analyses behind ``python analyze.py <command>``: ``cli`` (the command line), ``ranking`` (npmi:
rank a genome's k-mers), ``masks`` (every strategy on one sequence), ``results`` (few-shot result
tables and paired tests), ``motifs`` (NPMI against known motifs), ``enrichment`` (class-discriminative
k-mers against NPMI), ``curves`` (pretraining curves), ``plots`` (the figures).

Imports anything below it (``gm.utils``, ``gm.data``, ``gm.masking``, ``gm.models``, the pipelines),
never ``gm.bench`` or ``gm.experiments``.
"""
