"""The DTP handshake: Noise IK (or XX) plus a Sui-signed channel binding. Sans-I/O.

This module turns handshake messages into session keys and does nothing else: no
sockets, no clock, no randomness of its own (the caller passes the ephemeral key), no
record framing. The connection state machine carries the messages in ``HS_INIT`` /
``HS_RESP`` / ``HS_FINAL`` records and hands the resulting keys to the record layer.

Patterns (both ``25519_ChaChaPoly_BLAKE2s``, run by the ``noiseprotocol`` package):

- ``Noise_IK`` (:data:`PATTERN_IK`) when the client knows the server's static key (it is
  published in the server's ``Host`` object). Two messages: client → server, server →
  client.
- ``Noise_XX`` (:data:`PATTERN_XX`) otherwise. Three messages; the client learns the
  server's static key from message 2 (:attr:`Handshake.remote_static`) and must check it
  against what it expected before trusting the session.

Wire form of the handshake messages:

- message 1 (client → server): one byte, the pattern id (1 = IK, 2 = XX), then the Noise
  message;
- later messages: the Noise message alone.

Every message is at most :data:`MAX_MESSAGE_SIZE` (4096) bytes, pattern byte included, and
carries a payload of at most :data:`MAX_PAYLOAD_SIZE` bytes. The pattern byte is not
authenticated by itself, but it cannot be changed unnoticed: the Noise protocol name is
hashed into the transcript, so two sides running different patterns never agree on keys.

Payload confidentiality follows Noise: the first XX payload is sent in clear; the first
IK payload is encrypted to the server's static key but has no forward secrecy and can be
replayed to the server. Put nothing secret in message 1, and nothing whose replay matters.

Any failure while reading (malformed, truncated, oversized or undecryptable message,
unknown pattern id, message out of turn) raises :class:`~dtp.errors.HandshakeError`, and
the handshake is then dead: every later call raises ``HandshakeError`` too. On a lossy
carrier, where anyone may slip in a forged or damaged message before the genuine one,
``read_message(message, keep_state=True)`` instead leaves the handshake exactly as it
was (the message is as if never read) and the genuine message, or its retransmission,
can still complete it; a message 1 that Noise took but whose payload the caller refuses
is forgotten with :meth:`Handshake.unread_first_message`. What this cannot cover: XX
message 1 is not authenticated at all, so a forged one that reads cleanly and arrives
first is answered, and the genuine client (whose resends no longer match) times out --
on carriers where anyone may inject a message (a UDP port), not on the ledger carrier,
where only the pipe's owner writes. A client
that used the wrong server key in IK never gets a reply (the server's ``read_message``
raises on message 1 and there is nothing to send back); the connection layer sees the
carrier close or its handshake timeout. A message 2 from anyone but the holder of the
server key the client used fails the client's ``read_message`` with ``HandshakeError``.

Channel binding: the client proves its Sui address with :func:`make_auth_proof`, a Sui
personal-message signature, and the server checks it with :func:`verify_auth_proof`.

- In XX the proof is sent once the handshake is complete and signs ``b"DTP-AUTH-V1" ||
  handshake_hash``. The handshake hash is unique to this handshake, so the proof cannot be
  replayed into another one.
- In IK it travels in the payload of message 1 (``early=True``), so that the server can
  decide on the client before it answers and the client learns the verdict with message
  2, saving a round trip. It then signs ``b"DTP-AUTH-IK-V1" || binding``, where the
  binding (:attr:`Handshake.auth_binding`) is BLAKE2s over the IK protocol name, the
  prologue (u16le length first), the server's static key and the client's ephemeral
  public key. The ephemeral key is fresh for every handshake and the session keys
  depend on its private half (``es``, ``ee``), so a copied proof is of no use to anyone
  without that key, even to someone holding the server's static key (``ee`` needs one of
  the two ephemeral private keys).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.backends.default.backend import DefaultNoiseBackend
from noise.backends.default.ciphers import ChaCha20Cipher
from noise.backends.default.diffie_hellmans import ED25519
from noise.backends.default.hashes import BLAKE2sHash, hmac_hash
from noise.backends.default.keypairs import KeyPair25519
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValidationError,
    NoiseValueError,
)
from noise.functions.hash import hkdf as noise_hkdf

from dtp.errors import HandshakeError
from dtp.identity._ahead import (
    _bounded_put,
    forget_shared_secrets,
    take_ephemeral_keypair,
    take_shared_secret,
)
from dtp.identity.keys import (
    HostIdentity,
    InvalidSignature,
    noise_key_object,
    verify_personal_message,
)

__all__ = [
    "AUTH_CONTEXT",
    "AUTH_EARLY_CONTEXT",
    "AUTH_PROOF_SIZE",
    "DEFAULT_PROLOGUE",
    "KEY_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_PAYLOAD_SIZE",
    "PATTERN_IK",
    "PATTERN_XX",
    "PROTOCOL_NAMES",
    "Handshake",
    "make_auth_proof",
    "prepare_handshake",
    "verify_auth_proof",
]

#: Pattern id of ``Noise_IK_25519_ChaChaPoly_BLAKE2s`` (first byte of message 1).
PATTERN_IK: Final = 1
#: Pattern id of ``Noise_XX_25519_ChaChaPoly_BLAKE2s`` (first byte of message 1).
PATTERN_XX: Final = 2

#: The Noise protocol name for each pattern id.
PROTOCOL_NAMES: Final[dict[int, bytes]] = {
    PATTERN_IK: b"Noise_IK_25519_ChaChaPoly_BLAKE2s",
    PATTERN_XX: b"Noise_XX_25519_ChaChaPoly_BLAKE2s",
}
_MESSAGE_COUNT: Final[dict[int, int]] = {PATTERN_IK: 2, PATTERN_XX: 3}
# What Noise adds to the payload of each message, by pattern and message number (pattern
# byte not counted): 32 per ephemeral key, 48 per encrypted static key, 16 for the
# payload's tag once there is a key. Lets a read refuse an oversized payload before Noise
# changes any state.
_NOISE_OVERHEAD: Final[dict[tuple[int, int], int]] = {
    (PATTERN_IK, 1): 32 + 48 + 16,
    (PATTERN_IK, 2): 32 + 16,
    (PATTERN_XX, 1): 32,
    (PATTERN_XX, 2): 32 + 48 + 16,
    (PATTERN_XX, 3): 48 + 16,
}

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
#: Size of an identity proof (a serialized Ed25519 Sui signature).
AUTH_PROOF_SIZE: Final = 97

# Everything noiseprotocol (and cryptography underneath it) raises on bad input: a
# wrong-length key or message part (NoiseValueError), a failed AEAD tag (InvalidTag), a
# low-order X25519 point (ValueError), state misuse (NoiseHandshakeError, ...).
_NOISE_ERRORS: Final = (
    InvalidTag,
    ValueError,
    NoiseValueError,
    NoiseInvalidMessage,
    NoiseHandshakeError,
    NoiseMaxNonceError,
    NoiseValidationError,
)


def _as_bytes(name: str, value: bytes) -> bytes:
    # bytes(5) would quietly make five zero bytes; accept only bytes-like objects.
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
    prologue = _as_bytes("prologue", prologue)
    if len(prologue) > _MAX_PROLOGUE_SIZE:
        raise ValueError(
            f"prologue must be at most {_MAX_PROLOGUE_SIZE} bytes, got {len(prologue)}"
        )
    return prologue


def _check_key(name: str, key: bytes) -> bytes:
    key = _as_bytes(name, key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"{name} must be {KEY_SIZE} bytes, got {len(key)}")
    return key


class _Blake2sHash(BLAKE2sHash):  # type: ignore[misc]
    """BLAKE2s for Noise through :mod:`hashlib` (the same function as the default
    backend's, without building a ``cryptography`` hash object per call)."""

    @property
    def fn(self) -> Any:
        return _blake2s_fn

    def hash(self, data: bytes) -> bytes:
        return hashlib.blake2s(data).digest()


_blake2s_fn = BLAKE2sHash().fn  # what the default backend's HMAC is given for BLAKE2s


def _hmac(key: bytes, data: bytes, algorithm: Any) -> bytes:
    """HMAC-HASH as the default backend computes it; HMAC-BLAKE2s (block 64, digest
    32) through :mod:`hmac` and :mod:`hashlib`."""
    if algorithm is _blake2s_fn:
        return hmac.digest(key, data, hashlib.blake2s)
    return bytes(hmac_hash(key, data, algorithm))


# HMAC (RFC 2104) with BLAKE2s: the key, zero-padded to the 64-byte block, XORed with
# these pads (bytes.translate does the XOR of every byte at once).
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))


def _blake2s_pads(key: bytes) -> tuple[Any, Any]:
    """The inner and outer BLAKE2s states of HMAC-BLAKE2s under ``key``, to be copied
    for each message: one key serves two or three HMACs in an HKDF."""
    if len(key) > 64:
        key = hashlib.blake2s(key).digest()
    block = key.ljust(64, b"\0")
    return hashlib.blake2s(block.translate(_IPAD)), hashlib.blake2s(block.translate(_OPAD))


def _hmac_padded(pads: tuple[Any, Any], data: bytes) -> bytes:
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def _hkdf(
    chaining_key: bytes, input_key_material: bytes, num_outputs: int, hmac_hash_fn: Any
) -> tuple[bytes, ...]:
    """Noise's HKDF (spec section 4.3), HMAC-BLAKE2s computed with the pads of each key
    made once; other hashes go to noiseprotocol's own."""
    if getattr(hmac_hash_fn, "keywords", {}).get("algorithm") is not _blake2s_fn:
        result: tuple[bytes, ...] = noise_hkdf(
            chaining_key, input_key_material, num_outputs, hmac_hash_fn
        )
        return result
    temp = _blake2s_pads(_hmac_padded(_blake2s_pads(chaining_key), input_key_material))
    output1 = _hmac_padded(temp, b"\x01")
    output2 = _hmac_padded(temp, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    return output1, output2, _hmac_padded(temp, output2 + b"\x03")


class _LazyChaCha20Cipher(ChaCha20Cipher):  # type: ignore[misc]
    """ChaChaPoly for Noise, its ``cryptography`` object made on first use: a handshake
    sets a key at every DH (MixKey) but encrypts under only some of them."""

    def initialize(self, key: bytes) -> None:
        self._key = key
        self.cipher: ChaCha20Poly1305 | None = None

    def _aead(self) -> ChaCha20Poly1305:
        aead = self.cipher
        if aead is None:
            aead = self.cipher = ChaCha20Poly1305(self._key)
        return aead

    def encrypt(self, k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
        return self._aead().encrypt(self.format_nonce(n), plaintext, ad)

    def decrypt(self, k: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        return self._aead().decrypt(self.format_nonce(n), ciphertext, ad)


# X25519 results of a live identity's static key (_static_keypair registers its key
# object) with a peer's public key. A server answers IK from the same clients again and
# again, and each handshake's ``ss`` (its static key with the client's) is the same
# scalar multiplication, 30 us. Static keys only: a secret an ephemeral key made must
# not outlive its handshake (forward secrecy rests on those), and one is never used
# twice. Keeping these reveals nothing beyond the static key: whoever holds that
# computes them again from public keys. The responder's ``es`` (its static key with
# the client's ephemeral) comes through here too and is kept, never to be asked for
# again; the table is small and least-recently-used goes first, so a returning
# client's ``ss`` stays while those pass through.
_STATIC_SECRETS: OrderedDict[tuple[int, bytes], tuple[X25519PrivateKey, bytes]] = OrderedDict()
_MAX_STATIC_SECRETS: Final = 256
# id -> key object of the static keys above; holding the object keeps its id from being
# reused by another key while it is listed
_STATIC_KEYS: dict[int, X25519PrivateKey] = {}
_MAX_STATIC_KEYS: Final = 16
_static_lock = threading.Lock()


def _register_static(key: X25519PrivateKey) -> None:
    with _static_lock:
        if _STATIC_KEYS.get(id(key)) is key:
            return
        if len(_STATIC_KEYS) >= _MAX_STATIC_KEYS:
            # (identities made and dropped by the dozen: start over, results with them)
            _STATIC_KEYS.clear()
            _STATIC_SECRETS.clear()
        _STATIC_KEYS[id(key)] = key


def _static_dh(private_key: X25519PrivateKey, public_key: X25519PublicKey) -> bytes | None:
    """A kept result of a registered static key with ``public_key``, else computed and
    kept; None when ``private_key`` is not a registered static key."""
    if _STATIC_KEYS.get(id(private_key)) is not private_key:
        return None
    key = (id(private_key), public_key.public_bytes_raw())
    with _static_lock:
        kept = _STATIC_SECRETS.get(key)
        if kept is not None and kept[0] is private_key:
            _STATIC_SECRETS.move_to_end(key)
            return kept[1]
    result = private_key.exchange(public_key)  # (a low-order key raises, nothing kept)
    with _static_lock:
        _STATIC_SECRETS[key] = (private_key, result)
        while len(_STATIC_SECRETS) > _MAX_STATIC_SECRETS:
            _STATIC_SECRETS.popitem(last=False)
    return result


def static_secret_kept(identity: HostIdentity, peer_public: bytes) -> bool:
    """Whether the X25519 result of ``identity``'s static key with ``peer_public`` is
    kept (:func:`_static_dh`): a client need not compute its IK ``ss`` ahead then."""
    key = noise_key_object(identity.noise_private_bytes())
    if key is None or _STATIC_KEYS.get(id(key)) is not key:
        return False
    return (id(key), bytes(peer_public)) in _STATIC_SECRETS


class _X25519(ED25519):  # type: ignore[misc]
    """X25519 for Noise that first takes a result made ahead for exactly these two keys
    (dtp.identity._ahead: a client's IK ``es``/``ss`` computed while it waited on its
    previous connect), or one kept for a static key (:func:`_static_dh`), else
    computes it."""

    def dh(self, private_key: Any, public_key: Any) -> bytes:
        if isinstance(private_key, X25519PrivateKey) and isinstance(public_key, X25519PublicKey):
            made = take_shared_secret(private_key, public_key)
            if made is None:
                made = _static_dh(private_key, public_key)
            if made is not None:
                return made
        result: bytes = super().dh(private_key, public_key)
        return result


class _Backend(DefaultNoiseBackend):  # type: ignore[misc]
    """noiseprotocol's default backend with a cheaper BLAKE2s, HMAC and HKDF (a
    handshake hashes some forty times) and ChaChaPoly objects made only when used;
    every result is the same."""

    def __init__(self) -> None:
        super().__init__()
        hashes: dict[str, Any] = dict(vars(self)["hashes"])
        hashes["BLAKE2s"] = _Blake2sHash
        self.hashes = hashes
        ciphers: dict[str, Any] = dict(vars(self)["ciphers"])
        ciphers["ChaChaPoly"] = _LazyChaCha20Cipher
        self.ciphers = ciphers
        dhs: dict[str, Any] = dict(vars(self)["diffie_hellmans"])
        dhs["25519"] = _X25519
        self.diffie_hellmans = dhs
        self.hmac = _hmac
        self.hkdf = _hkdf


_BACKEND = _Backend()


def _static_keypair(private: bytes) -> Any:
    """The Noise keypair of a static key. The key object of a live
    :class:`~dtp.identity.keys.HostIdentity` is reused: building one from the bytes derives the
    public key, a scalar multiplication as costly as a DH, on every handshake."""
    key = noise_key_object(private)
    if key is None:
        return KeyPair25519.from_private_bytes(private)
    _register_static(key)
    public = key.public_key()
    return KeyPair25519(private=key, public=public, public_bytes=public.public_bytes_raw())


_NoiseKey = tuple[bool, int, bytes, bytes | None, bytes]
# (initiator?, pattern, static private key, remote static key, prologue)


def _new_noise(
    initiator: bool, pattern: int, static: bytes, remote_static: bytes | None, prologue: bytes
) -> Any:
    """A started noiseprotocol handshake with these keys, its ephemeral key not set yet
    (the state so far depends on nothing else: name, prologue, pre-message keys)."""
    noise = NoiseConnection.from_name(PROTOCOL_NAMES[pattern], backend=_BACKEND)
    noise.set_prologue(prologue)
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
    noise.noise_protocol.keypairs["s"] = _static_keypair(static)
    if initiator and remote_static is not None:
        noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    noise.start_handshake()
    return noise


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
    _STARTED.setdefault(key, []).append(_new_noise(*key))


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
        # The raw ephemeral key lives here only until Noise has it (_start_noise): once
        # the handshake is over nothing may keep it (Noise: delete it after Split), or
        # whoever later reads this process's memory could rebuild the session keys
        ephemeral = _check_key("ephemeral_private", ephemeral_private)
        self._ephemeral: bytes | None = ephemeral
        # made ahead by dtp.identity._ahead (None otherwise): its public half is known already
        self._ephemeral_keypair: Any = take_ephemeral_keypair(ephemeral)
        self._remote_static: bytes | None = (
            None if remote_static is None else _check_key("remote_static", remote_static)
        )
        self._pattern: int | None = None
        self._noise: Any = None  # noise.connection.NoiseConnection while in progress
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
        noise = _take_started(key)
        if noise is None:
            noise = _new_noise(*key)
        # The ephemeral key comes from the caller (sans-I/O). It goes into the handshake
        # state once that exists (neither pattern has an ephemeral pre-message, so the
        # state is the same as with the key set before): set earlier, noiseprotocol
        # warns ("OK for testing") on every handshake, and silencing that costs more
        # than the rest of the set-up.
        ephemeral = self._ephemeral_keypair
        self._ephemeral_keypair = None
        if ephemeral is None:
            assert self._ephemeral is not None  # (a restart gets the key pair back)
            ephemeral = KeyPair25519.from_private_bytes(self._ephemeral)
        self._ephemeral = None
        noise.noise_protocol.handshake_state.e = ephemeral
        if self._is_initiator and pattern == PATTERN_IK:
            assert self._remote_static is not None
            self._binding = _early_binding(
                self._prologue, self._remote_static, ephemeral.public_bytes
            )
        return noise

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
        self._check_usable()
        if not self.wants_write:
            raise HandshakeError("out of turn: a handshake message must be read first")
        payload = _as_bytes("payload", payload)
        if len(payload) > MAX_PAYLOAD_SIZE:
            raise HandshakeError(
                f"handshake payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_SIZE}"
            )
        noise = self._noise
        state = noise.noise_protocol.handshake_state  # noise drops it when it completes
        try:
            body = bytes(noise.write_message(payload))
        except _NOISE_ERRORS as exc:
            self._fail()
            raise HandshakeError(f"cannot write handshake message: {exc}") from None
        if self._messages_done == 0:
            assert self._pattern is not None  # the initiator picks it at construction
            body = bytes([self._pattern]) + body
        self._after_message(state)
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
        self._check_usable()
        data = _as_bytes("message", message)
        if not keep_state:
            try:
                return self._read(data)
            except HandshakeError:
                self._fail()
                raise
        # Noise mixes a message into its state before the AEAD check can fail: save the
        # little a read changes, to put it back (only here, off the reliable-carrier path)
        noise = self._noise
        saved = None if noise is None else _save_read_state(noise)
        try:
            return self._read(data)
        except HandshakeError:
            if saved is None:  # message 1 at a responder: start again from nothing
                self._restart_responder()
            else:
                _restore_read_state(noise, saved)
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
        if self._noise is not None:
            # keep the ephemeral key object (its public half costs a DH)
            self._ephemeral_keypair = self._noise.noise_protocol.handshake_state.e
        self._noise = None
        self._pattern = None

    def _read(self, data: bytes) -> bytes:
        if self.wants_write:
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
        payload_size = len(data) - _NOISE_OVERHEAD[self._pattern, self._messages_done + 1]
        if payload_size > MAX_PAYLOAD_SIZE:
            raise HandshakeError(
                f"handshake payload of {payload_size} bytes exceeds {MAX_PAYLOAD_SIZE}"
            )
        noise = self._noise
        state = noise.noise_protocol.handshake_state
        try:
            payload = bytes(noise.read_message(data))
        except _NOISE_ERRORS:
            # No detail: which check failed is of no use to the peer, or to the user.
            raise HandshakeError(
                f"invalid handshake message {self._messages_done + 1} "
                "(malformed, or not from the expected peer)"
            ) from None
        self._after_message(state)
        if self._messages_done == 1 and self._pattern == PATTERN_IK:
            # IK message 1 opens with the client's ephemeral public key, in clear
            own = noise.noise_protocol.keypairs["s"].public_bytes
            self._binding = _early_binding(self._prologue, bytes(own), data[:KEY_SIZE])
        return payload

    def _fail(self) -> None:
        """The handshake is dead: drop its Noise state, which holds the ephemeral key
        and the chaining key (nothing reads them any more)."""
        self._failed = True
        noise, self._noise = self._noise, None
        state = getattr(getattr(noise, "noise_protocol", None), "handshake_state", None)
        ephemeral = getattr(state, "e", None)
        if ephemeral is not None:  # (DH results made ahead for it: see _after_message)
            forget_shared_secrets(ephemeral.private)
        self._ephemeral = None
        self._ephemeral_keypair = None

    def _after_message(self, state: Any) -> None:
        self._messages_done += 1
        remote = getattr(state.rs, "public_bytes", None)
        if remote is not None:
            self._remote_static = bytes(remote)
        noise = self._noise
        if noise.handshake_finished:
            assert self._pattern is not None
            assert self._messages_done == _MESSAGE_COUNT[self._pattern]
            protocol = noise.noise_protocol
            self._hash = bytes(protocol.handshake_hash)
            self._keys = (
                bytes(protocol.cipher_state_encrypt.k),
                bytes(protocol.cipher_state_decrypt.k),
            )
            self._noise = None  # drop Noise state (and its copies of the keys)
            # DH results made ahead with our ephemeral key for another server (the
            # connect went elsewhere) were never taken: dropped, or the table would
            # keep this handshake's private key on after it
            forget_shared_secrets(state.e.private)


def _save_read_state(noise: Any) -> tuple[Any, ...]:
    """What noiseprotocol's ``read_message`` changes before it can fail: the turn, the
    message patterns left, the remote keys, ``h``, ``ck`` and the handshake cipher's key
    and nonce. (It changes more only once the read succeeded: Split.)"""
    hs = noise.noise_protocol.handshake_state
    ss = hs.symmetric_state
    cs = ss.cipher_state
    return (noise._next_fn, list(hs.message_patterns), hs.re, hs.rs, ss.h, ss.ck, cs.k, cs.n)


def _restore_read_state(noise: Any, saved: tuple[Any, ...]) -> None:
    """Put back what :func:`_save_read_state` saved."""
    hs = noise.noise_protocol.handshake_state
    ss = hs.symmetric_state
    cs = ss.cipher_state
    noise._next_fn, hs.message_patterns, hs.re, hs.rs, ss.h, ss.ck, key, cs.n = saved
    if key is not cs.k:
        cs.k = key
        if cs.has_key():
            cs.cipher.initialize(key)


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


def make_auth_proof(identity: HostIdentity, session_digest: bytes, *, early: bool = False) -> bytes:
    """The client's proof of its Sui address for this handshake (97 bytes).

    A Sui personal-message signature by ``identity`` over ``b"DTP-AUTH-V1" ||
    handshake_hash`` (XX: sent once the handshake is complete), or with ``early`` over
    ``b"DTP-AUTH-IK-V1" || auth_binding`` (IK: sent in message 1; see the module docs;
    one :func:`prepare_auth_proof` made for this binding is taken instead). Raises
    ValueError if ``session_digest`` is not 32 bytes (TypeError if it is not
    bytes-like).
    """
    message = _auth_message(session_digest, early)
    if early and type(identity) is HostIdentity:
        made = _PROOFS_AHEAD.pop((identity.ed25519_public, message), None)
        if made is not None:
            return made
    return identity.sign_personal_message(message)


def verify_auth_proof(proof: bytes, session_digest: bytes, *, early: bool = False) -> str:
    """Check a client's identity proof for this handshake; return its Sui address.

    ``session_digest`` and ``early`` as for :func:`make_auth_proof`. Raises
    :class:`HandshakeError` if the proof is malformed, is not Ed25519, or was not made
    over this digest in this context; ValueError if the digest is not 32 bytes;
    TypeError if the proof or the digest is not bytes-like.
    """
    message = _auth_message(session_digest, early)
    proof = _as_bytes("proof", proof)
    if len(proof) != AUTH_PROOF_SIZE:
        raise HandshakeError(f"identity proof must be {AUTH_PROOF_SIZE} bytes, got {len(proof)}")
    try:
        return verify_personal_message(message, proof)
    except InvalidSignature as exc:
        raise HandshakeError(f"identity proof rejected: {exc}") from None
