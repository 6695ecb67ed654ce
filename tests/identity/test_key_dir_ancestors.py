"""An identity file's directory was checked for others' write permission, but not the
directories above it: whoever may write to one of those may rename the directory below
and put a tree of their own, with their own key, in its place between two loads. Every
directory above the file (and above a symlink's target) is checked now; a sticky one
(as /tmp) passes, as the file's own directory does. Real files and modes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtp.errors import KeyFileError
from dtp.identity.keys import HostIdentity

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@pytest.fixture
def identity() -> HostIdentity:
    return HostIdentity.generate()


def test_a_key_below_a_directory_others_may_write_is_refused(
    tmp_path: Path, identity: HostIdentity
) -> None:
    shared = tmp_path / "shared"
    private = shared / "me"
    path = private / "identity.json"
    identity.save(path)
    os.chmod(private, 0o700)
    os.chmod(shared, 0o777)
    with pytest.raises(KeyFileError, match=rf"{shared}, which holds {path}, is writable"):
        HostIdentity.load(path)
    assert HostIdentity.load(path, allow_insecure=True) == identity
    # a symlink from elsewhere into it: still exposed
    link = tmp_path / "elsewhere" / "identity.json"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(path)
    with pytest.raises(KeyFileError, match="writable by others"):
        HostIdentity.load(link)
    # the sticky bit: others may not rename what they do not own in it
    os.chmod(shared, 0o1777)
    assert HostIdentity.load(path) == identity
    assert HostIdentity.load(link) == identity
    os.chmod(shared, 0o755)
    assert HostIdentity.load(path) == identity


def test_a_symlink_kept_below_a_directory_others_may_write_is_refused(
    tmp_path: Path, identity: HostIdentity
) -> None:
    """The directory holding the name the caller gives counts too, at every level:
    others could replace the symlink's directory and point it at their key."""
    path = tmp_path / "keys" / "identity.json"
    identity.save(path)
    shared = tmp_path / "shared"
    link = shared / "me" / "identity.json"
    link.parent.mkdir(parents=True, mode=0o700)
    link.symlink_to(path)
    os.chmod(shared, 0o757)
    with pytest.raises(KeyFileError, match=f"{shared}, which holds"):
        HostIdentity.load(link)
    assert HostIdentity.load(path) == identity
