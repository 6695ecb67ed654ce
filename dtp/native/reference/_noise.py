"""Noise_IK and Noise_XX with ``25519_ChaChaPoly_BLAKE2s``: the twin of dtp_core/noise.c.

The Noise Protocol Framework, revision 34 (its section 5: CipherState, SymmetricState,
HandshakeState), for the two patterns DTP uses and no PSK. Written against the spec
with :mod:`hashlib` (BLAKE2s, HMAC) and ``cryptography`` (X25519, ChaCha20-Poly1305)
rather than on ``noiseprotocol``: the twin must keep the C core's all-or-nothing read
(a failed read leaves the state as it was), which ``noiseprotocol`` cannot do without
reaching into its internals, and it is checked byte for byte against ``noiseprotocol``
(tests/native/test_noise.py). The module takes no randomness: the caller hands in the
ephemeral key.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dtp.errors import ErrorCode, HandshakeError, describe

__all__ = [
    "DH_EE",
    "DH_ES",
    "DH_SE",
    "DH_SS",
    "KEY_LEN",
    "MAX_MESSAGE",
    "NOISE_DH",
    "NOISE_IK",
    "NOISE_SIZE",
    "NOISE_TURN",
    "PROTOCOL_NAMES",
    "NoiseError",
    "NoiseKey",
    "NoiseState",
]

#: Pattern ids (dtp_core.h DTP_NOISE_IK / DTP_NOISE_XX).
NOISE_IK: Final = 1
NOISE_XX: Final = 2
KEY_LEN: Final = 32
#: The Noise spec's limit on any message.
MAX_MESSAGE: Final = 65535
#: DH tokens, for :meth:`NoiseState.give_dh` (dtp_core.h DTP_NOISE_EE .. SS).
DH_EE: Final = 0
DH_ES: Final = 1
DH_SE: Final = 2
DH_SS: Final = 3

# Status codes shared with the C core (dtp_core.h DTP_ERR_*): dtp.errors.ErrorCode's
ARG: Final = ErrorCode.ARG
BUFFER: Final = ErrorCode.BUFFER
DECRYPT: Final = ErrorCode.DECRYPT
COUNTER: Final = ErrorCode.COUNTER
CRYPTO: Final = ErrorCode.CRYPTO
NOISE_TURN: Final = ErrorCode.NOISE_TURN
NOISE_SIZE: Final = ErrorCode.NOISE_SIZE
NOISE_DH: Final = ErrorCode.NOISE_DH

_MESSAGES: Final = {
    DECRYPT: "Noise message failed authentication",
    COUNTER: "Noise nonce exhausted",
    ARG: "invalid Noise call",
}


class NoiseError(HandshakeError):
    """A Noise step failed; :attr:`code` is the core's status (``NOISE_*``,
    ``DECRYPT``, ...), the same on both backends."""

    def __init__(self, code: int, context: str = "") -> None:
        #: the status, a :class:`dtp.errors.ErrorCode`
        self.code: ErrorCode = ErrorCode(code)
        text = _MESSAGES.get(self.code) or describe(self.code)
        super().__init__(f"{text} ({context})" if context else text)


_TAGLEN: Final = 16
#: The Noise protocol name of each pattern (dtp_core/noise.c NAMES: the two agree,
#: tests/native/test_noise.py).
PROTOCOL_NAMES: Final[dict[int, bytes]] = {
    NOISE_IK: b"Noise_IK_25519_ChaChaPoly_BLAKE2s",
    NOISE_XX: b"Noise_XX_25519_ChaChaPoly_BLAKE2s",
}
_E, _S, _EE, _ES, _SE, _SS = "e", "s", "ee", "es", "se", "ss"
# pattern -> messages -> tokens (spec section 7.5; IK's pre-message "<- s" in __init__)
_PATTERNS: Final[dict[int, tuple[tuple[str, ...], ...]]] = {
    NOISE_IK: ((_E, _ES, _S, _SS), (_E, _EE, _SE)),
    NOISE_XX: ((_E,), (_E, _EE, _S, _ES), (_S, _SE)),
}
_SLOT: Final = {_EE: DH_EE, _ES: DH_ES, _SE: DH_SE, _SS: DH_SS}
_KEPT_RESULTS: Final = 256  # (as dtp_core/noise.c keeps)


def _bytes_arg(value: object) -> bytes:
    """``value``'s bytes, or TypeError for anything not bytes-like (as the C wrapper's
    call would raise: a list of ints or an int is no key, prologue or message)."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, not {type(value).__name__}")
    return bytes(value)


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.blake2s)


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


def _nonce(n: int) -> bytes:
    return b"\0\0\0\0" + n.to_bytes(8, "little")


class NoiseKey:
    """An X25519 private key and its public half (derived once). With
    ``keep_results`` (a long-lived static key) the last few static-static results
    (token ss) are kept: a server answers the same clients again and again."""

    __slots__ = ("_kept", "_lock", "key", "public")

    def __init__(self, private: bytes, *, keep_results: bool = False) -> None:
        private = _bytes_arg(private)
        if len(private) != KEY_LEN:
            raise NoiseError(ARG, "a key is 32 bytes")
        self.key = X25519PrivateKey.from_private_bytes(private)
        #: the 32-byte public key
        self.public: bytes = self.key.public_key().public_bytes_raw()
        self._kept: OrderedDict[bytes, bytes] | None = OrderedDict() if keep_results else None
        self._lock = threading.Lock()

    def dh(self, public: bytes) -> bytes:
        """X25519 with a peer's 32-byte public key; :class:`NoiseError` (``NOISE_DH``)
        for a low-order key."""
        public = _bytes_arg(public)
        if len(public) != KEY_LEN:
            raise NoiseError(ARG, "a public key is 32 bytes")
        try:
            return self.key.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            raise NoiseError(NOISE_DH) from None

    def kept(self, public: bytes) -> bool:
        """Whether the key keeps its static-static result with ``public``."""
        public = _bytes_arg(public)
        if len(public) != KEY_LEN:
            raise NoiseError(ARG, "a public key is 32 bytes")
        with self._lock:
            return self._kept is not None and public in self._kept

    def _dh_kept(self, public: bytes) -> bytes:
        kept = self._kept
        if kept is None:
            return self.dh(public)
        with self._lock:
            found = kept.get(public)
        if found is not None:
            return found
        secret = self.dh(public)
        with self._lock:
            kept[public] = secret
            while len(kept) > _KEPT_RESULTS:
                kept.popitem(last=False)
        return secret


class NoiseState:
    """One side of a Noise_IK or Noise_XX handshake (the spec's HandshakeState).

    ``rs`` is the responder's static key, which an IK initiator must have and nobody
    else may pass; ``e`` may come later (:meth:`set_ephemeral`, before the first
    message). Reads are all or nothing: a :class:`NoiseError` leaves the state as it
    was."""

    __slots__ = (
        "_ck",
        "_given",
        "_h",
        "_k",
        "_n",
        "_re",
        "_rs",
        "_split",
        "done",
        "e",
        "initiator",
        "pattern",
        "s",
    )  # fmt: skip

    def __init__(
        self,
        pattern: int,
        initiator: bool,
        prologue: bytes,
        s: NoiseKey,
        e: NoiseKey | None = None,
        rs: bytes | None = None,
    ) -> None:
        if not isinstance(s, NoiseKey) or not (e is None or isinstance(e, NoiseKey)):
            raise NoiseError(ARG, "keys must be NoiseKey")
        prologue = _bytes_arg(prologue)
        rs = None if rs is None else _bytes_arg(rs)
        if pattern not in PROTOCOL_NAMES:
            raise NoiseError(ARG, "unknown pattern")
        want_rs = pattern == NOISE_IK and initiator
        if want_rs != (rs is not None) or (rs is not None and len(rs) != KEY_LEN):
            raise NoiseError(ARG, "the responder's static key is for an IK initiator")
        self.pattern = pattern
        self.initiator = bool(initiator)
        self.s = s
        self.e = e
        self.done = 0
        self._rs: bytes | None = rs
        self._re: bytes | None = None
        self._k: bytes | None = None
        self._n = 0
        self._given: dict[int, bytes] = {}
        self._split = False
        self._h = _hash(PROTOCOL_NAMES[pattern])  # (the names are longer than HASHLEN)
        self._ck = self._h
        self._mix_hash(prologue)
        if pattern == NOISE_IK:  # pre-message "<- s"
            self._mix_hash(self._rs if initiator else s.public)  # type: ignore[arg-type]

    # -- the spec's SymmetricState ----------------------------------------------------

    def _mix_hash(self, data: bytes) -> None:
        self._h = _hash(self._h + data)

    def _mix_key(self, ikm: bytes) -> None:
        self._ck, self._k = _hkdf2(self._ck, ikm)
        self._n = 0

    def _encrypt_and_hash(self, plain: bytes) -> bytes:
        if self._k is None:
            out = plain
        else:
            out = ChaCha20Poly1305(self._k).encrypt(_nonce(self._n), plain, self._h)
            self._n += 1
        self._mix_hash(out)
        return out

    def _decrypt_and_hash(self, data: bytes) -> bytes:
        if self._k is None:
            plain = data
        else:
            try:
                plain = ChaCha20Poly1305(self._k).decrypt(_nonce(self._n), data, self._h)
            except InvalidTag:
                raise NoiseError(DECRYPT) from None
            self._n += 1
        self._mix_hash(data)
        return plain

    # -- the spec's HandshakeState ----------------------------------------------------

    def _finished(self) -> bool:
        if self.pattern not in _PATTERNS:
            raise NoiseError(ARG, "the handshake was wiped")
        return self.done >= len(_PATTERNS[self.pattern])

    def _my_turn(self) -> bool:
        return (self.done % 2 == 0) == self.initiator

    def _overhead(self) -> int:
        total, keyed = 0, self._k is not None
        for token in _PATTERNS[self.pattern][self.done]:
            if token == _E:
                total += KEY_LEN
            elif token == _S:
                total += KEY_LEN + (_TAGLEN if keyed else 0)
            else:
                keyed = True
        return total + (_TAGLEN if keyed else 0)

    def _dh(self, token: str) -> bytes:
        slot = _SLOT[token]
        given = self._given.pop(slot, None)
        if given is not None:
            return given
        init = self.initiator
        if token == _EE:
            mine, theirs = self.e, self._re
        elif token == _ES:
            mine, theirs = (self.e, self._rs) if init else (self.s, self._re)
        elif token == _SE:
            mine, theirs = (self.s, self._re) if init else (self.e, self._rs)
        else:
            mine, theirs = self.s, self._rs
        if mine is None or theirs is None:
            raise NoiseError(ARG, "a key this step needs is missing")
        return mine._dh_kept(theirs) if token == _SS else mine.dh(theirs)

    def _snapshot(self) -> tuple[object, ...]:
        return (self._h, self._ck, self._k, self._n, self._re, self._rs, dict(self._given))

    def _restore(self, saved: tuple[object, ...]) -> None:
        (self._h, self._ck, self._k, self._n, self._re, self._rs, self._given) = saved  # type: ignore[assignment]

    # -- entry points (those of dtp_core.h) ----------------------------------------------

    def wipe(self) -> None:
        """Drop the state now (its secrets with it), for a handshake given up before
        Split: every call after raises :class:`NoiseError` (``ARG``), as the core's
        dtp_noise_wipe leaves it. (Python cannot zero the bytes objects it drops; the
        core can, and does.)"""
        self.pattern = 0
        self.done = 0
        self.s = None  # type: ignore[assignment]
        self.e = None
        self._h = self._ck = b""
        self._k = self._rs = self._re = None
        self._given = {}

    def set_ephemeral(self, e: NoiseKey) -> None:
        """Set the ephemeral key of a handshake started without one (before any message)."""
        self._finished()  # (refuses a wiped state)
        if self.done != 0 or self.e is not None or not isinstance(e, NoiseKey):
            raise NoiseError(ARG, "the ephemeral key is set once, before any message")
        self.e = e

    def give_dh(self, token: int, secret: bytes) -> None:
        """Hand over the result of DH token ``token`` (``DH_EE`` .. ``DH_SS``) made
        ahead of need: the next message that needs it takes it instead."""
        secret = _bytes_arg(secret)
        if token not in _SLOT.values() or len(secret) != KEY_LEN:
            raise NoiseError(ARG, "a DH token and its 32-byte result")
        if self._finished():
            raise NoiseError(NOISE_TURN)
        self._given[token] = secret

    def overhead(self) -> int:
        """Bytes the next message adds to its payload."""
        if self._finished():
            raise NoiseError(NOISE_TURN)
        return self._overhead()

    @property
    def complete(self) -> bool:
        """True once every message of the pattern is written or read."""
        return self.pattern in _PATTERNS and self._finished()

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static key, once known."""
        self._finished()  # (refuses a wiped state)
        return self._rs

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage: the next message, carrying ``payload``. On any error the state
        is as it was."""
        payload = _bytes_arg(payload)
        if self._finished() or not self._my_turn():
            raise NoiseError(NOISE_TURN)
        if len(payload) > MAX_MESSAGE - self._overhead():
            raise NoiseError(NOISE_SIZE)
        saved = self._snapshot()
        parts: list[bytes] = []
        try:
            for token in _PATTERNS[self.pattern][self.done]:
                if token == _E:
                    if self.e is None:
                        raise NoiseError(ARG, "no ephemeral key")
                    parts.append(self.e.public)
                    self._mix_hash(self.e.public)
                elif token == _S:
                    parts.append(self._encrypt_and_hash(self.s.public))
                else:
                    self._mix_key(self._dh(token))
            parts.append(self._encrypt_and_hash(payload))
        except BaseException:
            self._restore(saved)
            raise
        self.done += 1
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage: the payload ``message`` carries. All or nothing: on any error
        (``NOISE_TURN``, ``NOISE_SIZE``, ``DECRYPT``, ``NOISE_DH``) the state is as it
        was."""
        data = _bytes_arg(message)
        if self._finished() or self._my_turn():
            raise NoiseError(NOISE_TURN)
        if len(data) < self._overhead() or len(data) > MAX_MESSAGE:
            raise NoiseError(NOISE_SIZE)
        saved = self._snapshot()
        pos = 0
        try:
            for token in _PATTERNS[self.pattern][self.done]:
                if token == _E:
                    self._re = data[pos : pos + KEY_LEN]
                    self._mix_hash(self._re)
                    pos += KEY_LEN
                elif token == _S:
                    size = KEY_LEN + (_TAGLEN if self._k is not None else 0)
                    self._rs = self._decrypt_and_hash(data[pos : pos + size])
                    pos += size
                else:
                    self._mix_key(self._dh(token))
            payload = self._decrypt_and_hash(data[pos:])
        except BaseException:
            self._restore(saved)
            raise
        self.done += 1
        return payload

    def handshake_hash(self) -> bytes:
        """The handshake hash, once every message is done."""
        if not self._finished():
            raise NoiseError(NOISE_TURN)
        return self._h

    def split(self) -> tuple[bytes, bytes]:
        """``(send_key, recv_key)`` of this side, once every message is done; then the
        chaining key, the cipher key and given DH results are dropped."""
        if not self._finished() or self._split:
            raise NoiseError(NOISE_TURN)
        k1, k2 = _hkdf2(self._ck, b"")
        self._split = True
        self._ck = b""
        self._k = None
        self._given = {}
        self.e = None
        return (k1, k2) if self.initiator else (k2, k1)
