"""Local files the daemon and the inbox keep, against what another user or a damaged file
can do:

- the daemon's lock file was opened through a symlink (or another name of a file) and
  truncated to take the daemon's pid: a link planted in a state directory someone else
  could write to erased the file it pointed to -- an identity file, its keys and funds.
  The lock is now a plain file of this user's with one name, and the state directory
  must be this user's and writable by no one else;
- a first start with a passphrase that is not text ended in a ValueError traceback;
- state files nested past the stack (``[[[[...``) escaped as RecursionError instead of
  the error each reader gives for a damaged file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtp.daemon._config import parse_config
from dtp.daemon._host_setup import recorded_host_id
from dtp.daemon._runner import load_identity, lock_state_dir
from dtp.daemon._state import read_status
from dtp.errors import DaemonConfigError, HostConfigError, KeyFileError
from dtp.identity._files import lock_exclusive
from dtp.identity.keys import HostIdentity
from dtp.messaging.errors import SealedError
from dtp.messaging.sealed import SealedInbox

DEEP = "[" * 200_000


def _config(state_dir: Path):  # type: ignore[no-untyped-def]
    text = "\n".join(
        [
            "[daemon]",
            'ledger = "ledger.sqlite"',
            'identity = "id.json"',
            f'state_dir = "{state_dir}"',
            "[[service]]",
            'name = "web"',
            "port = 80",
            'backends = ["127.0.0.1:8080"]',
        ]
    )
    return parse_config(text, state_dir.parent / "dtp.toml")


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "identity.json"
    HostIdentity.generate().save(path)
    return path


def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_kept(
    tmp_path: Path, identity_file: Path
) -> None:
    before = identity_file.read_bytes()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "daemon.lock").symlink_to(identity_file)
    with pytest.raises(OSError):
        lock_state_dir(_config(state))
    assert identity_file.read_bytes() == before
    HostIdentity.load(identity_file)


def test_a_lock_that_is_another_name_of_a_file_is_refused(
    tmp_path: Path, identity_file: Path
) -> None:
    before = identity_file.read_bytes()
    lock = tmp_path / "x.lock"
    os.link(identity_file, lock)
    with pytest.raises(OSError, match="not a lock file"):
        lock_exclusive(lock)
    assert identity_file.read_bytes() == before


def test_a_state_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    os.chmod(state, 0o777)
    with pytest.raises(DaemonConfigError, match="writable by no one else"):
        lock_state_dir(_config(state))
    assert not (state / "daemon.lock").exists()


def test_a_new_state_directory_is_private_and_locks(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    fd = lock_state_dir(_config(state))
    try:
        assert state.stat().st_mode & 0o777 == 0o700
        assert (state / "daemon.lock").read_text().strip() == str(os.getpid())
    finally:
        os.close(fd)


def test_a_first_start_with_a_passphrase_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    with pytest.raises(KeyFileError, match="cannot be used as a passphrase"):
        load_identity(path, "caf\udce9")
    assert not path.exists()


def test_state_files_nested_past_the_stack_are_damaged_files(tmp_path: Path) -> None:
    record = tmp_path / "host.json"
    record.write_text(DEEP)
    with pytest.raises(HostConfigError, match="damaged"):
        recorded_host_id(record)
    (tmp_path / "status.json").write_text(DEEP)
    assert read_status(tmp_path) is None
    state = tmp_path / "inbox.json"
    state.write_text(DEEP)
    with pytest.raises(SealedError, match="corrupt"):
        SealedInbox(HostIdentity.generate(), "0x1", state_path=state)
