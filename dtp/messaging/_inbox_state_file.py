"""The state file of a :class:`~dtp.messaging.sealed.SealedInbox`: a JSON snapshot (the
host, the mailbox cursor, the seen ids and the journal's token) and a journal beside it
(``<state_path>.log``) to which each delivery appends a line, folded into a new
snapshot once it outgrows it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING

from dtp.messaging import errors as E
from dtp.messaging._sealed_messages import _CURSOR_LINE, _ID_SIZE

if TYPE_CHECKING:
    from collections import OrderedDict
    from pathlib import Path

# (the inbox's own logger name, which applications configure)
logger = logging.getLogger("dtp.messaging.sealed")


def mark_seen(seen: OrderedDict[bytes, float], message_ids: list[bytes]) -> None:
    """Mark ``message_ids`` seen in ``seen``, now (monotonic: the inbox's eviction
    keeps ids seen less than twice ``max_age`` ago)."""
    now = time.monotonic()
    for message_id in message_ids:
        seen[message_id] = now


class InboxStateFile:
    """The state file at ``path`` of the inbox of host ``host_id``: it writes the
    inbox's seen ids ``seen`` (the inbox's own dict, oldest first) and the cursor the
    inbox passes, and hands what it loads back (the ids marked seen in ``seen``, the
    cursor as :meth:`load`'s value). It holds no reference to the inbox, so that an
    inbox dropped unclosed is freed at once and lets go of the file's lock
    (tests/messaging/test_sealed_inbox_ledger_faults.py). The inbox holds the file's
    lock, and its own lock around :meth:`remember`."""

    def __init__(
        self,
        path: Path,
        host_id: str,
        seen: OrderedDict[bytes, float],
    ) -> None:
        self._path = path
        self.host_id = host_id
        self._seen = seen
        self._journaled = 0  # lines in the state file's journal (<state_path>.log)
        # the snapshot's token, which the journal's cursor lines carry: a line with
        # another (a journal a stop left behind a newer snapshot, or beside a snapshot
        # written by hand or by an earlier version) is not this snapshot's to move on
        self._epoch: str | None = None

    def load(self) -> str | None:
        """Read the snapshot and the journal after it, the ids in them marked seen,
        and write a snapshot where there was none with a token (a first start, an
        earlier version's file); returns the cursor they hold. A file or journal that
        is not what the inbox writes is a SealedError naming it."""
        journal = self._path.with_suffix(self._path.suffix + ".log")
        if self._path.exists():
            cursor = self._load_snapshot(self._path)
            cursor = self._load_journal(journal, cursor)
            if self._epoch is None:
                # an earlier version's snapshot (or one written by hand) has no token:
                # cursor lines appended for it would be taken by no later start, which
                # went back to its cursor and delivered evicted mail again
                self.save(cursor)
        else:
            # a snapshot at once: it names the host, which the journal's cursor lines
            # do not (another host's inbox on this file took them over, and skipped its
            # own earlier mail); a journal without one is an earlier version's, folded in
            cursor = self._load_journal(journal, None)
            self.save(cursor)
        return cursor

    def _load_snapshot(self, path: Path) -> str | None:
        """The snapshot's cursor; its token and its ids are taken."""
        try:
            state = json.loads(path.read_bytes())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            cursor = state.get("cursor")
            seen = state.get("seen", [])
            host = state.get("host")  # (absent from the files of earlier versions)
            epoch = state.get("journal")  # (likewise)
            if (
                not (cursor is None or isinstance(cursor, str))
                or not isinstance(seen, list)
                or not (host is None or isinstance(host, str))
                or not (epoch is None or isinstance(epoch, str))
            ):
                raise ValueError("host, cursor, journal or seen of the wrong type")
            ids = [bytes.fromhex(hex_id) for hex_id in seen]
            if any(len(m) != _ID_SIZE for m in ids):
                raise ValueError("a seen id is not 16 bytes")
        except (ValueError, TypeError, RecursionError) as exc:  # JSON and UTF-8 errors too
            raise E.SealedError(
                f"inbox state file {str(path)!r} is corrupt ({exc}); move it away to start over"
            ) from None
        if host is not None and host != self.host_id:
            # its cursor is a position in the ledger's whole event stream: taken over, it
            # would skip this host's mail that arrived before it, silently
            raise E.SealedError(
                f"inbox state file {str(path)!r} belongs to host {host}, not {self.host_id}"
            )
        self._epoch = epoch
        mark_seen(self._seen, ids)
        return cursor

    def _load_journal(self, path: Path, loaded: str | None) -> str | None:
        """Add the ids appended after the last snapshot (one hex id per line) and take
        the newest cursor appended for this snapshot (``c:``, the snapshot's token,
        ``:`` and the cursor's UTF-8 in hex); a last line without its newline was being
        written when the process stopped: cut off. Returns that cursor, or ``loaded``
        (the snapshot's) when there is none."""
        if not path.exists():
            return loaded
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" after a complete last line
        cursor = None
        try:
            ids = []
            for line in lines:
                if line.startswith(_CURSOR_LINE):
                    epoch, hex_cursor = line[len(_CURSOR_LINE) :].split(b":")
                    moved = bytes.fromhex(hex_cursor.decode("ascii")).decode()
                    if epoch.decode("ascii") == self._epoch:
                        cursor = moved
                else:
                    ids.append(bytes.fromhex(line.decode("ascii")))
            if any(len(m) != _ID_SIZE for m in ids):
                raise ValueError("a seen id is not 16 bytes")
        except ValueError as exc:  # UnicodeDecodeError too
            raise E.SealedError(
                f"inbox journal {str(path)!r} is corrupt ({exc}); move it away to start over"
            ) from None
        if torn:
            # cut it off: the next id appended would join it into one corrupt line, and
            # the inbox would refuse to open at the next start
            os.truncate(path, len(data) - len(torn))
        mark_seen(self._seen, ids)
        self._journaled = len(lines)
        return loaded if cursor is None else cursor

    def save(self, cursor: str | None) -> None:
        """Write the whole state (``cursor`` and the ids) and empty the journal."""
        from dtp.identity.keys import _fsync_directory

        epoch = os.urandom(8).hex()
        state = {
            "host": self.host_id,
            "cursor": cursor,
            "journal": epoch,
            "seen": [m.hex() for m in self._seen],
        }
        data = memoryview(json.dumps(state).encode())
        tmp = self._path.with_suffix(self._path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            # on the disk before it takes the old one's place: after a power cut the
            # rename could be there and not the data (an empty state file, which the
            # inbox refuses to open)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        self._epoch = epoch
        try:
            # the rename on the disk before the journal is emptied: else a power cut could
            # leave the old snapshot with an empty journal, the ids in neither
            _fsync_directory(self._path.parent)
            # (a stop right here leaves journaled ids that are in the snapshot too)
            journal = self._path.with_suffix(self._path.suffix + ".log")
            if self._journaled or journal.exists():
                # (not created when there is none yet: the snapshot an inbox writes at
                # its first start; emptied when there is one even with no line counted:
                # a failed append whose undo failed too left part of a line there)
                journal.write_bytes(b"")
        except OSError as exc:
            # the new state is in place: raised, the caller would undo in memory what the
            # file already holds (its cursor moved on), and the messages it did not hand
            # over would be lost at the next start. A journal left as it was only repeats
            # ids the snapshot has; the journal is emptied at the next snapshot.
            logger.warning("inbox state %s written, then: %s", self._path, exc)
            return
        self._journaled = 0

    def remember(
        self, message_ids: list[bytes], cursor: str | None, cursor_moved: bool = False
    ) -> None:
        """(lock held) Persist newly seen ids, and ``cursor`` when it moved: appended to
        the journal, so a delivery costs a line, not a rewrite of up to ``4 *
        max_seen`` ids (86 ms at 100 000; a fetch moves the cursor past other hosts'
        mail too, and rewrote the snapshot for each); the journal is folded into the
        snapshot once it holds more lines than the snapshot ids. The cursor line comes
        after the ids: cut short by a stop, the journal never has the cursor past mail
        whose ids it lacks. Raises the OSError of a write that failed, having undone
        it."""
        if not (message_ids or cursor_moved):
            return
        lines = [m.hex().encode() + b"\n" for m in message_ids]
        if cursor_moved and cursor is not None:
            epoch, hex_cursor = (self._epoch or "").encode(), cursor.encode().hex().encode()
            lines.append(b"%s%s:%s\n" % (_CURSOR_LINE, epoch, hex_cursor))
        journaled = self._journaled + len(lines)
        # (once the journal outgrows the snapshot: rewrites stay O(1) per line amortized)
        if journaled > max(1024, len(self._seen) - journaled):
            self.save(cursor)
            return
        data = memoryview(b"".join(lines))
        path = self._path.with_suffix(self._path.suffix + ".log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except BaseException:
                # a part of a line (the disk is full...) would join the next id appended
                # into one corrupt line, and the inbox would refuse to open at next start
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
        self._journaled = journaled
