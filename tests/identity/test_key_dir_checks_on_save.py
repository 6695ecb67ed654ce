"""The directories save() checks on the way to an identity file:

- save() checked the directories on the way to the file only up to the first one
  missing, and made the rest; but a ".." after the missing one leads back to
  directories that exist (``new/../shared/identity.json``): ``shared`` went unchecked,
  save wrote the key there and load() refused it at the next start;
- a group-writable directory passed as the user's private group when the group listed
  no other member, though other users may have it as their login (primary) group,
  which /etc/group does not list (``users``, ``nogroup``): each of them could replace
  the identity. It must now also be no other user's primary group.

Real files and modes; one test drops to a user sharing its primary group with others
in a forked child (root only)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.errors import KeyFileError
from dtp.identity.keys import HostIdentity
from tests.identity.other_users import run_as

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and owners")


@pytest.fixture
def identity() -> HostIdentity:
    return HostIdentity.generate()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- 1. a missing directory, then ".." back to one that exists ------------------------------


@pytest.mark.parametrize("relative", [False, True])
def test_save_checks_the_directories_a_dotdot_after_a_missing_one_leads_to(
    tmp_path: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    tmp_path.chmod(0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may write, no sticky bit: load() refuses it
    base = Path() if relative else tmp_path
    if relative:
        monkeypatch.chdir(tmp_path)
    for route in ("new/../shared/identity.json", "a/b/../../shared/identity.json"):
        path = base / route
        with pytest.raises(KeyFileError) as info:
            identity.save(path)
        assert f"{shared}, which holds {path}, is writable by others" in str(info.value)
        # refused before anything is written: no key, and none of the missing directories
        assert _tree(tmp_path) == ["shared"]
        # (what load() would have said of the key at the next start)
        identity.save(path, allow_insecure=True)
        with pytest.raises(KeyFileError, match="is writable by others"):
            HostIdentity.load(path)
        assert HostIdentity.load(path, allow_insecure=True) == identity
        shutil.rmtree(tmp_path / route.split("/")[0])
        (shared / "identity.json").unlink()

    # good paths through missing directories are saved as before: each made 0700
    (tmp_path / "keys").mkdir(mode=0o700)
    for route in ("n1/n2/identity.json", "keys/x/../y/identity.json", "m/../keys/z.json"):
        identity.save(base / route)
        assert (os.stat(base / route).st_mode & 0o777) == 0o600
        assert HostIdentity.load(base / route) == identity
    for made in ("n1", "n1/n2", "keys/x", "keys/y", "m"):
        assert (os.stat(tmp_path / made).st_mode & 0o777) == 0o700


# -- 2. a group others have as their primary group is not private ---------------------------


@pytest.fixture
def own_group_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory of this user's, writable by its effective group, which the check
    takes as the user's private group (no other member listed)."""
    gid = os.getegid()
    try:
        members = grp.getgrgid(gid).gr_mem
        me = pwd.getpwuid(os.geteuid())
    except KeyError:
        pytest.skip("this user's group has no name")
    if set(members) - {me.pw_name}:
        pytest.skip("this user's effective group lists other members")
    if [u for u in pwd.getpwall() if u.pw_gid == gid and u.pw_uid != me.pw_uid]:
        pytest.skip("this user's group is another user's primary group already")
    tmp_path.chmod(0o700)
    keys = tmp_path / "keys"
    keys.mkdir()
    os.chown(keys, -1, gid)
    keys.chmod(0o770)
    yield keys


def test_a_group_another_user_logs_in_with_is_not_private(
    own_group_directory: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = own_group_directory / "identity.json"
    identity.save(path)  # the user's private group: accepted
    assert HostIdentity.load(path) == identity

    gid = os.getegid()
    real = pwd.getpwall()
    other = pwd.struct_passwd(("s34other", "x", 4242, gid, "", "/nonexistent", "/bin/false"))
    monkeypatch.setattr(pwd, "getpwall", lambda: [*real, other])
    with pytest.raises(KeyFileError) as info:
        HostIdentity.load(path)
    assert f"{own_group_directory}, which holds {path}, is group-writable by" in str(info.value)
    with pytest.raises(KeyFileError, match="is group-writable by"):
        identity.save(own_group_directory / "second.json")
    assert not (own_group_directory / "second.json").exists()
    # a second entry for this same user (an alias with its uid) shares nothing
    me = pwd.getpwuid(os.geteuid())
    alias = pwd.struct_passwd(("s34alias", "x", me.pw_uid, gid, "", "/", "/bin/false"))
    monkeypatch.setattr(pwd, "getpwall", lambda: [*real, alias])
    assert HostIdentity.load(path) == identity


def _shared_primary_group() -> tuple[pwd.struct_passwd, grp.struct_group] | None:
    """A user whose primary group lists no member but that user (or none) and is the
    primary group of another user too (Debian's nobody: nogroup, also _apt's)."""
    users = pwd.getpwall()
    for user in users:
        if user.pw_uid == 0 or user.pw_gid == 0:
            continue
        try:
            group = grp.getgrgid(user.pw_gid)
        except KeyError:
            continue
        if set(group.gr_mem) - {user.pw_name}:
            continue
        if any(u.pw_gid == user.pw_gid and u.pw_uid != user.pw_uid for u in users):
            return user, group
    return None


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0, reason="changing to another user takes root"
)
def test_as_a_user_whose_login_group_others_share_its_group_writable_directory_is_refused(
    identity: HostIdentity,
) -> None:
    found = _shared_primary_group()
    if found is None:
        pytest.skip("no user whose primary group another user shares")
    user, group = found
    base = Path(tempfile.mkdtemp(prefix="dtp-s34kr-", dir="/tmp"))  # root's
    try:
        base.chmod(0o755)
        theirs = base / "keys"
        theirs.mkdir()
        identity.save(theirs / "identity.json")
        os.chown(theirs / "identity.json", user.pw_uid, user.pw_gid)
        os.chown(theirs, user.pw_uid, user.pw_gid)
        theirs.chmod(0o770)

        def steps(outcome: dict[str, str]) -> None:
            try:
                HostIdentity.load(theirs / "identity.json")
                outcome["load"] = "loaded"
            except KeyFileError as exc:
                outcome["load"] = str(exc)
            try:
                identity.save(theirs / "second.json")
                outcome["save"] = "saved"
            except KeyFileError as exc:
                outcome["save"] = str(exc)

        outcome = run_as(user.pw_uid, user.pw_gid, steps)
        expected = f"{theirs}, which holds {theirs / 'identity.json'}, is group-writable by"
        assert expected in outcome["load"]
        assert f"group {group.gr_name!r}" in outcome["load"]
        assert "is group-writable by" in outcome["save"]
        assert not (theirs / "second.json").exists()
    finally:
        shutil.rmtree(base)


@pytest.fixture(autouse=True)
def _no_leftover_temporary_files(tmp_path: Path) -> Iterator[None]:
    yield
    assert not [p for p in tmp_path.rglob("*.tmp")]
