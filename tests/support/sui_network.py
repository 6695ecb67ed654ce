"""The Sui network of the tests that run on Sui: the node stand-in, or a real node.

This module is the one switch. By default a test gets the node stand-in
(:mod:`dtp.testing.sui_node`) serving in this process on 127.0.0.1: its faucet funds an
address at once and its clock can be moved. With ``DTP_SUI_RPC``, ``DTP_SUI_PACKAGE`` and
``DTP_SUI_KEY`` all set (``scripts/sui-localnet.sh`` sets them for a ``sui start``
localnet it published ``move/dtp`` on), the same tests run on that node instead:
addresses are funded by transfers from ``DTP_SUI_KEY``'s funded key, and the few steps
that move the ledger clock are skipped there, saying so (a network's clock is its own).

Tests reach the network through a :class:`SuiNetwork`: ``args`` for a ``dtp`` command
(``--ledger localnet@URL --sui-package 0x…``), ``spec``/``package_id`` (``daemon_toml``)
for a daemon's config or :func:`dtp.ledger.open_ledger`, :meth:`SuiNetwork.ledger` for a
``SuiLedger``, :meth:`SuiNetwork.fund`, :meth:`SuiNetwork.advance_clock`. The fixture
``sui_network`` (tests/conftest.py) yields one per test; :func:`sui_network` is the same
as a context manager, with the stand-in's knobs; :func:`sui_network_process` serves the
stand-in from a process of its own (daemons in other processes or network namespaces
reach it), the real node all the same when one is configured.

:class:`StandInProcess` is that process on its own (the benchmarks use it): always the
stand-in, whatever the environment.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from dtp.errors import ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import normalize_id
from dtp.ledger.sui import SuiConfig, SuiLedger
from tests.support.paths import ROOT

if TYPE_CHECKING:
    from dtp.testing.sui_node import SuiNodeStandIn

#: The variables that point the tests at a real node (all three, or none is used).
REAL_NODE_ENV = ("DTP_SUI_RPC", "DTP_SUI_PACKAGE", "DTP_SUI_KEY")
#: MIST the stand-in's faucet gives the funding key.
STAND_IN_FUNDS = 10**11


def real_node_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` (``os.environ``) points the tests at a real node."""
    env = os.environ if env is None else env
    return all(env.get(name, "").strip() for name in REAL_NODE_ENV)


def ledger_spec_for(url: str) -> str:
    """The ledger spec naming the node at ``url``: ``localnet@URL`` for a node on this
    machine (a ``sui start`` localnet, the stand-in), ``sui:URL`` for any other."""
    host = urlsplit(url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return f"localnet@{url}" if local else f"sui:{url}"


def transfer(ledger: SuiLedger, funder: HostIdentity, to: str, amount: int) -> None:
    """Move ``amount`` MIST from ``funder`` to the address ``to``: a Sui transfer
    (:meth:`SuiLedger.transfer <dtp.ledger.interface.Ledger.transfer>`)."""
    ledger.transfer(funder, to, amount)


def gas_from_effects(ledger: SuiLedger, address: str) -> dict[str, int]:
    """The transactions whose gas ``address`` paid, by digest, each with the net gas its
    effects report (computation + storage - rebate): read from any node, which need
    keep no count of its own.

    Found from ``address``'s SUI coins: each transaction leaves its gas coin either as
    it is now (the coin's previous transaction) or to a later transaction of the same
    payer, which names it among its effects' dependencies. So the walk starts at the
    coins' previous transactions and follows dependencies through the transactions
    ``address`` paid for, stopping at any other (a funding transfer, another party's
    call, a system transaction)."""
    from pysui.sui.sui_grpc import pgrpc_requests as rq

    from dtp.ledger.sui._effects import gas_used

    address = normalize_id(address, "address")
    # (SuiNode has no call listing coins' previous transactions or reading effects by
    # digest: the requests are made here, on its channel)
    node = ledger._node

    async def coins() -> list[str]:
        found: list[str] = []
        token: bytes | None = None
        while True:
            resp = await node._unary(
                rq.GetGas(
                    owner=address,
                    field_mask=["object_id", "previous_transaction"],
                    page_size=1000,
                    page_token=token,
                )
            )
            found += [o.previous_transaction for o in resp.objects if o.previous_transaction]
            token = resp.next_page_token or None
            if token is None:
                return found

    def effects(digest: str) -> Any:
        async def call() -> Any:
            resp = await node._unary(rq.GetTransaction(digest=digest, field_mask=["effects"]))
            return resp.transaction.effects

        return node.run(call, f"GetTransaction {digest}")

    paid: dict[str, int] = {}
    seen: set[str] = set()
    todo = node.run(coins, f"ListOwnedObjects {address}")
    while todo:
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            found = effects(digest)
        except ObjectNotFound:
            # a dependency the node keeps no transaction for (the stand-in's genesis
            # objects): none of address's, which would have been recorded as it executed
            continue
        payer = found.gas_object.output_owner if found.gas_object is not None else None
        if payer is None or not payer.address or normalize_id(payer.address) != address:
            continue
        paid[digest] = gas_used(found)
        todo += list(found.dependencies)
    return paid


class SuiNetwork:
    """One Sui node the tests use, with a funded key (see the module docs)."""

    def __init__(
        self,
        url: str,
        package_id: str,
        funder: HostIdentity,
        node: SuiNodeStandIn | None = None,
        process: StandInProcess | None = None,
    ) -> None:
        self.url, self.package_id, self.funder = url, package_id, funder
        #: The stand-in serving in this process (its knobs), if it is one.
        self.node = node
        #: The stand-in as a process of its own, if it is one.
        self.process = process
        self._ledgers: list[SuiLedger] = []
        self._funding: SuiLedger | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SuiNetwork:
        """The real node the ``DTP_SUI_*`` variables name."""
        config = SuiConfig.from_env(env)
        assert config.key is not None  # (real_node_configured: DTP_SUI_KEY is set)
        return cls(config.rpc, config.package, config.key)

    @property
    def real(self) -> bool:
        """A real node (not the stand-in)."""
        return self.node is None and self.process is None

    @property
    def spec(self) -> str:
        """The ledger spec naming this node (``localnet@http://127.0.0.1:PORT``)."""
        return ledger_spec_for(self.url)

    @property
    def args(self) -> list[str]:
        """The ``dtp`` command's ledger options for this node."""
        return ["--ledger", self.spec, "--sui-package", self.package_id]

    def daemon_toml(self) -> str:
        """The ``[daemon]`` table's ledger lines for this node."""
        return f'ledger = "{self.spec}"\nsui_package = "{self.package_id}"\n'

    def ledger(self, key: HostIdentity | None = None, **config: Any) -> SuiLedger:
        """A new ``SuiLedger`` on this node (``key``: its default signer; ``config``:
        other :class:`SuiConfig` fields), closed with the network."""
        made = SuiLedger(SuiConfig(self.url, self.package_id, key=key, **config))
        self._ledgers.append(made)
        return made

    def fund(self, address: str, mist: int) -> None:
        """Give ``address`` ``mist`` more MIST: the stand-in's faucet, or a transfer from
        the funded key (a real node, or the stand-in as a process)."""
        if self.node is not None:
            self.node.faucet(address, mist)
            return
        if self._funding is None:
            self._funding = self.ledger(self.funder)
        transfer(self._funding, self.funder, address, mist)

    @property
    def moves_clock(self) -> bool:
        """Whether :meth:`advance_clock` can move the ledger clock (the stand-in's, in
        this process or as a process keeping its state in files)."""
        return self.node is not None or (self.process is not None and self.process.moves_clock)

    def advance_clock(self, ms: int) -> int:
        """Move the stand-in's clock ``ms`` forward (its new time); elsewhere (a real
        node, the stand-in as a process keeping its state in memory) the test stops
        here, skipped: a network's clock moves only with time."""
        if self.node is not None:
            return self.node.advance_clock(ms)
        if self.process is not None and self.process.moves_clock:
            return self.process.advance_clock(ms)
        pytest.skip(f"the clock of the Sui node at {self.url} cannot be moved ({ms} ms)")

    def gas_paid(self, address: str) -> int | None:
        """Net MIST ``address`` paid in gas so far (the stand-in counts it; None on a
        real node)."""
        return None if self.node is None else self.node.gas_paid(address)

    def close(self) -> None:
        for ledger in self._ledgers:
            ledger.close()
        self._ledgers.clear()


@contextmanager
def sui_network(**knobs: Any) -> Iterator[SuiNetwork]:
    """The real node of ``DTP_SUI_*`` when configured, else a stand-in in this process
    with ``knobs`` (:class:`SuiNodeStandIn` arguments); afterwards the stand-in's two
    files are checked to agree."""
    if real_node_configured():
        network = SuiNetwork.from_env()
        try:
            yield network
        finally:
            network.close()
        return
    from dtp.testing.sui_node import SuiNodeStandIn

    with SuiNodeStandIn(**knobs) as node:
        funder = HostIdentity.generate()
        node.faucet(funder.sui_address, STAND_IN_FUNDS)
        network = SuiNetwork(node.url, node.package_id, funder, node)
        try:
            yield network
        finally:
            network.close()
        node.state.check()


@contextmanager
def sui_network_process(
    *flags: str, host: str = "127.0.0.1", state: Path | None = None
) -> Iterator[SuiNetwork]:
    """Like :func:`sui_network`, with the stand-in as a process of its own serving on
    ``host`` (``flags``: its command-line knobs, ``--tx-latency 0.3``...), for daemons in
    other processes or network namespaces; its funded key funds by transfers. The real
    node of ``DTP_SUI_*`` when configured (``host`` and ``flags`` unused)."""
    if real_node_configured():
        with sui_network() as network:
            yield network
        return
    funder = HostIdentity.generate()
    process = StandInProcess(
        *flags, fund={funder.sui_address: STAND_IN_FUNDS}, host=host, state=state
    )
    network = SuiNetwork(process.url, process.package_id, funder, process=process)
    try:
        yield network
    finally:
        network.close()
        process.close()


class StandInProcess:
    """``python -m dtp.testing.sui_node`` as a process of its own, serving on ``host`` (any
    free port) until :meth:`close`, with ``fund`` (address → MIST) funded at start and
    ``flags`` (``--tx-latency 0.3``...) passed on."""

    def __init__(
        self,
        *flags: str,
        fund: Mapping[str, int] | None = None,
        host: str = "127.0.0.1",
        state: Path | None = None,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "dtp.testing.sui_node",
            "--host",
            host,
            "--print-url",
            *flags,
        ]
        self.state = state
        """Where the process keeps its state (None: in its memory)."""
        if state is not None:
            cmd += ["--state", str(state)]
        for address, mist in (fund or {}).items():
            cmd += ["--fund", f"{address}={mist}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            self.close()
            raise RuntimeError(f"the node stand-in did not start (exit {self.proc.returncode})")
        self.url, self.package_id = line

    @property
    def spec(self) -> str:
        return ledger_spec_for(self.url)

    @property
    def moves_clock(self) -> bool:
        """Whether :meth:`advance_clock` can move the process's clock: its state is in
        files, which another process may open."""
        return self.state is not None

    def advance_clock(self, ms: int) -> int:
        """Move the process's clock ``ms`` forward (its new time), as its own knob does
        in process (``SuiNodeStandIn.advance_clock``): its state's LocalLedger file,
        which LocalLedger shares between processes, holds the clock, and the node reads
        it anew for every call (its Clock object, the checkpoints, each transaction)."""
        from dtp.ledger.local import LocalLedger

        if self.state is None:
            raise RuntimeError("the stand-in keeps its state in memory: start it with state=")
        ledger = LocalLedger(self.state / "ledger.sqlite")
        try:
            return ledger.advance_clock(ms)
        finally:
            ledger.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
