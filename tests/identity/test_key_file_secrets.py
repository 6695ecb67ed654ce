"""Identity files and the ``dtp`` command: no secret kept on a load error's context,
bounded error messages, a passphrase error that says how to give one, and no service of
an empty kind.

A failed ``HostIdentity.load`` keeps no secret in its traceback's frames.

Error reporters that record local variables (and debuggers walking a traceback) read
every frame of a raised error. The frames of the load's helpers held the whole file
(``raw``, ``document``), the decoded or decrypted secret (``plain``) and even the
identity built from it: a damaged or mismatched file sent the key to the error report."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

import dtp
from dtp.cli import main
from dtp.errors import KeyFileError
from dtp.identity.keys import (
    IDENTITY_FILE_KIND,
    IDENTITY_FILE_VERSION,
    HostIdentity,
    _associated_data,
)
from dtp.ledger.local import LocalLedger
from tests.support.cli_runs import cli_env, error_lines, run_dtp

#: Stands for secret key material in a damaged secret part.
MARKER = "SECRETMARKER-9f3c1a"

PASSPHRASE = "correct horse"

#: Secret parts that are not the JSON a saved identity holds, each quoting the marker:
#: cut short (a JSONDecodeError keeps the text as .doc) and not UTF-8 (a
#: UnicodeDecodeError keeps the bytes as .object).
DAMAGED_SECRETS = {
    "cut-short": f'{{"sui_keystring": "{MARKER}'.encode(),
    "not-utf8": f'{{"sui_keystring": "{MARKER}\xff"}}'.encode("latin-1"),
}


def _header(identity: HostIdentity) -> dict[str, object]:
    return {
        "version": IDENTITY_FILE_VERSION,
        "kind": IDENTITY_FILE_KIND,
        "sui_address": identity.sui_address,
        "noise_public": identity.noise_public.hex(),
    }


def _write(path: Path, document: dict[str, object] | str) -> Path:
    text = document if isinstance(document, str) else json.dumps(document)
    path.write_text(text)
    path.chmod(0o600)
    return path


def _encrypted_file(path: Path, plain: bytes) -> Path:
    """An identity file whose secret part decrypts (with PASSPHRASE) to ``plain``; a
    cheap scrypt (n=2), which the reader accepts, keeps the test fast."""
    header = _header(HostIdentity.generate())
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key = Scrypt(salt=salt, length=32, n=2, r=1, p=1).derive(PASSPHRASE.encode())
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plain, _associated_data(header))
    secret = {
        "encoding": "scrypt-chacha20poly1305",
        "kdf": {"name": "scrypt", "n": 2, "r": 1, "p": 1, "salt": base64.b64encode(salt).decode()},
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return _write(path, {**header, "secret": secret})


def _plain_file(path: Path, plain: bytes) -> Path:
    header = _header(HostIdentity.generate())
    secret = {"encoding": "plain", "data": base64.b64encode(plain).decode()}
    return _write(path, {**header, "secret": secret})


def _assert_marker_unreachable(error: BaseException) -> None:
    """Neither ``error`` nor any exception linked to it (as context or cause) holds the
    marker, in its message, arguments, or the text/bytes a decode error keeps."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        exc = pending.pop()
        if exc is None or any(exc is old for old in seen):
            continue
        seen.append(exc)
        held = [str(exc), repr(exc.args), *(getattr(exc, a, None) for a in ("doc", "object"))]
        for value in held:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            assert value is None or MARKER not in value, (type(exc).__name__, value)
        pending += [exc.__context__, exc.__cause__]
    assert len(seen) == 1, [type(e).__name__ for e in seen]  # nothing linked at all


@pytest.mark.parametrize("plain", DAMAGED_SECRETS.values(), ids=DAMAGED_SECRETS.keys())
def test_a_damaged_decrypted_secret_is_not_kept_on_the_error(tmp_path: Path, plain: bytes) -> None:
    """``from None`` hid the parse error from tracebacks but kept it as __context__, and
    its .doc / .object was the whole decrypted secret."""
    path = _encrypted_file(tmp_path / "id.json", plain)
    with pytest.raises(KeyFileError, match="bad secret part") as caught:
        HostIdentity.load(path, PASSPHRASE)
    _assert_marker_unreachable(caught.value)


@pytest.mark.parametrize("plain", DAMAGED_SECRETS.values(), ids=DAMAGED_SECRETS.keys())
def test_a_damaged_plain_secret_is_not_kept_on_the_error(tmp_path: Path, plain: bytes) -> None:
    path = _plain_file(tmp_path / "id.json", plain)
    with pytest.raises(KeyFileError, match="bad secret part") as caught:
        HostIdentity.load(path)
    _assert_marker_unreachable(caught.value)


def test_a_plain_identity_file_cut_short_is_not_kept_on_the_error(tmp_path: Path) -> None:
    """A plain file that is not JSON: the JSONDecodeError's .doc was the whole file,
    the base64 secret key in it."""
    header = _header(HostIdentity.generate())
    whole = json.dumps({**header, "secret": {"encoding": "plain", "data": MARKER}})
    path = _write(tmp_path / "id.json", whole[:-3])
    with pytest.raises(KeyFileError, match="not JSON") as caught:
        HostIdentity.load(path)
    _assert_marker_unreachable(caught.value)


@pytest.mark.parametrize("field", ["version", "encoding"])
def test_a_huge_field_is_not_quoted_in_full(tmp_path: Path, field: str) -> None:
    """A crafted file's 512 KiB version or encoding was repeated whole in the message."""
    document: dict[str, object] = {
        **_header(HostIdentity.generate()),
        "secret": {"encoding": "plain", "data": ""},
    }
    if field == "version":
        document["version"] = "9" * 2**19
    else:
        document["secret"] = {"encoding": "x" * 2**19}
    path = _write(tmp_path / "id.json", document)
    with pytest.raises(KeyFileError, match=field) as caught:
        HostIdentity.load(path)
    assert len(str(caught.value)) < len(str(path)) + 200


@pytest.mark.parametrize("env_name", [None, "MY_DTP_PASS"])
def test_keys_show_says_how_to_give_the_passphrase(tmp_path: Path, env_name: str | None) -> None:
    """``dtp keys show`` of an encrypted file said a passphrase was needed, not where."""
    path = tmp_path / "id.json"
    HostIdentity.generate().save(path, PASSPHRASE)
    env = cli_env(tmp_path)
    env.pop("MY_DTP_PASS", None)
    argv = ["keys", "show", "--identity", str(path)]
    if env_name is not None:
        argv += ["--passphrase-env", env_name]
    done = run_dtp(*argv, cwd=tmp_path, env=env)
    shown = env_name or "DTP_PASSPHRASE"
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"dtp: {path} is encrypted; a passphrase is required: "
        f"set ${shown} or name another variable with --passphrase-env"
    ]


def test_keys_show_with_the_passphrase_set_still_works(tmp_path: Path) -> None:
    identity = HostIdentity.generate()
    path = tmp_path / "id.json"
    identity.save(path, PASSPHRASE)
    env = dict(cli_env(tmp_path), DTP_PASSPHRASE=PASSPHRASE)
    done = run_dtp("keys", "show", "--json", "--identity", str(path), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sui_address"] == identity.sui_address


def test_service_add_with_an_empty_kind_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dtp service add H P --kind "$UNSET"`` published a service of kind "", which no
    daemon config accepts."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for name in ("DTP_LEDGER", "DTP_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    ledger = tmp_path / "ledger.sqlite"
    files = ["--ledger-path", str(ledger), "--identity", str(tmp_path / "id")]
    assert main(["keys", "new", *files[2:]]) == 0
    assert main(["localnet", "faucet", *files]) == 0
    capsys.readouterr()
    assert main(["host", "create", "--json", *files]) == 0
    host_id = json.loads(capsys.readouterr().out)["host"]
    with pytest.raises(SystemExit) as stop:
        main(["service", "add", host_id, "7", "--kind", "", *files])
    assert stop.value.code == 2
    assert error_lines(capsys.readouterr().err) == [
        "dtp service add: error: argument --kind: is empty: name a service kind (default raw)"
    ]
    assert 7 not in LocalLedger(ledger).get_host(host_id).services


DTP = Path(dtp.__file__).resolve().parent


def _frames(tb: TracebackType | None) -> Iterator[Any]:
    """The traceback's frames in the library (the test's own hold what it wrote)."""
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).is_relative_to(DTP):
            yield tb.tb_frame
        tb = tb.tb_next


def _holds(value: object, needles: list[bytes], depth: int = 0) -> bool:
    """Whether ``value`` (looked into through containers) holds one of ``needles``, or
    is an identity (its private keys)."""
    if depth > 6:
        return False
    if isinstance(value, HostIdentity):
        return True
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return any(n in data for n in needles)
    if isinstance(value, dict):
        return any(
            _holds(k, needles, depth + 1) or _holds(v, needles, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds(v, needles, depth + 1) for v in value)
    return False


def _assert_no_secret_in_frames(error: BaseException, needles: list[bytes]) -> None:
    frames = list(_frames(error.__traceback__))
    assert frames, "the error comes from the library"
    for frame in frames:
        for name, value in frame.f_locals.items():
            assert not _holds(value, needles), (frame.f_code.co_name, name)


def test_a_file_whose_keys_do_not_match_its_header_leaves_no_key_in_the_frames(
    tmp_path: Path,
) -> None:
    """The keys decoded fine but belong to another identity: the frames held the
    decoded secret and the identity made from it."""
    real, other = HostIdentity.generate(), HostIdentity.generate()
    secret = real._secret_json()
    document = {
        **_header(other),
        "secret": {"encoding": "plain", "data": base64.b64encode(secret).decode()},
    }
    path = _write(tmp_path / "id.json", document)
    with pytest.raises(KeyFileError, match="do not match") as caught:
        HostIdentity.load(path)
    keystring = json.loads(secret)["sui_keystring"].encode()
    _assert_no_secret_in_frames(caught.value, [secret, keystring, base64.b64encode(secret)])


@pytest.mark.parametrize("plain", DAMAGED_SECRETS.values(), ids=DAMAGED_SECRETS.keys())
def test_a_damaged_decrypted_secret_is_in_no_frame(tmp_path: Path, plain: bytes) -> None:
    path = _encrypted_file(tmp_path / "id.json", plain)
    with pytest.raises(KeyFileError, match="bad secret part") as caught:
        HostIdentity.load(path, PASSPHRASE)
    _assert_no_secret_in_frames(caught.value, [MARKER.encode()])


@pytest.mark.parametrize("plain", DAMAGED_SECRETS.values(), ids=DAMAGED_SECRETS.keys())
def test_a_damaged_plain_secret_is_in_no_frame(tmp_path: Path, plain: bytes) -> None:
    path = _plain_file(tmp_path / "id.json", plain)
    with pytest.raises(KeyFileError, match="bad secret part") as caught:
        HostIdentity.load(path)
    needles = [MARKER.encode(), base64.b64encode(plain)]
    _assert_no_secret_in_frames(caught.value, needles)


def test_a_plain_file_cut_short_is_in_no_frame(tmp_path: Path) -> None:
    """Not JSON: the frames held the whole file, its base64 secret included."""
    whole = json.dumps(
        {**_header(HostIdentity.generate()), "secret": {"encoding": "plain", "data": MARKER}}
    )
    path = _write(tmp_path / "id.json", whole[:-3])
    with pytest.raises(KeyFileError, match="not JSON") as caught:
        HostIdentity.load(path)
    _assert_no_secret_in_frames(caught.value, [MARKER.encode()])
    assert caught.value.__context__ is None


def test_a_good_file_still_loads_and_a_missing_one_is_still_named(tmp_path: Path) -> None:
    identity = HostIdentity.generate()
    path = tmp_path / "id.json"
    identity.save(path)
    assert HostIdentity.load(path).sui_address == identity.sui_address
    with pytest.raises(KeyFileError, match="no identity file at"):
        HostIdentity.load(tmp_path / "missing.json")
