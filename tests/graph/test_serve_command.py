"""``python -m dtp.graph serve``: its ``--listen`` takes HOST[:PORT] as ``gun --listen``
does (``127.0.0.1:7400`` is a host and a port), and its help says that it is driven by
stdin and stops at its end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from dtp.graph.__main__ import _listen_address
from tests.support.paths import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1", ("127.0.0.1", 0)),
        ("0.0.0.0", ("0.0.0.0", 0)),
        ("localhost", ("localhost", 0)),
        ("::1", ("::1", 0)),
        ("[::1]", ("::1", 0)),
        ("127.0.0.1:7400", ("127.0.0.1", 7400)),
        ("[::1]:7400", ("::1", 7400)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_takes_a_host_or_host_and_port(text: str, address: tuple[str, int]) -> None:
    assert _listen_address(text) == address


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_listens_on_the_port_given() -> None:
    port = _free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "dtp.graph", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            assert json.loads(line)["port"] == port
            proc.stdin.write('["put", "a", {"b": 1}]\n["get", "a"]\n')
            proc.stdin.flush()
            assert "state" in json.loads(proc.stdout.readline())
            assert json.loads(proc.stdout.readline()) == {"node": {"b": 1}}
        finally:
            proc.stdin.close()  # the end of stdin stops it
            assert proc.wait(timeout=30) == 0


def test_serve_help_says_it_reads_stdin_and_stops_at_its_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dtp.graph", "serve", "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "reads commands on stdin" in text
    assert "stops at the end of stdin" in text
    assert "HOST[:PORT]" in text


def test_serve_answers_a_bad_line_with_an_error_and_goes_on() -> None:
    bad = ["nope", '["put", "a", {}]', "{}", "[]", '["put", "a"]', '["get", 5]', '["frob"]']
    lines = [*bad, '["put", "a", {"b": 1}]', '["get", "a"]']
    done = subprocess.run(
        [sys.executable, "-m", "dtp.graph", "serve"],
        cwd=ROOT,
        env=ENV,
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()[1:]]
    assert len(answers) == len(lines)
    for line, answer in zip(bad, answers, strict=False):
        assert list(answer) == ["error"], (line, answer)
        assert isinstance(answer["error"], str) and answer["error"], line
    assert "non-empty mapping" in answers[1]["error"]
    assert "state" in answers[-2]
    assert answers[-1] == {"node": {"b": 1}}
