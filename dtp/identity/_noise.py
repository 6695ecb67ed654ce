"""The DTP handshake: Noise IK (or XX) plus a Sui-signed channel binding. Sans-I/O.

This module turns handshake messages into session keys and does nothing else: no
sockets, no clock, no randomness of its own (the caller passes the ephemeral key), no
record framing. docs/protocol.md section 8 says the wire: the patterns (IK when the client
knows the server's static key, else XX, whose client must check the key it learns from
message 2), message 1's pattern byte (8.1), the size bounds and the identity proof's
binding (8.4). The patterns run in the C core's dtp_core/noise.c, or its twin
dtp.native.reference._noise with ``DTP_PUREPYTHON=1``.

Payload confidentiality follows Noise: the first XX payload is sent in clear; the first
IK payload is encrypted to the server's static key but has no forward secrecy and can be
replayed to the server. Put nothing secret in message 1, and nothing whose replay matters.

Any failure while reading raises :class:`~dtp.errors.HandshakeError`, and the handshake
is then dead: every later call raises it too. On a lossy carrier, where anyone may slip
in a forged or damaged message before the genuine one, ``read_message(message,
keep_state=True)`` instead leaves the handshake as if the message were never read, and a
message 1 that Noise took but whose payload the caller refuses is forgotten with
:meth:`Handshake.unread_first_message`. XX message 1 is not authenticated at all: a
forged one that reads cleanly and arrives first is answered (on carriers where anyone
may inject a message, not on the ledger carrier).

Channel binding: the client proves its Sui address with :func:`make_auth_proof`, a Sui
personal-message signature by its wallet, of any Sui scheme, and the server checks it
with :func:`check_auth_proof` (a zkLogin proof then waits on a Sui node:
:mod:`dtp.identity._zklogin`). In XX the proof follows the handshake and signs its hash;
in IK it travels in message 1 (``early=True``), saving a round trip, and signs
:attr:`Handshake.auth_binding`, which covers the client's fresh ephemeral key: a copied
proof is of no use without that key's private half.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dtp.errors import HandshakeError
from dtp.identity._ahead import (
    _bounded_put,
    forget_shared_secrets,
    take_ephemeral_keypair,
    take_shared_secret,
)
from dtp.identity._ed25519 import sign_personal_with_seed
from dtp.identity._schemes import InvalidSignature, SuiSigner, check_signature
from dtp.identity.keys import (
    HostIdentity,
    core_noise_key,
    noise_key_object,
    personal_message_digest,
)
from dtp.native._noise import DH_ES, DH_SS, NoiseError, NoiseKey, NoiseState
from dtp.native._noise import PROTOCOL_NAMES as NOISE_PROTOCOL_NAMES

__all__ = [
    "ANY_SCHEME_VERSION",
    "AUTH_CONTEXT",
    "AUTH_EARLY_CONTEXT",
    "AUTH_PROOF_SIZE",
    "DEFAULT_PROLOGUE",
    "KEY_SIZE",
    "MAX_AUTH_PROOF_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_PAYLOAD_SIZE",
    "PATTERN_IK",
    "PATTERN_XX",
    "PROTOCOL_NAMES",
    "Handshake",
    "SuiSigner",
    "check_auth_proof",
    "is_ed25519_proof",
    "make_auth_proof",
    "prepare_handshake",
    "verify_auth_proof",
]

#: Pattern id of ``Noise_IK_25519_ChaChaPoly_BLAKE2s`` (first byte of message 1).
PATTERN_IK: Final = 1
#: Pattern id of ``Noise_XX_25519_ChaChaPoly_BLAKE2s`` (first byte of message 1).
PATTERN_XX: Final = 2

#: The Noise protocol name for each pattern id (the core's, whose ids these are).
PROTOCOL_NAMES: Final[dict[int, bytes]] = NOISE_PROTOCOL_NAMES
_MESSAGE_COUNT: Final[dict[int, int]] = {PATTERN_IK: 2, PATTERN_XX: 3}

#: Upper bound on every handshake message, pattern byte and payload included (the
#: handshake record body limit of docs/protocol.md).
MAX_MESSAGE_SIZE: Final = 4096
#: Upper bound on a handshake payload. The largest Noise overhead here is 97 bytes (IK
#: message 1 with its pattern byte), so any payload up to this size fits in any message.
MAX_PAYLOAD_SIZE: Final = MAX_MESSAGE_SIZE - 128

#: Prologue both sides mix into the transcript unless told otherwise.
DEFAULT_PROLOGUE: Final = b"DTP/1"
#: Size of X25519 keys and of the ChaCha20-Poly1305 transport keys.
KEY_SIZE: Final = 32

#: Domain separation tag of the client's identity proof.
AUTH_CONTEXT: Final = b"DTP-AUTH-V1"
#: Domain separation tag of the identity proof an IK client sends in message 1.
AUTH_EARLY_CONTEXT: Final = b"DTP-AUTH-IK-V1"
#: Size of an Ed25519 identity proof (a serialized Ed25519 Sui signature): the only proof
#: transport version 1 takes.
AUTH_PROOF_SIZE: Final = 97
#: Largest identity proof, of any scheme (transport version 2): what IK message 1's
#: payload holds beside the other transport parameters, whose widest forms take 126
#: bytes (docs/protocol.md 8.4).
MAX_AUTH_PROOF_SIZE: Final = MAX_PAYLOAD_SIZE - 128
#: The transport version from which a proof may be of any Sui scheme (docs/protocol.md 8.2).
ANY_SCHEME_VERSION: Final = 2


def _as_bytes(name: str, value: bytes) -> bytes:
    # bytes(5) would quietly make five zero bytes; accept only bytes-like objects.
    # (Callers on the handshake's path pass plain bytes by themselves, skipping the call.)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


# The IK identity proof hashes the prologue after its length as a u16le (_early_binding),
# so a longer prologue cannot be bound: it is refused where it enters, before any Noise
# state exists (a responder would otherwise fail only after accepting message 1).
_MAX_PROLOGUE_SIZE: Final = 0xFFFF


def _check_prologue(prologue: bytes) -> bytes:
    """``prologue`` as bytes; TypeError if it is not bytes-like, ValueError if it is
    longer than 65535 bytes."""
    if type(prologue) is not bytes:
        prologue = _as_bytes("prologue", prologue)
    if len(prologue) > _MAX_PROLOGUE_SIZE:
        raise ValueError(
            f"prologue must be at most {_MAX_PROLOGUE_SIZE} bytes, got {len(prologue)}"
        )
    return prologue


def _check_key(name: str, key: bytes) -> bytes:
    if type(key) is not bytes:
        key = _as_bytes(name, key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"{name} must be {KEY_SIZE} bytes, got {len(key)}")
    return key


# X25519 key objects of live identities' static keys (the core's NoiseKey, made with
# keep_results): a server answers IK from the same clients again and again, and each
# handshake's ``ss`` (its static key with the client's) is the same scalar
# multiplication; the key object keeps its last few results (static keys only: a secret
# an ephemeral key made must not outlive its handshake, and one is never used twice;
# keeping these reveals nothing beyond the static key, whoever holds that computes them
# again from public keys). Keyed by the identity's key object, held here so its id is
# not reused while it is listed; a key that is no live identity's gets a fresh object
# that keeps nothing.
_STATIC_KEYS: dict[int, tuple[X25519PrivateKey, Any]] = {}
_MAX_STATIC_KEYS: Final = 16
_static_lock = threading.Lock()


def _static_key(private: bytes) -> Any:
    """The Noise key object of a static key: the kept one of a live
    :class:`~dtp.identity.keys.HostIdentity` (building one derives the public key, a
    scalar multiplication as costly as a DH, and the kept one holds its ``ss``
    results), else a new one. An identity made around the core's key object (a fresh
    anonymous one: dtp.identity._ahead) is given that object."""
    made = core_noise_key(private)
    if made is not None:
        return made
    owner = noise_key_object(private)
    if owner is None:
        return NoiseKey(private)
    with _static_lock:
        entry = _STATIC_KEYS.get(id(owner))
        if entry is not None and entry[0] is owner:
            return entry[1]
        if len(_STATIC_KEYS) >= _MAX_STATIC_KEYS:
            # (identities made and dropped by the dozen: start over, results with them)
            _STATIC_KEYS.clear()
        key = NoiseKey(private, keep_results=True)
        _STATIC_KEYS[id(owner)] = (owner, key)
        return key


def static_secret_kept(identity: HostIdentity, peer_public: bytes) -> bool:
    """Whether the X25519 result of ``identity``'s static key with ``peer_public`` is
    kept (:func:`_static_key`): a client need not compute its IK ``ss`` ahead then."""
    if len(peer_public) != KEY_SIZE:
        return False
    private = identity.noise_private_bytes()
    made = core_noise_key(private)
    if made is not None:
        return bool(made.kept(bytes(peer_public)))
    owner = noise_key_object(private)
    entry = None if owner is None else _STATIC_KEYS.get(id(owner))
    if entry is None or entry[0] is not owner:
        return False
    return bool(entry[1].kept(bytes(peer_public)))


_NoiseKey = tuple[bool, int, bytes, bytes | None, bytes]
# (initiator?, pattern, static private key, remote static key, prologue)


def _new_state(
    initiator: bool, pattern: int, static: bytes, remote_static: bytes | None, prologue: bytes
) -> Any:
    """A started Noise handshake with these keys, its ephemeral key not set yet (the
    state so far depends on nothing else: name, prologue, pre-message keys)."""
    return NoiseState(
        pattern,
        initiator,
        prologue,
        _static_key(static),
        None,
        remote_static if initiator and pattern == PATTERN_IK else None,
    )


# Handshakes started ahead of need (prepare_handshake): at most a few, each used once.
_STARTED: dict[_NoiseKey, list[Any]] = {}
_MAX_STARTED: Final = 8


def _take_started(key: _NoiseKey) -> Any:
    ready = _STARTED.get(key)
    if not ready:
        return None
    try:
        return ready.pop()
    except IndexError:  # another thread took the last one
        return None


def prepare_handshake(
    static_private: bytes,
    remote_static: bytes | None = None,
    *,
    initiator: bool,
    prologue: bytes = DEFAULT_PROLOGUE,
) -> None:
    """Start the Noise state of a later handshake ahead of need (while waiting on the
    network): an IK initiator to ``remote_static``, or a responder expecting IK. A
    :class:`Handshake` with the same role and keys takes it instead of starting its
    own; the result is the same bytes. Keeps at most a few."""
    pattern = PATTERN_XX if initiator and remote_static is None else PATTERN_IK
    key: _NoiseKey = (
        initiator,
        pattern,
        _check_key("static_private", static_private),
        None if remote_static is None else _check_key("remote_static", remote_static),
        _check_prologue(prologue),
    )
    # count the keys, not only the handshakes: a key whose handshakes were all taken
    # keeps an empty list, and a client with a fresh identity per connection makes a
    # new key each time (the dict would grow by one per connection, forever)
    if len(_STARTED) >= _MAX_STARTED or sum(map(len, _STARTED.values())) >= _MAX_STARTED:
        _STARTED.clear()  # unused ones (a bet on a next peer that did not come)
    _STARTED.setdefault(key, []).append(_new_state(*key))


def _forget_started() -> None:
    _STARTED.clear()
    _PROOFS_AHEAD.clear()


os.register_at_fork(after_in_child=_forget_started)


class Handshake:
    """One side of a DTP handshake (Noise IK or XX), driven by the caller.

    Create it with :meth:`initiator` (the client) or :meth:`responder` (the server), then
    alternate :meth:`write_message` and :meth:`read_message` as :attr:`wants_write` says
    until :attr:`complete`; then read :attr:`handshake_hash`, :attr:`remote_static` and
    :meth:`transport_keys`.

    The initiator writes messages 1 (and 3 in XX); the responder reads message 1, which
    tells it the pattern, and writes message 2.
    """

    def __init__(
        self,
        *,
        is_initiator: bool,
        static_private: bytes,
        ephemeral_private: bytes,
        remote_static: bytes | None,
        prologue: bytes,
    ) -> None:
        """Use :meth:`initiator` or :meth:`responder` instead."""
        self._is_initiator = is_initiator
        self._static = _check_key("static_private", static_private)
        # Checked before take_ephemeral_keypair, which uses up a key made ahead.
        self._prologue = _check_prologue(prologue)
        # The raw ephemeral key lives here only until the Noise state has its key object
        # (_start_noise): once the handshake is over nothing may keep it (Noise: delete
        # it after Split), or whoever later reads this process's memory could rebuild
        # the session keys
        ephemeral = _check_key("ephemeral_private", ephemeral_private)
        self._ephemeral: bytes | None = ephemeral
        # made ahead by dtp.identity._ahead (None otherwise): its public half is known already
        self._ephemeral_key: Any = take_ephemeral_keypair(ephemeral)
        self._remote_static: bytes | None = (
            None if remote_static is None else _check_key("remote_static", remote_static)
        )
        self._pattern: int | None = None
        self._noise: Any = None  # the core's NoiseState while in progress
        self._messages_done = 0
        self._failed = False
        self._hash: bytes | None = None
        self._keys: tuple[bytes, bytes] | None = None
        self._binding: bytes | None = None  # IK: what an early identity proof signs
        if is_initiator:
            self._pattern = PATTERN_XX if self._remote_static is None else PATTERN_IK
            self._noise = self._start_noise(self._pattern)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def initiator(
        cls,
        static_private: bytes,
        ephemeral_private: bytes,
        remote_static: bytes | None = None,
        prologue: bytes = DEFAULT_PROLOGUE,
    ) -> Handshake:
        """The client side.

        ``static_private`` is the client's 32-byte X25519 key
        (:meth:`HostIdentity.noise_private_bytes`); ``ephemeral_private`` must be 32 fresh
        random bytes for every handshake (``os.urandom(32)``; reusing one breaks the
        security of both sessions). With ``remote_static`` (the server's published
        X25519 key) the handshake is IK, without it XX. Both sides must use the same
        ``prologue``, of at most 65535 bytes. Raises ValueError/TypeError for malformed
        keys or prologue.
        """
        return cls(
            is_initiator=True,
            static_private=static_private,
            ephemeral_private=ephemeral_private,
            remote_static=remote_static,
            prologue=prologue,
        )

    @classmethod
    def responder(
        cls,
        static_private: bytes,
        ephemeral_private: bytes,
        prologue: bytes = DEFAULT_PROLOGUE,
    ) -> Handshake:
        """The server side; the pattern is chosen by the client's first message.

        Keys as for :meth:`initiator`: ``static_private`` is the server's X25519 key (the
        one its ``Host`` object publishes), ``ephemeral_private`` 32 fresh random bytes.
        """
        return cls(
            is_initiator=False,
            static_private=static_private,
            ephemeral_private=ephemeral_private,
            remote_static=None,
            prologue=prologue,
        )

    def _start_noise(self, pattern: int) -> Any:
        key = (self._is_initiator, pattern, self._static, self._remote_static, self._prologue)
        state = _take_started(key)
        if state is None:
            state = _new_state(*key)
        ephemeral = self._ephemeral_key
        raw = self._ephemeral
        if ephemeral is None:
            assert raw is not None  # (a restart keeps the key object instead)
            ephemeral = self._ephemeral_key = NoiseKey(raw)
        state.set_ephemeral(ephemeral)
        if raw is not None:
            self._ephemeral = None
            if self._is_initiator and pattern == PATTERN_IK:
                # IK's es and ss made ahead (dtp.identity._ahead) for exactly these keys
                remote = self._remote_static
                assert remote is not None
                es = take_shared_secret(raw, remote)
                if es is not None:
                    state.give_dh(DH_ES, es)
                ss = take_shared_secret(self._static, remote)
                if ss is not None:
                    state.give_dh(DH_SS, ss)
            # whatever else was made ahead with this ephemeral key (for a server the
            # connect did not go to) is never taken: dropped, or the table would keep
            # the private key on after the handshake
            forget_shared_secrets(raw)
        if self._is_initiator and pattern == PATTERN_IK:
            assert self._remote_static is not None
            self._binding = _early_binding(self._prologue, self._remote_static, ephemeral.public)
        return state

    # -- state ----------------------------------------------------------------------------

    @property
    def is_initiator(self) -> bool:
        """True on the client side."""
        return self._is_initiator

    @property
    def pattern(self) -> int | None:
        """:data:`PATTERN_IK` or :data:`PATTERN_XX`; None on a responder before message 1."""
        return self._pattern

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._keys is not None

    @property
    def failed(self) -> bool:
        """True after a failure; the handshake cannot continue."""
        return self._failed

    @property
    def wants_write(self) -> bool:
        """True when the next step is :meth:`write_message` (False when done or failed)."""
        if self._failed or self.complete:
            return False
        return (self._messages_done % 2 == 0) == self._is_initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's X25519 static public key, once known.

        The initiator knows it from the start in IK and after message 2 in XX; the
        responder learns it from message 1 in IK and message 3 in XX. In XX the client
        must compare it with the key the server publishes.
        """
        return self._remote_static

    @property
    def handshake_hash(self) -> bytes:
        """The 32-byte Noise handshake hash (channel binding); only once :attr:`complete`."""
        if self._hash is None:
            raise HandshakeError("the handshake hash exists only once the handshake is complete")
        return self._hash

    @property
    def auth_binding(self) -> bytes:
        """IK only: the 32 bytes a client's identity proof in message 1 signs (see the
        module docs); the initiator has it from the start, the responder once it has
        read message 1. Raises :class:`HandshakeError` otherwise."""
        if self._binding is None:
            raise HandshakeError("an early identity proof binding exists only in IK")
        return self._binding

    def transport_keys(self) -> tuple[bytes, bytes]:
        """``(send_key, recv_key)``: this side's raw 32-byte ChaCha20-Poly1305 keys.

        The initiator's send key is the responder's receive key and vice versa. Noise
        transport nonces are ``4 zero bytes || u64le counter``. Only once :attr:`complete`.
        """
        if self._keys is None:
            raise HandshakeError("transport keys exist only once the handshake is complete")
        return self._keys

    def __repr__(self) -> str:
        role = "initiator" if self._is_initiator else "responder"
        pattern = {PATTERN_IK: "IK", PATTERN_XX: "XX", None: "?"}[self._pattern]
        state = "failed" if self._failed else "complete" if self.complete else "in progress"
        return f"<Handshake {role} {pattern} {state}, {self._messages_done} messages>"

    # -- messages -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failed:
            raise HandshakeError("the handshake already failed")
        if self.complete:
            raise HandshakeError("the handshake is already complete")

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message to send, carrying ``payload``.

        Raises :class:`HandshakeError` when it is not this side's turn, the handshake is
        over, or ``payload`` is longer than :data:`MAX_PAYLOAD_SIZE` (these leave the
        handshake usable), or if Noise fails (which does not).
        """
        if self._failed or self._keys is not None:
            self._check_usable()
        # (wants_write, neither failed nor complete)
        if ((self._messages_done & 1) == 0) != self._is_initiator:
            raise HandshakeError("out of turn: a handshake message must be read first")
        if type(payload) is not bytes:
            payload = _as_bytes("payload", payload)
        if len(payload) > MAX_PAYLOAD_SIZE:
            raise HandshakeError(
                f"handshake payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_SIZE}"
            )
        try:
            body: bytes = self._noise.write_message(payload)
        except NoiseError as exc:
            self._fail()
            raise HandshakeError(f"cannot write handshake message: {exc}") from None
        if self._messages_done == 0:
            assert self._pattern is not None  # the initiator picks it at construction
            body = bytes((self._pattern,)) + body
        self._after_message()
        return body

    def read_message(self, message: bytes, *, keep_state: bool = False) -> bytes:
        """Process a handshake message from the peer; return the payload it carried.

        Raises :class:`HandshakeError` for anything wrong with it (see the module docs);
        after that the handshake is dead, unless ``keep_state`` is true: then the
        handshake is left exactly as it was before the call (:attr:`failed` stays
        False) and can read the genuine message still; for lossy carriers, where a
        forged or damaged message must be dropped. Also raises it, without killing the
        handshake, when the handshake is already complete or failed.
        """
        if self._failed or self._keys is not None:
            self._check_usable()
        data = message if type(message) is bytes else _as_bytes("message", message)
        # (a Noise read is all or nothing: a failed one changed no state)
        started = self._noise is not None
        try:
            return self._read(data)
        except HandshakeError:
            if not keep_state:
                self._fail()
            elif not started:  # message 1 at a responder: start again from nothing
                self._restart_responder()
            raise

    def unread_first_message(self) -> None:
        """A responder that has read message 1 and written nothing forgets it, as if it
        had never come (for lossy carriers: a message 1 Noise accepts may still be one
        whose payload the connection refuses -- XX message 1 is not authenticated at
        all -- and the genuine one may follow). HandshakeError in any other state."""
        if self._is_initiator or self._messages_done != 1 or self._failed:
            raise HandshakeError("only a responder that read message 1 alone can unread it")
        self._restart_responder()
        self._messages_done = 0
        self._remote_static = None
        self._binding = None

    def _restart_responder(self) -> None:
        # (the ephemeral key object stays in self._ephemeral_key: its public half cost a DH)
        if self._noise is not None:
            self._noise.wipe()
        self._noise = None
        self._pattern = None

    def _read(self, data: bytes) -> bytes:
        # (wants_write: read_message checked it is neither failed nor complete)
        if ((self._messages_done & 1) == 0) == self._is_initiator:
            raise HandshakeError("out of turn: expected to write a handshake message, not read")
        if len(data) > MAX_MESSAGE_SIZE:
            raise HandshakeError(
                f"handshake message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}"
            )
        if self._messages_done == 0:  # only a responder reads message 1
            if not data:
                raise HandshakeError("empty handshake message")
            pattern, data = data[0], data[1:]
            if pattern not in PROTOCOL_NAMES:
                raise HandshakeError(f"unknown handshake pattern id {pattern}")
            self._pattern = pattern
            self._noise = self._start_noise(pattern)
        assert self._pattern is not None
        # checked before Noise reads it: a failed read must change nothing (keep_state)
        payload_size = len(data) - self._noise.overhead()
        if payload_size > MAX_PAYLOAD_SIZE:
            raise HandshakeError(
                f"handshake payload of {payload_size} bytes exceeds {MAX_PAYLOAD_SIZE}"
            )
        noise = self._noise
        try:
            payload: bytes = noise.read_message(data)
        except NoiseError:
            # No detail: which check failed is of no use to the peer, or to the user.
            raise HandshakeError(
                f"invalid handshake message {self._messages_done + 1} "
                "(malformed, or not from the expected peer)"
            ) from None
        self._after_message()
        if self._messages_done == 1 and self._pattern == PATTERN_IK:
            # IK message 1 opens with the client's ephemeral public key, in clear
            self._binding = _early_binding(self._prologue, noise.s.public, data[:KEY_SIZE])
        return payload

    def _fail(self) -> None:
        """The handshake is dead: drop its Noise state, which holds the ephemeral key
        and the chaining key (nothing reads them any more)."""
        self._failed = True
        if self._noise is not None:
            self._noise.wipe()
        self._noise = None
        if self._ephemeral is not None:  # (DH results made ahead for it: see _start_noise)
            forget_shared_secrets(self._ephemeral)
        self._ephemeral = None
        self._ephemeral_key = None

    def _after_message(self) -> None:
        self._messages_done += 1
        noise = self._noise
        if self._remote_static is None:  # (once known, Noise's rs stays the same)
            self._remote_static = noise.remote_static
        if noise.complete:
            assert self._pattern is not None
            assert self._messages_done == _MESSAGE_COUNT[self._pattern]
            self._hash = noise.handshake_hash()
            self._keys = noise.split()  # (which wipes the state's secrets)
            self._noise = None
            self._ephemeral_key = None


# -- channel binding ------------------------------------------------------------------------


def _early_binding(prologue: bytes, server_static: bytes, client_ephemeral: bytes) -> bytes:
    return hashlib.blake2s(
        PROTOCOL_NAMES[PATTERN_IK]
        + len(prologue).to_bytes(2, "little")
        + prologue
        + server_static
        + client_ephemeral
    ).digest()


def _auth_message(session_digest: bytes, early: bool) -> bytes:
    if type(session_digest) is not bytes:
        session_digest = _as_bytes("session_digest", session_digest)  # bytes(32): 32 zeros
    if len(session_digest) != 32:
        raise ValueError("a handshake hash or binding is 32 bytes")
    return (AUTH_EARLY_CONTEXT if early else AUTH_CONTEXT) + session_digest


# IK identity proofs made ahead of need (prepare_auth_proof): (the identity's Ed25519
# key, the message signed) -> the proof, each taken once by make_auth_proof
_PROOFS_AHEAD: dict[tuple[bytes, bytes], bytes] = {}
_MAX_PROOFS_AHEAD: Final = 8


def prepare_auth_proof(
    identity: HostIdentity, server_static: bytes, ephemeral_public: bytes
) -> None:
    """Make ahead of need (while waiting on the network) the identity proof of a later IK
    handshake of ``identity`` with ``server_static`` whose ephemeral key is the one
    with ``ephemeral_public`` (one dtp.identity._ahead made): it signs nothing else than the
    binding of those keys (:attr:`Handshake.auth_binding`), so the proof made now is
    the one :func:`make_auth_proof` would make then, and takes instead (once). Only for
    a plain :class:`HostIdentity`, whose signing is known (a subclass may sign
    otherwise each time)."""
    if type(identity) is not HostIdentity:
        return
    binding = _early_binding(
        DEFAULT_PROLOGUE, _check_key("server_static", server_static), bytes(ephemeral_public)
    )
    message = _auth_message(binding, True)
    key = (identity.ed25519_public, message)
    if key in _PROOFS_AHEAD:
        return
    # (past the bound the oldest goes: for an ephemeral key another connect took first)
    _bounded_put(_PROOFS_AHEAD, key, identity.sign_personal_message(message), _MAX_PROOFS_AHEAD)


def anonymous_identity_proving(
    noise: tuple[bytes, Any], server_static: bytes, ephemeral_public: bytes
) -> HostIdentity | None:
    """A fresh anonymous identity around the fresh Noise key ``noise`` (private bytes,
    the core's key object: dtp.identity._ahead.new_anonymous_noise_key) and a fresh
    Ed25519 key, with :func:`prepare_auth_proof`'s proof for ``server_static`` and
    ``ephemeral_public`` made with it: fastcrypto derives the key and signs in one call
    (dtp.identity._ed25519.sign_personal_with_seed), about half of what OpenSSL's key
    generation and signature cost. None without fastcrypto (or if its answer is not an
    Ed25519 signature): the caller makes the identity the usual way."""
    sign = sign_personal_with_seed
    if sign is None:
        return None
    binding = _early_binding(
        DEFAULT_PROLOGUE, _check_key("server_static", server_static), bytes(ephemeral_public)
    )
    message = _auth_message(binding, True)
    seed = os.urandom(32)
    try:
        proof = sign(seed, message)
    except (ValueError, TypeError):  # (not expected: the usual way then)
        return None
    if not is_ed25519_proof(proof):
        return None
    private, key = noise
    identity = HostIdentity._around_seed(seed, proof[-32:], private, key)
    _bounded_put(_PROOFS_AHEAD, (identity.ed25519_public, message), proof, _MAX_PROOFS_AHEAD)
    return identity


def make_auth_proof(identity: Any, session_digest: bytes, *, early: bool = False) -> bytes:
    """The client's proof of its Sui address for this handshake.

    A Sui personal-message signature by ``identity`` -- a
    :class:`~dtp.identity.keys.HostIdentity` (Ed25519, 97 bytes) or any wallet of
    :mod:`dtp.identity.wallets` -- over ``b"DTP-AUTH-V1" || handshake_hash`` (XX: sent
    once the handshake is complete), or with ``early`` over ``b"DTP-AUTH-IK-V1" ||
    auth_binding`` (IK: sent in message 1; see the module docs; one
    :func:`prepare_auth_proof` made for this binding is taken instead). Raises
    ValueError if ``session_digest`` is not 32 bytes (TypeError if it is not
    bytes-like), :class:`HandshakeError` if the wallet's proof is larger than
    :data:`MAX_AUTH_PROOF_SIZE`.
    """
    message = _auth_message(session_digest, early)
    if early and type(identity) is HostIdentity:
        made = _PROOFS_AHEAD.pop((identity.ed25519_public, message), None)
        if made is not None:
            return made
    proof = bytes(identity.sign_personal_message(message))
    if len(proof) > MAX_AUTH_PROOF_SIZE:
        raise HandshakeError(
            f"the wallet's identity proof is {len(proof)} bytes: DTP takes at most "
            f"{MAX_AUTH_PROOF_SIZE} (a multisig of fewer zkLogin members fits)"
        )
    return proof


def is_ed25519_proof(proof: bytes) -> bool:
    """Whether ``proof`` has the form of an Ed25519 one, the only form transport version
    1 takes: 97 bytes, flag 0x00."""
    return len(proof) == AUTH_PROOF_SIZE and proof[0] == 0x00


def check_auth_proof(
    proof: bytes, session_digest: bytes, *, early: bool = False, version: int = ANY_SCHEME_VERSION
) -> SuiSigner:
    """Check a client's identity proof for this handshake: who it proves.

    ``session_digest`` and ``early`` as for :func:`make_auth_proof`; ``version``, the
    transport version in force (1: the Ed25519 form only). A zkLogin proof (or a
    multisig with zkLogin members) is checked here in all but its Groth16 proof: the
    result's ``node_check`` says what a Sui node must still confirm before the client is
    proven (dtp.identity._zklogin). Raises :class:`HandshakeError` if the proof is
    malformed, of another scheme than the version allows, or does not verify over this
    digest in this context; ValueError if the digest is not 32 bytes; TypeError if the
    proof or the digest is not bytes-like.
    """
    message = _auth_message(session_digest, early)
    if type(proof) is not bytes:
        proof = _as_bytes("proof", proof)
    if not 1 <= len(proof) <= MAX_AUTH_PROOF_SIZE:
        raise HandshakeError(
            f"identity proof must be 1 to {MAX_AUTH_PROOF_SIZE} bytes, got {len(proof)}"
        )
    if version < ANY_SCHEME_VERSION and not is_ed25519_proof(proof):
        raise HandshakeError(
            f"identity proof rejected: transport version {version} takes only the "
            f"{AUTH_PROOF_SIZE}-byte Ed25519 form (a wallet of another scheme needs version "
            f"{ANY_SCHEME_VERSION})"
        )
    try:
        return check_signature(proof, personal_message_digest(message))
    except InvalidSignature as exc:
        raise HandshakeError(f"identity proof rejected: {exc}") from None


def verify_auth_proof(proof: bytes, session_digest: bytes, *, early: bool = False) -> str:
    """Check a client's identity proof for this handshake; return its Sui address.

    As :func:`check_auth_proof`, for a proof wholly verified here: a zkLogin one, whose
    proof only a Sui node verifies, raises :class:`HandshakeError`.
    """
    signer = check_auth_proof(proof, session_digest, early=early)
    if signer.node_check is not None:
        raise HandshakeError(
            f"identity proof rejected: a {signer.scheme} proof is verified by a Sui node, "
            "and none was asked"
        )
    return signer.address
