"""``dtp daemon --check``: test a config as ``nginx -t`` does, then exit -- every problem
listed, none fixed, nothing created (no state directory, identity or ledger file) and
nothing spent (reads only, and TCP connects closed at once). What it checks, in order,
each line ``ok``, ``note``, ``warning`` or ``PROBLEM``, and its exit statuses:
docs/daemon.md, "Checking a config".
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dtp.daemon._config import Backend, DaemonConfig, ForwardConfig, load_config
from dtp.daemon._paths import not_creatable
from dtp.daemon._reporting import report
from dtp.daemon._state import LOCK_FILE, lock_holder
from dtp.errors import ChainError, DaemonConfigError, DTPError, KeyFileError, MissingExtra
from dtp.identity.keys import HostIdentity, passphrase_from_env
from dtp.ledger.interface import Ledger

__all__ = ["Check", "check_config", "main"]

_LEVELS = {"ok": "ok", "note": "note", "warning": "warning", "problem": "PROBLEM"}


@dataclass
class Check:
    """The findings of one ``--check``: ``(level, subject, text)`` in order."""

    findings: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, level: str, subject: str, text: str) -> None:
        self.findings.append((level, subject, text))

    def made_at_start(self, subject: str, path: Path, made: str) -> None:
        """A ``path`` not there yet: the problem that would stop the first start making
        it, else a note that it does (``made``: how)."""
        why = not_creatable(path)
        if why is not None:
            self.add("problem", subject, why)
        else:
            self.add("note", subject, f"{path} is {made} at the first start")

    @property
    def problems(self) -> list[tuple[str, str, str]]:
        return [f for f in self.findings if f[0] == "problem"]

    def print(self, out: TextIO) -> None:
        width = max(len(v) for v in _LEVELS.values())
        for level, subject, text in self.findings:
            print(f"  {_LEVELS[level]:<{width}}  {subject}: {text}", file=out)


def check_config(config: DaemonConfig, passphrase_env: str = "DTP_PASSPHRASE") -> Check:
    """Every check of the module docs on a config that parsed."""
    check = Check()
    services, forwards = len(config.services), len(config.forwards)
    check.add(
        "ok",
        "config",
        f"{services} service{'s' if services != 1 else ''}, "
        f"{forwards} forward{'s' if forwards != 1 else ''}",
    )
    _extras(config, check)
    running = _state_dir(config, check)
    identity = _identity(config, passphrase_env, check)
    _ledger(config, identity, check)
    if running is None:
        _listeners(config, check)
    _backends(config, check)
    return check


def _extras(config: DaemonConfig, check: Check) -> None:
    settings = config.daemon
    if settings.metrics_listen is not None:
        from dtp.daemon._web import load_metrics

        try:
            load_metrics()
        except MissingExtra as exc:
            check.add("problem", "metrics_listen", str(exc))
        else:
            check.add("ok", "metrics_listen", f"http://{settings.metrics_listen}/")
    if settings.websocket_cert is not None and settings.websocket_key is not None:
        _websocket_tls(settings.websocket_cert, settings.websocket_key, check)
    if settings.log_file is not None:
        target = settings.log_file
        where = target if target.exists() else target.parent
        if not where.exists():
            check.add("problem", "log_file", f"{target.parent} does not exist")
        elif not os.access(where, os.W_OK):
            check.add("problem", "log_file", f"{where} is not writable by this user")
        else:
            check.add(
                "ok",
                "log_file",
                f"{target} (rotated at {settings.log_max_bytes:,} bytes, "
                f"{settings.log_backups} kept)",
            )


def _websocket_tls(cert: Path, key: Path, check: Check) -> None:
    """The certificate ``wss://`` serves: it loads with its key (the config's parse
    checked that once), whom it names, and how long it is valid."""
    from dtp.daemon._ws_tls import EXPIRY_WARNING_DAYS, TlsFileError, read_certificate

    try:
        info = read_certificate(cert, key)
    except TlsFileError as exc:
        check.add("problem", exc.key, str(exc))
        return
    until = info.not_after.strftime("%Y-%m-%d %H:%M UTC")
    days = info.days_left()
    if days < 0:
        check.add("problem", "websocket_cert", f"{cert} expired on {until}: browsers refuse it")
    elif days < EXPIRY_WARNING_DAYS:
        check.add("warning", "websocket_cert", f"{cert} expires on {until}, in {days:.0f} days")
    if not info.names:
        check.add(
            "warning",
            "websocket_cert",
            f"{cert} names no host (no subject alternative name): browsers refuse it",
        )
    if days >= 0:
        chain = f", {info.chain - 1} intermediate(s)" if info.chain > 1 else ""
        check.add(
            "ok",
            "websocket_cert",
            f"wss:// for {', '.join(info.names) or info.subject}, valid until {until}{chain}",
        )


def _state_dir(config: DaemonConfig, check: Check) -> int | None:
    """Check the state directory; the pid of the daemon holding it, if one does."""
    state_dir = config.daemon.state_dir
    if not state_dir.exists():
        check.made_at_start("state_dir", state_dir, "created (0700)")
        return None
    info = state_dir.stat()
    if not stat.S_ISDIR(info.st_mode):
        check.add("problem", "state_dir", f"{state_dir} is not a directory")
        return None
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        check.add(
            "problem",
            "state_dir",
            f"{state_dir} must belong to this user and be writable by no one else "
            f"(mode {stat.filemode(info.st_mode)})",
        )
        return None
    holder = _lock_held(state_dir)
    if holder is not None:
        check.add(
            "note",
            "state_dir",
            f"{state_dir} is in use by a running daemon (pid {holder}): its listen "
            "addresses are not tried",
        )
        return holder
    check.add("ok", "state_dir", str(state_dir))
    return None


def _lock_held(state_dir: Path) -> int | None:
    """The pid holding the state directory's lock, or None when it is free (tried
    without taking it for long: a shared lock, let go at once)."""
    import fcntl

    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return lock_holder(state_dir) or -1
    finally:
        os.close(fd)
    return None


def _identity(config: DaemonConfig, passphrase_env: str, check: Check) -> HostIdentity | None:
    path = config.daemon.identity
    try:
        passphrase = passphrase_from_env(passphrase_env)
    except ValueError as exc:
        check.add("problem", "identity", str(exc))
        return None
    if not path.exists():
        check.made_at_start("identity", path, "generated (0600)")
        return None
    try:
        identity = HostIdentity.load(path, passphrase)
    except KeyFileError as exc:
        hint = (
            f" (set ${passphrase_env})" if passphrase is None and "passphrase" in str(exc) else ""
        )
        check.add("problem", "identity", f"{exc}{hint}")
        return None
    except OSError as exc:
        check.add("problem", "identity", f"cannot read {path}: {exc.strerror or exc}")
        return None
    check.add("ok", "identity", f"{path}: address {identity.sui_address}")
    return identity


def _ledger(config: DaemonConfig, identity: HostIdentity | None, check: Check) -> None:
    from dtp.ledger._open import open_ledger
    from dtp.ledger._spec import resolve_package

    settings = config.daemon
    spec = settings.ledger
    try:
        package = settings.sui_package
        if spec.is_sui:
            package = resolve_package(spec, package, package_setting="sui_package")
        ledger = open_ledger(spec, package=package, create=False)
    except DaemonConfigError as exc:
        if spec.path is not None and not spec.path.exists():
            check.made_at_start("ledger", spec.path, "created")
            for forward in config.forwards:
                check.add("note", f"forward {forward.name}", "target not checked: no ledger yet")
        else:
            check.add("problem", "ledger", str(exc))
        return
    except ChainError as exc:
        check.add("problem", "ledger", str(exc))
        return
    try:
        _ledger_reads(config, ledger, identity, check)
    finally:
        ledger.close()


def _ledger_reads(
    config: DaemonConfig, ledger: Ledger, identity: HostIdentity | None, check: Check
) -> None:
    from dtp.daemon._gas import LOW_GAS_TRANSACTIONS

    settings = config.daemon
    try:
        ledger.clock_ms()
    except (ChainError, OSError) as exc:
        check.add("problem", "ledger", f"{settings.ledger.describe()} cannot be read: {exc}")
        return
    check.add("ok", "ledger", f"{settings.ledger.describe()} answers")
    if identity is not None:
        address = identity.sui_address
        try:
            if settings.ledger.is_sui:
                from dtp.ledger.sui import SuiLedger

                assert isinstance(ledger, SuiLedger)
                balance = ledger.gas_balance(address)
                budget = ledger.config.gas_budget
                low = (
                    settings.low_gas
                    if settings.low_gas is not None
                    else LOW_GAS_TRANSACTIONS * budget
                )
                if balance < budget:
                    check.add(
                        "problem",
                        "gas",
                        f"{address} holds {balance:,} MIST, less than one transaction's "
                        f"budget ({budget:,}): fund it (`dtp fund`, `dtp transfer`)",
                    )
                elif balance < low:
                    check.add("warning", "gas", f"{balance:,} MIST, below low_gas ({low:,})")
                else:
                    check.add("ok", "gas", f"{balance:,} MIST")
            else:
                check.add("ok", "balance", f"{ledger.balance(address):,} MIST")
        except (ChainError, OSError) as exc:
            check.add("problem", "gas", f"cannot read what {address} holds: {exc}")
    if settings.host_id is not None:
        try:
            host = ledger.get_host(settings.host_id)
        except (ChainError, OSError) as exc:
            check.add("problem", "host_id", f"{settings.host_id}: {exc}")
        else:
            if identity is not None and host.authority != identity.sui_address:
                check.add(
                    "problem",
                    "host_id",
                    f"{settings.host_id}'s authority is {host.authority}, not this identity",
                )
            else:
                check.add("ok", "host_id", f"{settings.host_id} exists")
    for forward in config.forwards:
        _target(forward, ledger, check)


def _target(forward: ForwardConfig, ledger: Ledger, check: Check) -> None:
    import asyncio

    from dtp.daemon._outage import TargetUnreachable, probe_target

    subject = f"forward {forward.name}"
    host_id, port = forward.target.host_id, forward.target.port
    try:
        host = ledger.get_host(host_id)
    except (ChainError, OSError) as exc:
        check.add("problem", subject, f"target host {host_id}: {exc}")
        return
    if port not in host.services:
        check.add("problem", subject, f"host {host_id} publishes no service on port {port}")
        return
    try:
        asyncio.run(probe_target(ledger, forward.target, min(5.0, forward.open_timeout)))
    except TargetUnreachable as exc:
        check.add("warning", subject, f"{exc} (the daemon backs off until it answers)")
        return
    except (ChainError, OSError, DTPError) as exc:
        check.add("warning", subject, f"cannot probe the target: {exc}")
        return
    check.add("ok", subject, f"dtp://{host_id}:{port} answers")


def _listeners(config: DaemonConfig, check: Check) -> None:
    settings = config.daemon
    wanted: list[tuple[str, Backend, socket.SocketKind]] = []
    if config.services:
        wanted.append(("listen", settings.listen, socket.SOCK_STREAM))
    if settings.metrics_listen is not None:
        wanted.append(("metrics_listen", settings.metrics_listen, socket.SOCK_STREAM))
    if config.services and settings.websocket_listen is not None:
        wanted.append(("websocket_listen", settings.websocket_listen, socket.SOCK_STREAM))
    for forward in config.forwards:
        kind = socket.SOCK_DGRAM if forward.protocol == "udp" else socket.SOCK_STREAM
        wanted.append((f"forward {forward.name} listen", forward.listen, kind))
    for subject, address, kind in wanted:
        problem = _bind(address, kind)
        if problem is None:
            check.add("ok", subject, f"{address} can be bound")
        else:
            check.add("problem", subject, f"cannot listen on {address}: {problem}")


def _bind(address: Backend, kind: socket.SocketKind) -> str | None:
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=kind, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return str(exc.strerror or exc)
    family, socktype, proto, _, sockaddr = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return str(exc.strerror or exc)
    return None


def _backends(config: DaemonConfig, check: Check) -> None:
    jobs: list[tuple[str, Callable[[], str | None]]] = []
    for service in config.services:
        for backend in service.backends:
            subject = f"service {service.name} backend {backend}"
            if service.protocol == "udp":
                jobs.append((subject, _resolver(backend)))
            else:
                jobs.append((subject, _connector(backend, service.connect_timeout)))
    if not jobs:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        results = list(pool.map(lambda job: job[1](), jobs))
    for (subject, _), problem in zip(jobs, results, strict=True):
        if problem is None:
            check.add("ok", subject, "answers")
        else:
            check.add("problem", subject, problem)


def _connector(backend: Backend, timeout: float) -> Callable[[], str | None]:
    def connect() -> str | None:
        try:
            with socket.create_connection((backend.host, backend.port), timeout=timeout):
                return None
        except TimeoutError:
            return f"no answer within {timeout:g} s (connect_timeout)"
        except OSError as exc:
            return f"cannot connect: {exc.strerror or exc}"

    return connect


def _resolver(backend: Backend) -> Callable[[], str | None]:
    def resolve() -> str | None:
        try:
            socket.getaddrinfo(backend.host, backend.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            return f"cannot resolve {backend.host}: {exc.strerror or exc}"
        return None

    return resolve


def main(config_path: str, passphrase_env: str = "DTP_PASSPHRASE", as_json: bool = False) -> int:
    """Entry point of ``dtp daemon --check``: the findings on stdout, a summary line
    last (``as_json``: one JSON object, ``{"config", "ok", "problems", "findings":
    [{"level", "subject", "text"}]}``, and a failure on stderr as the JSON error every
    command prints with ``--json``: :func:`dtp.daemon._reporting.report`, its ``error``
    ``DaemonConfigError`` for a file with an error, ``ConfigCheckFailed`` for
    problems); exit status 0 (no problem), 1 (problems) or 2 (the file has an error)."""
    try:
        config = load_config(config_path)
    except DaemonConfigError as exc:
        if as_json:
            return report("daemon", 2, exc, as_json=True)
        print(f"dtp daemon: {exc}", file=sys.stderr)
        print(f"dtp daemon: {config_path}: test failed", file=sys.stderr)
        return 2
    if not as_json:
        print(f"dtp daemon: checking {config.path}")
    check = check_config(config, passphrase_env)
    problems = len(check.problems)
    if as_json:
        findings = [{"level": lv, "subject": sub, "text": text} for lv, sub, text in check.findings]
        summary = {"config": str(config.path), "ok": not problems, "problems": problems}
        print(json.dumps({**summary, "findings": findings}, indent=2, sort_keys=True), flush=True)
    else:
        check.print(sys.stdout)
    if problems:
        return report(
            "daemon",
            1,
            f"{config.path}: test failed: {problems} problem{'s' if problems != 1 else ''}",
            as_json=as_json,
            kind="ConfigCheckFailed",
        )
    if not as_json:
        print(f"dtp daemon: {config.path}: test is successful")
    return 0
