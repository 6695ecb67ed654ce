"""LocalLedger transactions: a canonical byte encoding, digests and object IDs.

A transaction is one Move call. Its bytes (the thing the sender signs with Sui intent
signing, intent ``[0, 0, 0]``) are::

    uleb128(len(tag)) || tag                       tag = b"DTP-LOCALNET-TX-V1"
    sender            32 bytes
    nonce             u64 LE   (per sender; each value usable once)
    module, function  uleb128(len) || UTF-8, each
    uleb128(n_args) || n_args values

and a value is a type byte then its payload: ``0`` u64 (8 bytes LE), ``1`` bytes
(uleb128 length || data), ``2`` address/object ID (32 bytes), ``3`` vector of values
(uleb128 count || values). Lengths must use the shortest uleb128 form and no byte may
follow the last value, so each call has exactly one encoding.

As on Sui, the digest is ``blake2b-256(b"TransactionData::" || tx_bytes)`` (shown in
base58), and the ``i``-th object created by a transaction gets the ID
``blake2b-256(0xf1 || digest || u64_le(i))``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from dtp.errors import InvalidTransaction
from dtp.identity._bcs import uleb128

__all__ = [
    "TX_TAG",
    "Address",
    "Tx",
    "TxValue",
    "base58",
    "decode_tx",
    "derive_object_id",
    "encode_tx",
    "tx_digest",
]

TX_TAG: Final = b"DTP-LOCALNET-TX-V1"
_T_U64: Final = 0
_T_BYTES: Final = 1
_T_ADDRESS: Final = 2
_T_VECTOR: Final = 3
_MAX_ARGS: Final = 64
_MAX_LEN: Final = 1 << 20


class Address(str):
    """An address or object ID argument (``0x`` + 64 hex), distinct from plain text."""

    __slots__ = ()


#: A transaction argument: u64, bytes, address/ID, or a vector of those.
TxValue = int | bytes | Address | list["TxValue"]


@dataclass(frozen=True)
class Tx:
    """A decoded transaction: ``sender`` calls ``module::function(*args)``."""

    sender: str
    nonce: int
    module: str
    function: str
    args: tuple[TxValue, ...]


def _encode_value(value: TxValue, out: bytearray) -> None:
    if isinstance(value, Address):
        out.append(_T_ADDRESS)
        out += bytes.fromhex(value[2:])
    elif isinstance(value, bool):
        raise TypeError("booleans are not transaction values")
    elif isinstance(value, int):
        out.append(_T_U64)
        out += value.to_bytes(8, "little")
    elif isinstance(value, bytes):
        out.append(_T_BYTES)
        out += uleb128(len(value)) + value
    elif isinstance(value, list):
        out.append(_T_VECTOR)
        out += uleb128(len(value))
        for item in value:
            _encode_value(item, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in a transaction")


#: The encoding's fixed head, and the one-byte length prefixes (uleb128 of 0-127 is the
#: number itself): a transaction's lengths are nearly all that short.
_HEAD: Final = uleb128(len(TX_TAG)) + TX_TAG
_SHORT: Final = [bytes([n]) for n in range(0x80)]
_BYTES_SHORT: Final = [bytes([_T_BYTES, n]) for n in range(0x80)]
_ADDRESS_TAG: Final = bytes([_T_ADDRESS])
_U64_TAG: Final = bytes([_T_U64])


def encode_tx(tx: Tx) -> bytes:
    """The canonical bytes of ``tx`` (see the module docs)."""
    out = bytearray(_HEAD)
    out += bytes.fromhex(tx.sender[2:])
    out += tx.nonce.to_bytes(8, "little")
    for name in (tx.module, tx.function):
        raw = name.encode()
        size = len(raw)
        out += (_SHORT[size] if size < 0x80 else uleb128(size)) + raw
    count = len(tx.args)
    out += _SHORT[count] if count < 0x80 else uleb128(count)
    # The common values inline, by their exact type (every transaction a LocalLedger
    # builds is encoded here, on the path of a paid connection's open and settlement);
    # anything else, a subclass included, as _encode_value has it.
    args: tuple[Any, ...] = tx.args  # (each narrowed by its exact type below)
    for arg in args:
        kind = type(arg)
        if kind is Address:
            out += _ADDRESS_TAG + bytes.fromhex(arg[2:])
        elif kind is int:
            out += _U64_TAG + arg.to_bytes(8, "little")
        elif kind is bytes and (size := len(arg)) < 0x80:
            out += _BYTES_SHORT[size] + arg
        else:
            _encode_value(arg, out)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise InvalidTransaction("Transaction bytes are truncated.")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uleb(self) -> int:
        value = shift = 0
        start = self.pos
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 28:
                raise InvalidTransaction("Transaction length field is too long.")
        if self.pos - start != len(uleb128(value)):
            raise InvalidTransaction("Transaction length field is not in its shortest form.")
        if value > _MAX_LEN:
            raise InvalidTransaction("Transaction field is too large.")
        return value

    def value(self, depth: int = 0) -> TxValue:
        kind = self.take(1)[0]
        if kind == _T_U64:
            return int.from_bytes(self.take(8), "little")
        if kind == _T_BYTES:
            return self.take(self.uleb())
        if kind == _T_ADDRESS:
            return Address("0x" + self.take(32).hex())
        if kind == _T_VECTOR and depth < 2:
            return [self.value(depth + 1) for _ in range(self.uleb())]
        raise InvalidTransaction(f"Transaction holds an unknown value type {kind}.")

    def text(self) -> str:
        try:
            return self.take(self.uleb()).decode()
        except UnicodeDecodeError:
            raise InvalidTransaction("Transaction names are not UTF-8.") from None


def decode_tx(tx_bytes: bytes) -> Tx:
    """Parse transaction bytes; raises :class:`dtp.errors.InvalidTransaction`."""
    reader = _Reader(bytes(tx_bytes))
    if reader.take(1 + len(TX_TAG)) != uleb128(len(TX_TAG)) + TX_TAG:
        raise InvalidTransaction("Not a LocalLedger transaction (wrong tag).")
    sender = "0x" + reader.take(32).hex()
    nonce = int.from_bytes(reader.take(8), "little")
    module = reader.text()
    function = reader.text()
    count = reader.uleb()
    if count > _MAX_ARGS:
        raise InvalidTransaction("Transaction has too many arguments.")
    args = tuple(reader.value() for _ in range(count))
    if reader.pos != len(reader.data):
        raise InvalidTransaction("Transaction bytes continue after the last argument.")
    return Tx(sender, nonce, module, function, args)


def tx_digest(tx_bytes: bytes) -> bytes:
    """Sui's transaction digest: ``blake2b-256(b"TransactionData::" || tx_bytes)``."""
    return hashlib.blake2b(b"TransactionData::" + bytes(tx_bytes), digest_size=32).digest()


def derive_object_id(digest: bytes, index: int) -> str:
    """Sui's ID of the ``index``-th object created by the transaction ``digest``."""
    raw = hashlib.blake2b(b"\xf1" + digest + index.to_bytes(8, "little"), digest_size=32)
    return "0x" + raw.hexdigest()


_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


_B58_PAIRS: Final = [a + b for a in _B58 for b in _B58]  # two digits per entry
_B58_PAIR: Final = 58**2  # (what one entry of _B58_PAIRS stands for)
_B58_QUAD: Final = 58**4


def base58(data: bytes) -> str:
    """Bitcoin-alphabet base58, as Sui displays digests."""
    n = int.from_bytes(data, "big")
    pairs = _B58_PAIRS
    text = ""
    # four digits a step, by operators rather than divmod and a list: a digest's 44
    # digits are 11 steps and no call (this runs on every LocalLedger transaction)
    while n:
        n, rem = n // _B58_QUAD, n % _B58_QUAD
        text = pairs[rem // _B58_PAIR] + pairs[rem % _B58_PAIR] + text
    text = text.lstrip("1")  # the top step's leading zero digits
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + text
