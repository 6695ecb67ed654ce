"""What a piece of test code leaves open: the ResourceWarnings (unclosed sockets,
transports, files) that a garbage collection right after it reports."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable


def resource_warnings(run: Callable[[], object]) -> list[str]:
    """``run()``, then the messages of the ResourceWarnings it left behind."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
