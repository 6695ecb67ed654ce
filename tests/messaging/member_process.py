"""One group member in a process of its own, for tests that stop and resume it (SIGSTOP,
SIGCONT) while others run:

    python -m tests.messaging.member_process DRIVER ID SEED_HOST SEED_PORT SEED_KEY CONFIG

DRIVER is ``socket`` or ``aio``, SEED_KEY the seed's Noise key in hex and CONFIG the
MembershipConfig's fields as JSON. It prints a JSON line ``{"host", "port", "key"}``
(its own seed) once it serves, then one per membership event it sees (``kind``,
``member``, ``at``), and runs until killed."""

from __future__ import annotations

import asyncio
import json
import sys
import threading

from dtp.identity.keys import HostIdentity
from dtp.messaging.discovery import (
    MembershipConfig,
    MembershipEvent,
    Seed,
    join_group,
    join_group_async,
)

_lock = threading.Lock()


def say(line: dict[str, object]) -> None:
    with _lock:
        print(json.dumps(line), flush=True)


def tell(event: MembershipEvent) -> None:
    say({"kind": event.kind, "member": event.member.id, "at": event.at})


def main() -> None:
    driver, member_id, host, port, key, config_json = sys.argv[1:7]
    seed = Seed(host, int(port), bytes.fromhex(key))
    config = MembershipConfig(**json.loads(config_json))
    identity = HostIdentity.generate()
    if driver == "socket":
        node = join_group(member_id, identity, seeds=[seed], config=config)
        node.on_event(tell)
        say({"host": node.me.host, "port": node.me.port, "key": node.me.key.hex()})
        threading.Event().wait()
        return

    async def run() -> None:
        node = await join_group_async(member_id, identity, seeds=[seed], config=config)
        node.on_event(tell)
        say({"host": node.me.host, "port": node.me.port, "key": node.me.key.hex()})
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
