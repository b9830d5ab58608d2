"""GeneMask: NPMI-guided masked-language-model pretraining of DNA models, and few-shot evaluation.

Modules, one concept each: ``tokenizer`` (DNABERT k-mers), ``fasta`` (reading and the 2-bit
genome cache), ``genome`` (streaming pretraining windows), ``masking`` (strategies),
``mlm`` (the LightningModule), ``train`` (composition of a run), ``callbacks``, ``config``.
"""

__version__ = "0.1.0"
