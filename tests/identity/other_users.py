"""Steps run as another user, in a forked child (needs root), for the tests of who may
read or replace a key file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable


def run_as(uid: int, gid: int, steps: Callable[[dict[str, str]], None]) -> dict[str, str]:
    """Run ``steps(outcome)`` in a forked child as ``uid``/``gid`` (no supplementary
    groups) and return the ``outcome`` it filled in; a failure in the child fails the
    caller's test (the child reports it, and never returns into pytest)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest from here on, only os._exit
        outcome: dict[str, str] = {}
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            steps(outcome)
        except BaseException as exc:  # (reported to the parent)
            outcome["error"] = repr(exc)
        finally:
            os.write(write, json.dumps(outcome).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        found: dict[str, str] = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert "error" not in found, found
    return found
