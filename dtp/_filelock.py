"""One holder per file: an exclusive advisory lock (``flock``) on a companion file.

A graph database, a daemon's state directory and a sealed inbox's state file each
belong to one user at a time; a second one, in this process or another, is refused at
once rather than left to corrupt what the first keeps. The lock goes with the
descriptor: closing it, or the process ending (even killed), releases it, so a crash
leaves no stale lock.

The lock belongs to the open file description, not to the process: a child made by
``fork`` without ``exec`` (multiprocessing's "fork" start method) shares it, and it
stays held until the child has closed its copy too or ended (``exec`` closes it:
the descriptor is close-on-exec). On NFS, ``flock`` is emulated with byte-range locks
(Linux 2.6.12+) and a lost lease can drop it unnoticed: keep these files local.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:  # (not POSIX: no lock; one user per file is then up to the caller)
    fcntl = None  # type: ignore[assignment]

__all__ = ["companion", "lock_exclusive"]


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
