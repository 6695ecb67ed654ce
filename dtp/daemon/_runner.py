"""``dtp daemon``: set up the host on the ledger, run the services and forwarders,
reload on SIGHUP, drain on SIGTERM/SIGINT, log structured lines, and print the ready
line once everything listens (what each signal does, at any moment of the start, and
what the ready line holds: docs/daemon.md, "How it works", "Reload (SIGHUP)",
"Shutdown (SIGTERM/SIGINT)" and "Logs").

The signals are caught from the moment ``dtp daemon`` has read its command line
(``dtp.cli._daemon`` installs :class:`StopSignals` before importing this module), or
:func:`main` runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtp.daemon._config import (
    Backend,
    DaemonConfig,
    ServiceConfig,
    join_host_port,
    load_config,
)
from dtp.daemon._fees import ServerFees
from dtp.daemon._forwards import Forwards, bind_failure
from dtp.daemon._gas import GasWatch, warn_prices
from dtp.daemon._host_setup import HostSetup, HostSync
from dtp.daemon._ledger_calls import LedgerCalls, watch_ledger
from dtp.daemon._live import History, live_status
from dtp.daemon._logs import kv, setup_logging
from dtp.daemon._paths import under_a_file
from dtp.daemon._refunds import Refunds
from dtp.daemon._reporting import USAGE_ERROR, report
from dtp.daemon._services import ServiceHost
from dtp.daemon._signals import CAUGHT_SIGNALS, STOP_SIGNALS, LoopSignals, StopSignals
from dtp.daemon._state import (
    CONNECTIONS_FILE,
    CONTROL_SOCKET,
    LOCK_FILE,
    RECEIPTS_FILE,
    StatusBook,
    lock_holder,
    process_identity,
)
from dtp.daemon._status_page import PAGE
from dtp.daemon._systemd import Notifier
from dtp.daemon._tasks import cancel_and_wait
from dtp.daemon._udp_forward import UdpForward
from dtp.daemon._web import StatusEndpoint, load_metrics
from dtp.errors import (
    ChainError,
    DaemonConfigError,
    DTPError,
    KeyFileError,
    MissingExtra,
)
from dtp.eventloop import loop_factory, loop_name
from dtp.identity._files import lock_exclusive
from dtp.identity.keys import HostIdentity, passphrase_from_env
from dtp.ledger._open import open_ledger
from dtp.ledger._spec import resolve_package
from dtp.ledger.interface import Ledger
from dtp.payments._ends import EndRule
from dtp.payments._live_claims import ClaimRule

if TYPE_CHECKING:
    # (ssl for annotations only: it loads where wss:// is served, so a system whose
    # libssl is missing still runs the daemon over TCP and ws://)
    import ssl

    from dtp.daemon._lan import LanAnnouncer

__all__ = ["Daemon", "StopSignals", "main"]

logger = logging.getLogger("dtp.daemon")


def lock_state_dir(config: DaemonConfig) -> int:
    """Create the state directory and take its lock; returns the lock's descriptor.

    Two daemons on one state directory would share its receipt store and host record,
    publish each its own endpoint on the same Host (the later one takes the clients),
    and overwrite each other's status file. The lock is released when the descriptor
    closes, at the latest when the process ends (a killed daemon leaves no stale lock).
    """
    state_dir = config.daemon.state_dir
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        # (by its key and line, as the other settings: "Not a directory: PATH" alone
        # did not say which setting named the path)
        raise config.error(
            ("daemon", "state_dir"), f"cannot create {state_dir}: {exc.strerror or exc}"
        ) from None
    # the directory holds the receipts (earned fees) and the lock: one that another
    # user owns or may write to could hold links planted where the daemon writes
    info = state_dir.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise config.error(
            ("daemon", "state_dir"),
            f"{state_dir} must belong to this user and be writable by no one else "
            f"(mode {stat.filemode(info.st_mode)})",
        )
    try:
        fd = lock_exclusive(state_dir / LOCK_FILE)
    except BlockingIOError:
        holder = lock_holder(state_dir)
        who = f" (pid {holder})" if holder is not None else ""
        raise config.error(
            ("daemon", "state_dir"), f"{state_dir} is in use by another dtp daemon{who}"
        ) from None
    assert fd is not None  # (the daemon runs on POSIX only)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def refuse_paths_under_a_file(config: DaemonConfig) -> None:
    """Raise the config error of a state directory, identity or ledger file that the
    start would create under a file, before anything is made (the key and line, and the
    file in the way, where the write itself says only "File exists")."""
    settings = config.daemon
    wanted = {
        "state_dir": settings.state_dir,
        "identity": settings.identity,
        "ledger": settings.ledger.path,
    }
    for key, path in wanted.items():
        if path is not None and not path.exists():
            why = under_a_file(path)
            if why is not None:
                raise config.error(("daemon", key), why)


#: The environment variable holding the identity file's passphrase, as for the chain
#: commands of the ``dtp`` CLI (``--passphrase-env``).
PASSPHRASE_ENV = "DTP_PASSPHRASE"


class _StartAborted(Exception):
    """A stop was requested while the daemon was starting (raised between two steps of
    the start, never in the middle of one: a ledger call runs to its end)."""


def load_identity(
    path: Path, passphrase: str | None = None, passphrase_env: str = PASSPHRASE_ENV
) -> HostIdentity:
    """The daemon's identity, decrypted with ``passphrase`` when the file is
    encrypted; a new one is generated and saved (encrypted when a passphrase is given)
    on first start. ``passphrase_env`` names the environment variable the passphrase
    came from, for the error about a passphrase that cannot be used."""
    if not path.exists():
        identity = HostIdentity.generate()
        try:
            identity.save(path, passphrase)
        except ValueError as exc:  # a passphrase that is not text (a lone surrogate)
            raise KeyFileError(f"${passphrase_env} cannot be used as a passphrase: {exc}") from None
        logger.info("identity created", extra=kv(path=str(path)))
        return identity
    return HostIdentity.load(path, passphrase)


class Daemon:
    """One daemon process (see the module docs)."""

    def __init__(
        self,
        config: DaemonConfig,
        passphrase: str | None = None,
        passphrase_env: str = PASSPHRASE_ENV,
    ) -> None:
        """Take the state directory's lock and load the identity (``passphrase`` read
        from the environment variable ``passphrase_env``), the ledger and the status."""
        self.config = config
        settings = config.daemon
        # before anything is made: a Sui ledger's package (a missing deploy record is a
        # config error, exit 2, with no state directory or identity left behind)
        package = settings.sui_package
        if settings.ledger.is_sui:
            package = resolve_package(settings.ledger, package, package_setting="sui_package")
        refuse_paths_under_a_file(config)
        # first: a second daemon started at the same moment must not also generate
        # the identity, or touch the ledger on this state's behalf
        self._lock: int | None = lock_state_dir(config)
        try:
            self.identity = load_identity(settings.identity, passphrase, passphrase_env)
            self.ledger: Ledger = open_ledger(settings.ledger, package=package)
            # every call timed and counted, from whichever part of the daemon it comes
            # (the metrics' dtp_ledger_*, the status's ledger health)
            self.ledger_calls = watch_ledger(self.ledger, LedgerCalls())
            self.book = StatusBook.open(settings.state_dir)
        except BaseException:
            self.release_lock()
            raise
        self.gas = self._gas_watch()
        self._gas_task: asyncio.Task[None] | None = None
        self.host_id: str | None = None
        self.services: ServiceHost | None = None
        self.fees: ServerFees | None = None
        self.lan: LanAnnouncer | None = None
        """The services announced on the LAN (``[daemon] lan_announce``)."""
        self.host_setup = HostSetup(self.ledger, self.identity)
        try:
            self.refunds = Refunds(
                self.ledger,
                self.identity,
                settings.state_dir,
                settings.refund_interval,
                gas=self.gas,
                weigh_gas=settings.gas_aware_ends,
            )
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self.ledger.close()
            self.release_lock()
            raise sqlite3.DatabaseError(
                f"cannot open {settings.state_dir / CONNECTIONS_FILE}: {exc}"
            ) from None
        """The book of the connections the forwarders opened, settled by its task."""
        self._refund_task: asyncio.Task[None] | None = None
        self.forwards = Forwards(self.ledger, self.identity, self.book, self.gas, self.refunds)
        self.forwarders = self.forwards.running
        """The forwarders serving each forward now (:attr:`Forwards.running`)."""
        self._stop = asyncio.Event()
        self._stopping = threading.Event()
        """Set with ``_stop``; read by the start's ledger work in its worker thread."""
        self.endpoint: tuple[str, int] | None = None
        self._tls: ssl.SSLContext | None = None
        """The WebSocket listener's TLS context (``websocket_cert``), renewed by reloads."""
        self._reloading = asyncio.Lock()
        """Held by a reload: two at once (SIGHUPs close together) would sync the ledger
        side by side, the slower one failing on what the other had just published, and
        publish the old settings again while the other serves the new ones."""
        self.history = History()
        """The counters' last ten minutes, for the status page's charts."""
        self.notifier = Notifier()
        """The service manager's notify socket (systemd ``Type=notify``), if any."""
        self.web: StatusEndpoint | None = None
        """The control socket and, with ``metrics_listen``, the metrics address."""
        self.phase = "starting"
        """``starting``, ``serving`` or ``stopping`` (``/healthz`` says it)."""

    def _gas_watch(self) -> GasWatch:
        """The watch on what the identity holds: on Sui its gas coins, against the
        ledger's gas budget; on a LocalLedger (no gas) its balance, only shown."""
        address = self.identity.sui_address
        ledger = self.ledger
        if self.config.daemon.ledger.is_sui:
            from dtp.ledger.sui import SuiLedger  # (loaded already: open_ledger made one)

            if isinstance(ledger, SuiLedger):
                sui = ledger
                return GasWatch(
                    address,
                    lambda: sui.gas_balance(address),
                    sui.config.gas_budget,
                    self.book,
                    self.config.daemon.low_gas,
                    spent=lambda: sui.gas_spent(address),
                )
        return GasWatch(
            address,
            lambda: ledger.balance(address),
            0,
            self.book,
            spent=lambda: ledger.gas_spent(address),
        )

    # -- the Host on the ledger ---------------------------------------------------------

    async def _sync(
        self, config: DaemonConfig, endpoint: str, checkpoint: Callable[[], None] | None = None
    ) -> str:
        """Publish the endpoint, key, services and firewall of ``config`` on the ledger
        (only what differs; in a thread, sent again while Sui's congestion control cancels
        it: :meth:`HostSetup.sync_retried`); returns the host ID."""
        return await self.host_setup.sync_retried(
            HostSync(self.config, config, endpoint, self.host_id, checkpoint)
        )

    # -- running ---------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Between two steps of the start: raise :class:`_StartAborted` once a stop was
        requested (safe from the start's worker threads too)."""
        if self._stopping.is_set():
            raise _StartAborted

    async def start(self) -> dict[str, Any]:
        """Set up and start listening; returns the ready record. A stop requested
        meanwhile (:meth:`request_stop`) ends it at the next step with
        :class:`_StartAborted`; what was started is for :meth:`drain` to stop."""
        settings = self.config.daemon
        ready: dict[str, Any] = {
            "event": "ready",
            "pid": os.getpid(),
            "process": process_identity(os.getpid()),
            "address": self.identity.sui_address,
            # which loop serves ([daemon] event_loop: uvloop when installed, by default)
            "event_loop": loop_name(),
        }
        # the status file names this process from the first save on, a stop while
        # starting included (it otherwise kept the previous run's pid)
        self.book.info.update(ready, config=str(self.config.path))
        self.book.info.pop("event", None)
        # first: the live status (dtp status) and the metrics from the start on, a slow
        # one (a Host's set-up on Sui, many transactions) included
        metrics = await self._serve_status()
        if metrics is not None:
            ready["metrics"] = metrics
        self._checkpoint()
        await asyncio.to_thread(self.host_setup.fund, settings.faucet)
        self._checkpoint()
        # (read before the host's set-up: a daemon that cannot pay for it says why,
        # and one running low warns from its first line)
        await self.gas.check(fresh=True)
        self._gas_task = asyncio.ensure_future(self.gas.run())
        # the forwarders' connections a previous run left are looked at from the start:
        # settled once their half-close timeout has passed, with no command typed
        self._refund_task = asyncio.ensure_future(self.refunds.run())
        self._checkpoint()
        if self.config.services:
            self.services = ServiceHost(
                self.ledger,
                self.identity,
                self.book,
                open_grace=settings.open_grace,
                gas=self.gas,
            )
            await self.services.configure(self.config.services)
            try:
                self.endpoint = await self.services.start(
                    settings.listen.host,
                    settings.listen.port,
                    idle_timeout=settings.connection_idle_timeout,
                )
            except OSError as exc:
                raise _bind_error(self.config, ("daemon", "listen"), settings.listen, exc) from None
            if settings.websocket_listen is not None:
                address = settings.websocket_listen
                tls = self._websocket_tls()
                try:
                    bound = await self.services.listen_websocket(
                        address.host, address.port, settings.websocket_origins, ssl=tls
                    )
                except OSError as exc:
                    key = ("daemon", "websocket_listen")
                    raise _bind_error(self.config, key, address, exc) from None
                ready["websocket"] = join_host_port(*bound)
                scheme = "wss" if tls is not None else "ws"
                ready["websocket_url"] = f"{scheme}://{join_host_port(*bound)}/"
            public = settings.public_endpoint or join_host_port(*self.endpoint)
            self.host_id = await self._sync(self.config, public, self._checkpoint)
            self._checkpoint()
            receipts = settings.state_dir / RECEIPTS_FILE
            try:
                self.fees = ServerFees(
                    self.ledger,
                    self.identity,
                    self.host_id,
                    receipts,
                    gas=self.gas,
                    rule=EndRule(settings.gas_aware_ends, settings.batch_window),
                    claims=ClaimRule(
                        settings.claim_above,
                        settings.claim_age,
                        settings.claim_interval,
                        settings.gas_aware_ends,
                    ),
                )
            except sqlite3.Error as exc:
                if isinstance(exc, DTPError):  # a ReceiptStoreError: it names the file
                    raise
                # SQLite's own message ("file is not a database") names no file
                raise sqlite3.DatabaseError(
                    f"cannot open the receipt store {receipts}: {exc}"
                ) from None
            self.services.host_id = self.host_id
            self.services.fees = self.fees
            self.services.settlements.start_claims()
            await self._warn_prices(self.config.services)
            await self._claim_leftovers()
            self._checkpoint()
            ready["host_id"] = self.host_id
            ready["endpoint"] = public
            if settings.lan_announce:
                # (imported here: mDNS comes with the lan extra, which the config checked)
                from dtp.daemon._lan import LanAnnouncer

                self.lan = LanAnnouncer(
                    self.identity.noise_public,
                    self.host_id,
                    self.endpoint,
                    settings.lan_interfaces,
                )
                await self.lan.configure(self.config.services)
                ready["lan"] = sorted(a.name for _, a in self.lan.announced.values())
        _refuse_loops(self.config, self.host_id)
        forwards: dict[str, str] = {}
        # which forwards are UDP: a key of its own, so that "forwards" stays name ->
        # address for the readers of the ready line that know no protocols
        protocols: dict[str, str] = {}
        for i, forward in enumerate(self.config.forwards):
            self._checkpoint()
            try:
                forwards[forward.name] = await self.forwards.start(forward)
            except OSError as exc:
                raise _bind_error(
                    self.config, ("forward", i, "listen"), forward.listen, exc
                ) from None
            protocols[forward.name] = forward.protocol
        self._checkpoint()
        ready["forwards"] = forwards
        ready["forward_protocols"] = protocols
        self.book.info.update(ready, started=time.time(), config=str(self.config.path))
        self.book.info.pop("event", None)
        # read again after the Host's set-up and the leftovers' claims, which paid gas:
        # the read before them was `dtp status`'s gas for up to GAS_CHECK (30 s) after
        # the ready line, more than the daemon then held
        await self.gas.check(fresh=True)
        self.gas.show_spent()  # (the Host's set-up, the leftovers' claims)
        self.book.save(force=True)
        return ready

    async def _serve_status(self) -> str | None:
        """Open the control socket (``<state_dir>/control.sock``: a failure is logged,
        ``dtp status`` then reads the file) and, with ``metrics_listen``, the metrics
        address (a bind failure is the config error it is fixed by); returns the bound
        metrics address, if any."""
        settings = self.config.daemon
        if settings.metrics_listen is not None:
            render = load_metrics()(self).render  # (prometheus_client: checked by main())
        else:
            # (the control socket's /metrics: prometheus_client loaded at the first ask,
            # if it is installed at all -- a daemon without metrics_listen never pays)
            loaded: list[Callable[[str | None], tuple[bytes, str]]] = []

            def render(accept: str | None) -> tuple[bytes, str]:
                if not loaded:
                    loaded.append(load_metrics()(self).render)
                return loaded[0](accept)

        self.web = StatusEndpoint(
            lambda: live_status(self),
            self.history.to_json,
            render,
            PAGE,
            healthy=lambda: self.phase,
        )
        try:
            await self.web.listen_unix(settings.state_dir / CONTROL_SOCKET)
        except OSError as exc:
            logger.warning(
                "no control socket: dtp status reads the status file",
                extra=kv(path=str(settings.state_dir / CONTROL_SOCKET), error=str(exc)),
            )
        if settings.metrics_listen is None:
            return None
        address = settings.metrics_listen
        try:
            host, port = await self.web.listen_tcp(address.host, address.port)
        except OSError as exc:
            raise _bind_error(self.config, ("daemon", "metrics_listen"), address, exc) from None
        bound = join_host_port(host, port)
        logger.info("metrics and status page", extra=kv(address=f"http://{bound}/"))
        return bound

    def status_line(self) -> str:
        """One line for the service manager's ``STATUS=``: what serves."""
        services = len(self.config.services)
        forwards = len(self.forwarders)
        active = sum(row.active_tunnels for row in self.book.services.values())
        return (
            f"serving {services} service{'s' if services != 1 else ''}, "
            f"{forwards} forward{'s' if forwards != 1 else ''}; {active} tunnels open"
        )

    async def _warn_prices(self, services: Sequence[ServiceConfig]) -> None:
        """Warn about the paid services whose prices cannot cover the gas of a typical
        connection's end (:func:`dtp.daemon._gas.warn_prices`); on a LocalLedger (no gas)
        nothing is said."""
        if not any(s.paid for s in services):
            return
        try:
            gas = await asyncio.to_thread(self.ledger.end_gas)
        except ChainError as exc:
            logger.info("cannot weigh the prices against the gas", extra=kv(error=str(exc)))
            return
        warn_prices(services, gas)

    async def _claim_leftovers(self) -> None:
        assert self.services is not None
        # a stop ends the claims between two connections: the rest stay in the store
        # for the next start. Counted by the service host, as every settlement (here, a
        # connection of a service no longer configured, or whose state could not be read
        # again afterwards, was claimed and not counted); one that fails is tried again
        leftovers = await self.services.claim_leftovers(self._stopping.is_set)
        for connection_id, settled in leftovers:
            if settled.done:
                logger.info(
                    "claimed after restart",
                    extra=kv(
                        connection=connection_id,
                        **settled.moved,
                    ),
                )

    async def reload(self) -> None:
        """Re-read the config file; keep open tunnels. A bad file changes nothing. One
        reload at a time: another waits for the one under way to end."""
        async with self._reloading:
            self.notifier.reloading()
            try:
                await self._reload()
            finally:
                self.notifier.reloaded(self.status_line())

    def _websocket_tls(self) -> ssl.SSLContext | None:
        """The TLS context of the WebSocket listener (``websocket_cert``), kept for the
        reloads to renew; None for ``ws://``."""
        settings = self.config.daemon
        if settings.websocket_cert is None or settings.websocket_key is None:
            return None
        from dtp.daemon._ws_tls import TlsFileError, server_context

        try:
            context, info = server_context(settings.websocket_cert, settings.websocket_key)
        except TlsFileError as exc:
            raise self.config.error(("daemon", exc.key), str(exc)) from None
        self._tls = context
        logger.info(
            "websocket certificate",
            extra=kv(subject=info.subject, names=list(info.names), not_after=str(info.not_after)),
        )
        return context

    async def _renew_websocket_tls(self) -> None:
        """A reload reads the certificate and key again (the paths as started): a renewed
        certificate serves the connections accepted from now on; files that do not serve
        are logged and the certificate in force kept. (Checked in a worker thread; loaded
        on the loop's, which makes the TLS connections from the context.)"""
        settings = self.config.daemon
        cert, key = settings.websocket_cert, settings.websocket_key
        if self._tls is None or cert is None or key is None:
            return
        from dtp.daemon._ws_tls import TlsFileError, load, read_certificate

        try:
            info = await asyncio.to_thread(read_certificate, cert, key)
            load(self._tls, cert, key)
        except TlsFileError as exc:
            logger.error(
                "websocket certificate not renewed: the one in force is kept",
                extra=kv(error=str(exc)),
            )
            return
        logger.info(
            "websocket certificate read again",
            extra=kv(subject=info.subject, not_after=str(info.not_after)),
        )

    async def _reload(self) -> None:
        await self._renew_websocket_tls()
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except DaemonConfigError as exc:
            logger.error("reload refused", extra=kv(error=str(exc)))
            return
        if new.daemon != self.config.daemon:
            logger.warning("[daemon] changes take effect at the next restart")
        if bool(new.services) != bool(self.config.services):
            logger.warning("adding the first or removing the last service needs a restart")
            new = _replace_services(new, self.config.services)
        try:
            _refuse_loops(new, self.host_id)
        except DaemonConfigError as exc:
            logger.error("reload refused", extra=kv(error=str(exc)))
            return
        if self.services is not None and self.endpoint is not None:
            public = self.config.daemon.public_endpoint or join_host_port(*self.endpoint)
            try:
                await self._sync(new, public)
            except ChainError as exc:
                logger.error("reload refused by the ledger", extra=kv(error=str(exc)))
                # the transactions before the refused one stay: a service published
                # that is not served (clients paid deposits into connections refused at
                # once), a firewall half changed. The settings still served go back
                await self._republish(public)
                return
            await self.services.configure(new.services)
            if self.lan is not None:
                await self.lan.configure(new.services)
            old = {s.name: _prices(s) for s in self.config.services}
            await self._warn_prices([s for s in new.services if old.get(s.name) != _prices(s)])
        running = await self.forwards.reload(self.config.forwards, new.forwards)
        # what runs, not what the file says: a forward that kept its old listener is
        # compared against its old settings at the next reload, which then retries it;
        # and [daemon] as started (taking the file's made a public_endpoint, drain_timeout
        # … changed "for the next restart" apply from the next reload on)
        self.config = replace(new, daemon=self.config.daemon, forwards=running)
        # (the ready line's copy in the status file: the forwards now running)
        self.book.info["forward_protocols"] = {f.name: f.protocol for f in running}
        self.book.info["reloaded"] = time.time()
        self.book.touch()
        logger.info(
            "reloaded",
            extra=kv(services=len(new.services), forwards=len(new.forwards)),
        )

    async def _republish(self, public: str) -> None:
        """Publish the settings in force again, after a reload the ledger refused
        part-way."""
        try:
            await self._sync(self.config, public)
        except ChainError as exc:
            logger.error(
                "the ledger keeps part of the refused reload until the next one",
                extra=kv(error=str(exc)),
            )
            return
        logger.info("the settings in force are published again")

    def request_stop(self) -> None:
        self._stopping.set()
        self._stop.set()

    async def run(self, signals: StopSignals | None = None) -> None:
        """Start, then serve until asked to stop; drains before returning.

        SIGTERM/SIGINT and SIGHUP are handled from the first moment, those ``signals``
        caught before the loop ran included: a stop while starting ends the start at
        its next step and stops what it had started (then returns, as after a drain);
        a SIGHUP while starting is one reload once ready. A start that fails stops
        what it had started too, then raises."""
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()
        phase = "starting"  # then "serving", "stopping"
        reload_due = False
        reloading = False  # a reload task runs (until its last step)
        reload_again = False  # a SIGHUP came while it ran

        async def reload() -> None:
            nonlocal reloading, reload_again
            try:
                while True:
                    reload_again = False
                    try:
                        await self.reload()
                    except Exception as exc:
                        # the daemon keeps serving; without this the error would only
                        # surface as asyncio's "Task exception was never retrieved"
                        logger.error(
                            "reload failed", extra=kv(error=f"{type(exc).__name__}: {exc}")
                        )
                    if not reload_again:
                        return
                    if phase != "serving":
                        logger.warning("reload ignored: the daemon is stopping")
                        return
            finally:
                reloading = False

        def on_stop() -> None:
            if phase == "starting" and not self._stop.is_set():
                logger.info("stop requested while starting")
            self.request_stop()

        def on_hup() -> None:
            nonlocal reload_due, reloading, reload_again
            if phase == "starting":
                # SIGHUP's default action killed the daemon here; the file may have
                # changed since it was read: read again once ready
                reload_due = True
                logger.info("reload deferred: the daemon is starting")
            elif phase == "stopping":
                logger.warning("reload ignored: the daemon is stopping")
            elif reloading:
                # one under way: the file is read once more when it ended (any number of
                # SIGHUPs meanwhile are one reload, of the file as it is then). Two at
                # once synced the ledger side by side (see Daemon.reload)
                reload_again = True
            else:
                reloading = True
                task = loop.create_task(reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

        # a second SIGTERM while draining is ignored (the action only sets the event);
        # so is SIGHUP. The signals keep Python handlers to the end of the process
        # (LoopSignals): a default action put back while it shut down killed it
        actions: dict[int, Callable[[], None]] = {sig: on_stop for sig in STOP_SIGNALS}
        actions[signal.SIGHUP] = on_hup
        watch = LoopSignals(loop, actions, signals)
        watch.start()
        # (from the first moment, the start too: on Sui a first start may take longer
        # than the manager's WatchdogSec)
        pinger = loop.create_task(self._watchdog()) if self.notifier.watchdog else None
        try:
            # (after the start: a signal in between is seen twice, which a stop and a
            # reload while starting take as one, rather than not at all)
            if signals is not None:
                if signals.stop is not None:
                    on_stop()
                if signals.reload:
                    on_hup()
            try:
                ready: dict[str, Any] | None = await self.start()
            except _StartAborted:
                ready = None
            except Exception:
                phase = self.phase = "stopping"
                self.notifier.stopping("start failed")
                await self._abandon_start()
                raise
            if ready is None or self._stop.is_set():
                phase = self.phase = "stopping"
                self.notifier.stopping("stopping before ready")
                logger.info("stopping before ready")
                await self.drain()
                return
            phase = self.phase = "serving"
            # only now: a script may signal the moment it reads the line
            print(json.dumps(ready), flush=True)
            logger.info("ready", extra=kv(**{k: v for k, v in ready.items() if k != "event"}))
            shown = self.status_line()
            self.notifier.ready(shown)
            if reload_due:
                on_hup()
            try:
                while not self._stop.is_set():
                    self.refresh_live()
                    self.book.save()
                    self.history.sample(self)
                    if (line := self.status_line()) != shown:
                        shown = line
                        self.notifier.status(line)
                    # (asyncio.timeout, not wait_for: 3.11's wait_for drops a cancel of
                    # run() that arrives as the stop is set, and run() drained and
                    # returned as if not cancelled)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await self._stop.wait()
            finally:
                phase = self.phase = "stopping"
                self.notifier.stopping()
                # a reload still running would start listeners the drain never sees, or
                # use the ledger after it is closed: it finishes first (not cancelled:
                # its ledger calls run in threads, which a cancel would not stop)
                if reloads:
                    await asyncio.wait(set(reloads))
                await self.drain()
        finally:
            if pinger is not None:
                await cancel_and_wait(pinger)
            self.notifier.close()
            watch.stop()

    async def _abandon_start(self) -> None:
        """After a failed start: stop what it had started (listeners, health checks, the
        receipt writer, connections admitted meanwhile, settled) and close the ledger.
        The status file is left as it was: this daemon never ran."""
        try:
            await self._shut_down(self.config.daemon.drain_timeout)
        except Exception as exc:  # the start's own error is the one to report
            logger.warning(
                "start failed; stopping what it started failed too",
                extra=kv(error=f"{type(exc).__name__}: {exc}"),
            )
        finally:
            if self.web is not None:
                self.web.abort()
                self.web = None
            with contextlib.suppress(Exception):
                self.ledger.close()
            self.release_lock()

    async def _watchdog(self) -> None:
        """``WATCHDOG=1`` to the service manager at half its period, from this loop: a
        loop that hangs stops it (:class:`dtp.daemon._systemd.Notifier`)."""
        assert self.notifier.watchdog is not None
        while True:
            self.notifier.ping()
            await asyncio.sleep(self.notifier.watchdog)

    def refresh_live(self) -> None:
        """Bring the live counters up to date (backends healthy, UDP forwards' counts)."""
        for fwd in self.forwarders.values():
            if isinstance(fwd, UdpForward):
                fwd.refresh()
        if self.services is None:
            return
        for port, pool in self.services.pools.items():
            service = self.services.services.get(port)
            if service is not None:
                row = self.book.services.get(service.name)
                if row is not None and row.healthy_backends != pool.healthy_count:
                    row.healthy_backends = pool.healthy_count
                    self.book.touch()

    async def drain(self) -> None:
        """Graceful shutdown: stop accepting, let tunnels finish (up to
        ``drain_timeout``), settle every connection, save the status."""
        timeout = self.config.daemon.drain_timeout
        logger.info("draining", extra=kv(timeout=timeout))
        try:
            await self._shut_down(timeout)
        finally:
            # also when the shut-down is cut short (cancelled): else the ledger stays open
            # and the state directory locked, for another daemon of this process too
            if self.web is not None:  # (the shut-down cut short)
                self.web.abort()
                self.web = None
            try:
                self.book.info["stopped"] = time.time()
                self.gas.show_spent()  # (everything this run paid, its last ends too)
                self.book.save(force=True)
            finally:
                self.ledger.close()
                self.release_lock()
        logger.info("stopped")

    async def _shut_down(self, timeout: float) -> None:
        """Stop listening, give tunnels ``timeout`` seconds, settle every connection,
        close the receipt store: whatever of it was started."""
        forwarders = [*self.forwarders.values(), *self.forwards.retired]
        if self.lan is not None:
            # (first: clients on the LAN stop coming as the listener goes)
            await self.lan.stop()
        for fwd in forwarders:
            fwd.stop_listening()
        if self.services is not None:
            self.services.stop_listening()
        # each forwarder's failure logged, not let out: the shut-down goes on to the
        # services' drain (their settlements) and what follows it, whatever one raises
        drained = await asyncio.gather(
            *(f.drain(timeout) for f in forwarders), return_exceptions=True
        )
        for fwd, outcome in zip(forwarders, drained, strict=True):
            # (a CancelledError here is the forward's own: gather raises ours itself)
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, (Exception, asyncio.CancelledError)
            ):
                raise outcome  # (the process is ending)
            if isinstance(outcome, BaseException):
                logger.error(
                    "draining a forward failed",
                    extra=kv(forward=fwd.config.name, error=f"{type(outcome).__name__}: {outcome}"),
                    exc_info=outcome,
                )
        if self.services is not None:
            try:
                await self.services.drain(timeout)
            except Exception as exc:
                # (its firewall watcher died of a ledger's surprise, say) caught: the
                # shut-down goes on to the fees' close -- the receipt writer's last
                # receipts -- the status save, the ledger's close and the lock's release
                logger.error(
                    "draining the services failed",
                    extra=kv(error=f"{type(exc).__name__}: {exc}"),
                    exc_info=exc,
                )
        if self.fees is not None:
            self.fees.close()
            self.fees = None
        refunding, self._refund_task = self._refund_task, None
        if refunding is not None and (error := await cancel_and_wait(refunding)) is not None:
            logger.warning("refunds failed", extra=kv(error=f"{type(error).__name__}: {error}"))
        self.refunds.close()  # (what it did not settle, the next start does)
        gas, self._gas_task = self._gas_task, None
        if gas is not None and (error := await cancel_and_wait(gas)) is not None:
            logger.warning("gas watch failed", extra=kv(error=f"{type(error).__name__}: {error}"))
        # last: the live status and the metrics showed the drain to its end
        web, self.web = self.web, None
        if web is not None:
            await web.close()

    def release_lock(self) -> None:
        """Let another daemon use the state directory (once stopped)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _bind_error(
    config: DaemonConfig, key: tuple[str | int, ...], address: Backend, exc: OSError
) -> DaemonConfigError:
    """A listen address that cannot be bound (in use, unknown host), reported as the
    config error it is fixed by."""
    return config.error(key, f"cannot listen on {address}: {bind_failure(exc)}")


_ANY = {"", "0.0.0.0", "::"}
_LOOPBACK = {"localhost", "::1", "ip6-localhost"}


def _same_socket(listen: Backend, backend: Backend) -> bool:
    """Whether connecting to ``backend`` reaches a listener bound to ``listen`` (same
    port; same host, or a wildcard listen, or loopback both)."""
    if listen.port != backend.port:
        return False
    if listen.host == backend.host or listen.host in _ANY:
        return True

    def loopback(host: str) -> bool:
        return host in _LOOPBACK or host.startswith("127.")

    return loopback(listen.host) and loopback(backend.host)


def _refuse_loops(config: DaemonConfig, host_id: str | None) -> None:
    """Raise the config error of a forward that targets a service of this very daemon
    whose backend is that forward's own listener: each tunnel would open another
    through itself, without end (one client connection ran the daemon out of file
    descriptors within seconds)."""
    if host_id is None:
        return
    ports = {s.port: s for s in config.services}
    for i, forward in enumerate(config.forwards):
        service = ports.get(forward.target.port)
        if forward.target.host_id != host_id or service is None:
            continue
        if service.protocol == forward.protocol and any(
            _same_socket(forward.listen, b) for b in service.backends
        ):
            raise config.error(
                ("forward", i, "target"),
                f"{forward.target} is service {service.name!r} of this daemon, whose "
                f"backend is this forward's own listen address {forward.listen}: a loop",
            )


def _prices(service: ServiceConfig) -> tuple[int, int]:
    return service.price_per_kib, service.price_per_request


def _replace_services(config: DaemonConfig, services: tuple[ServiceConfig, ...]) -> DaemonConfig:
    return replace(config, services=services)


def main(
    config_path: str,
    log_format: str | None = None,
    passphrase_env: str = PASSPHRASE_ENV,
    *,
    exiting: bool = False,
    signals: StopSignals | None = None,
    as_json: bool = False,
) -> int:
    """Entry point of ``dtp daemon``; returns the exit status. The identity's passphrase,
    if it has one, is read from the environment variable ``passphrase_env``.

    SIGTERM, SIGINT and SIGHUP are caught from here on (:class:`StopSignals`), or from
    before when the caller installed ``signals`` (``dtp daemon`` does, before importing
    this module): a stop before the daemon is ready ends its start cleanly, with exit
    status 0. On return their handlers are put back, or, when ``exiting`` (the process
    ends next: ``dtp daemon``), the signals are ignored for the rest of the process's
    life. ``as_json``: a failure is reported as one JSON object on stderr
    (:func:`dtp.daemon._reporting.report`), as ``dtp daemon --json`` asks."""
    if signals is None:
        signals = StopSignals()
        signals.install()
    try:
        fail = partial(report, "daemon", as_json=as_json)
        return _main(config_path, log_format, passphrase_env, signals, fail)
    finally:
        if exiting:
            signals.ignore()
        else:
            signals.restore()


def _main(
    config_path: str,
    log_format: str | None,
    passphrase_env: str,
    signals: StopSignals,
    fail: Callable[..., int],
) -> int:
    try:
        config = load_config(config_path)
    except DaemonConfigError as exc:
        return fail(2, exc)
    settings = config.daemon
    if settings.metrics_listen is not None:
        try:
            load_metrics()
        except MissingExtra as exc:
            return fail(2, config.error(("daemon", "metrics_listen"), str(exc)))
    try:
        setup_logging(
            log_format or settings.log_format,
            settings.log_level,
            settings.log_file,
            settings.log_max_bytes,
            settings.log_backups,
        )
    except OSError as exc:
        return fail(2, config.error(("daemon", "log_file"), f"cannot open it: {_os_error(exc)}"))
    if signals.stop is not None:
        # nothing is started yet, nor the state directory taken
        logger.info("stopped before start", extra=kv(signal=signal.Signals(signals.stop).name))
        return 0
    try:
        passphrase = passphrase_from_env(passphrase_env)
    except ValueError as exc:  # (set but empty)
        return fail(2, exc, kind=USAGE_ERROR)
    try:
        daemon = Daemon(config, passphrase, passphrase_env)
    except DaemonConfigError as exc:  # the state directory in use, a path under a file
        return fail(2, exc)
    except KeyFileError as exc:
        hint = (
            f" (set ${passphrase_env})" if passphrase is None and "passphrase" in str(exc) else ""
        )
        return fail(1, f"{exc}{hint}", kind=type(exc).__name__)
    except ChainError as exc:
        return fail(1, exc)
    except OSError as exc:  # the state directory
        return fail(1, _os_error(exc), kind=type(exc).__name__)

    async def go() -> None:
        asyncio.get_running_loop().set_default_executor(_signal_free_executor())
        await daemon.run(signals)

    # (checked with the config: "uvloop" without it installed is refused there)
    runner = asyncio.Runner(loop_factory=loop_factory(settings.event_loop))
    try:
        runner.run(go())
    except DaemonConfigError as exc:
        return fail(2, exc)
    except (ChainError, KeyFileError) as exc:
        return fail(1, exc)
    except OSError as exc:
        return fail(1, _os_error(exc), kind=type(exc).__name__)
    except sqlite3.Error as exc:  # the ledger or the receipt store, while running
        return fail(1, f"database error: {exc}", kind=type(exc).__name__)
    finally:
        _close_keeping_signals(runner, signals)
        daemon.release_lock()  # a failed start never reached drain()
    return 0


def _signal_free_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The daemon loop's default executor (``to_thread`` and friends): its workers block
    SIGTERM, SIGINT and SIGHUP from their start. Python runs signal handlers in the main
    thread whatever thread the kernel picks, so nothing is lost. (Needed while the loop's
    own handlers put the default actions back at its close, when a worker just joined
    could take a SIGTERM: -15; since :class:`LoopSignals` a second line of defence.)"""
    return concurrent.futures.ThreadPoolExecutor(
        # ledger calls wait on the ledger, not the CPU: on Sui each holds a worker for
        # its round trips to the node (a transaction: seconds under load), and the
        # default pool (cores + 4) let a few settlements hold up every admission
        max_workers=32,
        thread_name_prefix="dtp-daemon-worker",
        initializer=signal.pthread_sigmask,
        initargs=(signal.SIG_BLOCK, CAUGHT_SIGNALS),
    )


def _close_keeping_signals(runner: asyncio.Runner, signals: StopSignals) -> None:
    """Close the daemon's event loop, ``signals`` recording the three signals across it.

    The loop has no signal handlers of its own to remove (:class:`LoopSignals`): its
    close leaves the signals' Python handlers in place. They are installed once more
    all the same, should anything the loop ran have changed them: a default action back
    then would end a process still shutting down."""
    runner.close()
    signals.install()


def _os_error(exc: OSError) -> str:
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return exc.strerror or str(exc)
