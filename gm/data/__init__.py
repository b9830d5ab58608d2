"""Data: what the models read. The DNABERT k-mer ``tokenizer``, ``fasta`` (reading FASTA and the
2-bit genome cache, downloads), ``genome`` (the streaming pretraining windows) and ``fewshot`` (the
few-shot tasks, reading labelled sequences, splits and the fine-tuning data module).

Imports only ``gm.utils`` and ``gm.data``.
"""
