"""Benchmarks, ``python -m gm.bench``: each part times our implementation and a baseline side by side.

``common`` holds the timing and memory helpers every part uses (and the shared constants), ``inputs``
the genome sample and batches, ``training`` the three training loops; one module per part
(``tokenizer``, ``data``, ``npmi``, ``masking`` with ``step``, ``train``, ``padding``, ``gpu``,
``targets``, ``probe``, ``scale``, whose synthetic whole genomes ``synthetic`` writes); ``cli``
registers the parts and runs them.

Imports anything below it (``gm.utils`` up to the pipelines), never ``gm.analysis`` or ``gm.experiments``.
"""
