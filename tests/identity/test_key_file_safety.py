"""Keys, handshakes and Ed25519 under misuse: a failed HostIdentity.save()
leaves no secret in its traceback; load() refuses a key file everyone could replace (a
group-writable directory, or root reading a user's key, are taken); a prologue the IK
identity proof cannot bind is refused up front; the daemon's
passphrase error names the variable it read; both Ed25519 verifiers refuse points of
small order."""

from __future__ import annotations

import base64
import errno
import grp
import hashlib
import os
import pwd
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from dtp.daemon._config import load_config
from dtp.daemon._runner import Daemon, load_identity
from dtp.errors import KeyFileError
from dtp.identity import _ed25519 as _ed25519
from dtp.identity import keys
from dtp.identity._noise import Handshake, prepare_handshake
from dtp.identity.keys import HostIdentity, InvalidSignature, verify_transaction
from tests.support.daemon_procs import ENV, ROOT

PASSPHRASE = "correct horse battery"

# -- save(): no secret in a failed save's traceback ------------------------------------------


def _later_frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    """The traceback's entries after the first (the test's own frame)."""
    tb = tb.tb_next if tb is not None else None
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _secret_locals(exc: BaseException, secrets: list[str]) -> list[str]:
    """``function:name`` of every local, in the frames the error went through below the
    test (or in its context's), whose value or repr holds one of ``secrets``."""
    found = []
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for entry in _later_frames(error.__traceback__):
            frame = entry.tb_frame
            for name, value in frame.f_locals.items():
                if isinstance(value, bytes):
                    text = value.decode("latin-1")
                elif isinstance(value, str):
                    text = value
                else:
                    text = repr(value)
                if any(secret in text for secret in secrets):
                    found.append(f"{frame.f_code.co_name}:{name}")
        error = error.__context__
    return found


def _secrets_of(identity: HostIdentity) -> list[str]:
    """What must not appear: the two private keys (as saved) and the passphrase."""
    return [
        identity.to_sui_keystring(),
        base64.b64encode(identity.noise_private_bytes()).decode(),
        PASSPHRASE,
    ]


@pytest.fixture
def identity() -> HostIdentity:
    """A fixed identity (its keys are looked for in tracebacks)."""
    return HostIdentity.from_private_bytes(bytes(range(32)), bytes(range(1, 33)))


def test_a_save_over_an_existing_file_leaves_no_secret_in_its_traceback(
    tmp_path: Path, identity: HostIdentity
) -> None:
    path = tmp_path / "identity.json"
    identity.save(path)
    for passphrase in (None, PASSPHRASE):
        with pytest.raises(KeyFileError, match="already exists") as info:
            identity.save(path, passphrase)
        assert _secret_locals(info.value, _secrets_of(identity)) == []
        assert info.value.__context__ is None
        # the whole traceback, as a reporter that records locals would print it, below
        # the test's frame (which holds the passphrase constant's name only)
        text = "".join(
            traceback.TracebackException(
                type(info.value), info.value, info.value.__traceback__.tb_next, capture_locals=True
            ).format()
        )
        assert identity.to_sui_keystring() not in text
        assert PASSPHRASE not in text


def test_a_save_that_cannot_write_leaves_no_secret_in_its_traceback(
    tmp_path: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a directory that cannot be made (its name is taken by a file)
    (tmp_path / "taken").write_text("")
    with pytest.raises(KeyFileError, match="cannot create") as info:
        identity.save(tmp_path / "taken" / "identity.json", PASSPHRASE)
    assert _secret_locals(info.value, _secrets_of(identity)) == []

    # a disk that fills up at the last step, when the file's bytes are all built
    def full(tmp: Path, path: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keys, "_link_no_clobber", full)
    for passphrase in (None, PASSPHRASE):
        with pytest.raises(KeyFileError, match="cannot write") as info:
            identity.save(tmp_path / "identity.json", passphrase)
        assert _secret_locals(info.value, _secrets_of(identity)) == []
        assert info.value.__context__ is None
    assert list(tmp_path.iterdir()) == [tmp_path / "taken"]  # no leftover


def test_an_unusable_passphrase_is_refused_before_the_secret_exists(
    tmp_path: Path, identity: HostIdentity
) -> None:
    for passphrase, reason in (("", "empty"), ("caf\udce9", "lone surrogate")):
        with pytest.raises(ValueError, match=reason) as info:
            identity.save(tmp_path / "identity.json", passphrase)
        assert _secret_locals(info.value, _secrets_of(identity)[:2]) == []
    assert not (tmp_path / "identity.json").exists()


def test_saves_refused_by_their_arguments_never_build_the_secret(
    tmp_path: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "identity.json"
    identity.save(path)

    def no_secret(self: HostIdentity) -> bytes:
        raise AssertionError("the secret was built for a save refused by its arguments")

    monkeypatch.setattr(HostIdentity, "_secret_json", no_secret)
    with pytest.raises(KeyFileError, match="already exists"):
        identity.save(path, PASSPHRASE)
    with pytest.raises(ValueError, match="empty"):
        identity.save(tmp_path / "other.json", "")
    with pytest.raises(TypeError, match="str or None"):
        identity.save(path, b"bytes")  # type: ignore[arg-type]


# -- load(): the owner and the directory -------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX ownership")
def test_a_key_file_root_reads_for_another_user_is_taken(
    tmp_path: Path, identity: HostIdentity
) -> None:
    """Only the mode counts, as for ssh: root (a daemon under sudo, a container run as
    root with a user's key mounted) loads a 0600 key another user owns."""
    path = tmp_path / "identity.json"
    identity.save(path)
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user takes root")
    os.chown(path, 65534, -1)  # nobody
    assert HostIdentity.load(path) == identity


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_key_file_everyone_could_replace_is_refused(
    tmp_path: Path, identity: HostIdentity
) -> None:
    shared = tmp_path / "shared"
    path = shared / "identity.json"
    identity.save(path)
    for mode in (0o777, 0o757):
        os.chmod(shared, mode)
        with pytest.raises(KeyFileError, match=r"is writable by others .*allow_insecure"):
            HostIdentity.load(path)
        assert HostIdentity.load(path, allow_insecure=True) == identity
    # a symlink from a private directory into the shared one: the file is still exposed
    link = tmp_path / "private" / "identity.json"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(path)
    with pytest.raises(KeyFileError, match="writable by others"):
        HostIdentity.load(link)
    # with the sticky bit (as /tmp) only the file's owner may remove or rename it
    os.chmod(shared, 0o1777)
    assert HostIdentity.load(path) == identity
    assert HostIdentity.load(link) == identity
    # a group-writable directory: taken when the group is the user's own (umask 002
    # systems), refused when it is shared
    os.chmod(shared, 0o775)
    os.chown(shared, -1, os.getegid())
    if grp.getgrgid(os.getegid()).gr_mem in ([], [pwd.getpwuid(os.geteuid()).pw_name]):
        assert HostIdentity.load(path) == identity
    shared_gid = next((g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid()), None)
    if shared_gid is not None and os.geteuid() == 0:
        os.chown(shared, -1, shared_gid)
        with pytest.raises(KeyFileError, match=r"is group-writable by group .* chmod g-w"):
            HostIdentity.load(path)
    os.chmod(shared, 0o755)
    assert HostIdentity.load(path) == identity


# -- the handshake prologue --------------------------------------------------------------------


def test_a_prologue_longer_than_the_proof_can_bind_is_refused_up_front() -> None:
    server, client = HostIdentity.generate(), HostIdentity.generate()
    too_long = b"p" * 0x10000
    starts = [
        lambda: Handshake.initiator(
            client.noise_private_bytes(), os.urandom(32), server.noise_public, too_long
        ),
        lambda: Handshake.initiator(client.noise_private_bytes(), os.urandom(32), None, too_long),
        lambda: Handshake.responder(server.noise_private_bytes(), os.urandom(32), too_long),
        lambda: prepare_handshake(server.noise_private_bytes(), initiator=False, prologue=too_long),
        lambda: prepare_handshake(
            client.noise_private_bytes(), server.noise_public, initiator=True, prologue=too_long
        ),
    ]
    for start in starts:
        with pytest.raises(ValueError, match="prologue must be at most 65535 bytes"):
            start()
    # the longest one the proof can bind still makes an IK handshake
    longest = b"p" * 0xFFFF
    initiator = Handshake.initiator(
        client.noise_private_bytes(), os.urandom(32), server.noise_public, longest
    )
    responder = Handshake.responder(server.noise_private_bytes(), os.urandom(32), longest)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash == responder.handshake_hash


# -- the daemon's passphrase variable ---------------------------------------------------------


def _daemon_config(tmp_path: Path) -> Path:
    config = tmp_path / "dtp.toml"
    config.write_text(
        "[daemon]\n"
        f'ledger = "{tmp_path / "ledger.sqlite"}"\n'
        f'identity = "{tmp_path / "id" / "identity.json"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        '\n[[service]]\nname = "s"\nport = 1\nbackends = ["127.0.0.1:9"]\n'
    )
    return config


def test_the_passphrase_error_names_the_variable_that_was_read(tmp_path: Path) -> None:
    unusable = "caf\udce9"  # bytes that were not UTF-8, as os.environ gives them
    with pytest.raises(KeyFileError, match=r"^\$MYPW cannot be used as a passphrase"):
        load_identity(tmp_path / "a.json", unusable, "MYPW")
    config = load_config(str(_daemon_config(tmp_path)))
    with pytest.raises(KeyFileError, match=r"^\$MYPW cannot be used as a passphrase"):
        Daemon(config, unusable, "MYPW")
    assert not (tmp_path / "id" / "identity.json").exists()


def test_dtp_daemon_names_its_passphrase_env(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "DTP_PASSPHRASE"}
    config = str(_daemon_config(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", config, "--passphrase-env", "MYPW"],
        cwd=ROOT,
        env={**env, "MYPW": "\udcff\udcfe"},  # the bytes ff fe
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "dtp daemon: $MYPW cannot be used as a passphrase" in done.stderr
    assert "DTP_PASSPHRASE" not in done.stderr


# -- Ed25519: points of small order ------------------------------------------------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_ORDER_8_Y = 0x05FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826
# The eight points of small order, canonically encoded (written out here, not taken
# from dtp), and two non-canonical encodings (y + p, and x = 0 with the sign bit set).
SMALL_ORDER = [y.to_bytes(32, "little") for y in (1, _P - 1, 0, _ORDER_8_Y, _P - _ORDER_8_Y)] + [
    (y | 1 << 255).to_bytes(32, "little") for y in (0, _ORDER_8_Y, _P - _ORDER_8_Y)
]
NON_CANONICAL = [(1 + _P).to_bytes(32, "little"), (1 | 1 << 255).to_bytes(32, "little")]
VERIFIERS = [v for v in (_ed25519.verify_fastcrypto, _ed25519.verify_openssl) if v is not None]


def test_no_verifier_accepts_a_signature_under_a_small_order_key() -> None:
    # R of small order and S = 0: under ZIP-215 (fastcrypto) this verifies for every
    # message, under RFC 8032 (OpenSSL) for about one in eight: no private key needed
    for public in SMALL_ORDER + NON_CANONICAL:
        for r in SMALL_ORDER:
            for n in range(8):
                message = b"message %d" % n
                for verify in [*VERIFIERS, _ed25519.verify]:
                    assert not verify(public, r + bytes(32), message), (public.hex(), r.hex())
    with pytest.raises(InvalidSignature, match="small order"):
        verify_transaction(b"any tx", b"\x00" + bytes(64) + bytes(32))


def test_no_verifier_accepts_a_signature_whose_r_has_small_order() -> None:
    # A key's holder can make S = k * a for R of small order: cofactored verification
    # (fastcrypto) accepts it, cofactorless (OpenSSL) only for R the neutral element.
    # Both must give the same verdict: they refuse it.
    seed = bytes(range(32))
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar = (scalar & ~7 & ((1 << 254) - 1)) | (1 << 254)
    public = HostIdentity.from_private_bytes(seed, bytes(32)).ed25519_public
    for r in SMALL_ORDER:
        message = b"signed by the key's holder"
        k = int.from_bytes(hashlib.sha512(r + public + message).digest(), "little") % _L
        signature = r + (k * scalar % _L).to_bytes(32, "little")
        for verify in [*VERIFIERS, _ed25519.verify]:
            assert not verify(public, signature, message), r.hex()


def test_small_order_is_one_check_shared_by_both_verifiers() -> None:
    assert keys.has_small_order is _ed25519.has_small_order
