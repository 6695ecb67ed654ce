"""How one side of a connection behaves and what the wire allows: :class:`ConnectionConfig`
and its checks, the client config of a direct connect (:func:`direct_client_config`) and
of one by host ID (:func:`ledger_client_config`), the
limits of records and frames, and the transport parameters of the handshake
(:func:`parse_params`, docs/protocol.md 8.2)."""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from dtp.errors import HandshakeError
from dtp.identity._noise import ANY_SCHEME_VERSION, MAX_AUTH_PROOF_SIZE
from dtp.identity._zklogin import ZkLoginVerifier
from dtp.identity.keys import HostIdentity
from dtp.identity.wallets import SuiWallet
from dtp.protocol.connection._param_map import read_bin, read_uint, split_map

_unpackb = msgpack.unpackb

MAX_RECORD_PLAINTEXT = 16384
MAX_STREAM_FRAME_OVERHEAD = 1 + 8 + 8 + 4  # type + stream id + offset + length varints
MAX_RECEIPT = 1024  # the RECEIPT frame's limit (docs/protocol.md 3.1)
MAX_CLOSE_REASON = 1024  # a CLOSE frame's reason, in bytes (DTP_MAX_CLOSE_REASON)
VARINT_MAX = (1 << 62) - 1  # the largest value a varint holds (docs/protocol.md 1)
#: The highest transport version this side speaks (parameter ``"v"``, docs/protocol.md
#: 8.2): version 2 takes identity proofs of every Sui scheme, version 1 the Ed25519 one
#: only. A client whose proof is Ed25519 offers 1 (what a version-1 server expects, and
#: the same bytes as before), any other 2.
TRANSPORT_VERSION = ANY_SCHEME_VERSION
MAX_PENDING_EARLY_RECORDS = 64
#: Unsent bytes on the carrier beyond which new datagrams are dropped (counted in
#: ``Connection.datagrams_send_dropped``) rather than queued behind them: a datagram
#: that waits for a stalled peer only arrives late, and queuing them would grow
#: without bound (docs/udp.md).
DATAGRAM_SEND_BACKLOG = 1 << 20
#: Shortest keepalive interval a peer's idle timeout brings ours down to (seconds).
MIN_KEEPALIVE = 1.0
#: Over a lossy carrier, a client's handshake message goes again this long after it was
#: sent (seconds); each later wait is twice the last, up to the config's
#: ``handshake_resend_max`` (docs/protocol.md 8.6).
HANDSHAKE_RESEND_FIRST = 0.5
#: The copies of message 1 (the first and its resends) a server's first-message window
#: covers over a lossy carrier, and the time the last has to arrive in (seconds): at
#: 20 % loss all nine are lost once in two million connects.
FIRST_MESSAGE_COPIES = 9
FIRST_MESSAGE_TRANSIT = 1.0


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
    handshake_resend_max: float = HANDSHAKE_RESEND_FIRST
    """Lossy carriers: the longest wait between two copies of a handshake message
    (seconds). The first copy goes again :data:`HANDSHAKE_RESEND_FIRST` after it was
    sent, each later wait is twice the last up to this: by default a copy every 0.5 s
    until the handshake ends (at most its timeout, so 20 copies). The ledger carrier,
    where each copy is a transaction that the ledger does not lose, waits up to 8 s."""
    close_copies: int = 8
    """Lossy carriers: the copies of our CLOSE, one each probe timeout of the closing
    period, which lasts as many probe timeouts (docs/protocol.md 3.1), an int from 1 to
    64. At 20 % loss the default's eight are all lost once in 390,000 closes; a peer
    that has the CLOSE closes its side, which ends the period at once. The ledger
    carrier, where each copy is a transaction that the ledger does not lose, sends
    three."""
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
    wallet: SuiWallet | None = None
    """Client only: the Sui wallet whose signature proves who we are
    (:class:`dtp.identity.wallets.SuiWallet`: a Secp256k1, Secp256r1, passkey, multisig or
    zkLogin wallet, or a HostIdentity), the server seeing its address; None: the
    identity's own Ed25519 key. A wallet of another scheme than Ed25519 needs a server
    of transport version 2."""
    zklogin_verifier: ZkLoginVerifier | None = None
    """Server only: what asks a Sui node about zkLogin proofs (a SuiLedger: its node,
    docs/protocol.md 8.4); None refuses them, as a LocalLedger does."""

    def __post_init__(self) -> None:
        # Checked when the config is made, not at a connection (in a server's own
        # thread): at most threading.TIMEOUT_MAX, as a server's wait for its accept
        # queue takes it, and stored as a float, to meet the clocks' floats in the timer
        # arithmetic.
        self._set_seconds(
            "handshake_timeout",
            _check_seconds(
                "handshake_timeout",
                self.handshake_timeout,
                "a number of seconds",
                threading.TIMEOUT_MAX,
            ),
        )
        self._set_seconds(
            "handshake_resend_max",
            _check_seconds(
                "handshake_resend_max", self.handshake_resend_max, "a number of seconds"
            ),
        )
        # A negative keepalive_interval would make the timer always due (a busy loop in
        # the adapters); NaN or 0 would mean no keepalive, silently (None says that)
        if self.keepalive_interval is not None:
            self._set_seconds(
                "keepalive_interval",
                _check_seconds(
                    "keepalive_interval", self.keepalive_interval, "a number of seconds or None"
                ),
            )
        # idle_timeout goes to the peer in milliseconds, so it is finite and above 0. No
        # upper limit: above 2**62 - 1 ms the parameter says its largest.
        self._set_seconds(
            "idle_timeout",
            _check_seconds("idle_timeout", self.idle_timeout, "a number of seconds"),
        )
        # The size is of the datagram itself, the DATAGRAM frame's header on top; a
        # record that holds less (a lossy carrier's) makes the limit in force less, so
        # any size from 1 byte can be sent. No upper limit: the record's room caps it.
        self._check_int("max_datagram_size", self.max_datagram_size, 1)
        self._check_int("close_copies", self.close_copies, 1, 64)
        # Checked here, not only by Connection(), so that a bad config is found when it
        # is made, not inside a server's accept or after a ledger deposit. These go to
        # the peer as transport parameters, which take 0 to 2**62 - 1 (parse_params).
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
        if self.connection_id is not None:
            object.__setattr__(self, "connection_id", _checked_connection_id(self.connection_id))

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


def next_handshake_resend(wait: float, config: ConnectionConfig) -> float:
    """The wait before a handshake message's next copy, after one of ``wait`` seconds
    (docs/protocol.md 8.6): twice as long, up to ``config.handshake_resend_max``."""
    return min(2 * wait, config.handshake_resend_max)


def first_handshake_resend(config: ConnectionConfig) -> float:
    """The wait before a handshake message's first copy (seconds)."""
    return min(HANDSHAKE_RESEND_FIRST, config.handshake_resend_max)


def first_message_window(config: ConnectionConfig | None, first_message_timeout: float) -> float:
    """The seconds a server gives a new connection to send its first record: the
    server's ``first_message_timeout``, and over a lossy carrier (a ``config`` with
    ``reliable_carrier=False``; None is TCP's default) at least the time in
    which a client on ``config``'s resend schedule sends :data:`FIRST_MESSAGE_COPIES`
    copies of message 1, plus :data:`FIRST_MESSAGE_TRANSIT` for the last to arrive (not
    past the handshake timeout): the window and the schedule agree, so a lossy link
    costs a connect only when every copy is lost (docs/protocol.md 8.6)."""
    if config is None or config.reliable_carrier:
        return first_message_timeout
    sent, wait = 0.0, first_handshake_resend(config)
    for _ in range(FIRST_MESSAGE_COPIES - 1):
        sent += wait
        wait = next_handshake_resend(wait, config)
    covered = min(sent + FIRST_MESSAGE_TRANSIT, config.handshake_timeout)
    return max(first_message_timeout, covered)


def checked_noise_key(source: str, key: object) -> bytes | None:
    """``key`` (the argument or config field ``source``: a server's Noise static public
    key, or None) as bytes: TypeError for anything but bytes, bytearray or memoryview,
    ValueError unless 32 bytes -- checked here, not deep in the handshake's crypto, and
    not compared as given (a hex string, a short key or ``bytes(n)``)."""
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
    identity is a fresh anonymous one (from ``anonymous()``). The config's identity,
    ``server_static`` and ``expected_server_static`` stand where the argument is None
    (dropped, an XX handshake would take any server). A key given both ways must be the
    same, and so must the key and the pin (IK to one server with another pinned would
    send our proof to a server the pin refuses): ValueError. A key is 32 bytes (bytes,
    bytearray or memoryview, kept as bytes), else TypeError / ValueError naming it."""

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
    if fields.keys() != _KEY_FIELDS:
        return ConnectionConfig(**fields)
    return _made(_client_defaults(fields["identity"]), fields)


def _checked_connection_id(cid: object) -> bytes | None:
    """A config's ``connection_id`` as bytes (a bytearray changed after this check would
    reach the peer unchecked): TypeError unless bytes, a bytearray or None, ValueError
    unless 32 bytes."""
    if cid is None:
        return None
    if not isinstance(cid, bytes | bytearray):
        raise TypeError(f"connection_id must be bytes or None, not {type(cid).__name__}")
    if len(cid) != 32:
        raise ValueError(f"connection_id must be 32 bytes, not {len(cid)}")
    return bytes(cid)


def ledger_client_config(
    base: ConnectionConfig | None,
    identity: HostIdentity,
    server_static: bytes,
    connection_id: bytes,
    port: int,
) -> ConnectionConfig:
    """``replace(base or ConnectionConfig(identity=identity, is_client=True), ...)`` with
    these fields, ``is_client`` True and no ``expected_server_static``: the client config
    of a connection by host ID. Only the fields given are checked (as ``__post_init__``
    checks them): the rest were when ``base`` was made, or the defaults when the first
    default config was."""
    if base is not None and type(base) is not ConnectionConfig:  # (a subclass's checks)
        return replace(
            base,
            identity=identity,
            is_client=True,
            server_static=server_static,
            expected_server_static=None,
            connection_id=connection_id,
            port=port,
        )
    ConnectionConfig._check_int("port", port, 0, 0xFFFF)
    fields = {
        "identity": identity,
        "is_client": True,
        "server_static": server_static,
        "expected_server_static": None,
        "connection_id": _checked_connection_id(connection_id),
        "port": port,
    }
    return _made(vars(base) if base is not None else _client_defaults(identity), fields)


def with_handshake_timeout(cfg: ConnectionConfig, seconds: float) -> ConnectionConfig:
    """``replace(cfg, handshake_timeout=seconds)``, checking only the new timeout: the
    rest was checked when ``cfg`` was made."""
    if (
        type(cfg) is not ConnectionConfig
        or type(seconds) is not float
        or not 0 < seconds <= threading.TIMEOUT_MAX
    ):
        return replace(cfg, handshake_timeout=seconds)  # (its checks, its error)
    return _made(vars(cfg), {"handshake_timeout": seconds})


def _made(checked: dict[str, Any], fields: dict[str, Any]) -> ConnectionConfig:
    """A ConnectionConfig of the fields ``checked`` (a checked config's), ``fields``
    (checked by the caller as ``__post_init__`` would) in place of theirs."""
    cfg: ConnectionConfig = object.__new__(ConnectionConfig)
    held = vars(cfg)  # (frozen: filled in past __setattr__, as __init__ itself does)
    held.update(checked)
    held.update(fields)
    return cfg


def _client_defaults(identity: HostIdentity) -> dict[str, Any]:
    """The checked defaults of a client config past its key fields (:data:`_KEY_FIELDS`)."""
    global _CLIENT_DEFAULTS
    if _CLIENT_DEFAULTS is None:
        made = ConnectionConfig(identity=identity, is_client=True)
        _CLIENT_DEFAULTS = {k: v for k, v in vars(made).items() if k not in _KEY_FIELDS}
    return _CLIENT_DEFAULTS


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


def parse_params(
    payload: bytes, *, from_client: bool = False, offered: int = TRANSPORT_VERSION
) -> dict[str, Any]:
    """Decode and validate the peer's transport parameters (docs/protocol.md 8.2): the
    required integers, and the optional ``"cid"`` (32 bytes) and ``"port"`` (0..65535) a
    client may send, and the ``"auth"`` identity proof an IK client sends (its size
    checked here, its signature by the caller).

    Strict for the keys 8.2 lists (their msgpack types, ranges and sizes; each at most
    once), tolerant for every other key: its value only has to be one well-formed
    msgpack object (:mod:`dtp.protocol.connection._param_map`), so a later version may
    send anything there.

    ``v``: a client offers the highest version it speaks, so a server (``from_client``)
    takes any version from 1 up and answers the highest it speaks that is not above it;
    a client takes a version from 1 to the one it ``offered`` (docs/protocol.md 8.2).

    A server's parameters, the same at each of its connections, are remembered by their
    bytes (a client connects to one server again and again); a client's, which carry its
    connection's ID and proof, are not."""
    seen = None
    if not from_client and type(payload) is bytes:
        seen = (payload, offered)
        known = _SERVER_PARAMS.get(seen)
        if known is not None:
            return dict(known)
    out = _parse_common(payload, from_client, offered)
    if out is None:
        out = _parse_strict(payload, from_client, offered)
    if seen is not None:
        if len(_SERVER_PARAMS) >= _SERVER_PARAMS_HELD:
            _SERVER_PARAMS.clear()
        _SERVER_PARAMS[seen] = dict(out)
    return out


#: The keys a common payload holds, each at most once (:func:`_parse_common`).
_PARAM_NAMES: frozenset[str] = frozenset(("v", "md", "msd", "ms", "it", "auth", "cid", "port"))


def _parse_common(payload: Any, from_client: bool, offered: int) -> dict[str, Any] | None:
    """:func:`parse_params`'s answer for the common payload, in one msgpack decode: a
    fixmap of only 8.2's keys, each well-formed and in range; None for anything else,
    which :func:`_parse_strict` then judges (its value or its error). Never a value the
    strict decoder would not give (tests/protocol/test_param_fast_path.py): msgpack
    refuses bytes after the map and a key that is not UTF-8; a duplicate key shows as
    fewer entries than the header counts; a bin key, an unknown key, a boolean or a
    float as fewer known keys or the wrong type."""
    head = payload[0] if payload else 0
    if not 0x85 <= head <= 0x88:
        return None  # (not a fixmap of the 5 required keys and at most 3 more)
    try:
        values = _unpackb(payload, raw=False)
    except Exception:  # whatever msgpack refuses, the strict decoder judges
        return None
    if len(values) != head - 0x80 or not values.keys() <= _PARAM_NAMES:
        return None
    out: dict[str, Any] = {}
    for key in ("v", "md", "msd", "ms", "it"):
        number = values.get(key)
        if type(number) is not int or not 0 <= number <= VARINT_MAX:
            return None
        out[key] = number
    version = out["v"]
    if version < 1 or (version > offered and not from_client):
        return None
    if "cid" in values:
        cid = values["cid"]
        if type(cid) is not bytes or len(cid) != 32:
            return None
        out["cid"] = cid
    if "port" in values:
        port = values["port"]
        if type(port) is not int or not 0 <= port <= 0xFFFF:
            return None
        out["port"] = port
    if "auth" in values:
        proof = values["auth"]
        if type(proof) is not bytes or not 1 <= len(proof) <= MAX_AUTH_PROOF_SIZE:
            return None
        out["auth"] = proof
    return out


def _parse_strict(payload: Any, from_client: bool, offered: int) -> dict[str, Any]:
    """:func:`parse_params`'s rules, key by key over :func:`split_map`'s pairs."""
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
    if version < 1 or (version > offered and not from_client):
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
        if proof is None or not 1 <= len(proof) <= MAX_AUTH_PROOF_SIZE:
            raise HandshakeError(
                f"transport parameter 'auth' must be 1 to {MAX_AUTH_PROOF_SIZE} bytes"
            )
        out["auth"] = proof
    return out


#: What :func:`parse_params` remembers: a server's parameters by their bytes and the
#: version offered, at most this many (then forgotten all at once).
_SERVER_PARAMS: dict[tuple[bytes, int], dict[str, Any]] = {}
_SERVER_PARAMS_HELD = 256


#: The keys of docs/protocol.md 8.2's table (its registry, section 17), by their bytes.
_KNOWN_PARAMS: dict[bytes, str] = {
    name.encode(): name for name in ("v", "md", "msd", "ms", "it", "auth", "cid", "port")
}
