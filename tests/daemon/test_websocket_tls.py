"""``[daemon] websocket_cert`` and ``websocket_key``: the daemon serves its WebSocket
listener as ``wss://`` itself, with a certificate from a CA made in the test.

- the keys parse, and every mistake is a config error naming the key, the file and
  what is wrong (exit 2 at start and in ``--check``): one without the other, without
  ``websocket_listen``, a missing file, no PEM certificate, an encrypted key, the key
  of another certificate;
- ``--check`` says whom the certificate names and until when; an expired one is a
  PROBLEM, one ending within 14 days a warning (in process, and ``dtp daemon --check``
  on the command line);
- an in-process daemon serves ``wss://``: a client that trusts the test CA reaches its
  echo service by host ID and tunnels through it (the certificate checked, host name
  included); one with the system's roots is refused at the TLS handshake; a reload
  (SIGHUP) reads a renewed certificate, which the next connection is served, and a
  broken renewal keeps the one in force."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import dtp.aio
from dtp.daemon._check import check_config
from dtp.daemon._config import load_config, parse_config
from dtp.daemon._runner import Daemon
from dtp.errors import ConnectionLost, DaemonConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local._ledger import LocalLedger
from tests.daemon.inproc import BOUND, echo_backend, service, tunnel, write_config
from tests.support.cert_authority import TestCa
from tests.support.cli_runs import cli_env, run_dtp
from tests.support.paths import ROOT

HEAD = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\nwebsocket_listen = "127.0.0.1:0"\n'
SVC = '\n[[service]]\nname = "a"\nport = 80\nbackends = ["127.0.0.1:8080"]\n'


def error_of(text: str, where: Path) -> str:
    with pytest.raises(DaemonConfigError) as info:
        parse_config(text, where / "dtp.toml")
    return str(info.value)


def test_the_keys_parse_relative_to_the_config_file(tmp_path: Path) -> None:
    ca = TestCa.make(tmp_path)
    ca.issue(tmp_path, "wss")
    config = parse_config(
        f'{HEAD}websocket_cert = "wss.crt"\nwebsocket_key = "wss.key"\n{SVC}',
        tmp_path / "dtp.toml",
    )
    assert config.daemon.websocket_cert == tmp_path / "wss.crt"
    assert config.daemon.websocket_key == tmp_path / "wss.key"
    plain = parse_config(HEAD + SVC, tmp_path / "dtp.toml")
    assert plain.daemon.websocket_cert is None and plain.daemon.websocket_key is None


def test_the_keys_errors(tmp_path: Path) -> None:
    ca = TestCa.make(tmp_path)
    cert, key = ca.issue(tmp_path, "wss")
    _, other_key = ca.issue(tmp_path, "other")
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    no_listen = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\n'
    cases = [
        (
            f'{no_listen}websocket_cert = "wss.crt"\nwebsocket_key = "wss.key"\n',
            "dtp.toml:4: daemon.websocket_cert: needs websocket_listen",
        ),
        (
            f'{HEAD}websocket_cert = "wss.crt"\n',
            "dtp.toml:5: daemon.websocket_cert: needs websocket_key too (wss:// takes both)",
        ),
        (
            f'{HEAD}websocket_key = "wss.key"\n',
            "dtp.toml:5: daemon.websocket_key: needs websocket_cert too",
        ),
        (
            f'{HEAD}websocket_cert = "gone.crt"\nwebsocket_key = "wss.key"\n',
            f"dtp.toml:5: daemon.websocket_cert: cannot read the certificate file "
            f"{tmp_path / 'gone.crt'}: No such file or directory",
        ),
        (
            f'{HEAD}websocket_cert = "notes.txt"\nwebsocket_key = "wss.key"\n',
            f"daemon.websocket_cert: {tmp_path / 'notes.txt'} holds no PEM certificate",
        ),
        (
            f'{HEAD}websocket_cert = "wss.crt"\nwebsocket_key = "notes.txt"\n',
            "daemon.websocket_key: ",
        ),
        (
            f'{HEAD}websocket_cert = "wss.crt"\nwebsocket_key = "encrypted.key"\n',
            "dtp.toml:6: daemon.websocket_key: ",
        ),
        (
            f'{HEAD}websocket_cert = "wss.crt"\nwebsocket_key = "other.key"\n',
            f"dtp.toml:6: daemon.websocket_key: {other_key} is not the key of the certificate "
            f"in {cert}",
        ),
    ]
    for text, says in cases:
        assert says in error_of(text + SVC, tmp_path), text
    assert "holds no PEM private key" in error_of(
        f'{HEAD}websocket_cert = "wss.crt"\nwebsocket_key = "notes.txt"\n{SVC}', tmp_path
    )
    assert "is encrypted: the daemon takes an unencrypted key file" in error_of(
        f'{HEAD}websocket_cert = "wss.crt"\nwebsocket_key = "encrypted.key"\n{SVC}', tmp_path
    )


def _checked(tmp_path: Path, cert: Path, key: Path) -> list[tuple[str, str, str]]:
    LocalLedger(tmp_path / "ledger.sqlite").close()
    config = write_config(
        tmp_path,
        'websocket_listen = "127.0.0.1:0"\n'
        f'websocket_cert = "{cert.name}"\nwebsocket_key = "{key.name}"\n' + service(80, 9),
    )
    return [f for f in check_config(load_config(config)).findings if f[1] == "websocket_cert"]


def test_check_names_the_certificate_and_its_end(tmp_path: Path) -> None:
    ca = TestCa.make(tmp_path)
    good = _checked(tmp_path, *ca.issue(tmp_path, "good", names=("dtp.example", "127.0.0.1")))
    assert len(good) == 1 and good[0][0] == "ok"
    assert good[0][2].startswith("wss:// for dtp.example, 127.0.0.1, valid until ")
    soon = _checked(tmp_path, *ca.issue(tmp_path, "soon", valid_days=3))
    assert [level for level, _, _ in soon] == ["warning", "ok"]
    assert "expires on" in soon[0][2] and "in 3 days" in soon[0][2]
    expired = _checked(tmp_path, *ca.issue(tmp_path, "old", expired=True))
    assert [level for level, _, _ in expired] == ["problem"]
    assert "expired on" in expired[0][2] and "browsers refuse it" in expired[0][2]
    nameless = _checked(tmp_path, *ca.issue(tmp_path, "nameless", names=()))
    assert [level for level, _, _ in nameless] == ["warning", "ok"]
    assert "names no host" in nameless[0][2]


def _served_certificate(port: int, trust: ssl.SSLContext) -> x509.Certificate:
    """The certificate the listener serves now, as a client that trusts the test CA
    verifies it (a TLS handshake, then closed)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=BOUND) as raw,
        trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_daemon_serves_wss_with_its_certificate(tmp_path: Path) -> None:
    ca = TestCa.make(tmp_path)
    cert, key = ca.issue(tmp_path, "wss")
    trust = ssl.create_default_context(cafile=str(ca.ca_file))
    user = HostIdentity.generate()

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            backend = await stack.enter_async_context(echo_backend())
            config = write_config(
                tmp_path,
                'websocket_listen = "127.0.0.1:0"\n'
                'websocket_cert = "wss.crt"\nwebsocket_key = "wss.key"\n' + service(7000, backend),
            )
            daemon = Daemon(load_config(config))
            ready = await daemon.start()
            stack.push_async_callback(lambda: asyncio.wait_for(daemon.drain(), 4 * BOUND))
            assert ready["websocket_url"] == f"wss://{ready['websocket']}/"
            url = ready["websocket_url"]
            port = int(ready["websocket"].rsplit(":", 1)[1])
            ledger = LocalLedger(tmp_path / "ledger.sqlite")
            stack.callback(ledger.close)
            await asyncio.to_thread(ledger.faucet, user.sui_address, 10**9)
            host = ready["host_id"]

            async def call(context: ssl.SSLContext | None) -> bytes:
                _, writer = await dtp.aio.open_connection(
                    f"dtp://{host}:7000",
                    ledger=ledger,
                    identity=user,
                    deposit=1_000_000,
                    websocket=url,
                    ssl=context,
                    timeout=BOUND,
                )
                try:
                    return await tunnel(writer, b"over wss")
                finally:
                    writer.close()
                    await writer.wait_closed()

            assert await call(trust) == b"over wss"
            first = await asyncio.to_thread(_served_certificate, port, trust)
            assert (
                first.serial_number
                == x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
            )
            # the system's roots do not know the test CA: refused at the TLS handshake,
            # before any ledger connection is opened
            with pytest.raises(ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):
                await dtp.aio.open_connection(
                    f"dtp://{host}:7000",
                    ledger=ledger,
                    identity=user,
                    deposit=1_000_000,
                    websocket=url,
                    timeout=BOUND,
                )
            # a renewed certificate is read at the reload; the next connection gets it
            ca.issue(tmp_path, "wss")
            renewed = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
            await daemon.reload()
            assert (
                await asyncio.to_thread(_served_certificate, port, trust)
            ).serial_number == renewed
            assert await call(trust) == b"over wss"
            # a renewal that does not serve is logged, and the certificate in force kept
            key.write_text("garbage\n")
            await daemon.reload()
            assert (
                await asyncio.to_thread(_served_certificate, port, trust)
            ).serial_number == renewed

    asyncio.run(asyncio.wait_for(main(), 8 * BOUND))


def test_dtp_daemon_check_on_the_command_line(tmp_path: Path) -> None:
    """The same through ``dtp daemon --check``: the key of another certificate is the
    config error it stops at (exit 2), an expired certificate a PROBLEM (exit 1)."""
    ca = TestCa.make(tmp_path)
    ca.issue(tmp_path, "wss")
    ca.issue(tmp_path, "other")
    ca.issue(tmp_path, "old", expired=True)
    LocalLedger(tmp_path / "ledger.sqlite").close()
    env = {**cli_env(tmp_path), "PYTHONPATH": str(ROOT)}

    def check(cert: str, key: str) -> tuple[int, str]:
        config = write_config(
            tmp_path,
            'websocket_listen = "127.0.0.1:0"\n'
            f'websocket_cert = "{cert}"\nwebsocket_key = "{key}"\n' + service(80, 9),
        )
        done = run_dtp("daemon", "--check", "--config", str(config), cwd=tmp_path, env=env)
        return done.returncode, done.stdout + done.stderr

    code, out = check("wss.crt", "other.key")
    assert code == 2, out
    assert "daemon.websocket_key: " in out and "is not the key of the certificate in" in out
    code, out = check("old.crt", "old.key")
    assert code == 1, out
    assert "PROBLEM  websocket_cert: " in out and "expired on" in out
    code, out = check("wss.crt", "wss.key")
    assert "ok       websocket_cert: wss:// for localhost, 127.0.0.1, valid until" in out, out
