"""The ``dtp`` command as the README has users run it: exit codes, one-line errors for
bad arguments (no traceback), and output on terminals that cannot show every character.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def _dtp(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = dict(os.environ)
    base["HOME"] = str(cwd)  # the default identity and ledger paths land in tmp_path
    base["XDG_DATA_HOME"] = str(cwd / "data")
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dtp", *argv],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )


def test_status_on_a_terminal_without_the_characters(tmp_path: Path) -> None:
    """A service name the output encoding cannot show is escaped, not a traceback."""
    state = tmp_path / "state"
    state.mkdir()
    status = {"pid": 1, "stopped": True, "services": {"café": {"port": 80, "connections": 3}}}
    (state / "status.json").write_text(json.dumps(status), encoding="utf-8")
    done = _dtp(
        "status", "--state-dir", str(state), cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"}
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "caf\\xe9" in done.stdout
    assert "daemon: stopped" in done.stdout


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (("bogus",), 2, "invalid choice"),
        (("demo", "--bogus"), 2, "unrecognized arguments"),
        (("localnet", "faucet", "--amount", "abc"), 2, "invalid int value"),
        (("host", "show", "zz"), 1, "No ledger at"),
        (("host", "create"), 1, "no identity file"),
        (("status", "--config", "missing.toml"), 2, "cannot read the config file"),
    ],
)
def test_bad_arguments_are_one_typed_line(
    argv: tuple[str, ...], code: int, says: str, tmp_path: Path
) -> None:
    """Bad input: the documented exit status and a short message naming the problem."""
    done = _dtp(*argv, cwd=tmp_path)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(errors) == 1, done.stderr
    assert done.stdout == ""


def _readme_daemon_configs() -> tuple[str, str]:
    """The README's side-by-side provider.toml / client.toml, as two files' text."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```toml\n# provider.toml") + len("```toml\n")
    lines = text[start : text.index("```", start)].splitlines()
    column = lines[0].index("# client.toml")
    left = [line[:column].rstrip() for line in lines[1:]]
    right = [line[column:].strip().removeprefix("#").removeprefix(" ") for line in lines[1:]]
    return "\n".join(left) + "\n", "\n".join(right) + "\n"


class _Daemon:
    """``dtp daemon --config NAME`` in tmp_path; its ready line, parsed."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtp", "daemon", "--config", config],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        # the daemon prints the line once it listens, or exits (EOF) on an error
        self.ready = json.loads(self.proc.stdout.readline() or "null")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def test_readme_daemon_example_runs(tmp_path: Path) -> None:
    """The README's two daemon configs work as shown: ready lines, a tunnel, `dtp status`.

    Only the addresses change: the backends are an echo server of this test, the
    forwarder listens on a free port, and the target names the host just created.
    """
    import socketserver
    import threading

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    provider, client = _readme_daemon_configs()
    assert 'backends = ["127.0.0.1:8080", "127.0.0.1:8081"]' in provider
    assert 'listen = "127.0.0.1:18545"' in client and "0x<host id>" in client
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as backend:
        backend.daemon_threads = True
        thread = threading.Thread(target=backend.serve_forever)
        thread.start()
        daemons: list[_Daemon] = []
        try:
            echo = f'"127.0.0.1:{backend.server_address[1]}"'
            provider = provider.replace('"127.0.0.1:8080", "127.0.0.1:8081"', echo)
            (tmp_path / "provider.toml").write_text(provider, encoding="utf-8")
            for key in ("provider.key", "client.key"):
                assert _dtp("keys", "new", "--identity", key, cwd=tmp_path).returncode == 0
            daemons.append(_Daemon(tmp_path, "provider.toml"))
            ready = daemons[0].ready
            assert ready and ready["event"] == "ready" and ready["host_id"].startswith("0x")
            assert set(ready) == _documented_ready_keys()
            client = client.replace("127.0.0.1:18545", "127.0.0.1:0")
            client = client.replace("0x<host id>", ready["host_id"])
            (tmp_path / "client.toml").write_text(client, encoding="utf-8")
            daemons.append(_Daemon(tmp_path, "client.toml"))
            forwarded = daemons[1].ready["forwards"]["api"]
            host, port = forwarded.rsplit(":", 1)
            with socket_connection(host, int(port)) as conn:
                conn.sendall(b"through the README's daemons")
                got = b""
                while len(got) < 28 and (chunk := conn.recv(100)):
                    got += chunk
            assert got == b"through the README's daemons"
            status = _dtp("status", "--config", "provider.toml", cwd=tmp_path)
            assert status.returncode == 0, status.stderr
            assert "daemon: running" in status.stdout
            assert any(line.split()[:1] == ["api"] for line in status.stdout.splitlines())
        finally:
            codes = [d.stop() for d in reversed(daemons)]
            backend.shutdown()
            thread.join()
        assert codes == [0, 0], codes  # SIGTERM: drain and stop, status 0 (docs/daemon.md)


def _documented_ready_keys() -> set[str]:
    """The keys docs/daemon.md gives the ready line."""
    text = " ".join((ROOT / "docs" / "daemon.md").read_text(encoding="utf-8").split())
    m = re.search(r'`(\{"event": "ready".*?\})`', text)
    assert m, "docs/daemon.md no longer shows the ready line"
    return set(re.findall(r'"(\w+)":', m.group(1)))


def socket_connection(host: str, port: int) -> socket.socket:
    """A TCP connection to the forwarder, with a timeout so a hang fails the test."""
    return socket.create_connection((host, port), timeout=10)
