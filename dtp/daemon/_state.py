"""The daemon's counters and the status file ``dtp status`` reads.

Counters live in memory (one event loop writes them) and are written to
``<state_dir>/status.json`` (:func:`dtp.identity._files.write_durably`; how often, and
what survives a restart: docs/daemon.md, "How it works", "Status"). The periodic
writes happen in a thread of their own, off the event loop (their two fsyncs held up
every tunnel for as long as the disk took); the one at exit, forced, is done by the
time :meth:`StatusBook.save` returns.

The names of the state directory's other files are here too, for the commands that
look into a daemon's state directory without running it (``dtp claim``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dtp.daemon._logs import kv
from dtp.identity._files import write_durably

logger = logging.getLogger("dtp.daemon")

__all__ = [
    "CONNECTIONS_FILE",
    "CONTROL_SOCKET",
    "DENIAL_REASONS",
    "FORWARD_DENIALS",
    "LOCK_FILE",
    "RECEIPTS_FILE",
    "SERVICE_DENIALS",
    "STATUS_FILE",
    "ForwardStats",
    "ServiceStats",
    "StatusBook",
    "lock_holder",
    "process_identity",
    "read_status",
]

STATUS_FILE = "status.json"
RECEIPTS_FILE = "receipts.sqlite"
"""The receipt store of the daemon's paid services (:mod:`dtp.payments.receipt_store`)."""
CONNECTIONS_FILE = "connections.sqlite"
"""The book of the connections the daemon's forwarders opened and that are not settled
yet (:mod:`dtp.daemon._refunds`)."""
LOCK_FILE = "daemon.lock"
"""Held (``flock``) by the daemon using a state directory, and holding its pid."""
CONTROL_SOCKET = "control.sock"
"""The running daemon's Unix socket: its live counters for ``dtp status``
(:mod:`dtp.daemon._control`)."""


def lock_holder(state_dir: Path) -> int | None:
    """The pid the state directory's lock file holds (the daemon that took it last),
    None when it cannot be read."""
    try:
        with open(state_dir / LOCK_FILE, "rb") as f:
            holder = f.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(holder) if holder.isdigit() else None


class _Denials:
    """What both rows count denials with (no fields: each row's stay in its order)."""

    denials: int
    denied: dict[str, int]

    def deny(self, reason: str, count: int = 1) -> None:
        """Count ``count`` denials for ``reason`` (one of :data:`DENIAL_REASONS`)."""
        if count <= 0:
            return
        self.denials += count
        self.denied[reason] = self.denied.get(reason, 0) + count


@dataclass
class ServiceStats(_Denials):
    """Counters of one exposed service."""

    port: int = 0
    connections: int = 0
    """DTP connections admitted."""
    tunnels: int = 0
    """Tunnels (one per forwarded TCP connection) served."""
    active_tunnels: int = 0
    bytes_in: int = 0
    """Bytes from clients to the backends."""
    bytes_out: int = 0
    """Bytes from the backends to clients."""
    denials: int = 0
    """Connections or tunnels refused (firewall, admission, unpaid usage)."""
    denied: dict[str, int] = field(default_factory=dict)
    """``denials`` by reason (:data:`DENIAL_REASONS`): :meth:`deny` counts both."""
    rate_limited: int = 0
    """UDP datagrams dropped over the client's rate limits (TCP tunnels wait instead)."""
    backend_errors: int = 0
    """Backend connects that failed (another backend may have taken over)."""
    unavailable: int = 0
    """Tunnels refused because no backend was reachable."""
    receipts_held: int = 0
    """Connections whose latest receipt still has MIST to claim."""
    fees_earned: int = 0
    """MIST covered by accepted receipts."""
    fees_claimed: int = 0
    """MIST claimed on the ledger."""
    refunded: int = 0
    """MIST refunded to clients at settlement."""
    ends_left: int = 0
    """Connections whose end was left to their client: the fee they could still claim
    was below the gas of claiming it (docs/escrow.md §7.1)."""
    fees_left: int = 0
    """MIST of fees those ends gave up (their clients got them back)."""
    healthy_backends: int = 0
    receipts: int = 0
    """Receipts accepted and kept (on disk): each one a client's signed payment."""
    claims: int = 0
    """Settlements that claimed a fee on the ledger."""
    claim_failures: int = 0
    """Settlements that failed (the ledger away, a refusal, out of gas), each try
    counted: the failed one is tried again (docs/daemon.md, "Fees")."""
    datagrams_in: int = 0
    """UDP: datagrams from clients relayed to the backends."""
    datagrams_out: int = 0
    """UDP: datagrams from the backends relayed to clients."""
    datagrams_dropped: dict[str, int] = field(default_factory=dict)
    """UDP: datagrams dropped, by reason (``unpaid``, ``rate_limited``, ``oversized``,
    ``backlog``, ``send_failed``, ``finishing``, ``no_session``)."""


@dataclass
class ForwardStats(_Denials):
    """Counters of one client-side forwarder."""

    listen: str = ""
    target: str = ""
    connections: int = 0
    """DTP connections opened on the ledger."""
    tunnels: int = 0
    active_tunnels: int = 0
    bytes_in: int = 0
    """Bytes from local clients into the tunnel."""
    bytes_out: int = 0
    """Bytes from the tunnel back to local clients."""
    denials: int = 0
    """Connections the remote side or its ledger refused."""
    denied: dict[str, int] = field(default_factory=dict)
    """``denials`` by reason (:data:`DENIAL_REASONS`)."""
    errors: int = 0
    """Tunnels that ended with an error (unreachable service, no backend)."""
    receipts_sent: int = 0
    fees_paid: int = 0
    """MIST covered by the receipts sent."""
    datagrams_in: int = 0
    """UDP: datagrams from local clients sent into the tunnel."""
    datagrams_out: int = 0
    """UDP: datagrams from the tunnel delivered to local clients."""
    datagrams_dropped: dict[str, int] = field(default_factory=dict)
    """UDP: datagrams dropped, by reason (as :attr:`ServiceStats.datagrams_dropped`)."""


DENIAL_REASONS = {
    "firewall": "the service's own allow/deny lists refuse the client",
    "host_firewall": "the Host's firewall, re-read while serving, now denies the client",
    "ledger": "the ledger refused: no Open, funded connection of this client "
    "(admission), or the target host or its connection (a forward's open)",
    "limit": "the Host's connection limits (per client, per service)",
    "duplicate": "a second DTP connection on a ledger connection already served",
    "settling": "the ledger connection is being settled",
    "refused": "the remote daemon refused the connection (a forward)",
    "unpaid": "usage the receipts did not cover: tunnels cut, UDP datagrams dropped",
}
"""The reasons denials are counted under (``denied`` in the status, the ``reason``
label of ``dtp_service_denials_total``): a small fixed set, not the refusal's text."""

SERVICE_DENIALS = (
    "firewall",
    "host_firewall",
    "ledger",
    "limit",
    "duplicate",
    "settling",
    "unpaid",
)
"""The reasons a service counts denials under."""
FORWARD_DENIALS = ("ledger", "refused", "unpaid")
"""The reasons a forward counts denials under."""


_LIVE = {"active_tunnels", "healthy_backends", "receipts_held"}


@dataclass
class StatusBook:
    """All counters of one daemon process, and the file they are saved to."""

    state_dir: Path
    services: dict[str, ServiceStats] = field(default_factory=dict)
    forwards: dict[str, ForwardStats] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    interval: float = 0.5
    _saved_at: float = 0.0
    _dirty: bool = True
    _save_error: str | None = None
    """Why the last write failed (logged once until it succeeds again)."""
    _failed: bool = False
    """Whether the latest write failed (to be tried again after the interval)."""
    _taken: int = 0
    """How many snapshots of the counters were taken for the disk (each one's number)."""
    _written: int = 0
    """The number of the newest snapshot written (or given up): an older one never
    lands after it."""
    _pending: tuple[int, bytes] | None = None
    """The newest snapshot waiting for the writer thread."""
    _writer: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Guards ``_pending`` and ``_writer``."""
    _disk: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held by a write (one at a time), guards ``_written``, ``_save_error``, ``_failed``."""

    @classmethod
    def open(cls, state_dir: Path) -> StatusBook:
        """A book carrying over the cumulative counters of the last run."""
        book = cls(state_dir)
        previous = read_status(state_dir)
        if previous is not None:
            # a damaged file costs the old counters, not the start
            services, forwards = previous.get("services"), previous.get("forwards")
            for name, row in (services if isinstance(services, dict) else {}).items():
                book.services[name] = _revive(ServiceStats, row)
            for name, row in (forwards if isinstance(forwards, dict) else {}).items():
                book.forwards[name] = _revive(ForwardStats, row)
            # (what earlier runs paid in gas: dtp.daemon._gas.GasWatch adds this run's)
            gas = previous.get("gas")
            if isinstance(gas, dict) and isinstance(gas.get("spent"), dict):
                book.info["gas"] = {"spent": gas["spent"]}
        return book

    def service(self, name: str) -> ServiceStats:
        self._dirty = True
        return self.services.setdefault(name, ServiceStats())

    def forward(self, name: str) -> ForwardStats:
        self._dirty = True
        return self.forwards.setdefault(name, ForwardStats())

    def touch(self) -> None:
        self._dirty = True

    def to_json(self) -> dict[str, Any]:
        return {
            **self.info,
            "updated": time.time(),
            "services": {k: asdict(v) for k, v in sorted(self.services.items())},
            "forwards": {k: asdict(v) for k, v in sorted(self.forwards.items())},
        }

    def save(self, force: bool = False) -> None:
        """Write the file if anything changed and ``interval`` passed (or ``force``):
        a snapshot of the counters is taken here, and written by a thread of its own
        (the newest snapshot once the write under way ends), or, when ``force``, before
        returning (after a write under way, and instead of the snapshots waiting)."""
        now = time.monotonic()
        if not force and (
            not (self._dirty or self._failed) or now - self._saved_at < self.interval
        ):
            return
        self._saved_at = now  # a failed write is tried again after the interval too
        self._dirty = False
        self._taken += 1
        # taken on the caller's thread: the counters are the event loop's alone
        snapshot = (self._taken, json.dumps(self.to_json(), indent=1, sort_keys=True).encode())
        if force:
            with self._lock:
                self._pending = None  # older than this one: never to land after it
            self._write(*snapshot)
            return
        with self._lock:
            self._pending = snapshot
            if self._writer is not None:
                return  # it writes this one once the write in hand ends
            self._writer = threading.Thread(
                target=self._write_pending, name="dtp-status-writer", daemon=False
            )
            try:
                self._writer.start()
            except RuntimeError:  # no thread to be had (out of them, or Python exiting)
                self._writer = None
            else:
                return
        self._write_all()  # here, then: left pending, it would never be written

    def _write_pending(self) -> None:
        """The writer thread's work."""
        # (the daemon's signals are handled by the main thread: none is taken here, as
        # in the daemon's other worker threads)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self._write_all()

    def _write_all(self) -> None:
        """Write the pending snapshot, then the next, until none waits."""
        while True:
            with self._lock:
                snapshot, self._pending = self._pending, None
                if snapshot is None:
                    self._writer = None
                    return
            try:
                self._write(*snapshot)
            except Exception as exc:
                # a fault, not the disk's: tried again after the interval, as a failed
                # write is; the thread goes on writing (tests/daemon/test_status_file.py)
                error = repr(exc)
                with self._disk:
                    if error != self._save_error:  # (logged once, as a disk's error)
                        self._save_error = error
                        logger.error("status file not written", extra=kv(error=error))

    def _write(self, number: int, data: bytes) -> None:
        """Write snapshot ``number`` unless a newer one was written already."""
        target = self.state_dir / STATUS_FILE
        with self._disk:
            if number <= self._written:
                return
            self._written = number
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                # synced before and after its rename (two fsyncs, at most one save per
                # interval): renamed unsynced, a power cut could leave an empty file,
                # read back as damaged (`dtp status` failing, the next start losing the
                # counters)
                write_durably(target, data)
            except OSError as exc:
                # the counters are for `dtp status`: a full disk or a broken file must
                # not stop the daemon serving: logged here, never out into the run loop
                self._failed = True
                where = exc.filename2 or exc.filename  # os.replace: the target is the 2nd
                if isinstance(where, str) and Path(where).name.startswith(f".{STATUS_FILE}."):
                    # its temporary file, named anew each time: the error would differ
                    # at every try, and be logged again every interval
                    where = str(target)
                error = f"{exc.strerror or exc}: {where}" if where else str(exc)
                if error != self._save_error:
                    self._save_error = error
                    logger.warning("status file not written", extra=kv(error=error))
                return
            except BaseException:
                self._failed = True  # (whatever failed it: tried again all the same)
                raise
            self._failed = False
            if self._save_error is not None:
                self._save_error = None
                logger.info("status file written again", extra=kv(path=str(target)))


#: Blocked in the writer thread (the daemon's: cli.CAUGHT_SIGNALS).
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _revive(kind: type[Any], row: Any) -> Any:
    """A counters row from a saved one, keeping only the values of the right type: a
    damaged file (a string where a count goes) costs those counters, while taking it
    would fail every later ``+= 1`` and with it every connection."""
    if not isinstance(row, dict):
        return kind()
    values: dict[str, Any] = {}
    for f in fields(kind):
        value = row.get(f.name)
        if f.name in _LIVE or value is None:
            continue
        if isinstance(f.default, str):
            if isinstance(value, str):
                values[f.name] = value
        elif f.default_factory is dict:  # (counts by reason)
            if isinstance(value, dict):
                values[f.name] = {
                    str(k): v
                    for k, v in value.items()
                    if isinstance(v, int) and not isinstance(v, bool) and v >= 0
                }
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            values[f.name] = value
    return kind(**values)


def process_identity(pid: int) -> str | None:
    """What tells process ``pid`` apart from a later one given the same pid: the boot it
    runs in and its start time in clock ticks since that boot (``/proc``), or None where
    ``/proc`` cannot say (not Linux, or the process is gone)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after its last
    # ")" start at field 3, so the start time (field 22) is the 20th of them
    rest = stat.rpartition(")")[2].split()
    return f"{boot}:{rest[19]}" if len(rest) > 19 else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last saved status, or None when there is none (or it is unreadable)."""
    try:
        # NaN and Infinity: json.loads takes them, but `dtp status --json` would print
        # them back, and no JSON reader takes that
        data = json.loads((state_dir / STATUS_FILE).read_text(), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError):  # (RecursionError: nested past the stack)
        return None
    return data if isinstance(data, dict) else None
