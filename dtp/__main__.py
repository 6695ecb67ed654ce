"""``python -m dtp``: the ``dtp`` command (for environments without its script on PATH)."""

import sys

from dtp.cli import main

sys.exit(main())
