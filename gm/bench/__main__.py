"""``python -m gm.bench``: run the benchmark parts (:func:`gm.bench.cli.main`)."""

import sys

from gm.bench.cli import main

sys.exit(main())
