"""Writing a small file so that a crash or a full disk never leaves it truncated."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

__all__ = ["write_durably"]


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
                # on, as it did before modes were kept
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
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # renamed all the same; only its durability across a power loss is less
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(dir_fd)
