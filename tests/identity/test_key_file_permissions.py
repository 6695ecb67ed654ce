"""Identity files' directory checks:

- save() checked none of the directories load() checks, so it wrote a key that load()
  then refused, found out only at the next start; it refuses them up front now, with
  load()'s error, and writes nothing (no file, no directory);
- a group-writable directory (Debian's /usr/local, 2775 root:staff) was refused as
  "writable by others"; the message now names the directory, says group-writable, names
  the group and says what to do (the same directories are refused);
- directories another user owns passed (0755, theirs: they may still rename the key's
  entry); one owned by neither root nor this user is refused now, naming its owner.

Real files, modes and owners; the owner tests give directories away, which takes root,
and one of them drops to uid 65534 in a forked child."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import KeyFileError
from dtp.identity.keys import HostIdentity, default_identity_path
from tests.identity.other_users import run_as

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and owners")

needs_root = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0, reason="giving a directory away takes root"
)

NOBODY = 65534
#: A uid and a gid with no name on this system (checked where used).
NAMELESS_UID = 12345
NAMELESS_GID = 54321


@pytest.fixture
def identity() -> HostIdentity:
    return HostIdentity.generate()


def _load_error(path: Path) -> str:
    with pytest.raises(KeyFileError) as info:
        HostIdentity.load(path)
    return str(info.value)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _shared_group() -> grp.struct_group:
    """A group that is not this user's private one (its members are others)."""
    for group in grp.getgrall():
        if group.gr_gid != os.getegid():
            return group
    pytest.skip("no group other than the user's own")


# -- 1. save() refuses what load() refuses, before writing anything --------------------------


def test_save_refuses_a_directory_others_may_write_with_loads_error_and_writes_nothing(
    tmp_path: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    path = shared / "new" / "deeper" / "identity.json"

    # the directory check is cheap and comes before the secret is built (no scrypt)
    def no_secret(self: HostIdentity) -> bytes:
        raise AssertionError("the secret was built for a save refused up front")

    with monkeypatch.context() as patched:
        patched.setattr(HostIdentity, "_secret_json", no_secret)
        for passphrase in (None, "a passphrase"):
            with pytest.raises(KeyFileError, match=rf"{shared}, which holds {path}, is writable"):
                identity.save(path, passphrase)
    assert _tree(shared) == []  # (it wrote the key, and made new/ and deeper/)

    # the same message load() gives for the file once it is there
    with pytest.raises(KeyFileError) as refused:
        identity.save(path)
    identity.save(path, allow_insecure=True)
    assert _load_error(path) == str(refused.value)
    assert HostIdentity.load(path, allow_insecure=True) == identity
    # an overwrite too (the file exists now)
    with pytest.raises(KeyFileError, match="writable by others"):
        identity.save(path, overwrite=True)

    # a symlinked directory from a private directory into the shared one: the shared
    # one holds the directory the file goes to
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (shared / "x").mkdir(mode=0o700)
    (private / "via").symlink_to(shared / "x")
    with pytest.raises(KeyFileError, match=rf"{shared}, which holds .* is writable by others"):
        identity.save(private / "via" / "identity.json")
    assert _tree(shared / "x") == []
    # ...but a symlink as the file's own name is replaced, not followed: the file then
    # lies in the private directory, and loads
    link = private / "identity.json"
    link.symlink_to(Path("..") / "shared" / "x" / "identity.json")
    identity.save(link, overwrite=True)
    assert not link.is_symlink()
    assert HostIdentity.load(link) == identity

    # with the sticky bit (as /tmp) save and load take it
    os.chmod(shared, 0o1777)
    identity.save(shared / "sticky.json")
    assert HostIdentity.load(shared / "sticky.json") == identity


def test_save_accepts_the_usual_places(
    tmp_path: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key in a private directory of /tmp itself (sticky, world-writable), the default
    path under the home directory, a relative path, a new nested path: all saved and
    loaded. And save() refuses a group-writable shared directory, which it wrote to."""
    private = Path(tempfile.mkdtemp(prefix="dtp-keys-", dir="/tmp"))
    try:
        assert os.stat("/tmp").st_mode & stat.S_ISVTX
        identity.save(private / "identity.json")
        assert HostIdentity.load(private / "identity.json") == identity
    finally:
        shutil.rmtree(private)

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    path = default_identity_path()
    assert path.is_relative_to(home)
    identity.save(path, "pass")
    assert HostIdentity.load(path, "pass") == identity
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700

    monkeypatch.chdir(home)
    identity.save("relative.json")
    identity.save(Path("a") / ".." / "b" / "c.json")
    assert HostIdentity.load("relative.json") == identity
    assert HostIdentity.load(home / "b" / "c.json") == identity

    # a directory a shared group may write to: refused by save, as by load
    if os.geteuid() == 0:
        group = _shared_group()
        os.chown(home, -1, group.gr_gid)
        os.chmod(home, 0o2770)
        with pytest.raises(KeyFileError, match=rf"{home}, which holds .* is group-writable"):
            identity.save(home / "new.json")
        assert not (home / "new.json").exists()


# -- 2. the group-writable message ---------------------------------------------------------


@needs_root
def test_a_group_writable_directory_is_named_with_its_group_and_the_fix(
    tmp_path: Path, identity: HostIdentity
) -> None:
    local = tmp_path / "usr-local"
    path = local / "etc" / "identity.json"
    identity.save(path)
    group = _shared_group()
    os.chown(local, 0, group.gr_gid)
    os.chmod(local, 0o2775)  # as Debian's /usr/local (root:staff)
    message = _load_error(path)
    assert message.startswith(f"{local}, which holds {path}, is group-writable")
    assert f"group {group.gr_name!r} (gid {group.gr_gid}; mode drwxrwsr-x)" in message
    assert f"chmod g-w {local}" in message
    assert "keep the key in a directory only you may write to" in message
    assert "writable by others" not in message
    # a group with no name: its number
    with pytest.raises(KeyError):
        grp.getgrgid(NAMELESS_GID)
    os.chown(local, -1, NAMELESS_GID)
    os.chmod(local, 0o775)
    assert f"is group-writable by gid {NAMELESS_GID} (mode drwxrwxr-x)" in _load_error(path)
    # a name the shell would split is quoted in the command
    odd = tmp_path / "my keys"
    os.rename(local, odd)
    assert f"chmod g-w '{odd}'" in _load_error(odd / "etc" / "identity.json")

    # the same directories are refused as before: the user's private group passes,
    # everyone's write is still "writable by others"
    os.chown(odd, -1, os.getegid())
    if grp.getgrgid(os.getegid()).gr_mem in ([], [pwd.getpwuid(os.geteuid()).pw_name]):
        assert HostIdentity.load(odd / "etc" / "identity.json") == identity
    os.chown(odd, -1, group.gr_gid)
    os.chmod(odd, 0o777)
    assert "is writable by others (mode drwxrwxrwx)" in _load_error(odd / "etc" / "identity.json")


# -- 3. directories another user owns ------------------------------------------------------


@needs_root
def test_a_directory_another_user_owns_is_refused(tmp_path: Path, identity: HostIdentity) -> None:
    theirs = tmp_path / "theirs"
    path = theirs / "mine" / "identity.json"
    identity.save(path)
    assert HostIdentity.load(path) == identity
    os.chmod(theirs, 0o755)
    os.chown(theirs, NOBODY, NOBODY)  # 0755: no write for anyone but nobody
    message = _load_error(path)
    assert message.startswith(f"{theirs}, which holds {path}, belongs to user 'nobody'")
    assert "(uid 65534), neither to you nor to root" in message
    assert "allow_insecure=True" in message
    assert HostIdentity.load(path, allow_insecure=True) == identity
    with pytest.raises(KeyFileError, match="belongs to user 'nobody'"):
        identity.save(theirs / "other.json")
    with pytest.raises(KeyFileError, match="belongs to user 'nobody'"):
        identity.save(path, overwrite=True)
    assert _tree(theirs) == ["mine", "mine/identity.json"]

    # sticky makes no difference: the directory's owner may rename any entry in it
    os.chmod(theirs, 0o1777)
    assert "belongs to user 'nobody'" in _load_error(path)

    # an owner with no name: the number
    with pytest.raises(KeyError):
        pwd.getpwuid(NAMELESS_UID)
    os.chmod(theirs, 0o755)
    os.chown(theirs, NAMELESS_UID, -1)
    assert f"belongs to uid {NAMELESS_UID}, neither" in _load_error(path)

    # a directory holding a symlink on the way counts too
    os.chown(theirs, 0, 0)
    link = tmp_path / "links" / "identity.json"
    link.parent.mkdir(mode=0o755)
    link.symlink_to(path)
    assert HostIdentity.load(link) == identity
    os.chown(link.parent, NOBODY, -1)
    assert f"{link.parent}, which holds {link}, belongs to user 'nobody'" in _load_error(link)

    # a key file another user owns, in root's own directories, still loads (as before)
    os.chown(path, NOBODY, -1)
    assert HostIdentity.load(path) == identity


@needs_root
def test_as_another_user_own_directories_pass_and_a_third_users_do_not(
    identity: HostIdentity,
) -> None:
    """In a child that runs as uid 65534: a key in its own 0700 directory under /tmp is
    saved and loaded (its directory is neither root's nor the child's: it was refused
    if the owner check took root only); one under a directory of a third user is not."""
    base = Path(tempfile.mkdtemp(prefix="dtp-keys-", dir="/tmp"))  # root's, 0755 below
    try:
        os.chmod(base, 0o755)
        own = base / "own"
        own.mkdir(mode=0o700)
        os.chown(own, NOBODY, NOBODY)
        third = base / "third"
        identity.save(third / "identity.json")
        os.chmod(third, 0o755)
        os.chown(third, NAMELESS_UID, -1)
        os.chown(third / "identity.json", NOBODY, NOBODY)

        def steps(outcome: dict[str, str]) -> None:
            identity.save(own / "keys" / "identity.json")
            outcome["own"] = str(HostIdentity.load(own / "keys" / "identity.json") == identity)
            outcome["third"] = _load_error(third / "identity.json")

        outcome = run_as(NOBODY, NOBODY, steps)
        assert outcome["own"] == "True"
        assert os.stat(own / "keys").st_uid == NOBODY
        assert f"{third}, which holds" in outcome["third"]
        assert f"belongs to uid {NAMELESS_UID}" in outcome["third"]
    finally:
        shutil.rmtree(base)


@pytest.fixture(autouse=True)
def _no_leftover_temporary_files(tmp_path: Path) -> Iterator[None]:
    yield
    # a refused or failed save leaves no ".identity.json.<hex>.tmp" behind
    assert not [p for p in tmp_path.rglob("*.tmp")]


posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@posix_only
def test_a_key_through_a_symlinked_directory_in_a_shared_one_is_refused(
    tmp_path: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    identity.save(private / "identity.json")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may replace the link below with their own
    (shared / "keys").symlink_to(private)
    path = shared / "keys" / "identity.json"
    # (it loaded: only private, tmp_path and above were checked)
    with pytest.raises(KeyFileError, match=rf"{shared}, which holds {path}, is writable"):
        HostIdentity.load(path)
    # a relative path through it, too
    monkeypatch.chdir(shared)
    with pytest.raises(KeyFileError, match="writable by others"):
        HostIdentity.load("keys/identity.json")
    # a link whose target is relative, met further down: its directory counts too
    deeper = tmp_path / "deeper"
    deeper.mkdir(mode=0o700)
    (deeper / "via").symlink_to(Path("..") / "shared" / "keys")
    with pytest.raises(KeyFileError, match=f"{shared}, which holds"):
        HostIdentity.load(deeper / "via" / "identity.json")
    # the sticky bit: others may not replace the link they do not own
    os.chmod(shared, 0o1777)
    assert HostIdentity.load(path) == identity
    assert HostIdentity.load("keys/identity.json") == identity
    assert HostIdentity.load(deeper / "via" / "identity.json") == identity
    os.chmod(shared, 0o755)
    assert HostIdentity.load(path) == identity
    assert HostIdentity.load(path, allow_insecure=True) == identity
    # a symlink loop on the way: the open's error, a KeyFileError (not a walk for good)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(KeyFileError):
        HostIdentity.load(tmp_path / "a" / "identity.json")


@posix_only
def test_a_deep_key_path_is_checked_in_one_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 names deep, behind a symlinked directory: the check looks each name up once
    (and each of the link's target), not every prefix again (11 000 lstats before)."""
    depth = 150
    identity = HostIdentity.generate()
    deep = tmp_path.joinpath(*(["d"] * depth))
    deep.mkdir(parents=True, mode=0o700)
    identity.save(deep / "identity.json")
    (tmp_path / "via").symlink_to(tmp_path / "d")
    path = tmp_path.joinpath("via", *(["d"] * (depth - 1)), "identity.json")
    calls = [0]
    real_lstat = os.lstat

    def lstat(*args: Any, **kwargs: Any) -> os.stat_result:
        calls[0] += 1
        return real_lstat(*args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    assert HostIdentity.load(path) == identity
    names = len(path.parts) + len(tmp_path.parts) + 1  # (the link's target's too)
    assert calls[0] <= 2 * names, calls[0]
