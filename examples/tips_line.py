"""An anonymous tips line, on an embedded LocalLedger.

A newsroom runs a DTP host. A tipster seals a tip to the host's Noise key as an
*anonymous* sealed message (Noise ``N``, docs/messaging.md §3) and posts it to the
host's ledger mailbox (``mailbox::send``). Inside the tip it puts a fresh *reward
address*, made for this tip alone. The newsroom opens its mail, judges each tip, and pays
the reward to that address with ``ledger.pay`` (``payment::pay``, docs/escrow.md §20).

What the newsroom learns: the tip and an address no one has used before. What the
ledger shows: a mailbox event posted by a throwaway address, and a payment from the
newsroom to another. Nothing links either to the tipster's own keys, as long as the
tipster keeps them apart: an ``N`` message carries no sender key, the poster and the
reward address are made for this tip, and the reward is spent later from an address
that was never the tipster's. (On a Sui network the poster pays gas for
``mailbox::send``: it needs a few MIST from somewhere that is not the tipster's wallet.)

Run it:  python examples/tips_line.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging.sealed import OpenedMessage, SealedInbox, seal, send_sealed

#: What the newsroom pays for a tip it uses (MIST).
REWARD = 5_000
#: The memo of each reward payment: public on the ledger, so it says nothing of the tip.
MEMO = b"tips line reward"


@dataclass(frozen=True)
class Tip:
    """A tip as the newsroom reads it."""

    text: str
    #: Where the tipster wants its reward: an address made for this tip.
    reward_to: str
    #: The sealed message's ID (the newsroom's key for the tip; not on the ledger).
    message_id: bytes


def send_tip(ledger: LocalLedger, newsroom_host: str, text: str) -> HostIdentity:
    """The tipster's side: seal ``text`` anonymously to the newsroom's host, with a fresh
    reward address in it, and post it to the host's mailbox from a throwaway address.
    Returns the reward identity (its keys are the only way to spend the reward)."""
    host = ledger.get_host(newsroom_host)
    reward = HostIdentity.generate()
    body = json.dumps({"tip": text, "reward_to": reward.sui_address}).encode()
    sealed = seal(host.noise_static_key, body, recipient_host=newsroom_host)  # no sender: N
    poster = HostIdentity.generate()  # mailbox::send's sender is public: never the tipster
    send_sealed(sealed, recipient_host=newsroom_host, ledger=ledger, signer=poster)
    return reward


class Newsroom:
    """The newsroom's side: reads the anonymous tips from its mailbox and pays rewards."""

    def __init__(self, ledger: LocalLedger, identity: HostIdentity, host_id: str) -> None:
        self.ledger = ledger
        self.identity = identity
        self.host_id = host_id
        self.inbox = SealedInbox(identity, host_id, ledger)
        #: Mail that was not an anonymous tip (signed, or not a tip's shape): set aside.
        self.set_aside = 0

    def read_tips(self) -> list[Tip]:
        """The new tips in the mailbox (each once)."""
        tips = []
        for message in self.inbox.fetch():
            tip = self._tip(message)
            if tip is None:
                self.set_aside += 1
            else:
                tips.append(tip)
        return tips

    @staticmethod
    def _tip(message: OpenedMessage) -> Tip | None:
        if not message.anonymous:
            return None  # a tips line takes anonymous mail only: a signed one names its sender
        try:
            fields = json.loads(message.body)
            text, reward_to = fields["tip"], fields["reward_to"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(text, str) or not isinstance(reward_to, str):
            return None
        return Tip(text, reward_to, message.message_id)

    def reward(self, tip: Tip, amount: int = REWARD) -> None:
        """Pay ``amount`` MIST to the tip's reward address (``payment::pay``)."""
        self.ledger.pay(self.identity, tip.reward_to, amount, MEMO)

    def close(self) -> None:
        self.inbox.close()


def conserved(ledger: LocalLedger) -> bool:
    """Every MIST ever minted is in a balance, an escrow or a broadcast/ticket pool."""
    a = ledger.audit()
    return bool(a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"])


def run(ledger: LocalLedger) -> dict[str, int]:
    """The story: two tips reach the newsroom; it rewards the one it uses. Returns what
    moved (MIST)."""
    editor = HostIdentity.generate()
    ledger.faucet(editor.sui_address, 50_000)
    host_id = ledger.create_host(editor, editor.noise_public)
    newsroom = Newsroom(ledger, editor, host_id)
    try:
        used = send_tip(ledger, host_id, "The bridge contract went to the mayor's cousin.")
        unused = send_tip(ledger, host_id, "The mayor likes cats.")
        tips = newsroom.read_tips()
        assert [t.reward_to for t in tips] == [used.sui_address, unused.sui_address]
        newsroom.reward(tips[0])
        assert newsroom.read_tips() == []  # each tip is read once
    finally:
        newsroom.close()
    assert conserved(ledger)
    return {
        "newsroom": ledger.balance(editor.sui_address),
        "reward": ledger.balance(used.sui_address),
        "unused": ledger.balance(unused.sui_address),
    }


def main() -> None:
    """Run the story on a fresh embedded ledger and print the balances."""
    ledger = LocalLedger(":memory:", clock_ms=0)
    with ledger:
        print(" ".join(f"{k}={v}" for k, v in run(ledger).items()))
    print("MIST conserved")


if __name__ == "__main__":
    main()
