"""Data: what the models read. The DNABERT k-mer ``tokenizer``, ``fasta`` (reading FASTA and the
2-bit genome cache, downloads), ``genome`` (the streaming pretraining windows), ``tasks`` (the
paper's few-shot tasks), ``labelled`` (reading labelled sequences), ``splits`` (a run's shots and test
set) and ``fewshot`` (the fine-tuning data module).

Imports only ``gm.utils`` and ``gm.data``.
"""
