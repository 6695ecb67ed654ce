"""``dtp status``: the daemon's counters as a table, or JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

from dtp.daemon._config import load_config
from dtp.daemon._control import unix_get
from dtp.daemon._reporting import report
from dtp.daemon._state import CONTROL_SOCKET, STATUS_FILE, process_identity, read_status
from dtp.errors import DaemonConfigError

__all__ = ["LIVE_TIMEOUT", "daemon_running", "format_table", "main", "read_live", "state_dir_of"]

# (heading, key) of the columns services and forwards both show
_TRAFFIC_COLUMNS = (
    ("conns", "connections"),
    ("tunnels", "tunnels"),
    ("active", "active_tunnels"),
    ("bytes in", "bytes_in"),
    ("bytes out", "bytes_out"),
    ("denied", "denials"),
)
_SERVICE_COLUMNS = (
    ("service", "name"),
    ("port", "port"),
    *_TRAFFIC_COLUMNS,
    ("rate-limited", "rate_limited"),
    ("no backend", "unavailable"),
    ("healthy", "healthy_backends"),
    ("receipts", "receipts_held"),
    ("earned", "fees_earned"),
    ("claimed", "fees_claimed"),
    ("left", "fees_left"),
)
_FORWARD_COLUMNS = (
    ("forward", "name"),
    ("listen", "listen"),
    *_TRAFFIC_COLUMNS,
    ("errors", "errors"),
    ("receipts", "receipts_sent"),
    ("paid", "fees_paid"),
)


# columns that hold numbers to read as such, not amounts (a port of 8,545 misleads)
_PLAIN = frozenset({"name", "port"})


def _cell(value: Any, key: str = "") -> str:
    if key in _PLAIN or not isinstance(value, int) or isinstance(value, bool):
        return str(value)
    return f"{value:,}"


def _table(rows: dict[str, dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
    body = [
        [_cell(name if key == "name" else row.get(key, ""), key) for _, key in columns]
        for name, row in rows.items()
    ]
    heads = [title for title, _ in columns]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(heads)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return [line(heads), *(line(r) for r in body)]


def daemon_running(status: dict[str, Any]) -> bool:
    """Whether the process that wrote ``status`` still runs: it did not record a clean
    stop and its pid is alive (a SIGKILLed or crashed daemon records nothing) and is
    the same process (its boot and start time match the recorded ones: after a crash
    or a reboot the pid may belong to another program)."""
    pid = status.get("pid")
    if status.get("stopped") or isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return False
    except PermissionError:
        # alive, run by another user: the daemon, or a process given its pid after it
        # died (True at once would show a crashed daemon running once another user's
        # program reuses its pid): the recorded identity tells, /proc is readable
        pass
    recorded = status.get("process")
    if isinstance(recorded, str) and process_identity(pid) not in (None, recorded):
        return False
    try:
        # an exited child its parent has not reaped yet still answers kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def format_table(status: dict[str, Any]) -> str:
    """A readable summary of a status record."""
    out: list[str] = []
    pid = status.get("pid")
    if status.get("stopped"):
        state = "stopped"
    elif daemon_running(status):
        state = f"running (pid {pid})"
    else:
        state = f"not running (pid {pid} ended without stopping cleanly)"
    updated = status.get("updated")
    if status.get("source") == "live":
        state += ", live counters"
    elif state.startswith("running") and isinstance(updated, int | float):
        # (a daemon that did not answer on its control socket: the file trails it)
        state += f", counters as saved {_age(updated)}"
    out.append(f"daemon: {state}")
    ledger = _ledger_line(status.get("ledger"))
    if ledger:
        out.append(ledger)
    if status.get("host_id"):
        out.append(f"host:   {status['host_id']} at {status.get('endpoint')}")
    gas = _gas_line(status.get("gas"))
    if gas:
        out.append(gas)
    spent = _spent_line(status.get("gas"))
    if spent:
        out.append(spent)
    services = status.get("services") or {}
    forwards = status.get("forwards") or {}
    if services:
        out += ["", *_table(services, _SERVICE_COLUMNS)]
    if forwards:
        out += ["", *_table(forwards, _FORWARD_COLUMNS)]
    if not services and not forwards:
        out.append("no services or forwarders yet")
    alerts = _alerts(services, forwards)
    if alerts:
        out += ["", *alerts]
    return "\n".join(out)


def _alerts(services: dict[str, Any], forwards: dict[str, Any]) -> list[str]:
    """What needs a look, from a live status: backends down, forwards whose target
    does not answer (a status read from the file knows neither)."""
    lines = []
    for name, row in services.items():
        backends = row.get("backends") if isinstance(row, dict) else None
        if isinstance(backends, dict):
            down = [b for b, state in backends.items() if state == "down"]
            if down:
                lines.append(
                    f"service {name}: backend{'s' if len(down) > 1 else ''} down: {', '.join(down)}"
                )
    for name, row in forwards.items():
        state = row.get("state") if isinstance(row, dict) else None
        if state in ("unreachable", "backing_off"):
            lines.append(f"forward {name}: target {str(state).replace('_', ' ')}")
    return lines


def _age(when: float) -> str:
    seconds = max(0.0, time.time() - when)
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    return f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.1f} h ago"


def _ledger_line(ledger: Any) -> str | None:
    """The ledger's health as the running daemon sees it (its calls: dtp.daemon._live)."""
    if not isinstance(ledger, dict):
        return None
    line = f"ledger: {ledger.get('state', 'unknown')}"
    if ledger.get("spec"):
        line += f" ({ledger['spec']})"
    calls, errors, mean = ledger.get("calls"), ledger.get("errors"), ledger.get("mean_seconds")
    if isinstance(calls, int) and isinstance(errors, int):
        line += f", {calls:,} calls, {errors:,} failed"
    if isinstance(mean, int | float) and not isinstance(mean, bool):
        line += f", mean {mean * 1000:.1f} ms"
    if ledger.get("state") == "unavailable" and ledger.get("last_error"):
        line += f": {ledger['last_error']}"
    return line


def _mist(value: Any) -> str:
    return f"{value:,} MIST" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _gas_line(gas: Any) -> str | None:
    """What the daemon's address holds (``dtp.daemon._gas``): on Sui its gas, with a
    warning when low or out; on a LocalLedger (no gas) its balance."""
    if not isinstance(gas, dict):
        return None
    budget = gas.get("budget")
    error = gas.get("error")
    if not budget:  # a LocalLedger
        line = f"balance: {_mist(gas.get('balance'))}"
        return line + (f" (cannot be read: {error})" if error else "")
    state = gas.get("state")
    line = f"gas:    {_mist(gas.get('balance'))}"
    if state == "low":
        line += f"  LOW: below {_mist(gas.get('low_gas'))} (low_gas); fund {gas.get('address')}"
    elif state == "out":
        line += (
            f"  OUT OF GAS: below one transaction's budget ({_mist(budget)}): claims, "
            f"settlements and new connections wait; fund {gas.get('address')}"
        )
    elif state == "unknown":
        line += "  (not read yet)"
    if error:
        line += f" (as last read; the ledger cannot be read: {error})"
    return line


def _spent_line(gas: Any) -> str | None:
    """What the daemon has paid in gas over its runs (``dtp.daemon._gas``), by kind;
    None on a ledger that charges none (nothing paid)."""
    spent = gas.get("spent") if isinstance(gas, dict) else None
    if not isinstance(spent, dict) or not spent.get("total"):
        return None
    parts = [
        f"{label} {_mist(spent.get(key, 0))}"
        for key, label in (("ends", "connection ends"), ("opens", "opens"), ("host", "host"))
        if spent.get(key)
    ]
    if spent.get("other"):
        parts.append(f"other {_mist(spent['other'])}")
    line = f"spent:  {_mist(spent.get('total'))} of gas"
    count = spent.get("transactions")
    if isinstance(count, int) and not isinstance(count, bool):
        line += f" in {count:,} transaction{'s' if count != 1 else ''}"
    return line + (f" ({'; '.join(parts)})" if parts else "")


def state_dir_of(config: str | None, state_dir: str | None) -> Path:
    """The state directory named directly or by a config file. A config file with an
    error elsewhere still names it (see :func:`_state_dir_despite`): the error is
    raised only when the state directory itself cannot be told."""
    if state_dir:
        return Path(state_dir)
    path = config or "dtp.toml"
    try:
        return load_config(path).daemon.state_dir
    except DaemonConfigError as exc:
        found = _state_dir_despite(Path(path))
        if found is None:
            raise
        print(f"dtp status: {exc} (the status of {found} follows)", file=sys.stderr)
        return found


def _state_dir_despite(path: Path) -> Path | None:
    """``[daemon] state_dir`` of a config file that is valid TOML but fails validation
    elsewhere (a forward's target, a service's backends): the running daemon refused
    that edit at its reload and goes on, so ``dtp status --config`` shows its status
    even before the file is fixed. None when the file does not say."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None
    table = doc.get("daemon", {})
    value = table.get("state_dir", "dtp-state") if isinstance(table, dict) else None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        return None
    try:
        candidate = Path(value).expanduser()
    except RuntimeError:  # "~user" unknown
        return None
    return candidate if candidate.is_absolute() else path.parent / candidate


def _malformed(status: dict[str, Any]) -> str | None:
    """What makes a status record unusable for the table, if anything."""
    for part in ("services", "forwards"):
        rows = status.get(part)
        if rows is None:
            continue
        if not isinstance(rows, dict):
            return f"{part!r} is not an object"
        for name, row in rows.items():
            if not isinstance(row, dict):
                return f"{part}[{name!r}] is not an object"
    return None


LIVE_TIMEOUT = 2.0
"""Seconds ``dtp status`` waits for the running daemon's answer before it reads the
status file instead."""


def read_live(state_dir: Path, timeout: float = LIVE_TIMEOUT) -> dict[str, Any] | None:
    """The running daemon's live status, asked over its control socket
    (:mod:`dtp.daemon._control`), or None when no daemon answers there (none runs, one
    still starting or stopping, or one too old to have the socket)."""
    try:
        body = unix_get(state_dir / CONTROL_SOCKET, "/status.json", timeout)
        status = json.loads(body, parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError):
        return None
    return status if isinstance(status, dict) else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def main(config: str | None, state_dir: str | None, as_json: bool, live: bool = True) -> int:
    """Entry point of ``dtp status``: the status on stdout, errors on stderr (with
    ``as_json``, as one JSON object: :func:`dtp.daemon._reporting.report`). The running
    daemon's live counters when it answers on its control socket (``live``), else the
    status file it last wrote (``source`` in the JSON: ``live`` or ``file``)."""
    fail = partial(report, "status", as_json=as_json)
    try:
        directory = state_dir_of(config, state_dir)
    except DaemonConfigError as exc:
        return fail(2, exc)
    status = read_live(directory) if live else None
    if status is not None:
        status["source"] = "live"
    else:
        status = read_status(directory)
        if status is not None:
            status["source"] = "file"
    if status is None:
        path = directory / STATUS_FILE
        if path.is_file() and os.access(path, os.R_OK):
            return fail(1, f"{path} is damaged: not a JSON object", kind="StatusFileDamaged")
        return fail(1, f"no daemon status in {directory} (has the daemon run?)", kind="NoStatus")
    problem = _malformed(status)
    if problem is not None:
        return fail(1, f"{directory / STATUS_FILE} is damaged: {problem}", kind="StatusFileDamaged")
    if as_json:
        print(json.dumps({**status, "running": daemon_running(status)}, indent=2, sort_keys=True))
    else:
        print(format_table(status))
    return 0
