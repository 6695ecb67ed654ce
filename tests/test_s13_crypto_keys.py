"""Identity files and keystrings: a damaged file is a KeyFileError whatever its damage
(deeply nested JSON raised RecursionError), a keystring of the wrong type a TypeError."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from dtp.errors import KeyFileError
from dtp.keys import HostIdentity

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
