"""The daemon's config file (TOML, docs/daemon.md): parsing and validation.

Every error names the file, the line and the key (``dtp.toml:12: service[1].port: …``).
``tomllib`` gives values but no positions, so :func:`key_lines` scans the text once and
maps each key path (``("service", 1, "port")``) to the line it is set on.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtp._extras import require
from dtp.daemon._logs import LOG_BACKUPS, LOG_MAX_BYTES
from dtp.errors import DaemonConfigError, InvalidObjectId, MissingExtra, finite_float, shown
from dtp.eventloop import EVENT_LOOPS
from dtp.hostid._address import HostAddress
from dtp.hostid.udp import DEFAULT_LOSS_ALLOWANCE
from dtp.ledger._objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_ENDPOINT_LENGTH,
    MAX_FIREWALL_ENTRIES,
    MAX_HALF_CLOSE_TIMEOUT_MS,
    MAX_PURE_BYTES,
    MIN_HALF_CLOSE_TIMEOUT_MS,
    Sla,
    normalize_id,
)
from dtp.ledger._spec import LedgerSpec, parse_ledger_spec

__all__ = [
    "Backend",
    "DaemonConfig",
    "DaemonSettings",
    "FirewallConfig",
    "ForwardConfig",
    "ServiceConfig",
    "join_host_port",
    "key_lines",
    "load_config",
    "parse_config",
]

KeyPath = tuple[str | int, ...]

#: ``[daemon] refund_interval`` by default: seconds between two looks at the connections
#: the forwarders opened and no longer use, until each is settled (dtp.daemon._refunds;
#: a link's end looks at once).
REFUND_INTERVAL = 30.0

#: ``[daemon] open_grace`` by default: seconds the admission looks for a connection a
#: client names while its open may still be landing. The library's default
#: (LedgerAdmission.OPEN_GRACE), repeated rather than imported: dtp.hostid._admission
#: would double this module's import time, which ``dtp status`` pays; a test keeps the
#: two equal (tests/hostid/test_open_grace.py).
OPEN_GRACE = 2.0
#: The same on Sui, longer on purpose: the provider's full node may show the open later
#: than the one the client's open executed on (docs/daemon.md, "On Sui").
OPEN_GRACE_SUI = 3.0
#: ``[[forward]] open_timeout`` by default: seconds a new DTP connection of a forward
#: may take, its ledger open and handshake included; on Sui the open is two
#: transactions, each of which may take seconds under load (retries included). One
#: value for TCP and UDP forwards: a UDP flow's connection opens as a TCP forward's.
OPEN_TIMEOUT = 10.0
OPEN_TIMEOUT_SUI = 30.0
#: ``[daemon] batch_window`` by default, and at most: seconds a connection's end worth
#: a place in a batch waits for one (dtp.payments._ends.BATCH_WINDOW, repeated rather
#: than imported, as OPEN_GRACE is; tests/daemon/test_end_gas.py keeps the two equal).
#: At most 5 minutes: well within the 10-minute half-close timeout after which a client
#: that half-closed may settle alone.
BATCH_WINDOW = 60.0
MAX_BATCH_WINDOW = 300.0
#: ``[daemon] claim_age`` and ``claim_interval`` by default
#: (dtp.payments._live_claims.CLAIM_AGE and CLAIM_INTERVAL, repeated as BATCH_WINDOW is;
#: tests/daemon/test_end_gas.py keeps them equal), and the longest interval: a claim
#: spaced further would come after a good part of the half-close timeout.
CLAIM_AGE = 0.5
CLAIM_INTERVAL = 10.0
MAX_CLAIM_INTERVAL = 300.0
#: ``claim_above`` when ``false``: never by amount (2**64-1 MIST, more than a TOML
#: integer can say)
NEVER_BY_AMOUNT = 2**64 - 1


@dataclass(frozen=True)
class Backend:
    """One TCP backend of a service."""

    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:7700``): unbracketed,
    clients reading a published endpoint cannot tell the port from the address."""
    return f"[{host}]:{port}" if _is_ipv6(host) else f"{host}:{port}"


@dataclass(frozen=True)
class FirewallConfig:
    """The host-wide firewall, published on the ledger."""

    mode: str = "open"
    """``"open"`` (everyone not denied) or ``"allowlist"``."""
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_connections_per_client: int = 0
    """Per-client limits published on the Host (0: unlimited). The daemon enforces
    the rates on its tunnels by back-pressure, with the values read back from the
    ledger (so a change made there reaches open tunnels within a refresh)."""
    max_bytes_per_sec: int = 0
    max_requests_per_sec: int = 0
    """A request is one tunnel."""


@dataclass(frozen=True)
class ServiceConfig:
    """A DTP service (``<host id>:<port>``) backed by local TCP backends."""

    name: str
    port: int
    backends: tuple[Backend, ...]
    kind: str = "raw"
    price_per_kib: int = 0
    price_per_request: int = 0
    min_deposit: int = 0
    max_connections: int = 0
    allow: tuple[str, ...] = ()
    """Per-service allow list, enforced by the daemon (empty: everyone)."""
    deny: tuple[str, ...] = ()
    """Per-service deny list, enforced by the daemon."""
    health_interval: float = 2.0
    connect_timeout: float = 2.0
    unpaid_slack: int = 16 << 20
    """Bytes a paying client may run ahead of its latest receipt before the daemon
    holds its tunnels back (and cuts them when no receipt catches up within
    ``dtp.daemon._served_tunnels.UNPAID_PAUSE``); must exceed the connection's flow-control
    window (8 MiB) plus the forwarder's ``receipt_every``, since bytes in flight are not
    yet receipted."""
    protocol: str = "tcp"
    """``"tcp"`` (streams to TCP backends) or ``"udp"`` (DTP datagrams to UDP backends,
    one per client flow, billed per datagram: docs/udp.md)."""
    idle_timeout: float = 60.0
    """UDP: a flow with no datagram for this long ends (and is settled)."""
    credit_datagrams: int = 1024
    """UDP, paid: datagrams relayed ahead of the receipts that cover them."""
    loss_allowance: float = DEFAULT_LOSS_ALLOWANCE
    """UDP, paid: the share of reply bytes written off as lost on the way back (never
    signed for by the client; docs/udp.md)."""
    half_close_timeout_ms: int | None = None
    """The half-close timeout the service publishes in its terms (``half_close_timeout``,
    in seconds in the file; docs/escrow.md §2); None: not set, so the one published is
    kept (a new service gets the ledger's default, 10 minutes), and one a provider set by
    hand is never undone by a start or a reload."""

    @property
    def paid(self) -> bool:
        return self.sla().paid

    def sla(self, published: Sla | None = None) -> Sla:
        """The terms the service publishes: its prices and minimum deposit, and its
        half-close timeout -- else ``published``'s (the terms on the ledger now), else the
        ledger's default."""
        timeout = self.half_close_timeout_ms
        if timeout is None:
            timeout = published.half_close_timeout_ms if published else HALF_CLOSE_TIMEOUT_MS
        return Sla(self.price_per_kib, self.price_per_request, self.min_deposit, timeout)


@dataclass(frozen=True)
class ForwardConfig:
    """A local TCP listener whose connections are tunnelled to a remote DTP service."""

    name: str
    listen: Backend
    target: HostAddress
    deposit: int | None = None
    """MIST per DTP connection; default the SLA's minimum."""
    receipt_every: int = 256 * 1024
    """Bytes between signed receipts (paid services)."""
    protocol: str = "tcp"
    """``"tcp"`` or ``"udp"`` (a local UDP port; one DTP connection per source
    address, billed per datagram)."""
    idle_timeout: float = 30.0
    """UDP: a local flow with no datagram for this long ends its DTP connection."""
    connection_idle_timeout: float = 60.0
    """Seconds without anything from the target host (its keepalives included) before
    a DTP connection of this forward is given up (and its tunnels end)."""
    open_timeout: float = OPEN_TIMEOUT
    """Seconds a new DTP connection to the target may take, all of it: its ledger work
    (the Host's and the balance's reads, a spending cap and the open: two transactions
    on Sui), the carrier connect and the handshake (:data:`OPEN_TIMEOUT`, or
    :data:`OPEN_TIMEOUT_SUI` on a Sui ledger, by default). Past it the open is given up
    (and abandoned in the background: one that lands is half-closed)."""


@dataclass(frozen=True)
class DaemonSettings:
    """The ``[daemon]`` table."""

    ledger: LedgerSpec
    """The ledger spec of ``ledger`` (a file name is relative to the config file's
    directory; docs/sui.md, "Ledger specs")."""
    identity: Path
    state_dir: Path
    listen: Backend = Backend("127.0.0.1", 0)
    public_endpoint: str | None = None
    host_id: str | None = None
    faucet: int = 0
    drain_timeout: float = 10.0
    connection_idle_timeout: float = 60.0
    """Seconds without anything from a client (its keepalives included) before the
    service listener gives up its DTP connection (and its tunnels end)."""
    log_format: str = "json"
    log_level: str = "info"
    sui_package: str | None = None
    """``sui_package``: the dtp package on a Sui ledger (else ``$DTP_SUI_PACKAGE``, else
    what ``dtp deploy`` recorded for the network)."""
    open_grace: float = OPEN_GRACE
    """Seconds the admission looks for a connection a client names before refusing it
    (its open may still be landing, or not be shown yet by this daemon's full node):
    :data:`OPEN_GRACE`, or :data:`OPEN_GRACE_SUI` on a Sui ledger, by default."""
    low_gas: int | None = None
    """MIST of gas below which ``dtp status`` and the log warn (None: enough for 100
    transactions at the ledger's gas budget; no gas, no warning, on a LocalLedger)."""
    refund_interval: float = REFUND_INTERVAL
    """Seconds between the looks at the connections the forwarders opened and no
    longer use, until each is settled (:mod:`dtp.daemon._refunds`)."""
    lan_announce: bool = False
    """Announce each service on the LAN over mDNS (``dtp.discovery.lan``: its Host ID,
    name, DTP port and the host's Noise key), withdrawn as it is removed or the daemon
    stops."""
    lan_interfaces: tuple[str, ...] = ()
    """The IP addresses of the interfaces to announce on (empty: every interface)."""
    gas_aware_ends: bool = True
    """Weigh each connection's end against its gas (docs/escrow.md §7.1): one whose fee
    does not cover the gas of claiming it is settled with others in one transaction,
    or left to its client. False: every end is settled. No effect on a LocalLedger
    (no gas)."""
    batch_window: float = BATCH_WINDOW
    """Seconds an end worth a place in a batch, but not a transaction of its own, waits
    for others (0: none waits)."""
    claim_above: int | None = None
    """MIST a served connection's receipts may hold unclaimed before they are claimed,
    while it lives (docs/escrow.md §7.1): None, as soon as that pays for the claim's
    gas; :data:`NEVER_BY_AMOUNT` (``false`` in the file): never by amount."""
    claim_age: float | None = CLAIM_AGE
    """The fraction of a connection's half-close timeout after which a receipt still
    unclaimed is claimed while it lives (None, ``false`` in the file: never by age)."""
    claim_interval: float = CLAIM_INTERVAL
    """The least time (seconds) between two claims of one connection while it lives."""
    websocket_listen: Backend | None = None
    """Where the services are also served over the WebSocket carrier (docs/protocol.md
    §13), for web pages (None: TCP only; port 0: any, the ready line tells which).
    Needs ``dtp-sui[ws]``."""
    websocket_origins: tuple[str, ...] = ()
    """The web origins whose pages may connect over WebSocket (``"https://app.example"``;
    ``"*"``: any); none by default: only clients that send no Origin (programs)."""
    websocket_cert: Path | None = None
    """The PEM certificate chain served on ``websocket_listen`` (``wss://``; None:
    ``ws://``): dtp.daemon._ws_tls."""
    websocket_key: Path | None = None
    """The unencrypted PEM private key of ``websocket_cert``."""
    metrics_listen: Backend | None = None
    """Where the Prometheus metrics and the status page are served over HTTP (None:
    not served; port 0: any, the ready line tells which). Needs ``dtp-sui[metrics]``."""
    log_file: Path | None = None
    """The file the logs go to, rotated by size (None: stderr)."""
    log_max_bytes: int = LOG_MAX_BYTES
    """The size at which ``log_file`` is rotated (0: never)."""
    log_backups: int = LOG_BACKUPS
    """Rotated log files kept (``log_file``.1 the newest)."""
    event_loop: str = "auto"
    """The event loop the daemon runs on (:mod:`dtp.eventloop`): ``"auto"`` (uvloop
    when installed, else asyncio's), ``"uvloop"`` (needs ``dtp-sui[fast]``) or
    ``"asyncio"``."""


@dataclass(frozen=True)
class DaemonConfig:
    """A whole validated config file."""

    path: Path
    daemon: DaemonSettings
    firewall: FirewallConfig = FirewallConfig()
    services: tuple[ServiceConfig, ...] = ()
    forwards: tuple[ForwardConfig, ...] = ()
    lines: Mapping[KeyPath, int] = field(default_factory=dict, compare=False, repr=False)

    def error(self, key: KeyPath, message: str) -> DaemonConfigError:
        """An error about ``key`` in the config's words: ``file:line: key: message``."""
        return _Checker(self.path, self.lines).fail(key, message)


# -- key positions -------------------------------------------------------------------------


def _split_key(text: str) -> list[str]:
    """A dotted TOML key into its parts (bare or quoted)."""
    parts: list[str] = []
    current = ""
    quote: str | None = None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _bracket_delta(value: str) -> tuple[int, bool]:
    """Net ``[``/``{`` depth change of a value fragment outside strings, and whether a
    multi-line basic/literal string stays open at its end."""
    depth = 0
    i = 0
    quote: str | None = None
    while i < len(value):
        ch = value[i]
        triple = value[i : i + 3]
        if quote is None:
            if triple in ('"""', "'''"):
                end = value.find(triple, i + 3)
                if end < 0:
                    return depth, True
                i = end + 3
                continue
            if ch in "\"'":
                quote = ch
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
            elif ch == "#":
                break
        elif ch == "\\" and quote == '"':
            i += 1
        elif ch == quote:
            quote = None
        i += 1
    return depth, False


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path to the (1-based) line that sets it; array-of-tables entries are
    indexed (``("service", 0, "port")``), and each table header maps too."""
    lines: dict[KeyPath, int] = {}
    counts: dict[tuple[str, ...], int] = {}
    table: KeyPath = ()
    depth = 0
    in_string: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        if depth > 0:
            delta, _ = _bracket_delta(line)
            depth = max(0, depth + delta)
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            name = tuple(_split_key(line[2 : line.index("]]")]))
            index = counts.get(name, 0)
            counts[name] = index + 1
            table = (*name, index)
            lines[table] = number
            continue
        if line.startswith("["):
            table = tuple(_split_key(line[1 : line.index("]")]))
            lines[table] = number
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        lines[(*table, *_split_key(key))] = number
        delta, open_string = _bracket_delta(value)
        depth = max(0, delta)
        if open_string:
            in_string = '"""' if '"""' in value else "'''"
    return lines


# -- validation ----------------------------------------------------------------------------


class _Checker:
    """Reads values out of the parsed document, raising errors with positions."""

    def __init__(self, path: Path, lines: Mapping[KeyPath, int]) -> None:
        self.path = path
        self.lines = lines

    def where(self, key: KeyPath) -> str:
        line = self.lines.get(key)
        if line is None and key:
            # a dotted key (``health.interval = 2``) maps only its full path: ``health``
            # is on that line, not on the [[service]] header the fallback below finds
            longer = [n for path, n in self.lines.items() if path[: len(key)] == key]
            line = min(longer, default=None)
        probe = key
        while line is None and probe:
            probe = probe[:-1]
            line = self.lines.get(probe)
        return f"{self.path}:{line}" if line is not None else str(self.path)

    def setting(self, key: KeyPath) -> str:
        """``file:line: key``: where a setting is, as errors name it."""
        return f"{self.where(key)}: {_dotted(key)}"

    def fail(self, key: KeyPath, message: str) -> DaemonConfigError:
        return DaemonConfigError(f"{self.setting(key)}: {message}")

    def table(self, doc: Mapping[str, Any], key: KeyPath, known: set[str]) -> None:
        for name in doc:
            if name not in known:
                hint = ", ".join(sorted(known))
                return_key = (*key, name)
                raise self.fail(return_key, f"unknown key (expected one of: {hint})")

    def string(self, doc: Mapping[str, Any], key: KeyPath, default: str | None = None) -> str:
        value = doc.get(str(key[-1]), default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def integer(
        self,
        doc: Mapping[str, Any],
        key: KeyPath,
        default: int,
        low: int = 0,
        high: int = 2**64 - 1,
    ) -> int:
        value = doc.get(str(key[-1]), default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected an integer in {low}..{high}, got {shown(value)}")
        return value

    def boolean(self, doc: Mapping[str, Any], key: KeyPath, default: bool) -> bool:
        value = doc.get(str(key[-1]), default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {shown(value)}")
        return value

    def ip_addresses(self, doc: Mapping[str, Any], key: KeyPath) -> tuple[str, ...]:
        value = doc.get(str(key[-1]), [])
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of IP addresses, got {shown(value)}")
        out: dict[str, None] = {}  # in order, each once
        for item in value:
            try:
                if not isinstance(item, str):
                    raise ValueError  # (ip_address takes an int too: 1 is 0.0.0.1)
                out[str(ipaddress.ip_address(item))] = None
            except ValueError:
                raise self.fail(key, f"{shown(item)} is not an IP address") from None
        return tuple(out)

    def number(self, doc: Mapping[str, Any], key: KeyPath, default: float) -> float:
        value = doc.get(str(key[-1]), default)
        # TOML has nan and inf; nan <= 0 is False, so finiteness is checked on its own
        seconds = finite_float(value)
        if seconds is None or seconds <= 0:
            raise self.fail(key, f"expected a positive number of seconds, got {shown(value)}")
        return seconds

    def seconds_within(
        self, doc: Mapping[str, Any], key: KeyPath, default: float, high: float
    ) -> float:
        """A number of seconds from 0 to ``high``."""
        value = doc.get(str(key[-1]), default)
        seconds = finite_float(value)
        if seconds is None or not 0 <= seconds <= high:
            raise self.fail(
                key, f"expected a number of seconds from 0 to {high:g}, got {shown(value)}"
            )
        return seconds

    def share(self, doc: Mapping[str, Any], key: KeyPath, default: float) -> float:
        value = doc.get(str(key[-1]), default)
        share = finite_float(value)
        if share is None or not 0 <= share < 1:
            raise self.fail(key, f"expected a share in [0, 1), got {shown(value)}")
        return share

    def origins(self, doc: Mapping[str, Any], key: KeyPath) -> tuple[str, ...]:
        """A list of web origins (``scheme://host[:port]``, as a browser sends them in
        ``Origin``), or ``"*"``."""
        value = doc.get(str(key[-1]), [])
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of origins, got {shown(value)}")
        out: dict[str, None] = {}
        for item in value:
            scheme, sep, rest = item.partition("://") if isinstance(item, str) else ("", "", "")
            ok = item == "*" or (sep and scheme and rest and "/" not in rest)
            if not ok:
                raise self.fail(
                    key, f'{shown(item)} is not an origin ("https://app.example" or "*")'
                )
            out[item] = None
        return tuple(out)

    def choice(
        self, doc: Mapping[str, Any], key: KeyPath, default: str, options: tuple[str, ...]
    ) -> str:
        value = doc.get(str(key[-1]), default)
        if value not in options:
            raise self.fail(key, f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    def endpoint(self, doc: Mapping[str, Any], key: KeyPath, value: Any = None) -> Backend:
        text = doc.get(str(key[-1])) if value is None else value
        if text is None:
            raise self.fail(key, "is required")
        if not isinstance(text, str):
            raise self.fail(key, f'expected "host:port", got {text!r}')
        host, sep, port = text.rpartition(":")
        # "[::1]:80": the brackets go in pairs ("[::1:80" is no address)
        bracketed = host.startswith("[") or host.endswith("]")
        if bracketed and not (host.startswith("[") and host.endswith("]")):
            raise self.fail(key, f'expected "host:port", got {text!r}')
        if bracketed:
            host = host[1:-1]
            if not _is_ipv6(host):
                # brackets are for an IPv6 address alone: "[[::1]]:80" and
                # "[localhost]:80", published, would be taken by no client's URL parser
                # (admission.tcp_endpoint)
                raise self.fail(
                    key, f"expected an IPv6 address in the brackets, got {host!r} in {text!r}"
                )
        if not bracketed and ":" in host and "/" not in host and not _is_ipv6(host):
            # "::1" or "2001:db8::1" with the port left out would parse as the host ":"
            # (or "2001:db8:") and port 1, to which no connect can succeed
            raise self.fail(
                key, f'expected "host:port" (an IPv6 address in brackets: "[::1]:80"), got {text!r}'
            )
        # isdigit() alone accepts "²", which int() then refuses; a NUL (TOML's "\u0000")
        # would reach getaddrinfo, which raises ValueError instead of a socket error
        if not sep or not host or not port.isascii() or "\0" in host:
            raise self.fail(key, f'expected "host:port", got {text!r}')
        if not port.isdigit():
            raise self.fail(key, f'expected "host:port", got {text!r}')
        if any(ch.isspace() or not ch.isprintable() for ch in host):
            # no host name or address holds one: " 127.0.0.1" or "web 1" is refused
            # here, not by getaddrinfo at every connect (or bind) at run time
            raise self.fail(
                key,
                f"{host!r} is no valid host name (it holds a space or a "
                f"control character), in {text!r}",
            )
        digits = port.lstrip("0") or "0"
        if len(digits) > 5:
            # out of range anyway, and int() raises ValueError past 4300 digits
            raise self.fail(key, f"port {digits[:12]}... is outside 0..65535")
        try:
            host.encode("idna")
        except UnicodeError as exc:
            # getaddrinfo encodes the name so and raises UnicodeError, not a socket
            # error: checked here, where the file, line and key can be named
            why = exc.__cause__ or exc  # (the codec's words: "label empty or too long")
            raise self.fail(key, f"{host!r} is no valid host name ({why}), in {text!r}") from None
        if not 0 <= int(digits) <= 0xFFFF:
            raise self.fail(key, f"port {digits} is outside 0..65535")  # (its zeros cut)
        return Backend(host, int(digits))

    def addresses(
        self, doc: Mapping[str, Any], key: KeyPath, limit: int | None = None
    ) -> tuple[str, ...]:
        value = doc.get(str(key[-1]), [])
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of Sui addresses, got {value!r}")
        out: dict[str, None] = {}  # in order, each once
        for item in value:
            try:
                out[normalize_id(item, "address")] = None
            except InvalidObjectId as exc:
                raise self.fail(key, f"{item!r} is not a Sui address ({exc})") from None
        if limit is not None and len(out) > limit:
            raise self.fail(
                key, f"holds {len(out)} addresses; the ledger keeps at most {limit} per list"
            )
        return tuple(out)

    def path_value(self, doc: Mapping[str, Any], key: KeyPath, default: str | None) -> Path:
        text = self.string(doc, key, default)
        if "\0" in text:
            # TOML writes it "\u0000"; every file call would raise ValueError
            raise self.fail(key, f"a path cannot hold a NUL character, got {text!r}")
        try:
            candidate = Path(text).expanduser()
        except RuntimeError:
            # "~user/…" for a user the system does not know (or no home directory)
            raise self.fail(
                key, f"cannot expand {text!r}: unknown user or no home directory"
            ) from None
        return candidate if candidate.is_absolute() else self.path.parent / candidate


def _dotted(key: KeyPath) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate a config file; raises :class:`DaemonConfigError`."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise DaemonConfigError(f"{target}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DaemonConfigError(f"{target}: the config file is not UTF-8 text") from None
    return parse_config(text, target)


def parse_config(text: str, path: Path) -> DaemonConfig:
    """Validate config ``text`` read from ``path`` (paths inside are relative to it)."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively
        raise DaemonConfigError(f"{path}: TOML syntax error: values nested too deep") from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = ""
        if "(at line " in message:
            message, _, position = message.partition(" (at line ")
            line = ":" + position.split(",")[0].rstrip(")")
        raise DaemonConfigError(f"{path}{line}: TOML syntax error: {message}") from None
    except ValueError as exc:
        # tomllib's int() of an integer literal past 4300 digits (Python's limit on
        # integer string conversion), raised as a plain ValueError with no position
        raise DaemonConfigError(f"{path}: TOML value refused: {exc}") from None
    lines = key_lines(text)
    check = _Checker(path, lines)
    check.table(doc, (), {"daemon", "firewall", "service", "forward"})
    daemon_doc = doc.get("daemon", {})
    if not isinstance(daemon_doc, dict):
        raise check.fail(("daemon",), "expected a table [daemon]")
    settings = _settings(check, daemon_doc)
    firewall = _firewall(check, doc.get("firewall", {}))
    services = tuple(
        _service(check, item, ("service", i))
        for i, item in enumerate(_array(check, doc, "service"))
    )
    forwards = tuple(
        _forward(check, item, ("forward", i), settings.ledger.is_sui)
        for i, item in enumerate(_array(check, doc, "forward"))
    )
    _unique(check, [(("service", i, "port"), s.port) for i, s in enumerate(services)], "port")
    _unique(check, [(("service", i, "name"), s.name) for i, s in enumerate(services)], "name")
    _unique(check, [(("forward", i, "name"), f.name) for i, f in enumerate(forwards)], "name")
    listens = [
        (("forward", i, "listen"), f"{f.protocol}://{f.listen}")
        for i, f in enumerate(forwards)
        if f.listen.port
    ]
    _unique(check, listens, "listen address")
    if not services and not forwards:
        raise DaemonConfigError(f"{path}: nothing to do: add a [[service]] or a [[forward]]")
    return DaemonConfig(path, settings, firewall, services, forwards, lines)


def _array(check: _Checker, doc: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise check.fail((name,), f"expected [[{name}]] tables")
    return value


def _unique(check: _Checker, items: Sequence[tuple[KeyPath, object]], what: str) -> None:
    seen: dict[object, KeyPath] = {}
    for key, value in items:
        if value in seen:
            raise check.fail(key, f"duplicate {what} {value} (also at {check.where(seen[value])})")
        seen[value] = key


_DAEMON_KEYS = {
    "ledger",
    "identity",
    "state_dir",
    "listen",
    "public_endpoint",
    "host_id",
    "faucet",
    "drain_timeout",
    "connection_idle_timeout",
    "log_format",
    "log_level",
    "sui_package",
    "open_grace",
    "low_gas",
    "refund_interval",
    "lan_announce",
    "lan_interfaces",
    "gas_aware_ends",
    "batch_window",
    "claim_above",
    "claim_age",
    "claim_interval",
    "metrics_listen",
    "websocket_listen",
    "websocket_origins",
    "websocket_cert",
    "websocket_key",
    "log_file",
    "log_max_bytes",
    "log_backups",
    "event_loop",
}


def _settings(check: _Checker, doc: Mapping[str, Any]) -> DaemonSettings:
    k: KeyPath = ("daemon",)
    check.table(doc, k, _DAEMON_KEYS)
    host_id = None
    if "host_id" in doc:
        try:
            host_id = normalize_id(check.string(doc, (*k, "host_id")), "host ID")
        except InvalidObjectId as exc:
            raise check.fail((*k, "host_id"), str(exc)) from None
    public = doc.get("public_endpoint")
    if public is not None:
        if not isinstance(public, str) or len(public.encode()) <= MAX_ENDPOINT_LENGTH:
            # one too long is refused for its length, not for the long label it may hold
            published = check.endpoint(doc, (*k, "public_endpoint"))
            if published.port == 0:
                # port 0 is "any" to bind, never one to connect to: no client could
                # reach a host that published it
                raise check.fail(
                    (*k, "public_endpoint"), f"port 0 in {public!r} is no port to connect to"
                )
            if ":" in published.host and "[" not in public:
                public = str(published)  # "::1:7700" is published as "[::1]:7700"
        if len(public.encode()) > MAX_ENDPOINT_LENGTH:
            # the ledger refuses it: refused here, naming the key, before any ledger call
            raise check.fail(
                (*k, "public_endpoint"),
                f"is {len(public.encode())} bytes long; the ledger takes at most "
                f"{MAX_ENDPOINT_LENGTH}",
            )
    ledger = parse_ledger_spec(
        check.string(doc, (*k, "ledger")),
        setting=check.setting((*k, "ledger")),
        base=check.path.parent,
    )
    if ledger.is_sui:
        # here, not when the daemon opens the ledger: a config that cannot run on this
        # install is refused by its line, before anything starts
        _require(check, (*k, "ledger"), "sui", "A Sui ledger")
    package = None
    if "sui_package" in doc:
        package_key = (*k, "sui_package")
        try:
            package = normalize_id(check.string(doc, package_key), "package ID")
        except InvalidObjectId as exc:
            raise check.fail(package_key, str(exc)) from None
        if not ledger.is_sui:
            raise check.fail(
                package_key, f"names a Sui package, but ledger names {ledger.describe()}"
            )
    faucet = check.integer(doc, (*k, "faucet"), 0)
    if faucet and ledger.is_sui:
        # (the embedded ledger's test SUI: on a network the daemon's address is funded
        # from outside, before it starts)
        raise check.fail(
            (*k, "faucet"),
            f"only the embedded ledger has a faucet, and ledger names {ledger.describe()}: "
            "fund the daemon's address with `dtp fund` (the network's faucet) or `dtp transfer`, "
            "and remove faucet",
        )
    lan_announce = check.boolean(doc, (*k, "lan_announce"), False)
    if lan_announce:
        _require(check, (*k, "lan_announce"), "lan", "Announcing services on the LAN")
    websocket = None
    if "websocket_listen" in doc:
        websocket = check.endpoint(doc, (*k, "websocket_listen"))
        _require(check, (*k, "websocket_listen"), "ws", "The WebSocket carrier")
    event_loop = check.choice(doc, (*k, "event_loop"), "auto", EVENT_LOOPS)
    if event_loop == "uvloop":
        _require(check, (*k, "event_loop"), "fast", "The uvloop event loop")
    origins = check.origins(doc, (*k, "websocket_origins"))
    if origins and websocket is None:
        raise check.fail((*k, "websocket_origins"), "needs websocket_listen")
    cert, key = _websocket_tls(check, doc, k, websocket is not None)
    return DaemonSettings(
        ledger=ledger,
        identity=check.path_value(doc, (*k, "identity"), None),
        state_dir=check.path_value(doc, (*k, "state_dir"), "dtp-state"),
        listen=check.endpoint(doc, (*k, "listen"), doc.get("listen", "127.0.0.1:0")),
        public_endpoint=public,
        host_id=host_id,
        faucet=faucet,
        drain_timeout=check.number(doc, (*k, "drain_timeout"), 10.0),
        connection_idle_timeout=check.number(doc, (*k, "connection_idle_timeout"), 60.0),
        log_format=check.choice(doc, (*k, "log_format"), "json", ("json", "text")),
        log_level=check.choice(
            doc, (*k, "log_level"), "info", ("debug", "info", "warning", "error")
        ),
        sui_package=package,
        open_grace=check.number(
            doc, (*k, "open_grace"), OPEN_GRACE_SUI if ledger.is_sui else OPEN_GRACE
        ),
        low_gas=check.integer(doc, (*k, "low_gas"), 0) if "low_gas" in doc else None,
        refund_interval=check.number(doc, (*k, "refund_interval"), REFUND_INTERVAL),
        lan_announce=lan_announce,
        lan_interfaces=check.ip_addresses(doc, (*k, "lan_interfaces")),
        gas_aware_ends=check.boolean(doc, (*k, "gas_aware_ends"), True),
        batch_window=check.seconds_within(
            doc, (*k, "batch_window"), BATCH_WINDOW, MAX_BATCH_WINDOW
        ),
        claim_above=_claim_above(check, doc, (*k, "claim_above")),
        claim_age=_claim_age(check, doc, (*k, "claim_age")),
        claim_interval=check.seconds_within(
            doc, (*k, "claim_interval"), CLAIM_INTERVAL, MAX_CLAIM_INTERVAL
        ),
        metrics_listen=(
            check.endpoint(doc, (*k, "metrics_listen")) if "metrics_listen" in doc else None
        ),
        websocket_listen=websocket,
        websocket_origins=origins,
        websocket_cert=cert,
        websocket_key=key,
        log_file=check.path_value(doc, (*k, "log_file"), None) if "log_file" in doc else None,
        log_max_bytes=check.integer(doc, (*k, "log_max_bytes"), LOG_MAX_BYTES),
        log_backups=check.integer(doc, (*k, "log_backups"), LOG_BACKUPS, 0, 1000),
        event_loop=event_loop,
    )


def _claim_above(check: _Checker, doc: Mapping[str, Any], key: KeyPath) -> int | None:
    """``[daemon] claim_above``: MIST from 0 (absent: None, the claim's gas), or
    ``false`` (never by amount)."""
    value = doc.get(str(key[-1]))
    if value is None:
        return None
    if value is False:
        return NEVER_BY_AMOUNT
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise check.fail(key, f"expected MIST from 0, or false (never), got {shown(value)}")
    return value


def _claim_age(check: _Checker, doc: Mapping[str, Any], key: KeyPath) -> float | None:
    """``[daemon] claim_age``: a fraction of the half-close timeout above 0 and below 1,
    or ``false`` (never by age)."""
    value = doc.get(str(key[-1]), CLAIM_AGE)
    if value is False:
        return None
    share = finite_float(value)
    if share is None or not 0 < share < 1:
        raise check.fail(
            key, f"expected a fraction above 0 and below 1, or false (never), got {shown(value)}"
        )
    return share


def _websocket_tls(
    check: _Checker, doc: Mapping[str, Any], k: KeyPath, listening: bool
) -> tuple[Path | None, Path | None]:
    """``websocket_cert`` and ``websocket_key``: both or neither, with
    ``websocket_listen``, and files that serve (read here, so that the start and
    ``--check`` name the file and what is wrong with it)."""
    given = [name for name in ("websocket_cert", "websocket_key") if name in doc]
    if not given:
        return None, None
    if not listening:
        raise check.fail((*k, given[0]), "needs websocket_listen")
    if len(given) == 1:
        other = "websocket_key" if given[0] == "websocket_cert" else "websocket_cert"
        raise check.fail((*k, given[0]), f"needs {other} too (wss:// takes both)")
    cert = check.path_value(doc, (*k, "websocket_cert"), None)
    key = check.path_value(doc, (*k, "websocket_key"), None)
    from dtp.daemon._ws_tls import TlsFileError, read_certificate

    try:
        read_certificate(cert, key)
    except TlsFileError as exc:
        raise check.fail((*k, exc.key), str(exc)) from None
    return cert, key


def _require(check: _Checker, key: KeyPath, extra: str, feature: str) -> None:
    """Refuse ``key`` when the feature it asks for needs ``extra`` and the extra is not
    installed (:mod:`dtp._extras`): the message names the key and the pip command."""
    try:
        require(extra, feature)
    except MissingExtra as exc:
        raise check.fail(key, str(exc)) from None


def _firewall(check: _Checker, doc: Any) -> FirewallConfig:
    k: KeyPath = ("firewall",)
    if not isinstance(doc, dict):
        raise check.fail(k, "expected a table [firewall]")
    limits = ("max_connections_per_client", "max_bytes_per_sec", "max_requests_per_sec")
    check.table(doc, k, {"mode", "allow", "deny", *limits})
    return FirewallConfig(
        mode=check.choice(doc, (*k, "mode"), "open", ("open", "allowlist")),
        # published on the Host, whose lists the ledger caps: a longer one is refused
        # before the first of the start's (or a reload's) transactions
        allow=check.addresses(doc, (*k, "allow"), MAX_FIREWALL_ENTRIES),
        deny=check.addresses(doc, (*k, "deny"), MAX_FIREWALL_ENTRIES),
        max_connections_per_client=check.integer(doc, (*k, limits[0]), 0),
        max_bytes_per_sec=check.integer(doc, (*k, limits[1]), 0),
        max_requests_per_sec=check.integer(doc, (*k, limits[2]), 0),
    )


_SERVICE_KEYS = {
    "name",
    "port",
    "kind",
    "backends",
    "price_per_kib",
    "price_per_request",
    "min_deposit",
    "max_connections",
    "allow",
    "deny",
    "health_interval",
    "connect_timeout",
    "unpaid_slack",
    "protocol",
    "idle_timeout",
    "credit_datagrams",
    "loss_allowance",
    "half_close_timeout",
}


def _service(check: _Checker, doc: Mapping[str, Any], k: KeyPath) -> ServiceConfig:
    check.table(doc, k, _SERVICE_KEYS)
    raw_backends = doc.get("backends")
    bk: KeyPath = (*k, "backends")
    if raw_backends is None:
        raise check.fail(bk, 'is required (a list of "host:port")')
    if isinstance(raw_backends, str):
        raw_backends = [raw_backends]
    if not isinstance(raw_backends, list) or not raw_backends:
        raise check.fail(bk, f'expected a non-empty list of "host:port", got {raw_backends!r}')
    backends = tuple(check.endpoint(doc, bk, item) for item in raw_backends)
    for backend in backends:
        if backend.port == 0:
            raise check.fail(bk, f"backend {backend} has port 0")
    if "port" not in doc:
        raise check.fail((*k, "port"), "is required (the DTP port, 0..65535)")
    return ServiceConfig(
        name=check.string(doc, (*k, "name")),
        port=check.integer(doc, (*k, "port"), -1, 0, 0xFFFF),
        backends=backends,
        kind=_kind(check, doc, (*k, "kind")),
        price_per_kib=check.integer(doc, (*k, "price_per_kib"), 0),
        price_per_request=check.integer(doc, (*k, "price_per_request"), 0),
        min_deposit=check.integer(doc, (*k, "min_deposit"), 0),
        max_connections=check.integer(doc, (*k, "max_connections"), 0),
        allow=check.addresses(doc, (*k, "allow")),
        deny=check.addresses(doc, (*k, "deny")),
        health_interval=check.number(doc, (*k, "health_interval"), 2.0),
        connect_timeout=check.number(doc, (*k, "connect_timeout"), 2.0),
        unpaid_slack=_unpaid_slack(check, doc, (*k, "unpaid_slack")),
        protocol=check.choice(doc, (*k, "protocol"), "tcp", ("tcp", "udp")),
        idle_timeout=check.number(doc, (*k, "idle_timeout"), 60.0),
        # 0 would relay nothing, ever: receipts only cover datagrams already relayed
        credit_datagrams=check.integer(doc, (*k, "credit_datagrams"), 1024, 1),
        loss_allowance=check.share(doc, (*k, "loss_allowance"), DEFAULT_LOSS_ALLOWANCE),
        half_close_timeout_ms=_half_close_timeout(check, doc, (*k, "half_close_timeout")),
    )


def _kind(check: _Checker, doc: Mapping[str, Any], key: KeyPath) -> str:
    kind = check.string(doc, key, "raw")
    size = len(kind.encode())
    if size > MAX_PURE_BYTES:
        # published by host::add_service, whose argument the ledger refuses at this
        # length: refused here, naming the file, line and key
        raise check.fail(key, f"is {size} bytes long; the ledger takes at most {MAX_PURE_BYTES}")
    return kind


def _half_close_timeout(check: _Checker, doc: Mapping[str, Any], key: KeyPath) -> int | None:
    """``half_close_timeout``: seconds from 600 (10 minutes) to 604800 (7 days), the
    ledger's bounds (``host::EInvalidHalfCloseTimeout``), as whole milliseconds; refused
    here, naming the line, rather than by the start's transaction. Absent: None."""
    value = doc.get(str(key[-1]))
    if value is None:
        return None
    seconds = finite_float(value)
    ms = None if seconds is None else round(seconds * 1000)
    if ms is None or not MIN_HALF_CLOSE_TIMEOUT_MS <= ms <= MAX_HALF_CLOSE_TIMEOUT_MS:
        low, high = MIN_HALF_CLOSE_TIMEOUT_MS // 1000, MAX_HALF_CLOSE_TIMEOUT_MS // 1000
        raise check.fail(
            key,
            f"expected seconds from {low} (10 minutes) to {high} (7 days), the ledger's "
            f"bounds, got {shown(value)}",
        )
    return ms


#: The connection window a paying client may fill before its receipts catch up
#: (dtp.protocol.connection.ConnectionConfig.connection_window) plus a forward's default
#: ``receipt_every``: a slack this small or smaller holds paid tunnels back, then cuts them.
MIN_UNPAID_SLACK = (8 << 20) + (256 << 10)


def _unpaid_slack(check: _Checker, doc: Mapping[str, Any], key: KeyPath) -> int:
    value = check.integer(doc, key, 16 << 20)
    if value <= MIN_UNPAID_SLACK:
        raise check.fail(
            key,
            f"must exceed {MIN_UNPAID_SLACK} bytes (the 8 MiB connection window plus the "
            f"default receipt_every of 256 KiB), got {value}",
        )
    return value


def _forward(check: _Checker, doc: Mapping[str, Any], k: KeyPath, on_sui: bool) -> ForwardConfig:
    check.table(
        doc,
        k,
        {
            "name",
            "listen",
            "target",
            "deposit",
            "receipt_every",
            "protocol",
            "idle_timeout",
            "connection_idle_timeout",
            "open_timeout",
        },
    )
    target_text = check.string(doc, (*k, "target"))
    try:
        target = HostAddress.parse(target_text)
    except InvalidObjectId as exc:
        raise check.fail((*k, "target"), str(exc)) from None
    deposit = None
    if "deposit" in doc:
        deposit = check.integer(doc, (*k, "deposit"), 0)
    return ForwardConfig(
        name=check.string(doc, (*k, "name")),
        listen=check.endpoint(doc, (*k, "listen")),
        target=target,
        deposit=deposit,
        receipt_every=check.integer(doc, (*k, "receipt_every"), 256 * 1024, 1),
        protocol=check.choice(doc, (*k, "protocol"), "tcp", ("tcp", "udp")),
        idle_timeout=check.number(doc, (*k, "idle_timeout"), 30.0),
        connection_idle_timeout=check.number(doc, (*k, "connection_idle_timeout"), 60.0),
        open_timeout=check.number(
            doc, (*k, "open_timeout"), OPEN_TIMEOUT_SUI if on_sui else OPEN_TIMEOUT
        ),
    )
