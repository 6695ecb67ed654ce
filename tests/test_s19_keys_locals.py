"""A failed ``HostIdentity.load`` keeps no secret in its traceback's frames (S19).

Error reporters that record local variables (and debuggers walking a traceback) read
every frame of a raised error. The frames of the load's helpers held the whole file
(``raw``, ``document``), the decoded or decrypted secret (``plain``) and even the
identity built from it: a damaged or mismatched file sent the key to the error report.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import dtp
from dtp.errors import KeyFileError
from dtp.keys import HostIdentity
from tests.test_s18_keys_cli import (
    DAMAGED_SECRETS,
    MARKER,
    PASSPHRASE,
    _encrypted_file,
    _header,
    _plain_file,
    _write,
)

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
