"""A Web3 frontend on DTP, end to end (docs/web-frontend.md): a page whose wallet calls a
JSON-RPC backend through a paid DTP service over WebSocket, each call billed per request
from an escrow the page opened on the ledger, its receipts signed by a session key the
wallet authorised in the open (docs/escrow.md §6.2).

The ledger (LocalLedger), the provider's paid service on the WebSocket carrier and the
HTTP server of the page and its ledger bridge are :class:`dtp.cli.dapp_host.DappDemo`;
``dtp demo`` runs the same as one of its steps, a headless browser making the calls.

Run it:  python examples/dapp_demo.py   (then open the address it prints)
tests/web/test_dapp.py runs the page in headless Chromium.
"""

from __future__ import annotations

import contextlib
import threading

from dtp.cli.dapp_host import DappDemo, missing_client


def main() -> None:
    why = missing_client()
    if why is not None:
        raise SystemExit(f"the page cannot run here: {why}")
    with DappDemo() as demo:
        print(f"the dApp demo: open {demo.page_url}")
        print(f"  wallet {demo.wallet_address} is on the allow list; {demo.denied_address} is not")
        print("  (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
