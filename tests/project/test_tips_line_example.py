"""The anonymous tips line of examples/tips_line.py, run on a LocalLedger: the reward
moves exactly from the newsroom to the tip's fresh address (``payment::pay``), and
nothing on the ledger or in the message names the tipster (docs/escrow.md §20,
docs/messaging.md §3)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from typing import Any

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter
from dtp.ledger.local import LocalLedger
from dtp.messaging.sealed import seal, send_sealed
from tests.support.paths import ROOT

EXAMPLE = ROOT / "examples" / "tips_line.py"


@pytest.fixture
def example() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLE))


def test_the_example_runs_as_a_program() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["newsroom=45000 reward=5000 unused=0", "MIST conserved"]


def test_the_reward_moves_exactly_and_names_no_tipster(example: dict[str, Any]) -> None:
    with LocalLedger(":memory:", clock_ms=0) as ledger:
        assert example["run"](ledger) == {"newsroom": 45_000, "reward": 5_000, "unused": 0}
        (paid,) = ledger.events(filter=EventFilter(type="PaymentSent"))[0]
        assert paid["amount"] == 5_000 and paid["memo"] == example["MEMO"]
        mail = ledger.events(filter=EventFilter(type="MailDeposited"))[0]
        assert len(mail) == 2
        # each tip was posted by an address that appears nowhere else on the ledger:
        # not the reward address, not the payer, not the other tip's poster
        posters = {m.sender for m in mail}
        assert len(posters) == 2
        assert paid["to"] not in posters and paid["from"] not in posters
        for poster in posters:
            assert ledger.balance(poster) == 0
            assert ledger.events(filter=EventFilter(sender=poster))[0] == [
                m for m in mail if m.sender == poster
            ]


def test_a_signed_message_is_set_aside_and_not_rewarded(example: dict[str, Any]) -> None:
    with LocalLedger(":memory:", clock_ms=0) as ledger:
        editor, source = HostIdentity.generate(), HostIdentity.generate()
        ledger.faucet(editor.sui_address, 50_000)
        host_id = ledger.create_host(editor, editor.noise_public)
        newsroom = example["Newsroom"](ledger, editor, host_id)
        try:
            # a source that signs its tip (Noise X) has named itself: not a tips line tip
            body = b'{"tip": "signed", "reward_to": "%s"}' % source.sui_address.encode()
            signed = seal(editor.noise_public, body, sender=source, recipient_host=host_id)
            send_sealed(signed, recipient_host=host_id, ledger=ledger, signer=source)
            reward = example["send_tip"](ledger, host_id, "anonymous")
            tips = newsroom.read_tips()
            assert [t.reward_to for t in tips] == [reward.sui_address]
            assert newsroom.set_aside == 1
            newsroom.reward(tips[0], 1_234)
        finally:
            newsroom.close()
        assert ledger.balance(reward.sui_address) == 1_234
        assert ledger.balance(editor.sui_address) == 50_000 - 1_234
        assert ledger.balance(source.sui_address) == 0
        assert example["conserved"](ledger)
