"""GeneMask: NPMI-guided masked-language-model pretraining of DNA models, and few-shot evaluation.

Modules, one concept each: ``tokenizer`` (DNABERT k-mers), ``fasta`` (reading and the 2-bit
genome cache), ``genome`` (streaming pretraining windows), ``masking`` (strategies),
``mlm`` (the LightningModule), ``train`` (composition of a run), ``callbacks``, ``config``.
"""

__version__ = "0.1.0"


def _quiet_known_noise() -> None:
    """Drop third-party messages that every run printed and no user can act on (specific ones, not whole categories).

    - torch 2.13 deprecates ``LeafSpec``, which Lightning 2.6 still uses: a FutureWarning per process (per DDP rank);
    - Lightning advertises its ``litlogger`` on every Trainer, in the console and in train.log;
    - matplotlib announces building its font cache on a machine's first run.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda rec: "litlogger" not in str(rec.msg))
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)


_quiet_known_noise()
