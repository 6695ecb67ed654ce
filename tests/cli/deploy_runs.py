"""A fake ``sui`` binary answering the calls ``dtp deploy`` makes, and ``dtp deploy`` run in
this process, for the deploy tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from dtp.cli._ledger import register


def deploy(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dtp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["deploy", "--network", "localnet", *argv])
    return int(args.func(args))


def fake_sui(path: Path, publish_output: str, marker: Path) -> Path:
    """A `sui` answering the three calls `dtp deploy` makes; publishing touches
    ``marker``."""
    path.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        '  "move build") echo built ;;\n'
        f"  \"client publish\") touch {marker}; echo '{publish_output}' ;;\n"
        "esac\n"
    )
    path.chmod(0o755)
    return path


PUBLISHED = '{"digest": "D", "objectChanges": [{"type": "published", "packageId": "0xabc"}]}'
