"""The dApp step of ``dtp demo``: a Web3 frontend calls a JSON-RPC backend through a paid
DTP service, its wallet proving who it is (docs/web-frontend.md).

:func:`run_dapp_step` starts the dApp host (:class:`dtp.cli.dapp_host.DappDemo`: a
LocalLedger whose provider allow-lists one wallet and charges per request, its paid
service on the WebSocket carrier, the page and a keyless ledger bridge over HTTP) and
prints the page's address. Then the page's flow runs once: in headless Chromium on the
page itself where chromium is here, else the same JS client from node
(``web/dtp-client/scripts/dapp-client.mjs``). The wallet opens an escrow, connects with
its identity proof, makes three billed JSON-RPC calls (``whoami`` answers with the address
DTP proved), and closes; the provider claims what the receipts say; a wallet off the allow
list is refused by the ledger and by the service. The step checks each of these against
the ledger, then keeps the page up for a person, as the graph's browser step does.

What it needs beyond dtp -- the source tree's ``web/dtp-client`` folder with its npm
packages (``bash scripts/demo.sh`` fetches them), and chromium or node 20 or later -- it
checks first, and says what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from dtp.cli._chromium import BrowserError, Chromium, chromium_path
from dtp.cli._person import PERSON_WAIT, SHORT_WAIT, wait_for_person
from dtp.cli.dapp_host import (
    DENIED_SEED,
    PACKAGE,
    SLA,
    WALLET_SEED,
    DappDemo,
    missing_client,
)

__all__ = ["FLOW_TIMEOUT", "DappStepResult", "node_command", "run_dapp_step"]

FLOW_TIMEOUT = 90.0
"""Seconds the page's whole flow (escrow, connection, calls, claim, refusal) may take."""
CALLS = 3
"""The page's JSON-RPC calls (whoami, add, echo): the requests billed (stream 0, which
carries none of them, is not: docs/escrow.md §6.1)."""


@dataclass
class DappStepResult:
    """What the step did, for the demo's checks and summary (and the tests)."""

    url: str | None = None
    """The page's address (None: the step was skipped)."""
    skipped: str | None = None
    """Why the flow did not run at all (what is missing), or None."""
    runner: str | None = None
    """What ran the page's flow: ``"chromium"`` or ``"node"`` (None: neither)."""
    headless: str | None = None
    """Why headless Chromium did not run the flow (None: it did)."""
    report: dict[str, Any] | None = None
    """What the page's flow reported (web/dtp-client/demo/dapp.js)."""
    wallet: str = ""
    """The allowed wallet's Sui address."""
    claimed: int = 0
    """What the provider claimed from the wallet's escrow, read from the ledger."""
    screenshot: Path | None = None
    waited: str = ""
    """How the wait for a person ended: ``"enter"``, ``"time"`` or ``""`` (no wait)."""

    @property
    def identified(self) -> bool:
        """The backend saw the wallet's address as the caller: DTP proved it."""
        return self.report is not None and self.report.get("whoami") == self.wallet


def _node() -> tuple[str, int] | None:
    """node and its major version, or None without node."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
        return node, int(out.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def node_command(script: str) -> list[str] | None:
    """node running a script of the client's package, or None without node 20 or later
    (node before 22 has its global WebSocket behind a flag)."""
    found = _node()
    if found is None or found[1] < 20:
        return None
    node, major = found
    flags = ["--experimental-websocket"] if major < 22 else []
    return [node, *flags, str(PACKAGE / script)]


def _in_chromium(
    demo: DappDemo, result: DappStepResult, say: Callable[[str], None], shots: Path | None
) -> dict[str, Any] | None:
    """The page's flow in headless Chromium; its report (None: chromium did not start)."""
    try:
        browser = Chromium()
    except BrowserError as exc:
        result.headless = f"chromium could not start here ({str(exc)[:200]})"
        return None
    with browser:
        page = browser.new_page()
        page.goto(demo.page_url)
        say("headless Chromium opened the page; its wallet runs the flow")
        page.wait_for("document.body.dataset.done", timeout=FLOW_TIMEOUT)
        report: dict[str, Any] = page.evaluate("window.report") or {}
        if shots is not None and "error" not in report:
            shots.mkdir(parents=True, exist_ok=True)
            result.screenshot = page.screenshot(shots / "demo-dapp.png")
    return report


def _in_node(demo: DappDemo, say: Callable[[str], None]) -> dict[str, Any]:
    """The same flow, the same JS client, run by node."""
    command = node_command("scripts/dapp-client.mjs")
    assert command is not None
    job = {"base": demo.base, "seed": WALLET_SEED.hex(), "deniedSeed": DENIED_SEED.hex()}
    say("node runs the page's flow (web/dtp-client/scripts/dapp-client.mjs: the same client)")
    out = subprocess.run(
        command,
        input=json.dumps(job).encode(),
        capture_output=True,
        timeout=FLOW_TIMEOUT,
        cwd=PACKAGE,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"the dApp step went wrong: node exited {out.returncode}: "
            f"{out.stderr.decode(errors='replace')[-1500:]}"
        )
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def _check(report: dict[str, Any], demo: DappDemo, result: DappStepResult) -> None:
    """What the flow reported, checked against the ledger (RuntimeError if wrong)."""
    if "error" in report:
        raise RuntimeError(f"the dApp step went wrong: the page says {report['error']}")
    requests = CALLS
    price = SLA.price_per_request
    receipts = report.get("receipts") or []
    escrow = str((report.get("escrow") or {}).get("escrow", ""))
    result.claimed = demo.claimed(escrow) if escrow else 0
    denied = report.get("denied") or {}
    server: dict[str, Any] = denied["server"] if isinstance(denied.get("server"), dict) else {}
    wrong = [
        what
        for what, fine in [
            ("whoami is not the wallet", result.identified),
            ("add(2, 40) is not 42", report.get("add") == 42),
            ("echo is not ['gm']", report.get("echo") == ["gm"]),
            (
                f"the last receipt does not pay {requests} requests",
                bool(receipts) and receipts[-1].get("amount") == requests * price,
            ),
            ("the ledger's claim is not the receipts'", result.claimed == requests * price),
            (
                "the ledger admitted the denied wallet",
                str(denied.get("ledger", "")).startswith("FirewallDenied"),
            ),
            ("the service admitted the denied wallet", server.get("name") == "ConnectionRefused"),
        ]
        if not fine
    ]
    if wrong:
        raise RuntimeError(f"the dApp step went wrong: {'; '.join(wrong)} ({report})")


def _tell(
    report: dict[str, Any],
    result: DappStepResult,
    tick: Callable[[str], None],
    say: Callable[[str], None],
) -> None:
    escrow = report["escrow"]
    say(
        f"the wallet {result.wallet} opened escrow {escrow['escrow'][:18]}… with "
        f"{escrow['deposit']} MIST; the open authorised a session key "
        f"({report['sessionKey'][:16]}…) to sign its receipts"
    )
    tick(
        f"a wallet-identified call: whoami -> {report['whoami']}: the backend saw the "
        "address the wallet's identity proof (a Sui personal-message signature) proved "
        "in the DTP handshake"
    )
    tick(f'add(2, 40) -> {report["add"]}, echo("gm") -> {json.dumps(report["echo"])}')
    last = report["receipts"][-1]
    tick(
        f"{len(report['receipts'])} receipts, the last for {last['requests']} requests at "
        f"{SLA.price_per_request} MIST: {last['amount']} MIST; the provider claimed "
        f"{result.claimed} MIST from the escrow (read from the ledger)"
    )
    server = report["denied"]["server"]
    tick(
        f"a wallet off the allow list ({report['denied']['address'][:18]}…): the ledger "
        f"refused its escrow ({report['denied']['ledger'].split(':')[0]}), the service its "
        f"connection (CLOSE {server['code']}, {server['reason']!r})"
    )


def run_dapp_step(
    say: Callable[[str], None],
    ok: Callable[[str], None] | None = None,
    *,
    wait: float | None = None,
    stdin: TextIO | None = None,
    screenshots: str | os.PathLike[str] | None = None,
) -> DappStepResult:
    """Run the step (see the module docs), with the arguments of
    :func:`dtp.cli._demo_browser.run_browser_step`."""
    tick = ok or say
    result = DappStepResult()
    result.skipped = missing_client()
    if result.skipped is not None:
        say(f"skipped: {result.skipped}; the rest of the demo goes on")
        return result
    if chromium_path() is None:
        result.headless = "chromium is not installed (bash scripts/demo.sh installs it on Debian)"
    shots = Path(screenshots) if screenshots is not None else None
    with DappDemo() as demo:
        result.url = demo.page_url
        result.wallet = demo.wallet_address
        say(
            f"a provider's host {demo.host_id[:18]}… serves JSON-RPC on port 8 over DTP's "
            f"WebSocket carrier ({demo.info['url']}) at {SLA.price_per_request} MIST a request"
        )
        say(f"its firewall admits one wallet, {demo.wallet_address[:18]}…; the ledger: LocalLedger")
        say(f"the page: {demo.page_url} (its ledger bridge at {demo.base}/ledger/, holding no key)")
        report: dict[str, Any] | None = None
        if result.headless is None:
            report = _in_chromium(demo, result, say, shots)
            if report is not None:
                result.runner = "chromium"
        if report is None:
            if node_command("scripts/dapp-client.mjs") is not None:
                say(f"no headless browser: {result.headless}")
                report = _in_node(demo, say)
                result.runner = "node"
            else:
                result.skipped = (
                    f"no headless browser ({result.headless}) and no node 20 or later to run "
                    "the page's client: the page is served for a person to open"
                )
                say(f"the calls are skipped: {result.skipped}")
        if report is not None:
            result.report = report
            _check(report, demo, result)
            _tell(report, result, tick, say)
            if result.screenshot is not None:
                say(f"a screenshot of the page: {result.screenshot}")
        _person(demo, result, say, wait, stdin)
    return result


def _person(
    demo: DappDemo,
    result: DappStepResult,
    say: Callable[[str], None],
    wait: float | None,
    stdin: TextIO | None,
) -> None:
    """Print the page's address and keep it up for a person."""
    if wait is None:
        wait = PERSON_WAIT if stdin is not None else SHORT_WAIT
    url = demo.page_url
    if wait <= 0:
        say(f"the page: {url} (not kept up: --browser-wait 0)")
        return
    port = url.split("/")[2].rsplit(":", 1)[1]
    say(f"open {url} in a browser: the page's wallet runs the same flow, and shows it")
    say(
        f"  (from another machine: ssh -L {port}:127.0.0.1:{port} <this host>, then the "
        "same address; the page reaches the service on a port of its own, so forward "
        f"{demo.websocket_port} too)"
    )
    if stdin is not None:
        say("  press Enter to go on")
    else:
        say(f"  the page stays up for {wait:g} s")
    result.waited = wait_for_person(wait, stdin, lambda: None)
