"""``python -m dtp.cli``: the ``dtp`` command, as ``python -m dtp`` (the daemon's tests,
benchmarks and the demo start ``dtp daemon`` processes this way)."""

import sys

from dtp.cli import main

sys.exit(main())
