"""A client of Sui's faucet service, which ``dtp fund`` asks on a Sui ledger: the one
``sui start --with-faucet`` runs beside a localnet, devnet's, or the node stand-in's
(:mod:`dtp.testing.sui_node`, which serves the same API):

    POST /v2/gas   {"FixedAmountRequest": {"recipient": "0x…", "amount": MIST}}
    →  200         {"status": "Success", "coins_sent": [{"amount": MIST, "id": "0x…",
                    "transferTxDigest": "…"}]}

Sui's own faucets give a fixed amount and ignore ``amount`` (the stand-in's addition).
Which faucet: ``--faucet URL``, else ``$DTP_SUI_FAUCET``, else the network's own
(:data:`DEFAULT_FAUCETS`: localnet's and devnet's; testnet's asks for a person in a
browser, mainnet has none). The standard library only: the embedded ledger's install
uses it too (its tests fund a stand-in from a process without pysui).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dtp.errors import FaucetError, LedgerSpecError
from dtp.ledger._objects import normalize_id

__all__ = [
    "DEFAULT_FAUCETS",
    "FAUCET_ENV",
    "FAUCET_PATH",
    "FaucetGift",
    "ask_faucet",
    "faucet_url",
    "request_sui",
]

#: The variable naming the faucet ``dtp fund`` asks when ``--faucet`` is not given.
FAUCET_ENV: Final = "DTP_SUI_FAUCET"
#: The path of Sui's faucet API (version 2), added to a URL given without one.
FAUCET_PATH: Final = "/v2/gas"
#: Each network's faucet where one answers programs: ``sui start --with-faucet``'s
#: default port for localnet, Mysten's for devnet.
DEFAULT_FAUCETS: Final = {
    "localnet": "http://127.0.0.1:9123" + FAUCET_PATH,
    "devnet": "https://faucet.devnet.sui.io" + FAUCET_PATH,
}
#: Why a network has no default, for the error that asks for ``--faucet``.
_NO_FAUCET: Final = {
    "testnet": "testnet's faucet is for people, at https://faucet.sui.io (or `sui client faucet`)",
    "mainnet": "mainnet has no faucet: move SUI from a funded key with `dtp transfer`",
}
#: Longest faucet answer read (a few hundred bytes in practice).
_MAX_ANSWER: Final = 1 << 16


@dataclass(frozen=True)
class FaucetGift:
    """What a faucet sent: the coin's ID, its MIST (None when the faucet did not say)
    and the transaction's digest ("" when the faucet did not say)."""

    coin_id: str
    amount: int | None
    digest: str


def faucet_url(
    given: str | None,
    network: str | None,
    *,
    setting: str = "--faucet",
    env: Mapping[str, str] | None = None,
) -> str:
    """The faucet to ask: ``given`` (from ``setting``), else ``$DTP_SUI_FAUCET``, else
    ``network``'s default. A URL without a path gets :data:`FAUCET_PATH`. Raises
    :class:`~dtp.errors.LedgerSpecError` for a URL that is no http(s) URL, or when there
    is none to take (the message says what to give)."""
    import os

    env = os.environ if env is None else env
    if given is None and env.get(FAUCET_ENV, "").strip():
        given, setting = env[FAUCET_ENV].strip(), FAUCET_ENV
    if given is None:
        if network in DEFAULT_FAUCETS:
            return DEFAULT_FAUCETS[network]
        why = _NO_FAUCET.get(network or "", "the ledger names no network with a known faucet")
        raise LedgerSpecError(
            f"No faucet to ask: {why}. Give one with --faucet URL (or ${FAUCET_ENV}), "
            "e.g. http://127.0.0.1:9123 for `sui start --with-faucet`."
        )
    parts = urllib.parse.urlsplit(given.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LedgerSpecError(
            f"{setting}: expected the faucet's http:// or https:// URL "
            f"(e.g. http://127.0.0.1:9123), got {given!r}."
        )
    if parts.path in ("", "/"):
        parts = parts._replace(path=FAUCET_PATH)
    return urllib.parse.urlunsplit(parts)


def request_sui(
    url: str, recipient: str, amount: int | None = None, *, timeout: float = 30.0
) -> FaucetGift:
    """Ask the faucet at ``url`` (``http://host:port/v2/gas``) to send ``recipient``
    ``amount`` MIST (the faucet's own amount when None; Sui's faucets give a fixed one
    whatever is asked). Raises :class:`~dtp.errors.FaucetError` with the faucet's reason
    when it refuses, or when it cannot be reached or answers no faucet's answer."""
    return ask_faucet(url, normalize_id(recipient, "recipient address"), amount, timeout=timeout)


def ask_faucet(
    url: str, recipient: str, amount: int | None = None, *, timeout: float = 30.0
) -> FaucetGift:
    """:func:`request_sui`'s request with ``recipient`` sent as given, for the faucet to
    judge (the node stand-in's client, whose tests ask its faucet with bad ones)."""
    request: dict[str, Any] = {"recipient": recipient}
    if amount is not None:
        request["amount"] = amount
    body = json.dumps({"FixedAmountRequest": request}).encode()
    call = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(call, timeout=timeout) as answer:
            doc = json.loads(answer.read(_MAX_ANSWER))
    except urllib.error.HTTPError as exc:
        try:
            why = _failure(json.loads(exc.read(_MAX_ANSWER)))
        except ValueError:
            why = None
        finally:
            exc.close()
        raise FaucetError(
            f"The faucet at {url} refused: {why or f'HTTP {exc.code} {exc.reason}'}."
        ) from None
    except (OSError, ValueError) as exc:
        # (urllib's URLError is an OSError; a body that is no JSON, a ValueError)
        reason = getattr(exc, "reason", exc)
        raise FaucetError(f"The faucet at {url} cannot be reached: {reason}.") from None
    return _gift(url, doc)


def _failure(doc: Any) -> str | None:
    """The reason of a faucet's failure answer (``{"status": {"Failure": {"internal":
    WHY}}}``, or the older ``{"error": WHY}``), None when it gives none."""
    if not isinstance(doc, dict):
        return None
    status = doc.get("status")
    if isinstance(status, dict) and isinstance(status.get("Failure"), dict):
        failure = status["Failure"]
        return str(failure.get("internal") or next(iter(failure.values()), "") or failure)
    if doc.get("error"):
        return str(doc["error"])
    return None


def _gift(url: str, doc: Any) -> FaucetGift:
    why = _failure(doc)
    if why is not None:
        raise FaucetError(f"The faucet at {url} refused: {why}.")
    try:
        sent = doc["coins_sent"][0]
        coin = normalize_id(str(sent["id"]), "coin ID")
    except (KeyError, IndexError, TypeError, ValueError):
        raise FaucetError(f"The faucet at {url} answered no coin: {doc!r:.200}") from None
    amount = sent.get("amount")
    return FaucetGift(
        coin,
        amount if type(amount) is int else None,
        str(sent.get("transferTxDigest") or ""),
    )
