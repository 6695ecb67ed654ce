"""Identity files: scrypt cost ceilings, passphrase types, private parent directories.

Identity files and keystrings: a damaged file is a KeyFileError whatever its damage
(deeply nested JSON raised RecursionError), a keystring of the wrong type a TypeError."""

from __future__ import annotations

import base64
import json
import os
import resource
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import KeyFileError
from dtp.identity.keys import HostIdentity

PASSPHRASE = "correct horse"


@pytest.fixture(scope="module")
def alice() -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([7]) * 32, bytes([8]) * 32)


def write_private(path: Path, document: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out)


def with_kdf(tmp_path: Path, alice: HostIdentity, **kdf: int) -> Path:
    """An encrypted identity file whose scrypt parameters were changed to ``kdf``."""
    path = tmp_path / "identity.json"
    alice.save(path, PASSPHRASE, overwrite=True)
    document = json.loads(path.read_text())
    document["secret"]["kdf"].update(kdf)
    write_private(path, document)
    return path


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def in_child_with_little_memory(call: Callable[[], object], headroom: int) -> str:
    """Run ``call`` in a forked child allowed only ``headroom`` more bytes of address
    space (so that even a regression cannot take gigabytes from the machine); returns
    what it raised, as ``"Type: message"``, or ``"ok"``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            limit = _vm_size() + headroom
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                call()
                report = "ok"
            except BaseException as exc:
                report = f"{type(exc).__name__}: {exc}"
            os.write(w, report.encode()[:2000])
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as out:
        text = out.read().decode()
    os.waitpid(pid, 0)
    return text


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "kdf",
    [
        {"n": 2**20, "r": 32, "p": 16},  # the reported file: 4 GiB per derivation
        {"n": 2**20, "r": 8, "p": 1},  # 1 GiB
        {"n": 2**17, "r": 32, "p": 1},  # 512 MiB
        {"n": 2**16, "r": 8, "p": 16},  # 64 MiB but 32x the default work
    ],
)
def test_a_file_asking_for_a_costly_scrypt_is_refused_at_once(
    tmp_path: Path, alice: HostIdentity, kdf: dict[str, int]
) -> None:
    path = with_kdf(tmp_path, alice, **kdf)
    started = time.monotonic()
    report = in_child_with_little_memory(
        lambda: HostIdentity.load(path, PASSPHRASE), headroom=256 * 2**20
    )
    assert report.startswith("KeyFileError: "), report
    assert "costlier scrypt" in report
    assert time.monotonic() - started < 5


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_derivation_without_memory_is_a_key_file_error(
    tmp_path: Path, alice: HostIdentity
) -> None:
    # within the ceilings (256 MiB), but the process may have only 64 MiB more: the
    # MemoryError from scrypt is reported as the file's error, not raised raw
    path = with_kdf(tmp_path, alice, n=2**18, r=8, p=1)
    report = in_child_with_little_memory(
        lambda: HostIdentity.load(path, PASSPHRASE), headroom=64 * 2**20
    )
    assert report.startswith("KeyFileError: cannot decrypt"), report
    assert "scrypt failed" in report


def test_the_default_cost_is_well_within_the_ceilings(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path, PASSPHRASE)
    assert HostIdentity.load(path, PASSPHRASE) == alice


@pytest.mark.parametrize("flag", ["n", "r", "p"])
def test_json_true_is_no_scrypt_parameter(tmp_path: Path, alice: HostIdentity, flag: str) -> None:
    path = with_kdf(tmp_path, alice, **{flag: True})
    with pytest.raises(KeyFileError, match="scrypt parameters out of range"):
        HostIdentity.load(path, PASSPHRASE)


def test_an_empty_passphrase_is_a_wrong_one_on_load(tmp_path: Path, alice: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    alice.save(path, PASSPHRASE)
    with pytest.raises(KeyFileError) as info:  # was a bare ValueError
        HostIdentity.load(path, "")
    assert str(info.value) == f"cannot decrypt {path}: wrong passphrase or damaged file"


@pytest.mark.parametrize("passphrase", [b"correct horse", 5, bytearray(b"x")])
def test_a_passphrase_that_is_not_text_is_a_type_error(
    tmp_path: Path, alice: HostIdentity, passphrase: Any
) -> None:
    encrypted, plain = tmp_path / "encrypted.json", tmp_path / "plain.json"
    alice.save(encrypted, PASSPHRASE)
    alice.save(plain)
    for path in (encrypted, plain):  # not ignored for a plain file either
        with pytest.raises(TypeError, match="passphrase must be a str or None"):
            HostIdentity.load(path, passphrase)
    with pytest.raises(TypeError, match="passphrase must be a str or None"):
        alice.save(tmp_path / "new.json", passphrase)
    assert not (tmp_path / "new.json").exists()


def test_every_missing_parent_directory_is_private(tmp_path: Path, alice: HostIdentity) -> None:
    before = stat.S_IMODE(os.stat(tmp_path).st_mode)
    old = os.umask(0o022)
    try:
        alice.save(tmp_path / "a" / "b" / "c" / "identity.json")
    finally:
        os.umask(old)
    # before, only c was 0700: a and b were 0755, letting others list the tree
    for directory in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE(os.stat(tmp_path / directory).st_mode) == 0o700, directory
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == before  # an existing one is left
    assert HostIdentity.load(tmp_path / "a" / "b" / "c" / "identity.json") == alice


def test_a_file_in_the_way_of_a_parent_is_a_key_file_error(
    tmp_path: Path, alice: HostIdentity
) -> None:
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(KeyFileError, match="cannot create"):
        alice.save(tmp_path / "a" / "b" / "identity.json")


ALICE = HostIdentity.from_private_bytes(bytes([7]) * 32, bytes([8]) * 32)
DEEP = b"[" * 200_000 + b"]" * 200_000


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def test_deeply_nested_json_is_not_an_identity_file(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    _write_private(path, DEEP)
    with pytest.raises(KeyFileError, match="not a DTP identity file"):
        HostIdentity.load(path)


def test_deeply_nested_secret_part_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    ALICE.save(path)
    document = json.loads(path.read_text())
    document["secret"]["data"] = base64.b64encode(DEEP).decode()
    _write_private(path, json.dumps(document).encode())
    with pytest.raises(KeyFileError, match="bad secret part"):
        HostIdentity.load(path)


def test_a_good_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    ALICE.save(path)
    assert HostIdentity.load(path) == ALICE


@pytest.mark.parametrize("keystring", [b"AAAA", 5, None, ["suiprivkey1"]])
def test_a_keystring_that_is_not_a_str_is_a_type_error(keystring: object) -> None:
    with pytest.raises(TypeError, match="keystring"):
        HostIdentity.from_sui_keystring(keystring)  # type: ignore[arg-type]


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    # 8 MiB (sparse) stands for any size: a disk image given by mistake was read whole
    path = tmp_path / "identity.json"
    _write_private(path, b"")
    os.truncate(path, 1 << 23)
    with pytest.raises(KeyFileError, match="too large"):
        HostIdentity.load(path)
