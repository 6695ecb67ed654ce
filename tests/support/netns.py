"""Two machines on one host: a pair of network namespaces for the cross-machine tests.

The two-machine tests need **root and iproute2** (``ip``; ``tc`` too for
:meth:`TwoMachines.impair`). Without them the ``netns`` fixture (tests/conftest.py)
skips with the reason; CI runs them as root. ``scripts/bootstrap.sh`` installs iproute2
when ``ip`` is missing.

Layout of one harness, all inside one /24 of 10.64.0.0/10 chosen from the pid (and
stepped past any range the host already routes)::

        namespace A  dtp-a-<pid>-<n>              namespace B  dtp-b-<pid>-<n>
      to-b   .1/30  ========= A-B veth ========  .2/30   to-a
      uplink .6/30                               .10/30  uplink
           ||                                       ||
      .5/30 dtp<pid>-<n>a   root namespace   dtp<pid>-<n>b .9/30
           `------- root_address .254/32 on both --------'

Each namespace has ``lo`` up, its own end of the A-B link and an uplink to the root
namespace, with one route: ``root_address`` via the uplink. So a process in the root
namespace (the test itself, a ledger node) bound to ``root_address`` (or to 0.0.0.0) is
reachable from both at that one address, while A and B reach each other only over
their own link. Nothing is routed *through* the root namespace: it only ever answers
its own packets, so IP forwarding (off by default, and per namespace) is left alone.

:func:`lan` makes another layout: machines on one Ethernet segment, for what needs a
LAN (multicast: mDNS discovery). Each machine namespace ``dtp-l<i>-<pid>-<n>`` has
``lo`` and one interface, ``eth0`` at ``.<i+1>/24``, whose other end is a port of the
bridge ``br0`` in a namespace of its own, the switch ``dtp-s-<pid>-<n>``. The bridge
floods multicast to every port (its IGMP snooping is off), so an mDNS packet one
machine sends reaches all the others, as on a LAN; nothing reaches the root namespace.

Cleanup (:meth:`TwoMachines.close`, run by :func:`two_machines` however its block
ends) kills every process inside the namespaces, deletes the root-side veth ends
(which takes their peers with them) and then the namespaces. A run killed outright
(SIGKILL, a crash) leaves its namespaces behind: the next :func:`two_machines` deletes
every ``dtp-a-*``/``dtp-b-*`` namespace (and :func:`lan`'s) and ``dtp*`` veth whose pid is
no longer alive.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# 10.64.0.0/10 holds 16384 /24s; one per harness, picked from the pid.
_POOL = ipaddress.IPv4Network("10.64.0.0/10")
_NAMESPACE = re.compile(r"^dtp-(?:[ab]|l\d+|s)-(\d+)-(\d+)$")
_ROOT_LINK = re.compile(r"^dtp(\d+)-(\d+)[ab]$")
_sequence = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command of the harness failed (the message holds its stderr)."""


class NetnsUnavailable(NetnsError):
    """This machine cannot make network namespaces (not root, no iproute2, no privilege)."""


class LinkImpairmentUnavailable(NetnsError):
    """``tc`` or the kernel's netem qdisc (sch_netem) is missing, so links cannot be impaired."""


class _Stoppable(Protocol):
    def kill(self) -> None: ...


_P = TypeVar("_P", bound=_Stoppable)


def unavailable() -> str | None:
    """Why the two-machine tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "the two-machine tests need root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "the two-machine tests need iproute2's `ip` (scripts/bootstrap.sh installs it)"
    return None


def in_namespace(namespace: str, cmd: Sequence[str]) -> list[str]:
    """``cmd`` run inside ``namespace``: ``ip netns exec`` replaces itself with the command,
    so the process started is the command itself (its pid, its exit status)."""
    return ["ip", "netns", "exec", namespace, *cmd]


def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")
    return result


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    prefix = ["ip"] if namespace is None else ["ip", "-n", namespace]
    return _run([*prefix, *args], check=check).stdout


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _ip("-j", *args).strip()
    return json.loads(out) if out else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def namespaces() -> list[str]:
    """The names ``ip netns list`` shows."""
    return [str(entry["name"]) for entry in _ip_json("netns", "list")]


def root_links() -> list[str]:
    """The interface names of the root namespace."""
    return [str(entry["ifname"]) for entry in _ip_json("link", "show")]


def _kill_inside(namespace: str) -> None:
    # every process in one of our namespaces was started by the harness's user: a test
    result = _run(["ip", "netns", "pids", namespace], check=False)
    for pid in result.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _delete_namespace(namespace: str) -> None:
    _kill_inside(namespace)
    result = _run(["ip", "netns", "delete", namespace], check=False)
    if result.returncode != 0 and namespace in namespaces():
        raise NetnsError(f"cannot delete namespace {namespace}: {result.stderr.strip()}")


def _delete_root_link(name: str) -> None:
    result = _run(["ip", "link", "delete", name], check=False)
    if result.returncode != 0 and name in root_links():
        raise NetnsError(f"cannot delete interface {name}: {result.stderr.strip()}")


def remove_stale() -> list[str]:
    """Delete the namespaces and root-side veths left by harnesses whose process is gone
    (named after a pid no longer alive); returns what was deleted."""
    removed = []
    for link in root_links():
        found = _ROOT_LINK.match(link)
        if found and not _alive(int(found.group(1))):
            _delete_root_link(link)
            removed.append(link)
    for namespace in namespaces():
        found = _NAMESPACE.match(namespace)
        if found and not _alive(int(found.group(1))):
            _delete_namespace(namespace)
            removed.append(namespace)
    return removed


def _routed_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination the root namespace routes, the default route aside."""
    nets = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", "default"))
        if dst != "default":
            nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def _pick_subnet(pid: int, sequence: int) -> ipaddress.IPv4Network:
    subnets = 1 << (24 - _POOL.prefixlen)
    taken = _routed_networks()
    start = (pid * 8 + sequence) % subnets
    for step in range(subnets):
        index = (start + step) % subnets
        candidate = ipaddress.IPv4Network((int(_POOL.network_address) + (index << 8), 24))
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NetnsError(f"every /24 of {_POOL} is routed already; no room for a namespace pair")


@dataclass(frozen=True)
class Machine:
    """One network namespace standing for one machine."""

    name: str
    """The namespace's name (``ip netns exec <name> …``)."""
    address: str
    """Its address on the A-B link: where the other machine reaches it."""
    link: str
    """The interface of that link inside the namespace (``to-b`` in A, ``to-a`` in B)."""
    uplink: str
    """Its address on its own link to the root namespace."""
    root_link: str
    """The root-side end of that uplink (an interface of the root namespace)."""


class TwoMachines:
    """Namespaces ``a`` and ``b`` joined by a veth pair, each with an uplink to the root
    namespace at :attr:`root_address`. Made by :func:`two_machines`."""

    def __init__(self) -> None:
        pid, n = os.getpid(), next(_sequence) % 100
        self.subnet = _pick_subnet(pid, n)
        host = self.subnet.network_address
        # A on .1 and .6, B on .2 and .10; the root ends .5 and .9 (the module's picture)
        a, b = f"dtp-a-{pid}-{n}", f"dtp-b-{pid}-{n}"
        self.a = Machine(a, str(host + 1), "to-b", str(host + 6), f"dtp{pid}-{n}a")
        self.b = Machine(b, str(host + 2), "to-a", str(host + 10), f"dtp{pid}-{n}b")
        self.root_address = str(host + 254)
        """The root namespace's address, the same from both machines."""
        self._gateways = {self.a.name: str(host + 5), self.b.name: str(host + 9)}
        self._procs: list[_Stoppable] = []
        self._popens: list[subprocess.Popen[Any]] = []
        self._closed = False

    @property
    def machines(self) -> tuple[Machine, Machine]:
        return self.a, self.b

    def _create(self) -> None:
        for machine in self.machines:
            result = _run(["ip", "netns", "add", machine.name], check=False)
            if result.returncode != 0:
                error = result.stderr.strip()
                if "Operation not permitted" in error or "Permission denied" in error:
                    raise NetnsUnavailable(f"cannot create a network namespace here: {error}")
                raise NetnsError(f"`ip netns add {machine.name}` failed: {error}")
        # the A-B link: both ends made straight in their namespaces, so their names are
        # local to them and no root interface is involved
        _ip(
            "link", "add", self.a.link, "netns", self.a.name, "type", "veth",
            "peer", "name", self.b.link, "netns", self.b.name,
        )  # fmt: skip
        link_prefix = f"/{self.subnet.prefixlen + 6}"  # a /30 inside the /24
        for machine in self.machines:
            gateway = self._gateways[machine.name]
            _ip(
                "link", "add", machine.root_link, "type", "veth",
                "peer", "name", "uplink", "netns", machine.name,
            )  # fmt: skip
            _ip("addr", "add", gateway + link_prefix, "dev", machine.root_link)
            _ip("addr", "add", self.root_address + "/32", "dev", machine.root_link)
            _ip("link", "set", machine.root_link, "up")
            ns = machine.name
            _ip("link", "set", "lo", "up", namespace=ns)
            _ip("addr", "add", machine.address + link_prefix, "dev", machine.link, namespace=ns)
            _ip("link", "set", machine.link, "up", namespace=ns)
            _ip("addr", "add", machine.uplink + link_prefix, "dev", "uplink", namespace=ns)
            _ip("link", "set", "uplink", "up", namespace=ns)
            _ip("route", "add", self.root_address, "via", gateway, namespace=ns)

    def command(self, machine: Machine, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as run inside ``machine``."""
        return in_namespace(machine.name, cmd)

    def popen(self, machine: Machine, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside ``machine`` (``subprocess.Popen`` arguments pass through);
        it is killed, and its pipes closed, when the harness closes."""
        proc = subprocess.Popen(self.command(machine, cmd), **kwargs)
        self._popens.append(proc)
        return proc

    def run(
        self, machine: Machine, cmd: Sequence[str], timeout: float = 30, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside ``machine`` to its end; its output captured as text."""
        return subprocess.run(
            self.command(machine, cmd), capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def track(self, proc: _P) -> _P:
        """Have ``proc`` (a ``tests.support.daemon_procs.Proc``) killed when the harness closes."""
        self._procs.append(proc)
        return proc

    def impair(self, delay_ms: float = 20.0, loss_percent: float = 1.0) -> None:
        """Delay and drop packets on the A-B link, each direction (netem on both ends).

        Raises :class:`LinkImpairmentUnavailable` when ``tc`` or the kernel's netem
        qdisc is missing (containers often lack the sch_netem module)."""
        if not 0 <= delay_ms <= 60_000:
            raise ValueError(f"delay_ms must be 0..60000 milliseconds, got {delay_ms!r}")
        if not 0 <= loss_percent <= 100:
            raise ValueError(f"loss_percent must be 0..100, got {loss_percent!r}")
        if shutil.which("tc") is None:
            raise LinkImpairmentUnavailable("link impairment needs iproute2's `tc`")
        for machine in self.machines:
            result = _run(
                [
                    "tc", "-n", machine.name, "qdisc", "replace", "dev", machine.link, "root",
                    "netem", "delay", f"{delay_ms}ms", "loss", f"{loss_percent}%",
                ],
                check=False,
            )  # fmt: skip
            if result.returncode != 0:
                error = result.stderr.strip()
                if "unknown" in error.lower():
                    raise LinkImpairmentUnavailable(
                        f"the kernel has no netem qdisc (sch_netem) to impair links: {error}"
                    )
                raise NetnsError(f"tc netem on {machine.name} failed: {error}")

    def clear_impairment(self) -> None:
        """Take the netem qdiscs of :meth:`impair` off again (none there: nothing to do)."""
        for machine in self.machines:
            _run(["tc", "-n", machine.name, "qdisc", "del", "dev", machine.link, "root"], False)

    def close(self) -> None:
        """Kill every process in the namespaces, delete the veths and the namespaces.
        Safe to call twice, and after a half-made setup."""
        if self._closed:
            return
        self._closed = True
        for tracked in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError, OSError):
                tracked.kill()
        for proc in reversed(self._popens):
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        present_links = set(root_links())
        present = set(namespaces())
        errors = []
        for machine in self.machines:
            try:
                # the root end first: deleting it takes the uplink with it at once, where
                # a deleted namespace's interfaces go later, in the kernel's own time
                if machine.root_link in present_links:
                    _delete_root_link(machine.root_link)
                if machine.name in present:
                    _delete_namespace(machine.name)
            except NetnsError as exc:
                errors.append(str(exc))
        if errors:
            raise NetnsError("; ".join(errors))


@contextmanager
def two_machines() -> Iterator[TwoMachines]:
    """A fresh :class:`TwoMachines`, removed again however the block ends.

    Leftovers of dead earlier runs are removed first. Raises :class:`NetnsUnavailable`
    (with the reason) when this machine cannot make namespaces."""
    reason = unavailable()
    if reason is not None:
        raise NetnsUnavailable(reason)
    remove_stale()
    machines = TwoMachines()
    try:
        machines._create()
        yield machines
    finally:
        machines.close()


@dataclass(frozen=True)
class LanMachine:
    """One machine of a :class:`Lan`: a network namespace with one interface on the
    segment."""

    name: str
    """The namespace's name."""
    address: str
    """Its address on the segment (``eth0``)."""
    link: str = "eth0"


class Lan:
    """Machines on one Ethernet segment: each namespace's ``eth0`` is a port of the bridge
    ``br0`` in the switch namespace. Made by :func:`lan`."""

    def __init__(self, count: int) -> None:
        if not 2 <= count <= 32:
            raise ValueError(f"a LAN of 2..32 machines, not {count}")
        pid, n = os.getpid(), next(_sequence) % 100
        self.subnet = _pick_subnet(pid, n)
        host = self.subnet.network_address
        self.switch = f"dtp-s-{pid}-{n}"
        self.machines = tuple(
            LanMachine(f"dtp-l{i}-{pid}-{n}", str(host + 1 + i)) for i in range(count)
        )
        self._popens: list[subprocess.Popen[Any]] = []
        self._made: list[str] = []
        self._closed = False

    def _create(self) -> None:
        for name in (self.switch, *(m.name for m in self.machines)):
            result = _run(["ip", "netns", "add", name], check=False)
            if result.returncode != 0:
                error = result.stderr.strip()
                if "Operation not permitted" in error or "Permission denied" in error:
                    raise NetnsUnavailable(f"cannot create a network namespace here: {error}")
                raise NetnsError(f"`ip netns add {name}` failed: {error}")
            self._made.append(name)
        # (snooping off: multicast to every port, whether or not an IGMP querier is
        # there to tell the bridge who joined which group)
        _ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0", namespace=self.switch)
        _ip("link", "set", "br0", "up", namespace=self.switch)
        prefix = f"/{self.subnet.prefixlen}"
        for i, machine in enumerate(self.machines):
            port = f"port{i}"
            _ip(
                "link", "add", machine.link, "netns", machine.name, "type", "veth",
                "peer", "name", port, "netns", self.switch,
            )  # fmt: skip
            _ip("link", "set", port, "master", "br0", namespace=self.switch)
            _ip("link", "set", port, "up", namespace=self.switch)
            _ip("link", "set", "lo", "up", namespace=machine.name)
            _ip(
                "addr", "add", machine.address + prefix, "dev", machine.link, namespace=machine.name
            )
            _ip("link", "set", machine.link, "up", namespace=machine.name)

    def command(self, machine: LanMachine, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as run inside ``machine``."""
        return in_namespace(machine.name, cmd)

    def popen(
        self, machine: LanMachine, cmd: Sequence[str], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside ``machine``; killed, its pipes closed, when the LAN closes."""
        proc = subprocess.Popen(self.command(machine, cmd), **kwargs)
        self._popens.append(proc)
        return proc

    def close(self) -> None:
        """Kill every process started, delete the namespaces (their veths go with them).
        Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._popens):
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        present = set(namespaces())
        errors = []
        for name in reversed(self._made):
            try:
                if name in present:
                    _delete_namespace(name)
            except NetnsError as exc:
                errors.append(str(exc))
        if errors:
            raise NetnsError("; ".join(errors))


@contextmanager
def lan(count: int = 2) -> Iterator[Lan]:
    """A fresh :class:`Lan` of ``count`` machines, removed again however the block ends
    (leftovers of dead earlier runs removed first); :class:`NetnsUnavailable` when this
    machine cannot make namespaces."""
    reason = unavailable()
    if reason is not None:
        raise NetnsUnavailable(reason)
    remove_stale()
    segment = Lan(count)
    try:
        segment._create()
        yield segment
    finally:
        segment.close()
