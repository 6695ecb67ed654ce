"""The set of ledger connection IDs a paid server serves, one DTP connection per ledger
connection at a time (dtp.payments._gate.ConnectionIds, used by dtp.hostid.paid and
dtp.hostid.paid._aio)."""

from __future__ import annotations

import threading

from dtp.payments._gate import ConnectionIds

CID = "0x" + "ab" * 32
OTHER = "0x" + "cd" * 32


def test_reserve_is_exclusive_until_released() -> None:
    ids = ConnectionIds()
    assert CID not in ids and len(ids) == 0
    assert ids.reserve(CID)
    assert CID in ids
    assert not ids.reserve(CID)  # taken: refused, and still taken
    assert CID in ids and len(ids) == 1
    assert ids.reserve(OTHER)  # another ID is independent
    ids.release(CID)
    assert CID not in ids and OTHER in ids
    assert ids.reserve(CID)  # free again


def test_release_of_an_id_not_taken_does_nothing() -> None:
    ids = ConnectionIds()
    ids.release(CID)
    assert len(ids) == 0
    assert ids.reserve(CID)
    ids.release(CID)
    ids.release(CID)
    assert len(ids) == 0


def test_one_winner_among_racing_threads() -> None:
    ids = ConnectionIds()
    threads_n = 8
    start = threading.Barrier(threads_n)
    wins: list[bool] = []
    lock = threading.Lock()

    def race() -> None:
        start.wait()
        won = ids.reserve(CID)
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=race) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(wins) == [False] * (threads_n - 1) + [True]
