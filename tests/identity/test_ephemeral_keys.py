"""Adversarial checks of the handshake's key handling: no ephemeral key outlives
its handshake (in the Handshake object or in the DH results dtp.identity._ahead made for
it), and a passphrase that has no UTF-8 form is a clear error that does not quote it."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from types import FunctionType, ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import dtp.socket
from dtp.errors import HandshakeError, KeyFileError
from dtp.identity import _ahead as keys_ahead
from dtp.identity._noise import Handshake
from dtp.identity.keys import HostIdentity
from dtp.transport._admission import AddressSlots, address_key
from tests.support.procs import server_process

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()


@pytest.fixture(autouse=True)
def empty_pools() -> Iterator[None]:
    keys_ahead._forget_all()
    yield
    keys_ahead._forget_all()


def _reachable(root: object, depth: int = 8) -> Iterator[object]:
    """Every object reachable from ``root`` through references (classes, modules and
    functions excepted: they lead to the whole process)."""
    seen = {id(root)}
    layer = [root]
    for _ in range(depth):
        following = []
        for obj in layer:
            for ref in gc.get_referents(obj):
                if isinstance(ref, type | ModuleType | FunctionType) or id(ref) in seen:
                    continue
                seen.add(id(ref))
                following.append(ref)
                yield ref
        layer = following


def _holds_key(root: object, private: bytes) -> bool:
    for obj in _reachable(root):
        if isinstance(obj, bytes | bytearray) and private in bytes(obj):
            return True
        if isinstance(obj, X25519PrivateKey) and obj.private_bytes_raw() == private:
            return True
    return False


def _pair(ik: bool, made_ahead: bool) -> tuple[Handshake, Handshake, bytes, bytes]:
    if made_ahead:  # the key pair comes from dtp.identity._ahead, as in every connect
        keys_ahead.prepare_ephemeral_key()
        keys_ahead.prepare_ephemeral_key()
    client_e, server_e = keys_ahead.new_ephemeral_key(), keys_ahead.new_ephemeral_key()
    client = Handshake.initiator(
        CLIENT.noise_private_bytes(), client_e, SERVER.noise_public if ik else None
    )
    server = Handshake.responder(SERVER.noise_private_bytes(), server_e)
    return client, server, client_e, server_e


@pytest.mark.parametrize("made_ahead", [False, True], ids=["urandom", "made-ahead"])
@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_a_finished_handshake_keeps_no_ephemeral_key(ik: bool, made_ahead: bool) -> None:
    client, server, client_e, server_e = _pair(ik, made_ahead)
    writer, reader = client, server
    while not (client.complete and server.complete):
        assert reader.read_message(writer.write_message(b"p")) == b"p"
        writer, reader = reader, writer
    assert client.handshake_hash == server.handshake_hash
    # Noise: delete the ephemeral keys after Split. With one and the transcript, whoever
    # reads this process's memory later (the Connection keeps its Handshake for good)
    # would rebuild the session keys.
    assert not _holds_key(client, client_e)
    assert not _holds_key(server, server_e)
    assert client.transport_keys() == server.transport_keys()[::-1]  # still usable


def test_a_failed_handshake_keeps_no_ephemeral_key() -> None:
    client, server, client_e, server_e = _pair(ik=True, made_ahead=True)
    impostor_e = os.urandom(32)
    impostor = Handshake.responder(HostIdentity.generate().noise_private_bytes(), impostor_e)
    m1 = client.write_message(b"hello")
    with pytest.raises(HandshakeError):
        impostor.read_message(m1)  # (not its key)
    assert impostor.failed
    assert not _holds_key(impostor, impostor_e)
    server.read_message(m1)
    m2 = bytearray(server.write_message(b"reply"))
    m2[-1] ^= 1  # damaged on the way
    with pytest.raises(HandshakeError):
        client.read_message(bytes(m2))
    assert client.failed and server.complete
    assert not _holds_key(client, client_e)
    assert not _holds_key(server, server_e)


def test_a_dh_made_ahead_for_another_server_does_not_outlive_the_handshake() -> None:
    other = HostIdentity.generate()
    keys_ahead.prepare_ephemeral_key(other.noise_public)  # a bet on `other` next
    ephemeral = keys_ahead.new_ephemeral_key()
    assert any(key[0] == ephemeral for key in keys_ahead._shared)
    client = Handshake.initiator(CLIENT.noise_private_bytes(), ephemeral, SERVER.noise_public)
    server = Handshake.responder(SERVER.noise_private_bytes(), os.urandom(32))
    assert server.read_message(client.write_message(b"one")) == b"one"
    assert client.read_message(server.write_message(b"two")) == b"two"
    assert client.complete
    # the connect went to SERVER: the DH with `other` is never taken, and it was the
    # last thing holding the ephemeral private key of the session
    assert not any(key[0] == ephemeral for key in keys_ahead._shared)


def test_a_dh_made_ahead_is_dropped_when_the_handshake_fails() -> None:
    other = HostIdentity.generate()
    keys_ahead.prepare_ephemeral_key(other.noise_public)
    ephemeral = keys_ahead.new_ephemeral_key()
    client = Handshake.initiator(CLIENT.noise_private_bytes(), ephemeral, SERVER.noise_public)
    client.write_message(b"")
    with pytest.raises(HandshakeError):
        client.read_message(os.urandom(48))  # not the server's reply
    assert not any(key[0] == ephemeral for key in keys_ahead._shared)


def test_connecting_to_another_server_than_the_last_leaves_no_key_of_it_behind() -> None:
    """Real connects: the first to A makes the next connect's ephemeral key and its DH
    with A; the next goes to B instead, with that key."""
    # servers in processes of their own: in this one they would take the keys made ahead
    with server_process("echo", deny=[]) as a, server_process("echo", deny=[]) as b:
        assert a.key != b.key
        with dtp.socket.create_connection(
            a.endpoint, timeout=60, server_key=a.key, identity=CLIENT
        ) as sock:
            sock.sendall(b"a")
            assert sock.recv(10) == b"a"
        next_key = keys_ahead._ephemeral[0][0]
        assert (next_key, a.key) in keys_ahead._shared  # the bet on A
        with dtp.socket.create_connection(
            b.endpoint, timeout=60, server_key=b.key, identity=CLIENT
        ) as sock:
            sock.sendall(b"b")
            assert sock.recv(10) == b"b"
            assert sock._engine.conn.established
            assert not any(key[0] == next_key for key in keys_ahead._shared)
            assert not _holds_key(sock._engine.conn._hs, next_key)


def _chain_has_unicode_error(exc: BaseException | None) -> bool:
    """Whether a codec error (its message quotes the passphrase, its ``object`` is the
    passphrase) is anywhere in the chain, shown or not."""
    while exc is not None:
        if isinstance(exc, UnicodeError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def test_a_passphrase_without_a_utf8_form_is_a_clear_error_that_does_not_quote_it(
    tmp_path: Path,
) -> None:
    # what os.fsdecode / argv / getpass give for bytes that are not UTF-8: "secr\xe9t"
    # typed on a Latin-1 terminal
    passphrase = "secr\udce9t"
    identity = HostIdentity.generate()
    target = tmp_path / "new.json"
    with pytest.raises(ValueError) as raised:
        identity.save(target, passphrase)
    assert not _chain_has_unicode_error(raised.value)
    assert "udce9" not in str(raised.value) and "position" not in str(raised.value)
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing written
    saved = tmp_path / "saved.json"
    identity.save(saved, "secret")
    with pytest.raises(KeyFileError, match="wrong passphrase") as wrong:
        HostIdentity.load(saved, passphrase)
    assert "udce9" not in str(wrong.value) and "position" not in str(wrong.value)
    assert not _chain_has_unicode_error(wrong.value)
    assert HostIdentity.load(saved, "secret") == identity


def test_a_name_near_the_file_system_limit_saves_and_one_beyond_is_a_key_file_error(
    tmp_path: Path,
) -> None:
    identity = HostIdentity.generate()
    # a valid name (255 bytes is the usual limit), which left no room for the
    # temporary file's ".<name>.<16 hex>.tmp" and failed
    long_name = tmp_path / ("k" * 250)
    identity.save(long_name, "pw")
    assert HostIdentity.load(long_name, "pw") == identity
    assert long_name.stat().st_mode & 0o777 == 0o600
    # a name no file system takes: the KeyFileError, not a bare OSError from cleaning up
    # a temporary file that was never made
    with pytest.raises(KeyFileError, match="cannot write"):
        identity.save(tmp_path / ("k" * 300))
    with pytest.raises(KeyFileError):
        HostIdentity.load(tmp_path / ("k" * 300))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k" * 250]  # no leftovers


def test_a_file_name_with_a_nul_is_a_key_file_error(tmp_path: Path) -> None:
    identity = HostIdentity.generate()
    for target in (tmp_path / "a\0b", tmp_path / "new\0dir" / "id.json"):
        with pytest.raises(KeyFileError, match="NUL"):
            identity.save(target)
        with pytest.raises(KeyFileError, match="NUL"):
            HostIdentity.load(target)
    assert not list(tmp_path.iterdir())


def test_ipv4_clients_behind_a_translator_are_capped_each_by_its_own_address() -> None:
    # A NAT64 / SIIT gateway presents every IPv4 client as 64:ff9b::<its IPv4>, and a
    # Teredo relay as 2001:0:<server>:...:<its IPv4, inverted>: one /64 for all of them,
    # so a single client holding that /64's handshake cap would stall every other one.
    slots: AddressSlots[int] = AddressSlots(cap=1, max_waiting=0)
    assert slots.try_take(address_key("64:ff9b::c000:221"))  # 192.0.2.33
    assert slots.try_take(address_key("64:ff9b::c000:222"))  # 192.0.2.34: another client
    assert not slots.try_take(address_key("64:ff9b::c000:221"))  # but each is capped
    assert address_key("64:ff9b::c000:221") == address_key("192.0.2.33")
    teredo_a = "2001:0:4136:e378:8000:63bf:3fff:fdd2"  # client 192.0.2.45 (RFC 4380)
    teredo_b = "2001:0:4136:e378:8000:63bf:3fff:fdd3"  # client 192.0.2.44, same server
    assert address_key(teredo_a) == "192.0.2.45"
    assert slots.try_take(address_key(teredo_a))
    assert slots.try_take(address_key(teredo_b))
    # native IPv6 is still counted by its /64
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2::ffff")
