"""Models: ``mlm`` (the pretraining LightningModule and the Hugging Face export), ``classifier``
(the fine-tuning LightningModule), ``pretrained`` (building a classifier from a checkpoint, an
exported folder or a hub id, and naming it), ``flops`` (training FLOPs per token, MFU).

Imports only ``gm.utils``, ``gm.data``, ``gm.masking`` and ``gm.models``.
"""
