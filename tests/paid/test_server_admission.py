"""A paid server's hooks into its DTP server (dtp/hostid/paid/_server_admission.py), as
both paid servers use them, without I/O: the count of the connections served reports
each reservation, release and refusal at a connection limit to the paid server."""

from __future__ import annotations

from dtp.hostid._admission import ConnectionLimits
from dtp.hostid.paid._server_admission import ReportedConnections

CID, OTHER = "0x" + "ab" * 32, "0x" + "cd" * 32
ALICE = "0x" + "a1" * 32
ONE_EACH = ConnectionLimits("0x" + "11" * 32, 7, per_client=1, per_service=0)


def test_reservations_releases_and_refusals_are_reported() -> None:
    seen: list[tuple[str, ...]] = []
    served = ReportedConnections(
        lambda cid: seen.append(("refused at limit", cid)),
        lambda cid, made: seen.append(("reserved", cid, str(made))),
        lambda cid: seen.append(("released", cid)),
    )
    assert served.reserve(CID, ALICE, ONE_EACH) is None
    assert served.reserve(CID) is not None  # one DTP connection per ledger connection
    # a second connection of Alice's, over her one: refused at the limit, reported
    assert served.reserve(OTHER, ALICE, ONE_EACH) is not None
    served.release(CID)
    assert seen == [
        ("reserved", CID, "True"),
        ("reserved", CID, "False"),
        ("refused at limit", OTHER),
        ("reserved", OTHER, "False"),
        ("released", CID),
    ]
    assert CID not in served and OTHER not in served


def test_only_the_refusals_are_reported_when_asked_no_more() -> None:
    refused: list[str] = []
    served = ReportedConnections(refused.append)
    assert served.reserve(CID, ALICE, ONE_EACH) is None
    assert served.reserve(OTHER, ALICE, ONE_EACH) is not None
    served.release(CID)
    assert refused == [OTHER]
    assert len(served) == 0
