"""A receipt store's server runs (:class:`ServerRuns`): each run's lock file, which tells
every other server its rows belong to a live one, and the recovery of the rows that dead
runs left (:meth:`ServerRuns.orphaned`)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from dtp.errors import ReceiptStoreError
from dtp.payments.receipt_store.rows import ReceiptRows
from dtp.payments.receipt_store.table import _UNCLAIMED_OF_RUN, StoredReceipt

try:
    import fcntl
except ImportError:  # (not POSIX: no lock; one live server per store is up to the caller)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: A run lock file still under its making name this many seconds after it was made is
#: a dead server's (one is renamed within a moment of being made): removed when found.
STALE_NEWLOCK = 60.0
# A server run's ID (attach_server), as its lock file's name ends: nothing else found
# beside the store is taken for one.
_RUN_ID = re.compile(r"[0-9a-f]{16}")


class ServerRuns(ReceiptRows):
    """The server runs of :class:`~dtp.payments.receipt_store.store.ReceiptStore`."""

    def _real_path(self) -> Path:
        """The store's file, symlinks resolved: every name of it finds the same locks."""
        assert self._path is not None
        try:
            return self._path.resolve()
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop
            return self._path

    def _start_run(self, real: Path) -> None:
        """A new run ID, its lock file made and locked (server lock held). Made under
        another name and renamed once locked: under its own, another server finding it
        unlocked for an instant took the run for a dead one. Without one (a read-only
        directory), the run's rows are owned by no run: recovered only by a server
        alone on the store."""
        made = self._make_run(real)
        if made is None:
            self._run_id = None
            return
        self._run_id, self._run_fd, self._run_path = made

    def _make_run(self, real: Path) -> tuple[str, int, Path] | None:
        """A new run ID and its lock file, made and locked exclusively: (ID, fd, file);
        None (logged) when it cannot be made."""
        assert fcntl is not None
        run_id = secrets.token_hex(8)
        path = real.with_name(f"{real.name}-lock-{run_id}")
        making = real.with_name(f"{real.name}-newlock-{run_id}")
        try:
            # (0o600: held shared by another user, a dead run's lock kept it live for
            # good, its receipts never claimed)
            fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            logger.warning("no run lock file for the receipt store %s: %s", self._path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (a new file: nobody holds it)
            os.rename(making, path)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(making)
            logger.warning("no run lock file for the receipt store %s: %s", self._path, exc)
            return None
        return run_id, fd, path

    def _end_run(self) -> None:
        """The run's servers are gone (server lock held): its lock is let go of, and
        its file removed when the run left nothing to claim (else another server, or
        the next start, recovers it). A row written after this (a writer finishing) is
        still the run's: unclaimed, recovered as a dead run's."""
        fd, self._run_fd = self._run_fd, None
        if fd is None:
            return
        if self._run_path is not None and not self._run_has_unclaimed(self._run_id):
            with contextlib.suppress(OSError):
                os.unlink(self._run_path)
        os.close(fd)

    def _run_has_unclaimed(self, run_id: str | None) -> bool:
        """Whether ``run_id``'s rows hold MIST to claim; True when that cannot be read
        (its lock file is then kept: at worst a dead run looked at once more)."""
        try:
            return self._db.execute(_UNCLAIMED_OF_RUN, (run_id,)).fetchone() is not None
        except sqlite3.Error:
            return True

    @contextlib.contextmanager
    def orphaned(self, everyone: bool = False) -> Iterator[list[StoredReceipt]]:
        """The unclaimed receipts dead server runs left (:meth:`attach_server`), oldest
        first: those of every run whose lock file this handle could lock (its server is
        gone). Their locks are held until the block ends, so that no other server claims
        them at the same time; then the lock files of the runs with nothing left to
        claim are removed. With ``everyone`` (the servers on this handle are the only
        live ones: :meth:`attach_server` said True), those owned by no run with a lock
        file too (written before run IDs, or with no server attached), given to a dead
        run of their own (:meth:`_adopt_orphans`). The rows of live runs are never
        listed: they are their connections' receipts."""
        locks, live = self._lock_dead_runs()
        try:
            if everyone:
                # (not a run that started since attach_server() said True: it is live)
                mine = [*live] if self._run_id is None else [self._run_id, *live]
                orphans = self._orphan_runs([*mine, *locks])
                if self._adopt_orphans(orphans, locks):
                    orphans = []  # (their rows are the adopted run's, in locks now)
                # Named, not "every run but mine": a run whose lock file was made after
                # the look above (a server attached since) is live, its rows too.
                params = [*locks, *orphans]
                where = f"run_id IN ({', '.join('?' * len(params))})"
            elif locks:
                where = f"run_id IN ({', '.join('?' * len(locks))})"
                params = list(locks)
            else:
                yield []
                return
            yield list(self._unclaimed(where, params))
        finally:
            self._forget_runs(locks)

    def _orphan_runs(self, owned: list[str]) -> list[object]:
        """The ``run_id`` values of the unclaimed rows of no run with a lock file (not
        ``owned``: this handle's run, the live runs and the dead ones found). A run's
        rows name it only once its lock file has its name, and its lock file is there
        as long as it is live: one not there when looked for after the rows were read
        is not a live run's -- not one of a server that attached after the look for
        runs, whose rows were taken for orphans' (listed at the start, and given to a
        dead run: claimed by every recovery round under its live connections)."""
        where = f"run_id NOT IN ({', '.join('?' * len(owned))}) AND total_amount > claimed_amount"
        with self._errors("read"), self._reading():
            found = [
                row[0]
                for row in self._db.execute(
                    f"SELECT DISTINCT run_id FROM receipts WHERE {where}", owned
                ).fetchall()
            ]
        if not found or self._path is None or fcntl is None:
            return found  # (no lock files: nothing but this handle's run is live)
        real = self._real_path()
        try:
            names = set(os.listdir(real.parent))
        except OSError as exc:
            # (cannot tell a run's from an orphan's: only those no lock file can name)
            logger.warning("cannot look for run lock files beside %s: %s", real, exc)
            names = None
        return [
            run_id
            for run_id in found
            if not (isinstance(run_id, str) and _RUN_ID.fullmatch(run_id))
            or (names is not None and f"{real.name}-lock-{run_id}" not in names)
        ]

    def _adopt_orphans(self, orphans: list[object], locks: dict[str, tuple[int, Path]]) -> bool:
        """Give the unclaimed rows of ``orphans`` (:meth:`_orphan_runs`: of no run with
        a lock file -- written before run IDs, by a server that could make none, or
        after its run ended) to a new run, dead from the start: its lock file, made here
        and held, joins ``locks`` (a server alone on the store only). Left owned by no
        lock file, they were listed by a start alone only, and one whose claim failed
        there (the ledger unavailable for a moment) was not tried again before the next
        start alone, while its client's half-close timeout ran; a dead run's rows are
        tried again by every live server's recovery until claimed. Whether they were."""
        if not orphans or self._path is None or fcntl is None:
            return False
        made = self._make_run(self._real_path())
        if made is None:  # (a read-only directory: listed all the same, as before)
            return False
        run_id, fd, path = made
        try:
            with self._write_lock, self._errors("write"):
                self._check_open("write")
                self._db.execute(
                    f"UPDATE receipts SET run_id = ? WHERE run_id IN "
                    f"({', '.join('?' * len(orphans))}) AND total_amount > claimed_amount",
                    [run_id, *orphans],
                )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            raise
        locks[run_id] = (fd, path)
        return True

    def _lock_dead_runs(self) -> tuple[dict[str, tuple[int, Path]], list[str]]:
        """Run ID -> (locked fd, lock file) of every other run whose lock file this
        handle could lock exclusively (its server is gone), and the IDs of those it
        could not (live, or being recovered by another server)."""
        live: list[str] = []
        if self._path is None or fcntl is None:
            return {}, live
        real = self._real_path()
        prefix = f"{real.name}-lock-"
        try:
            names = os.listdir(real.parent)
        except OSError as exc:
            logger.warning("cannot look for dead runs beside %s: %s", real, exc)
            return {}, live
        locks: dict[str, tuple[int, Path]] = {}
        making = f"{real.name}-newlock-"
        for name in names:
            if name.startswith(making) and _RUN_ID.fullmatch(name[len(making) :]):
                _remove_stale_newlock(real.parent / name)
                continue
            run_id = name[len(prefix) :]
            if not name.startswith(prefix) or not _RUN_ID.fullmatch(run_id):
                continue
            if run_id == self._run_id and self._run_fd is not None:
                continue  # (this handle's own, live)
            path = real.parent / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (enough for flock)
            except FileNotFoundError:  # (removed meanwhile: recovered by another server)
                continue
            except OSError as exc:
                # Another user's (0o600): its server cannot be told dead, so its rows
                # are not claimed; taken for one removed, a start alone claimed them.
                logger.debug("cannot open the run lock file %s: %s", path, exc)
                live.append(run_id)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # (BlockingIOError: live, or another server recovers it)
                os.close(fd)
                live.append(run_id)
                continue
            locks[run_id] = (fd, path)
        return locks, live

    def _forget_runs(self, locks: dict[str, tuple[int, Path]]) -> None:
        """Let go of dead runs' locks, removing the files of those left with nothing
        to claim (their lock held: a server looking at one at the same time finds
        nothing of the run's to claim, and its own removal finds no file)."""
        for run_id, (fd, path) in locks.items():
            try:
                with self._reading():
                    done = not self._run_has_unclaimed(run_id)
            except ReceiptStoreError:  # (closed meanwhile)
                done = False
            if done:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(fd)


def _remove_stale_newlock(path: Path) -> None:
    """Remove a run's lock file that never got its name (``-newlock-``): left by a
    server killed between making it and renaming it, it would stay for good. Only one
    older than :data:`STALE_NEWLOCK` that nobody holds: a server making its lock file
    now holds it locked (or, in the instant before it locks it, made it just now). Its
    run wrote nothing under it -- a run's rows name the lock file only once renamed."""
    assert fcntl is not None
    try:
        if time.time() - os.stat(path).st_mtime < STALE_NEWLOCK:
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (enough for flock: any owner)
    except OSError:  # (renamed or removed meanwhile)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:  # (BlockingIOError: a server is making it now)
        return
    finally:
        os.close(fd)
    logger.info("removed %s, the lock file of a server that died starting", path)
