"""The ``dtp`` command as a user runs it: a failed command leaves no
new ledger and no half-done transactions, ``localnet status`` counts every event,
``deploy`` survives sui output that is not UTF-8 and takes its ``sui`` child with it on
SIGTERM, and a reader that goes away is no error. Each test fails on the code before."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dtp.cli import main
from dtp.ledger.local import LocalLedger
from tests.cli.localnet_place import a_host, dtp, fake_sui
from tests.cli.localnet_place import place as place  # the fixture
from tests.support.daemon_procs import ENV
from tests.support.polling import wait_for

# -- nothing half done ---------------------------------------------------------------


def test_host_set_checks_the_limits_before_changing_anything(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad limit was refused by its own transaction, after the allow before it was
    done: "changed allow 0x3; then client limits failed"."""
    host = a_host(place, capsys)
    code = dtp(place, "host", "set", host, "--allow", "0x3", "--max-bytes-per-sec", "-1")
    err = capsys.readouterr().err
    assert code == 1
    assert err == "dtp: --max-bytes-per-sec must be an integer from 0 to 2**64-1, got -1.\n"
    with LocalLedger(place / "ledger.sqlite") as ledger:
        assert ledger.get_host(host).firewall.allow_count == 0


def test_sponsor_with_a_bad_fund_makes_no_pool(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--fund -1` was refused by the funding, after a (paid) pool had been made."""
    host = a_host(place, capsys)
    assert dtp(place, "service", "add", host, "80") == 0
    capsys.readouterr()
    code = dtp(
        place,
        "service",
        "sponsor",
        host,
        "80",
        "--share-bps",
        "5000",
        "--max-pledge",
        "1000",
        "--fund",
        "-1",
    )
    assert code == 1
    assert capsys.readouterr().err == (
        "dtp: --fund must be an integer from 0 to 2**64-1, got -1.\n"
    )
    with LocalLedger(place / "ledger.sqlite") as ledger:
        assert ledger.objects("SponsorPool") == []


def test_host_set_refuses_an_endpoint_with_clear_endpoints(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given both, --clear-endpoints was ignored without a word and the endpoint set."""
    host = a_host(place, capsys)
    with pytest.raises(SystemExit) as stop:
        dtp(place, "host", "set", host, "--endpoint", "10.0.0.1:7", "--clear-endpoints")
    assert stop.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
    with LocalLedger(place / "ledger.sqlite") as ledger:
        assert ledger.get_host(host).endpoints == ()


OBJECT = "0x" + "ab" * 32


@pytest.mark.parametrize(
    "argv",
    [
        ("host", "set", OBJECT, "--firewall", "allow-all"),
        ("service", "add", OBJECT, "80"),
        ("service", "subscription", OBJECT, "80", "--price-per-epoch", "5"),
        ("service", "sponsor", OBJECT, "80", "--share-bps", "5", "--max-pledge", "1000"),
        ("service", "retention", OBJECT, "80", "--retention-ms", "5"),
        ("service", "retention", OBJECT, "80", "--retention-ms", "5", "--replace", OBJECT),
        ("service", "retire-retention", OBJECT),
        ("subscription", "buy", OBJECT, "--epochs", "1"),
        ("subscription", "renew", OBJECT, "--epochs", "1"),
    ],
)
def test_a_command_on_an_existing_object_creates_no_ledger(
    place: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """A mistyped --ledger-path made a new, empty ledger there, and the command then
    failed with "No object with ID ... exists on this ledger", not naming the path."""
    assert dtp(place, "keys", "new") == 0
    capsys.readouterr()
    typo = place / "typo" / "ledger.sqlite"
    assert dtp(place, *argv, ledger=typo) == 1
    assert capsys.readouterr().err.startswith(f"dtp: No ledger at {typo}")
    assert not typo.exists()


def test_faucet_with_a_missing_identity_creates_no_ledger(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = place / "fresh.sqlite"
    assert dtp(place, "localnet", "faucet", ledger=fresh) == 1
    assert "no identity file" in capsys.readouterr().err
    assert not fresh.exists()


# -- output that agrees with the ledger ------------------------------------------------


def test_localnet_status_counts_past_a_million_events(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It read one page of at most a million events (decoding each) and printed the
    last one's number: 1000000 for any larger count."""
    path = place / "ledger.sqlite"
    with LocalLedger(path) as ledger:
        ledger.faucet("0x1", 1)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO events (type, sender, tx_digest, timestamp_ms, fields) "
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000002) "
            "SELECT 'x::y::Z', '0x1', 'd', 0, '{}' FROM n"
        )
        (count,) = db.execute("SELECT count(*) FROM events").fetchone()
    db.close()
    assert count > 1_000_000
    assert dtp(place, "localnet", "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["events"] == count


# -- deploy ------------------------------------------------------------------------------


def test_deploy_reads_sui_output_that_is_not_utf8(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte of sui's output that is not UTF-8 raised UnicodeDecodeError, a traceback,
    and after a publish the package ID was lost with it."""
    sui = fake_sui(
        place,
        'printf \'{"digest": "D\\351", "objectChanges": '
        '[{"type": "published", "packageId": "0xabc"}]}\\n\'',
    )
    argv = ["deploy", "--network", "localnet", "--sui-bin", str(sui)]
    assert main([*argv, "--package-path", str(place / "pkg"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["package_id"] == "0xabc"
    records = json.loads(Path(result["recorded_in"]).read_text(encoding="utf-8"))
    assert records["localnet"]["package_id"] == "0xabc"


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_sigterm_while_sui_is_being_started_still_takes_it(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that lands while ``sui client publish`` is being started (Popen not yet
    returned) is held until the child is the deploy's to kill: raised inside the
    construction, it left the child running, orphaned."""
    sui = fake_sui(place, "exec sleep 30")
    real = subprocess.Popen
    children: list[subprocess.Popen[str]] = []

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        child = real(*args, **kwargs)
        children.append(child)
        if "publish" in args[0]:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # (the handler runs here, before Popen has returned)
        return child

    monkeypatch.setattr(subprocess, "Popen", popen)
    try:
        with pytest.raises(SystemExit) as stopped:
            main(
                [
                    *("deploy", "--network", "localnet", "--sui-bin", str(sui)),
                    *("--package-path", str(place / "pkg")),
                ]
            )
        assert stopped.value.code == 128 + signal.SIGTERM
        assert children[-1].poll() is not None  # killed, and waited for
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_deploy_stopped_by_sigterm_takes_its_sui_child_with_it(place: Path) -> None:
    """SIGTERM ended dtp alone: `sui client publish` ran on, orphaned, to publish a
    package recorded nowhere."""
    pid_file = place / "publish.pid"
    sui = fake_sui(place, f"echo $$ > {pid_file}; exec sleep 30")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dtp", "deploy", "--network", "localnet"),
            *("--sui-bin", str(sui), "--package-path", str(place / "pkg")),
        ],
        env={**ENV, "XDG_DATA_HOME": str(place / "data")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = 0
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        child = int(pid_file.read_text())
        assert wait_for(
            lambda: _gone(child) or "sleep" in Path(f"/proc/{child}/cmdline").read_text()
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert wait_for(lambda: _gone(child), timeout=10)
        assert "Traceback" not in err, err
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if child and not _gone(child):
            os.kill(child, signal.SIGKILL)


# -- a reader that goes away --------------------------------------------------------------


def test_a_chain_command_whose_reader_went_away_is_quiet(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dtp host show ID | head -1`: a chain command printed "dtp: Broken pipe" and
    exited 1, where `dtp status` stops quietly with 141."""
    host = a_host(place, capsys)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before dtp writes
    try:
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "dtp", "host", "show", host, "--json"),
                *("--ledger-path", str(place / "ledger.sqlite")),
            ],
            env=ENV,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 128 + signal.SIGPIPE
