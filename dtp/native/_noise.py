"""Typed wrappers over the C core's Noise handshakes (dtp_core/noise.c).

``NativeNoiseKey`` / ``NativeNoiseState`` always run the C code; ``NoiseKey`` /
``NoiseState`` are those, or with ``DTP_PUREPYTHON=1`` their twins in
:mod:`dtp.native.reference._noise` (same signatures, results and error codes). The
handshake state is a ``dtp_noise`` struct cffi allocates and this object owns; the keys
it points at are held here as long as it lives.
"""

from __future__ import annotations

from typing import Any

from dtp.native._binding import HAVE_NATIVE, PUREPYTHON, ffi, lib
from dtp.native.reference import _noise as ref
from dtp.native.reference._noise import (
    DH_EE,
    DH_ES,
    DH_SE,
    DH_SS,
    KEY_LEN,
    MAX_MESSAGE,
    NOISE_IK,
    NOISE_XX,
    PROTOCOL_NAMES,
    NoiseError,
)

__all__ = [
    "DH_EE",
    "DH_ES",
    "DH_SE",
    "DH_SS",
    "KEY_LEN",
    "MAX_MESSAGE",
    "NOISE_IK",
    "NOISE_XX",
    "PROTOCOL_NAMES",
    "NativeNoiseKey",
    "NativeNoiseState",
    "NoiseError",
    "NoiseKey",
    "NoiseState",
]

_CTX: Any = None


def _ctx() -> Any:
    """The read-only dtp_noise_ctx every handshake shares (made on first use)."""
    global _CTX
    if _CTX is None:
        made = lib.dtp_noise_ctx_new()
        if made == ffi.NULL:
            raise NoiseError(ref.CRYPTO, "OpenSSL lacks BLAKE2s or ChaCha20-Poly1305")
        _CTX = ffi.gc(made, lib.dtp_noise_ctx_free)
    return _CTX


def _check(rc: int) -> int:
    # (the handshake's path writes ``if rc < 0: raise NoiseError(rc)`` itself: a call less)
    if rc < 0:
        raise NoiseError(rc)
    return rc


def _bytes_arg(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, not {type(value).__name__}")
    return bytes(value)


class NativeNoiseKey:
    """An X25519 private key in the C core, and its public half (derived once). With
    ``keep_results`` the key keeps its last few static-static results (token ss)."""

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes, *, keep_results: bool = False) -> None:
        if type(private) is not bytes:
            private = _bytes_arg(private)
        if len(private) != KEY_LEN:
            raise NoiseError(ref.ARG, "a key is 32 bytes")
        made = lib.dtp_noise_key_new(private, KEY_LEN, 1 if keep_results else 0)
        if made == ffi.NULL:
            raise NoiseError(ref.CRYPTO, "OpenSSL refused the key")
        self._key = ffi.gc(made, lib.dtp_noise_key_free)
        out = ffi.new("uint8_t[32]")
        rc = lib.dtp_noise_key_public(self._key, out, KEY_LEN)
        if rc < 0:
            raise NoiseError(rc)
        #: the 32-byte public key
        self.public: bytes = bytes(ffi.buffer(out))

    def dh(self, public: bytes) -> bytes:
        """X25519 with a peer's 32-byte public key; :class:`NoiseError` (``NOISE_DH``)
        for a low-order key."""
        public = _bytes_arg(public)
        out = ffi.new("uint8_t[32]")
        _check(lib.dtp_noise_key_dh(self._key, public, len(public), out, KEY_LEN))
        return bytes(ffi.buffer(out))

    def kept(self, public: bytes) -> bool:
        """Whether the key keeps its static-static result with ``public``."""
        public = _bytes_arg(public)
        return _check(lib.dtp_noise_key_kept(self._key, public, len(public))) == 1


class NativeNoiseState:
    """One side of a Noise_IK or Noise_XX handshake in the C core; the API of
    :class:`dtp.native.reference._noise.NoiseState`."""

    __slots__ = ("_e", "_hs", "_s", "initiator", "pattern")

    def __init__(
        self,
        pattern: int,
        initiator: bool,
        prologue: bytes,
        s: NativeNoiseKey,
        e: NativeNoiseKey | None = None,
        rs: bytes | None = None,
    ) -> None:
        if not isinstance(s, NativeNoiseKey) or not (e is None or isinstance(e, NativeNoiseKey)):
            raise NoiseError(ref.ARG, "keys must be NativeNoiseKey")
        if type(prologue) is not bytes:
            prologue = _bytes_arg(prologue)
        remote = ffi.NULL if rs is None else rs if type(rs) is bytes else _bytes_arg(rs)
        if pattern not in (NOISE_IK, NOISE_XX):  # (before cffi: it would take 2**32 + 1 as 1)
            raise NoiseError(ref.ARG, "unknown pattern")
        self._hs = ffi.gc(ffi.new("dtp_noise *"), lib.dtp_noise_wipe)
        self._s = s
        self._e = e
        self.pattern = pattern
        self.initiator = bool(initiator)
        rc = lib.dtp_noise_init(
            self._hs,
            _CTX if _CTX is not None else _ctx(),
            pattern,
            1 if initiator else 0,
            prologue,
            len(prologue),
            s._key,
            ffi.NULL if e is None else e._key,
            remote,
            0 if rs is None else len(remote),
        )
        if rc < 0:
            raise NoiseError(rc)

    @property
    def s(self) -> NativeNoiseKey:
        return self._s

    @property
    def e(self) -> NativeNoiseKey | None:
        return self._e

    @property
    def done(self) -> int:
        """Messages written or read so far (0 once wiped)."""
        return int(lib.dtp_noise_done(self._hs))

    @property
    def complete(self) -> bool:
        """True once every message of the pattern is written or read."""
        return int(lib.dtp_noise_done(self._hs)) >= (2 if self.pattern == NOISE_IK else 3)

    def wipe(self) -> None:
        """Zero the state now (its secrets with it), for a handshake given up before
        Split: every call after raises :class:`NoiseError` (``ARG``)."""
        lib.dtp_noise_wipe(self._hs)
        self._e = None

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static key, once known."""
        out = ffi.new("uint8_t[32]")
        rc = lib.dtp_noise_remote_static(self._hs, out, KEY_LEN)
        if rc <= 0:
            if rc < 0:
                raise NoiseError(rc)
            return None
        return bytes(ffi.buffer(out))

    def set_ephemeral(self, e: NativeNoiseKey) -> None:
        """Set the ephemeral key of a handshake started without one (before any message)."""
        if not isinstance(e, NativeNoiseKey):
            raise NoiseError(ref.ARG, "keys must be NativeNoiseKey")
        rc = lib.dtp_noise_set_ephemeral(self._hs, e._key)
        if rc < 0:
            raise NoiseError(rc)
        self._e = e

    def give_dh(self, token: int, secret: bytes) -> None:
        """Hand over the result of DH token ``token`` made ahead of need."""
        secret = _bytes_arg(secret)
        if token not in (DH_EE, DH_ES, DH_SE, DH_SS):  # (an int beyond C's: OverflowError)
            raise NoiseError(ref.ARG, "a DH token and its 32-byte result")
        _check(lib.dtp_noise_give_dh(self._hs, token, secret, len(secret)))

    def overhead(self) -> int:
        """Bytes the next message adds to its payload."""
        rc: int = lib.dtp_noise_overhead(self._hs)
        if rc < 0:
            raise NoiseError(rc)
        return rc

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage: the next message, carrying ``payload``."""
        if type(payload) is not bytes:
            payload = _bytes_arg(payload)
        extra = lib.dtp_noise_overhead(self._hs)
        cap = len(payload) + (extra if extra > 0 else 0)
        out = ffi.new("uint8_t[]", cap if cap > 1 else 1)
        written = ffi.new("size_t *")
        ctx = _CTX if _CTX is not None else _ctx()
        rc = lib.dtp_noise_write(self._hs, ctx, payload, len(payload), out, cap, written)
        if rc < 0:
            raise NoiseError(rc)
        return bytes(ffi.buffer(out, written[0]))

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage: the payload ``message`` carries; all or nothing."""
        if type(message) is not bytes:
            message = _bytes_arg(message)
        size = len(message)
        out = ffi.new("uint8_t[]", size if size > 1 else 1)
        written = ffi.new("size_t *")
        ctx = _CTX if _CTX is not None else _ctx()
        rc = lib.dtp_noise_read(self._hs, ctx, message, size, out, size, written)
        if rc < 0:
            raise NoiseError(rc)
        return bytes(ffi.buffer(out, written[0]))

    def handshake_hash(self) -> bytes:
        """The handshake hash, once every message is done."""
        out = ffi.new("uint8_t[32]")
        rc = lib.dtp_noise_hash(self._hs, out, 32)
        if rc < 0:
            raise NoiseError(rc)
        return bytes(ffi.buffer(out))

    def split(self) -> tuple[bytes, bytes]:
        """``(send_key, recv_key)`` of this side, once every message is done; then the
        handshake's secrets are wiped."""
        send = ffi.new("uint8_t[32]")
        recv = ffi.new("uint8_t[32]")
        rc = lib.dtp_noise_split(self._hs, _CTX if _CTX is not None else _ctx(), send, recv)
        if rc < 0:
            raise NoiseError(rc)
        self._e = None
        return bytes(ffi.buffer(send)), bytes(ffi.buffer(recv))


NoiseKey: type[NativeNoiseKey] | type[ref.NoiseKey]
NoiseState: type[NativeNoiseState] | type[ref.NoiseState]
if PUREPYTHON or not HAVE_NATIVE:
    NoiseKey, NoiseState = ref.NoiseKey, ref.NoiseState
else:
    NoiseKey, NoiseState = NativeNoiseKey, NativeNoiseState
