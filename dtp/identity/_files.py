"""DTP's own files: where they go by default, one holder per file, and writes a crash
cannot truncate.

Where: the user's data directory (XDG base directories, :func:`data_home`).

One holder per file: an exclusive advisory lock (``flock``) on a companion file
(:func:`lock_exclusive`). A graph database, a daemon's state directory and a sealed
inbox's state file each belong to one user at a time; a second one, in this process or
another, is refused at once rather than left to corrupt what the first keeps. The lock goes with the
descriptor: closing it, or the process ending (even killed), releases it, so a crash
leaves no stale lock.

The lock belongs to the open file description, not to the process: a child made by
``fork`` without ``exec`` (multiprocessing's "fork" start method) shares it, and it
stays held until the child has closed its copy too or ended (``exec`` closes it:
the descriptor is close-on-exec). On NFS, ``flock`` is emulated with byte-range locks
(Linux 2.6.12+) and a lost lease can drop it unnoticed: keep these files local.

Durable writes: :func:`write_durably` writes a small file so that a crash or a full disk
never leaves it truncated.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

try:
    import fcntl
except ImportError:  # (not POSIX: no lock; one user per file is then up to the caller)
    fcntl = None  # type: ignore[assignment]

__all__ = ["companion", "data_home", "fsync_directory", "lock_exclusive", "write_durably"]


def data_home(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME``, or ``~/.local/share`` when it is unset, empty or relative (as
    the XDG base directory spec says). DTP's files go in its ``dtp`` directory: the
    identity, the embedded ledger, the ``dtp deploy`` records."""
    base = (os.environ if env is None else env).get("XDG_DATA_HOME", "")
    return Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"


def companion(path: Path, suffix: str = "-lock") -> Path:
    """The lock file beside ``path``, found through symlinks (a link to the file must
    find the same lock)."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        real = path
    return real.with_name(real.name + suffix)


def make_private(fd: int, mode: int | None = None) -> None:
    """Take group's and others' access away from the lock file open at ``fd`` (its
    ``st_mode`` when the caller has it), one made before lock files were private.
    Best effort: a file system that refuses modes (vfat, some FUSE or CIFS mounts:
    EPERM) still locks, as it did before files were made private, and must go on
    working."""
    with contextlib.suppress(OSError):
        if (os.fstat(fd).st_mode if mode is None else mode) & 0o077:
            os.fchmod(fd, 0o600)


def lock_exclusive(lock_path: Path) -> int | None:
    """Open (or create) ``lock_path`` and take its exclusive lock without waiting.
    Returns the descriptor holding it (close it to release), None where there is no
    ``flock``. Raises BlockingIOError when another holder has it, and the OSError of
    the open otherwise; no descriptor is left open then."""
    if fcntl is None:
        return None
    # not through a symlink, and only a plain file of ours with no other name: a lock
    # file someone planted as a link (or a hard link) to another file -- an identity
    # file -- had that file opened, and a daemon then truncated it to write its pid
    # 0o600: flock needs no write access, so anyone who could open the file read-only
    # could take the lock and keep its owner from starting (another user's lock file is
    # refused below, so no one else needs to read it)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
            raise OSError(
                errno.EPERM,
                "not a lock file of this user's (another file's name, or not a plain file)",
                str(lock_path),
            )
        make_private(fd, info.st_mode)  # (one made before, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably: written to a new file
    beside it, synced, renamed over it, then the directory synced. A crash or a full
    disk mid-write leaves the old file (or none) whole, never a truncated one (written
    in place, the file was truncated first). The file keeps the permission bits of the
    one it replaces (as written in place it did: a file made private stays so); a new
    one gets the umask's. A symlink at ``path`` is replaced, not followed (a caller that
    means the file it points to resolves it first). Blocking: call it off an event loop."""
    directory = path.parent
    try:
        old = os.stat(path, follow_symlinks=False)
    except OSError:
        old = None
    # O_EXCL: never through a file (or link) planted under the temporary name; 0o666
    # lets the umask give a new file the mode write_text gave it
    temp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") as out:
            if old is not None and stat.S_ISREG(old.st_mode):
                # a file system that refuses modes (vfat, some FUSE or CIFS mounts:
                # EPERM) gives every file its mount's, the old one's too: the write goes
                # on with the mount's mode
                with contextlib.suppress(OSError):
                    os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode) & 0o777)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable, as far as it can be: a directory that
    cannot be opened or synced (some file systems; not POSIX) leaves the rename done,
    only less sure to survive a power loss."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
