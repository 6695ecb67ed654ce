"""The dApp step of ``dtp demo`` (dtp/cli/_demo_dapp.py): the page's address is printed,
and a wallet-identified, paid JSON-RPC call is made through DTP over WebSocket -- by
headless Chromium on the page (its screenshot in build/screenshots/), by the same JS
client from node without chromium -- and checked against the ledger. Without chromium and
node, or without the client's npm packages, the step says what it lacks and the demo goes
on; an interrupt in the step leaves no browser, server or file."""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import dtp.cli._demo as demo
from dtp.cli import _demo_dapp as demo_dapp
from dtp.cli import dapp_host
from dtp.cli._demo_dapp import DappStepResult, run_dapp_step
from tests.support.browser import need_chromium
from tests.support.interrupts import left_under, run_until
from tests.support.paths import ROOT
from tests.web.browser_client import need_client

SHOTS = ROOT / "build" / "screenshots"
PRICE = dapp_host.SLA.price_per_request


def _run(wait: float, **options: object) -> tuple[DappStepResult, list[str]]:
    """The step, with no terminal; what it said (what it checked marked ✓)."""
    lines: list[str] = []
    result = run_dapp_step(
        lines.append,
        lambda text: lines.append("✓ " + text),
        wait=wait,
        **options,  # type: ignore[arg-type]
    )
    return result, lines


def _check_calls(result: DappStepResult, lines: list[str]) -> None:
    text = "\n".join(lines)
    assert result.report is not None and result.identified, text
    # the backend answered whoami with the address the wallet proved in the handshake
    assert result.report["whoami"] == result.wallet == dapp_host.address_of(dapp_host.WALLET_SEED)
    assert f"✓ a wallet-identified call: whoami -> {result.wallet}: the backend saw" in text
    # three calls, 25 MIST each (stream 0 carries none): what the receipts say, the
    # ledger claimed
    assert result.claimed == 3 * PRICE
    assert f"the provider claimed {3 * PRICE} MIST from the escrow" in text
    assert "the ledger refused its escrow (FirewallDenied)" in text
    assert "the service its connection (CLOSE 11," in text


def test_headless_chromium_makes_a_wallet_identified_paid_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    need_chromium()
    need_client()
    started = time.time()
    result, lines = _run(wait=0, screenshots=SHOTS)
    assert result.runner == "chromium" and result.headless is None
    _check_calls(result, lines)
    assert result.url is not None and re.fullmatch(
        r"http://127\.0\.0\.1:\d+/demo/dapp\.html", result.url
    )
    assert f"the page: {result.url} (its ledger bridge at" in lines[2]
    assert result.screenshot == SHOTS / "demo-dapp.png"
    assert result.screenshot.read_bytes().startswith(b"\x89PNG")
    assert result.screenshot.stat().st_mtime >= started - 1
    with capsys.disabled():
        print(f"\n[screenshot] {result.screenshot}")


def test_without_chromium_node_makes_the_calls_and_the_page_stays_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    need_client()
    monkeypatch.setattr(demo_dapp, "chromium_path", lambda: None)
    pages: list[bytes] = []

    def say(text: str) -> None:
        if text.startswith("open http://"):  # the page is up while the step waits
            with urllib.request.urlopen(text.split()[1], timeout=10) as answer:
                pages.append(answer.read())

    lines: list[str] = []
    result = run_dapp_step(
        lambda t: (lines.append(t), say(t)), lambda t: lines.append("✓ " + t), wait=0.3
    )
    assert result.runner == "node" and "chromium is not installed" in (result.headless or "")
    _check_calls(result, lines)
    assert result.screenshot is None and result.waited == "time"
    assert len(pages) == 1 and b"A dApp on DTP" in pages[0]


def test_without_chromium_or_node_the_step_says_why_it_makes_no_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if dapp_host.missing_client() is not None:
        pytest.skip(dapp_host.missing_client() or "")
    monkeypatch.setattr(demo_dapp, "chromium_path", lambda: None)
    monkeypatch.setattr(demo_dapp, "node_command", lambda script: None)
    result, lines = _run(wait=0)
    assert result.report is None and result.runner is None
    assert result.skipped is not None and "no node 20 or later" in result.skipped
    assert any(line.startswith("the calls are skipped: no headless browser") for line in lines)
    assert lines[-1] == f"the page: {result.url} (not kept up: --browser-wait 0)"


def test_without_the_clients_npm_packages_the_step_says_how_to_fetch_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "dapp.html").write_text("<!doctype html>")
    monkeypatch.setattr(dapp_host, "PACKAGE", tmp_path)
    result, lines = _run(wait=0)
    assert result.url is None and result.report is None
    assert result.skipped is not None and "web/dtp-client/scripts/install.sh" in result.skipped
    assert lines == [f"skipped: {result.skipped}; the rest of the demo goes on"]
    monkeypatch.setattr(dapp_host, "PACKAGE", tmp_path / "gone")
    assert "run from a clone of the source" in (dapp_host.missing_client() or "")


def test_an_install_without_libsodium_wrappers_is_one_to_run_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pages' import maps name libsodium-wrappers beside the @noble packages."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "dapp.html").write_text("<!doctype html>")
    (tmp_path / "node_modules" / "@noble" / "curves").mkdir(parents=True)
    monkeypatch.setattr(dapp_host, "PACKAGE", tmp_path)
    why = dapp_host.missing_client() or ""
    assert "libsodium-wrappers missing" in why and "@noble" not in why
    assert "web/dtp-client/scripts/install.sh" in why
    (tmp_path / "node_modules" / "libsodium-wrappers").mkdir()
    assert dapp_host.missing_client() is None


def test_a_page_that_reports_a_wrong_answer_fails_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step checks what the flow reported against the ledger, not just that it ran."""
    need_client()
    monkeypatch.setattr(demo_dapp, "chromium_path", lambda: None)
    real = demo_dapp._in_node

    def lying(demo: dapp_host.DappDemo, say: object) -> dict[str, object]:
        report = real(demo, say)  # type: ignore[arg-type]
        report["whoami"] = dapp_host.address_of(dapp_host.DENIED_SEED)
        return report

    monkeypatch.setattr(demo_dapp, "_in_node", lying)
    with pytest.raises(RuntimeError, match="whoami is not the wallet"):
        _run(wait=0)


@pytest.mark.parametrize("after", ["headless Chromium opened the page", "open http://"])
def test_an_interrupt_in_the_step_leaves_no_browser_and_no_files(
    tmp_path: Path, after: str
) -> None:
    need_chromium()
    need_client()
    code = "from dtp.cli._demo_dapp import run_dapp_step; run_dapp_step(print, print, wait=60)"
    with run_until(code, tmp_path, after) as proc:
        assert list(tmp_path.iterdir()), "the step's files are in TMPDIR"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "KeyboardInterrupt" in err
        assert left_under(tmp_path) == []
        assert list(tmp_path.iterdir()) == []


def test_without_websockets_the_step_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base install (no websockets: the WebSocket carrier's and the browser driver's):
    the step is skipped naming the extra, not a traceback that ends the demo, and it
    leaves nothing running."""
    for name in list(sys.modules):
        if name == "websockets" or name.startswith(
            ("websockets.", "dtp.transport.carriers._websocket", "dtp.cli._chromium")
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "websockets", None)  # (import websockets: not found)
    lines: list[str] = []
    tour = demo.Tour()
    tour.say = lines.append  # type: ignore[method-assign]
    threads = threading.active_count()
    demo.demo_dapp(tour, wait=0)
    assert lines and lines[-1].startswith("skipped: "), lines
    assert "The WebSocket carrier needs the 'ws' extra" in lines[-1]
    assert "pip install 'dtp-sui[ws]'" in lines[-1]
    assert lines[-1].endswith("; the rest of the demo goes on")
    assert tour.summary == ["dapp: skipped (the 'ws' extra is needed)"]
    assert threading.active_count() <= threads
