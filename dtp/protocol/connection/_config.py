"""How one side of a connection behaves and what the wire allows: :class:`ConnectionConfig`
and its checks, the client config of a direct connect (:func:`direct_client_config`), the
limits of records and frames, and the transport parameters of the handshake
(:func:`parse_params`, docs/protocol.md 8.2)."""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dtp.errors import HandshakeError
from dtp.identity._noise import AUTH_PROOF_SIZE
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection._param_map import read_bin, read_uint, split_map

MAX_RECORD_PLAINTEXT = 16384
MAX_STREAM_FRAME_OVERHEAD = 1 + 8 + 8 + 4  # type + stream id + offset + length varints
MAX_RECEIPT = 1024  # the RECEIPT frame's limit (docs/protocol.md 3.1)
MAX_CLOSE_REASON = 1024  # a CLOSE frame's reason, in bytes (DTP_MAX_CLOSE_REASON)
VARINT_MAX = (1 << 62) - 1  # the largest value a varint holds (docs/protocol.md 1)
#: The transport version this side speaks and offers (parameter ``"v"``, docs/protocol.md 8.2).
TRANSPORT_VERSION = 1
MAX_PENDING_EARLY_RECORDS = 64
#: Unsent bytes on the carrier beyond which new datagrams are dropped (counted in
#: ``Connection.datagrams_send_dropped``) rather than queued behind them: a datagram
#: that waits for a stalled peer only arrives late, and queuing them would grow
#: without bound (docs/udp.md).
DATAGRAM_SEND_BACKLOG = 1 << 20
#: Shortest keepalive interval a peer's idle timeout brings ours down to (seconds).
MIN_KEEPALIVE = 1.0


@dataclass(frozen=True)
class ConnectionConfig:
    """How one side of a connection behaves. Defaults suit a TCP carrier."""

    identity: HostIdentity
    """Our keys: the Noise static key, and (client) the Sui key that signs the proof."""
    is_client: bool
    server_static: bytes | None = None
    """Client only: the server's X25519 static key. Known → Noise IK; None → XX."""
    expected_server_static: bytes | None = None
    """Client only, XX: refuse the server unless its static key equals this."""
    reliable_carrier: bool = True
    """True for ordered, reliable carriers (TCP); False turns on ACKs and retransmission."""
    stream_window: int = 4 << 20
    """Bytes a peer may send on one stream beyond what our application has read: an
    int from 0 to 2**62 - 1 (from 1 to 2**32 - 1 when ``reliable_carrier`` is False)."""
    connection_window: int = 8 << 20
    """The same, summed over all streams: an int from 0 to 2**62 - 1."""
    max_streams: int = 128
    """Streams the peer may have open at once: an int from 0 to 2**62 - 1."""
    idle_timeout: float = 60.0
    """Close the connection when nothing arrives for this long (seconds)."""
    keepalive_interval: float | None = 15.0
    """Send a PING after this long without sending anything (None: never); less -- half
    the peer's idle timeout, but not below :data:`MIN_KEEPALIVE` -- when the peer's idle
    timeout is under twice this."""
    handshake_timeout: float = 10.0
    """Give up when the connection is not established within this long."""
    max_datagram_size: int = 16000
    """Largest datagram we send (LocalProtocolError above it), at least 1 byte; less
    where a record holds less. What the peer sends is taken up to what one record holds,
    whatever this says."""
    max_record_plaintext: int = MAX_RECORD_PLAINTEXT
    """Lossy carriers: largest plaintext of the DATA records we seal, an int from 22
    (one stream frame's header and a byte) to 16384; from 1 over a reliable carrier. The
    ledger carrier uses less, so that each record fits one ``pipe::send`` whole."""
    connection_id: bytes | None = None
    """Client only: the ledger connection (TransportControl) ID this connection is paid
    by, 32 raw bytes (a bytearray is kept as bytes); sent to the server in the
    handshake (key ``"cid"``)."""
    port: int | None = None
    """Client only: the DTP port (service) we connect to, 0 to 65535; sent in the
    handshake (key ``"port"``)."""

    def __post_init__(self) -> None:
        # Checked when the config is made, not where it is used: 0 or less timed out
        # every handshake at once, NaN never timed one out (nor held a server's
        # handshake slot any less), and a string failed with a TypeError naming no
        # option -- each found only at a connection, on a server in its own thread.
        # Above threading.TIMEOUT_MAX a server's wait for its accept queue overflows.
        # Each is stored as a float: a Fraction (a real number, as dtp.socket's timeouts
        # take) would otherwise meet the floats of the clocks in the timer arithmetic.
        self._set_seconds(
            "handshake_timeout",
            _check_seconds(
                "handshake_timeout",
                self.handshake_timeout,
                "a number of seconds",
                threading.TIMEOUT_MAX,
            ),
        )
        # A negative keepalive_interval made the timer always due (a PING each time it
        # was looked at, a busy loop in the adapters); NaN or 0 meant no keepalive,
        # silently (None says that)
        if self.keepalive_interval is not None:
            self._set_seconds(
                "keepalive_interval",
                _check_seconds(
                    "keepalive_interval", self.keepalive_interval, "a number of seconds or None"
                ),
            )
        # idle_timeout goes to the peer in milliseconds: infinity raised OverflowError
        # (out of receive_data, on a server), and zero or less failed the peer's
        # handshake. No upper limit: above 2**62 - 1 ms the parameter says its largest.
        self._set_seconds(
            "idle_timeout",
            _check_seconds("idle_timeout", self.idle_timeout, "a number of seconds"),
        )
        # A str failed comparing with the record's room in every send_datagram, and 0 or
        # less refused every datagram (but an empty one). The size is of the datagram
        # itself: the DATAGRAM frame's 3 bytes of header come on top, and where a record
        # holds less (a lossy carrier's max_record_plaintext, 22 at least) the limit
        # in force is less -- so any size from 1 byte can be sent. No upper limit: the
        # record's room caps it.
        self._check_int("max_datagram_size", self.max_datagram_size, 1)
        # Checked here, not only by Connection() (a LocalProtocolError), so a bad config
        # is found when it is made, not at a connection: inside a server's accept, or
        # after a ledger deposit for a connect by host ID. The windows and the stream
        # limit go to the peer as transport parameters ("md", "msd", "ms"), which it
        # takes from 0 to 2**62 - 1 (parse_params): beyond that its handshake would fail
        # and we would see only a handshake timeout (or msgpack's OverflowError from 2**64).
        for name in ("connection_window", "stream_window", "max_streams"):
            self._check_int(name, getattr(self, name), 0, VARINT_MAX)
        lossy = "" if self.reliable_carrier else " over a lossy carrier (reliable_carrier=False)"
        if lossy:
            # the reassembly of a lossy carrier holds at most a 32-bit window: found out
            # at the first stream frame, as an untyped failure of receive_data
            self._check_int("stream_window", self.stream_window, 1, (1 << 32) - 1, lossy)
        # Larger: data_to_send failed sealing a record. Over a lossy carrier, room for
        # no stream byte made packing loop forever (or fail on a negative length).
        lowest = MAX_STREAM_FRAME_OVERHEAD + 1 if lossy else 1
        self._check_int(
            "max_record_plaintext", self.max_record_plaintext, lowest, MAX_RECORD_PLAINTEXT, lossy
        )
        # "port" and "cid": what the peer's parse_params takes, else its handshake fails
        if self.port is not None:
            self._check_int("port", self.port, 0, 0xFFFF)
        cid = self.connection_id
        if cid is not None:
            if not isinstance(cid, bytes | bytearray):
                raise TypeError(f"connection_id must be bytes or None, not {type(cid).__name__}")
            if len(cid) != 32:
                raise ValueError(f"connection_id must be 32 bytes, not {len(cid)}")
            if not isinstance(cid, bytes):
                # a bytearray changed after this check would reach the peer unchecked
                object.__setattr__(self, "connection_id", bytes(cid))

    @staticmethod
    def _check_int(
        name: str, value: object, least: int, most: int | None = None, where: str = ""
    ) -> None:
        """Refuse ``value`` (the config's ``name``) unless it is an int (a bool is not:
        True passed as 1) from ``least`` to ``most`` (None: no limit): TypeError for
        anything else, ValueError for an int out of range; ``where`` ends the message
        (the case the range is for)."""
        if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < least or (most is not None and value > most):
            if most is None:
                accepted = f"of at least {least}"
            elif most > 0xFFFF and (most + 1) & most == 0:  # 2**k - 1, as the wire says it
                accepted = f"from {least} to 2**{most.bit_length()} - 1"
            else:
                accepted = f"from {least} to {most}"
            raise ValueError(f"{name} must be an int {accepted}{where}, not {repr(value)[:40]}")

    def _set_seconds(self, name: str, value: float) -> None:
        # the dataclass is frozen: its own checked value is set past that
        object.__setattr__(self, name, value)


def checked_noise_key(source: str, key: object) -> bytes | None:
    """``key`` (the argument or config field ``source``: a server's Noise static public
    key, or None) as bytes: TypeError for anything but bytes, bytearray or memoryview,
    ValueError unless 32 bytes. (A bytearray or memoryview key failed the blocking
    adapter's handshake with a TypeError from deep in the crypto; compared as it was, a
    hex string or a key cut short was refused only as one that "differs"; and bytes()
    of an int made that many zero bytes.)"""
    if key is None:
        return None
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(
            f"{source} must be 32 bytes (an X25519 public key) or None, got {type(key).__name__}"
        )
    raw = bytes(key)
    if len(raw) != 32:
        raise ValueError(f"{source} must be 32 bytes (an X25519 public key), not {len(raw)}")
    return raw


def direct_client_config(
    config: ConnectionConfig | None,
    identity: HostIdentity | None,
    server_key: bytes | None,
    expected_server_key: bytes | None,
    anonymous: Callable[[], HostIdentity],
) -> tuple[ConnectionConfig, bool]:
    """The client config of a connect to a carrier endpoint (the adapters'
    ``create_connection`` / ``open_connection`` with ``(host, port)``), and whether its
    identity is a fresh anonymous one (from ``anonymous()``). What ``config`` holds
    stands where the argument is None: its identity, its ``server_static`` and its
    ``expected_server_static`` (they were replaced by the arguments, None when not
    given: the config's keys dropped for an anonymous one, and a pinned server key
    dropped unseen -- an XX handshake then took any server). A key given both ways must
    be the same, and so must the key and the pin (IK to one server while the other is
    pinned sent our static key and proof to a server the pin refuses): ValueError. A
    key is 32 bytes (bytes, bytearray or memoryview, kept as bytes), else TypeError /
    ValueError naming it."""

    fields: dict[str, Any] = {"is_client": True}
    named: dict[str, str] = {}  # each key's source, for the messages
    for name, argument, given in (
        ("server_static", "server_key", server_key),
        ("expected_server_static", "expected_server_key", expected_server_key),
    ):
        from_argument = checked_noise_key(argument, given)
        held = (
            None
            if config is None
            else checked_noise_key(f"the config's {name}", getattr(config, name))
        )
        if from_argument is not None and held is not None and from_argument != held:
            raise ValueError(f"{argument} differs from the config's {name}")
        fields[name] = from_argument if from_argument is not None else held
        named[name] = argument if from_argument is not None else f"the config's {name}"
    key, pin = fields["server_static"], fields["expected_server_static"]
    if key is not None and pin is not None and key != pin:
        raise ValueError(f"{named['server_static']} and {named['expected_server_static']} differ")
    # (after the checks: a refused connect took no identity from the anonymous pool)
    made = False
    if identity is None and config is None:
        identity, made = anonymous(), True
    if identity is not None:
        fields["identity"] = identity
    # one dataclass made, not a default one and then its replacement
    if config is None:
        return _default_client_config(fields), made
    return replace(config, **fields), made


# The defaults of a client config, as the first one made from them holds them once
# checked: the fields a direct connect fills in (its keys) are not among what
# __post_init__ checks, so each later connect need not check the defaults again.
_CLIENT_DEFAULTS: dict[str, Any] | None = None
_KEY_FIELDS = frozenset({"is_client", "identity", "server_static", "expected_server_static"})


def _default_client_config(fields: dict[str, Any]) -> ConnectionConfig:
    """``ConnectionConfig(**fields)``; past the checks of the defaults when ``fields``
    name ``is_client``, ``identity`` and the server keys (checked by the caller)."""
    global _CLIENT_DEFAULTS
    if _CLIENT_DEFAULTS is None or fields.keys() != _KEY_FIELDS:
        made = ConnectionConfig(**fields)
        if fields.keys() == _KEY_FIELDS:
            _CLIENT_DEFAULTS = {k: v for k, v in vars(made).items() if k not in _KEY_FIELDS}
        return made
    cfg: ConnectionConfig = object.__new__(ConnectionConfig)
    held = vars(cfg)  # (frozen: filled in past __setattr__, as __init__ itself does)
    held.update(_CLIENT_DEFAULTS)
    held.update(fields)
    return cfg


def _check_seconds(name: str, value: object, what: str, most: float = math.inf) -> float:
    """A config's ``name`` as a float of seconds, refused unless it is a positive,
    finite real number (an int, a float, a Fraction: what ``numbers.Real`` holds) of at
    most ``most``: TypeError for anything else (a bool too: True passed as 1 s; a
    Decimal, not a ``numbers.Real``, as a socket's settimeout refuses it), saying it
    must be ``what``; ValueError for a number out of range (NaN included)."""
    if type(value) is float:  # (as most are: no look-up in numbers.Real's registry)
        seconds = value
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int (or a Fraction) beyond the float range
            seconds = math.inf
    if not (math.isfinite(seconds) and 0 < seconds <= most):
        limit = f" up to {most:.0f}" if most < math.inf else ""
        raise ValueError(
            f"{name} must be a positive, finite number of seconds{limit}, not {repr(value)[:40]}"
        )
    return seconds


def parse_params(payload: bytes, *, from_client: bool = False) -> dict[str, Any]:
    """Decode and validate the peer's transport parameters (docs/protocol.md 8.2): the
    required integers, and the optional ``"cid"`` (32 bytes) and ``"port"`` (0..65535) a
    client may send, and the ``"auth"`` identity proof an IK client sends (its size
    checked here, its signature by the caller).

    Strict for the keys 8.2 lists (their msgpack types, ranges and sizes; each at most
    once), tolerant for every other key: its value only has to be one well-formed
    msgpack object (:mod:`dtp.protocol.connection._param_map`), so a later version may
    send anything there.

    ``v``: a client offers the highest version it speaks, so a server (``from_client``)
    takes any version from :data:`TRANSPORT_VERSION` up and answers with its own; a
    client takes only the version it offered (docs/protocol.md 8.2)."""
    values: dict[str, bytes] = {}
    for raw_key, value in split_map(payload):
        key = _KNOWN_PARAMS.get(raw_key)
        if key is None:
            continue  # a key 8.2 does not list: ignored, whatever its value
        if key in values:
            raise HandshakeError(f"transport parameter {key!r} appears twice")
        values[key] = value
    out: dict[str, Any] = {}
    for key in ("v", "md", "msd", "ms", "it"):
        number = read_uint(values[key]) if key in values else None
        # (msgpack's true and false are not integers: read_uint gives None for them)
        if number is None or number < 0 or number > VARINT_MAX:
            raise HandshakeError(f"transport parameter {key!r} missing or invalid")
        out[key] = number
    version = out["v"]
    if version < TRANSPORT_VERSION or (version > TRANSPORT_VERSION and not from_client):
        raise HandshakeError(f"peer speaks DTP transport version {version}")
    if "cid" in values:
        cid = read_bin(values["cid"])
        if cid is None or len(cid) != 32:
            raise HandshakeError("transport parameter 'cid' must be 32 bytes")
        out["cid"] = cid
    if "port" in values:
        port = read_uint(values["port"])
        if port is None or not 0 <= port <= 0xFFFF:
            raise HandshakeError("transport parameter 'port' must be an integer in 0..65535")
        out["port"] = port
    if "auth" in values:
        proof = read_bin(values["auth"])
        if proof is None or len(proof) != AUTH_PROOF_SIZE:
            raise HandshakeError(f"transport parameter 'auth' must be {AUTH_PROOF_SIZE} bytes")
        out["auth"] = proof
    return out


#: The keys of docs/protocol.md 8.2's table (its registry, section 17), by their bytes.
_KNOWN_PARAMS: dict[bytes, str] = {
    name.encode(): name for name in ("v", "md", "msd", "ms", "it", "auth", "cid", "port")
}
