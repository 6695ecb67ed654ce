"""The ``dtp`` chain commands, when stopped or fed odd output: a deploy
stopped by SIGTERM once ``sui client publish`` has succeeded still records and prints
the package it paid for, one stopped during the publish says that it may have
happened, and ``host set`` checks its endpoints before its first transaction. Each
test fails on the code before."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.cli._ledger as cli
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.cli.localnet_place import a_host, dtp, fake_sui
from tests.cli.localnet_place import place as place  # the fixture
from tests.support.daemon_procs import ENV, ROOT
from tests.support.polling import wait_for

# -- host set: the endpoints are checked before the first transaction ------------------


@pytest.mark.parametrize(
    ("endpoints", "said"),
    [
        ([f"10.0.0.{i}:7" for i in range(17)], "at most 16"),  # the ledger's MAX_ENDPOINTS
        (["quic://" + "a" * 300], "at most 256 bytes"),  # its MAX_ENDPOINT_LENGTH
        (["10.0.0.1:7", "h\udce9st:80"], "not valid UTF-8"),  # argv b"h\xe9st:80"
    ],
)
def test_host_set_checks_the_endpoints_before_changing_the_noise_key(
    place: Path,
    capsys: pytest.CaptureFixture[str],
    endpoints: list[str],
    said: str,
) -> None:
    """Endpoints the ledger refuses were refused by their own transaction, after the
    noise key had been changed ("changed noise key; then endpoints failed")."""
    host = a_host(place, capsys)
    with LocalLedger(place / "ledger.sqlite") as ledger:
        key = ledger.get_host(host).noise_static_key
    new_key = HostIdentity.generate().noise_public.hex()
    argv = ["host", "set", host, "--noise-key", new_key]
    for endpoint in endpoints:
        argv += ["--endpoint", endpoint]
    try:
        code = dtp(place, *argv)
    except SystemExit as stop:  # a usage error, from the parser
        code = int(stop.code or 0)
    err = capsys.readouterr().err
    assert code in (1, 2), err
    assert said in err and "changed" not in err, err
    with LocalLedger(place / "ledger.sqlite") as ledger:
        assert ledger.get_host(host).noise_static_key == key


# -- deploy and SIGTERM --------------------------------------------------------------------


PUBLISHED = '{"digest": "D1", "objectChanges": [{"type": "published", "packageId": "0xabc"}]}'


# `dtp deploy` of the bundled package (built in a temporary copy) with a SIGTERM sent to
# itself once `sui client publish` has returned, before its output is read
_STOPPED_AFTER_PUBLISH = """
import os, signal, sys
from pathlib import Path
import dtp.cli._ledger as cli
from dtp.cli import main

cli.CHECKOUT_PACKAGE = Path(os.devnull)  # no checkout: the bundled copy is deployed
cli.BUNDLED_PACKAGE = Path(sys.argv[2])
read = cli._publish_output

def stopped(output):
    os.kill(os.getpid(), signal.SIGTERM)
    return read(output)

cli._publish_output = stopped
sys.exit(main(["deploy", "--network", "localnet", "--sui-bin", sys.argv[1], "--json"]))
"""


def test_deploy_stopped_after_the_publish_records_and_prints_the_package(
    place: Path,
) -> None:
    """A SIGTERM once the publish had succeeded raised SystemExit before the record was
    written: the package, published and paid for, was recorded and printed nowhere (and
    before the handler, SIGTERM killed dtp there, with the same loss)."""
    sui = fake_sui(place, f"echo '{PUBLISHED}'")
    tmp = place / "tmp"
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _STOPPED_AFTER_PUBLISH, str(sui), str(place / "pkg")],
        cwd=ROOT,
        env={**ENV, "XDG_DATA_HOME": str(place / "data"), "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["package_id"] == "0xabc", proc.stderr
    record = json.loads((place / "data" / "dtp" / "deployments.json").read_text())
    assert record["localnet"] == {"package_id": "0xabc", "digest": "D1"}
    assert proc.returncode == 128 + signal.SIGTERM  # stopped all the same, once recorded
    assert list(tmp.iterdir()) == []  # the temporary copy is gone


def test_deploy_stopped_during_the_publish_says_it_may_have_published(
    place: Path,
) -> None:
    """Stopped while `sui client publish` ran, dtp kills it; the transaction may have gone
    through already (paid for, its package in no record), and nothing said so."""
    pid_file = place / "publish.pid"
    sui = fake_sui(place, f"echo $$ > {pid_file}; exec sleep 30")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dtp", "deploy", "--network", "localnet"),
            *("--sui-bin", str(sui), "--package-path", str(place / "pkg")),
        ],
        cwd=ROOT,
        env={**ENV, "XDG_DATA_HOME": str(place / "data")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        child = int(pid_file.read_text())
        # the shell has become `sleep`: dtp is waiting in the publish
        assert wait_for(lambda: "sleep" in Path(f"/proc/{child}/cmdline").read_text())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert out == "" and "Traceback" not in err, err
    assert "may have been published" in err, err
    assert str(place / "data" / "dtp" / "deployments.json") in err


def test_a_sigterm_as_the_wait_for_sui_starts_kills_sui(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that lands after `sui` started but before the wait for it (here: as the
    progress display starts) is held until the wait's kill is set up: `sui` is killed
    and the deploy ends at once, where Popen's exit waited for `sui`'s own end."""
    pid_file = place / "publish.pid"
    sui = fake_sui(place, f"echo $$ > {pid_file}; exec sleep 30")
    real_progress = cli.progress

    @contextlib.contextmanager
    def stopped_progress(label: str) -> Iterator[object]:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        os.kill(os.getpid(), signal.SIGTERM)  # (the handler runs here, on this thread)
        with real_progress(label) as shown:
            yield shown

    monkeypatch.setattr(cli, "progress", stopped_progress)
    stop = cli._Stop()
    previous = signal.signal(signal.SIGTERM, stop)
    start = time.monotonic()
    try:
        with pytest.raises(SystemExit) as stopped:
            cli._sui(str(sui), "client", "publish", env=dict(os.environ), stop=stop)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert time.monotonic() - start < 20  # not the child's 30 s
    child = int(pid_file.read_text())
    assert wait_for(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), timeout=5)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    return True
