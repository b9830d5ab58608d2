"""Experiments that drive the pipelines' commands: ``comparison`` (``python -m gm.experiments.comparison``,
the paper's comparison in miniature).

Imports anything below it (``gm.utils`` up to the pipelines), never ``gm.analysis`` or ``gm.bench``.
"""
