"""Masking: which k-mers a pretraining step masks. ``strategies`` (BERT, DNABERT's k-mer spans,
GeneMask and its controls, Global-PMI), ``npmi`` (counting a genome's n-grams and the NPMI ranking of k-mers that
guides GeneMask), ``options`` (which strategy takes which option; free of torch, for the entry points).

Imports only ``gm.utils``, ``gm.data`` and ``gm.masking``.
"""
