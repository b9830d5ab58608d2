"""GeneMask: NPMI-guided masked-language-model pretraining of DNA models, and few-shot evaluation.

The package is layered; a module imports only from its own layer and the layers below it, so data
flows one way (``tests/test_layers.py`` checks it)::

    gm.utils                 errors and atomic writes; imports nothing from gm
    gm.data                  tokenizer, FASTA reading and the genome cache, pretraining windows, few-shot tasks
    gm.masking               masking strategies, the NPMI ranking that guides them, their options
    gm.models                the MLM module, the classifier, loading and exporting pretrained models, FLOPs
    gm.train, gm.finetune    the two pipelines, and their glue: gm.callbacks, gm.loggers, gm.config
    gm.analysis, gm.bench, gm.experiments
                             analyses (``python analyze.py``), benchmarks (``python -m gm.bench``), the
                             comparison experiment (``python -m gm.experiments.comparison``); these three
                             do not import one another

``train.py``, ``finetune.py`` and ``analyze.py`` at the repository root are the entry points.
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
