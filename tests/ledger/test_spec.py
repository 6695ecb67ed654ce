"""Ledger specs (dtp.ledger._spec, docs/sui.md "Ledger specs"): every form of the grammar,
every mistake with its exact one-sentence message naming the setting, open_ledger on a
LocalLedger (paths, $DTP_LEDGER, the default), a Sui ledger's package from the override,
$DTP_SUI_PACKAGE or the `dtp deploy` record, the Sui CLI keystore, and the events filter
a Sui node is asked to apply. Nothing here reaches a network."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest
from pysui.sui.sui_crypto import SignatureScheme, create_new_keypair

from dtp.errors import DaemonConfigError, LedgerSpecError, SuiConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger import LedgerSpec, open_ledger, parse_ledger_spec
from dtp.ledger._objects import EventFilter
from dtp.ledger._spec import default_local_path, ledger_spec_from_env, resolve_package
from dtp.ledger.local import LocalLedger, default_ledger_path
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui._client import SuiNode, narrowing
from dtp.ledger.sui._keystore import active_address, keystore_identity

PACKAGE = "0x" + "ab" * 32
OTHER = "0x" + "cd" * 32
TESTNET = "https://fullnode.testnet.sui.io:443"


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: no DTP_LEDGER, no DTP_SUI_*, XDG_DATA_HOME in tmp_path."""
    for name in ("DTP_LEDGER", "DTP_SUI_PACKAGE", "DTP_SUI_KEY", "DTP_SUI_RPC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("SUI_CONFIG_DIR", str(tmp_path / "sui_config"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- the grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "node", "network"),
    [
        ("local:/var/dtp/l.sqlite", "/var/dtp/l.sqlite", None, None),
        ("/var/dtp/l.sqlite", "/var/dtp/l.sqlite", None, None),
        ("./x.sqlite", "x.sqlite", None, None),
        ("ledger.sqlite", "ledger.sqlite", None, None),
        ("ledger", "ledger", None, None),  # a bare word that is no keyword's typo
        ("/tmp/a@b", "/tmp/a@b", None, None),  # an "@" without "://": a file
        ("localnet", None, "http://127.0.0.1:9000", "localnet"),
        ("devnet", None, "https://fullnode.devnet.sui.io:443", "devnet"),
        ("testnet", None, TESTNET, "testnet"),
        ("mainnet", None, "https://fullnode.mainnet.sui.io:443", "mainnet"),
        ("testnet@https://node.example:8443", None, "https://node.example:8443", "testnet"),
        ("localnet@http://10.0.0.7:9000/", None, "http://10.0.0.7:9000", "localnet"),
        ("sui:http://127.0.0.1:9000", None, "http://127.0.0.1:9000", None),
        ("sui:https://node.example", None, "https://node.example", None),
        ("http://127.0.0.1:1", None, "http://127.0.0.1:1", None),
        ("HTTPS://Node.Example:443", None, "https://Node.Example:443", None),
    ],
)
def test_every_form(text: str, path: str | None, node: str | None, network: str | None) -> None:
    spec = parse_ledger_spec(text, setting="--ledger")
    assert (spec.path, spec.node, spec.network) == (
        None if path is None else Path(path),
        node,
        network,
    )
    assert spec.is_sui == (node is not None)
    assert spec.text == text and spec.setting == "--ledger"


def test_local_is_the_default_file(environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = environment / "data" / "dtp" / "localnet.sqlite"
    assert parse_ledger_spec("local").path == default == default_ledger_path()
    # $DTP_LEDGER naming a file makes that file the default, as it always did
    monkeypatch.setenv("DTP_LEDGER", str(environment / "x.db"))
    assert parse_ledger_spec("local").path == environment / "x.db" == default_ledger_path()
    monkeypatch.setenv("DTP_LEDGER", f"local:{environment / 'y.db'}")
    assert parse_ledger_spec("local").path == environment / "y.db"
    # naming a network, it leaves the embedded ledger at its usual file
    monkeypatch.setenv("DTP_LEDGER", "testnet")
    assert parse_ledger_spec("local").path == default == default_ledger_path()


@pytest.mark.parametrize("value", ["local ", " local", "\tlocal\n", "local\u00a0"])
def test_dtp_ledger_naming_local_with_spaces_is_the_default_file(
    environment: Path, value: str
) -> None:
    default = environment / "data" / "dtp" / "localnet.sqlite"
    env = {"DTP_LEDGER": value, "XDG_DATA_HOME": str(environment / "data")}
    assert default_local_path(env) == default
    assert parse_ledger_spec("local", env=env).path == default
    assert ledger_spec_from_env(env).path == default


@pytest.mark.parametrize("value", [" ", "local:", " local\0", "tesnet ", "sui"])
def test_a_dtp_ledger_mistake_leaves_local_at_the_default_file(
    environment: Path, value: str
) -> None:
    """``local`` is the default file whatever $DTP_LEDGER holds; its mistakes are said
    where $DTP_LEDGER itself is used, as a LedgerSpecError."""
    default = environment / "data" / "dtp" / "localnet.sqlite"
    env = {"DTP_LEDGER": value, "XDG_DATA_HOME": str(environment / "data")}
    assert parse_ledger_spec("local", env=env).path == default
    with pytest.raises(LedgerSpecError, match=r"^DTP_LEDGER: "):
        ledger_spec_from_env(env)


def test_relative_paths_are_relative_to_base(environment: Path) -> None:
    base = environment / "etc"
    assert parse_ledger_spec("l.sqlite", base=base).path == base / "l.sqlite"
    assert parse_ledger_spec("local:l.sqlite", base=base).path == base / "l.sqlite"
    assert parse_ledger_spec("/abs.sqlite", base=base).path == Path("/abs.sqlite")
    assert parse_ledger_spec("~/l.sqlite").path == Path.home() / "l.sqlite"


def test_a_keyword_typo_that_names_a_file_is_that_file(environment: Path) -> None:
    (environment / "tesnet").write_bytes(b"")
    assert parse_ledger_spec("tesnet").path == Path("tesnet")
    (environment / "sui").write_bytes(b"")
    assert parse_ledger_spec("sui").path == Path("sui")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--ledger: is empty: give local, local:PATH, a network (testnet...) or a node URL."),
        (
            "local:",
            "--ledger: local: names no file: write local:PATH, or local for the default file.",
        ),
        (
            "sui",
            "--ledger: sui alone names no node: write a network (localnet, devnet, testnet, "
            "mainnet), NETWORK@URL or sui:URL (./sui for a ledger file of that name).",
        ),
        (
            "sui:",
            "--ledger: 'sui:' names no node: write sui:http://HOST:PORT or sui:https://HOST:PORT.",
        ),
        (
            "sui:testnet",
            "--ledger: 'sui:testnet' names no node: write sui:http://HOST:PORT or "
            "sui:https://HOST:PORT.",
        ),
        (
            "tesnet",
            "--ledger: 'tesnet' is no ledger spec (did you mean testnet?); write ./tesnet for "
            "a ledger file of that name.",
        ),
        (
            "Mainnet",
            "--ledger: 'Mainnet' is no ledger spec (did you mean mainnet?); write ./Mainnet "
            "for a ledger file of that name.",
        ),
        (
            "betanet@https://x.example",
            "--ledger: 'betanet' in 'betanet@https://x.example' is no Sui network (expected "
            "localnet, devnet, testnet or mainnet before the @).",
        ),
        (
            "ftp://x.example",
            "--ledger: 'ftp://x.example' is not a Sui node URL: the scheme must be http:// "
            "(plain text) or https:// (TLS).",
        ),
        (
            "testnet@file:///x",
            "--ledger: 'file:///x' is not a Sui node URL: the scheme must be http:// (plain "
            "text) or https:// (TLS).",
        ),
        (
            "http://node.example/grpc",
            "--ledger: 'http://node.example/grpc' has a path or query: a Sui node URL is "
            "http(s)://HOST[:PORT].",
        ),
        ("https://:443", "--ledger: 'https://:443' names no host (give http(s)://HOST:PORT)."),
        (
            "http://node.example:99999",
            "--ledger: 'http://node.example:99999' has an invalid port (give http(s)://HOST:PORT).",
        ),
        (
            "http://node.example:0",
            "--ledger: 'http://node.example:0' has port 0, which is no port to connect to.",
        ),
        (
            "sui:https://me:pw@node.example",
            "--ledger: 'https://me:pw@node.example' holds a user name or password, which a "
            "Sui node URL cannot.",
        ),
        (
            "a\0b",
            "--ledger: a ledger spec cannot hold a NUL character, got 'a\\x00b'.",
        ),
        (
            "local:~nosuchuser-dtp/l.sqlite",
            "--ledger: cannot expand '~nosuchuser-dtp/l.sqlite': unknown user or no home "
            "directory.",
        ),
    ],
)
def test_every_mistake_is_one_sentence_naming_the_setting(text: str, message: str) -> None:
    with pytest.raises(LedgerSpecError) as caught:
        parse_ledger_spec(text, setting="--ledger")
    assert str(caught.value) == message
    # one class for every caller: the CLI's config errors and the Sui ones alike
    assert isinstance(caught.value, SuiConfigError) and isinstance(caught.value, DaemonConfigError)


def test_dtp_ledger_is_the_spec_when_none_is_given(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ledger_spec_from_env().path == environment / "data" / "dtp" / "localnet.sqlite"
    monkeypatch.setenv("DTP_LEDGER", "")  # empty: unset, as before
    assert ledger_spec_from_env().path == environment / "data" / "dtp" / "localnet.sqlite"
    monkeypatch.setenv("DTP_LEDGER", "testnet")
    assert ledger_spec_from_env() == LedgerSpec("", "", node=TESTNET, network="testnet")
    monkeypatch.setenv("DTP_LEDGER", "tesnet")
    with pytest.raises(LedgerSpecError, match=r"^DTP_LEDGER: 'tesnet' is no ledger spec"):
        ledger_spec_from_env()
    with pytest.raises(LedgerSpecError, match=r"^DTP_LEDGER: 'tesnet'"):
        open_ledger()


def test_specs_naming_one_ledger_are_equal_wherever_written() -> None:
    a = parse_ledger_spec("testnet", setting="x.toml:2: daemon.ledger")
    b = parse_ledger_spec("testnet@https://fullnode.testnet.sui.io:443", setting="--ledger")
    assert a == b and a != parse_ledger_spec("devnet")


# -- open_ledger: the embedded ledger -------------------------------------------------------


def test_open_ledger_on_local_files(environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_ledger(str(environment / "a.sqlite")) as a:
        assert isinstance(a, LocalLedger) and a.path == str(environment / "a.sqlite")
        a.faucet("0x1", 5)
    # the same file again, through local:PATH: the same ledger
    with open_ledger(f"local:{environment / 'a.sqlite'}") as again:
        assert again.balance("0x1") == 5
    with open_ledger() as default:  # no spec, no $DTP_LEDGER: local
        assert default.path == str(environment / "data" / "dtp" / "localnet.sqlite")
    monkeypatch.setenv("DTP_LEDGER", str(environment / "a.sqlite"))
    with open_ledger() as from_env:
        assert from_env.balance("0x1") == 5
    with open_ledger("local") as local:  # $DTP_LEDGER names the default file
        assert local.balance("0x1") == 5


def test_open_ledger_without_create_makes_no_file(environment: Path) -> None:
    missing = environment / "typo.sqlite"
    with pytest.raises(LedgerSpecError) as caught:
        open_ledger(str(missing), create=False, setting="--ledger")
    assert str(caught.value) == f"--ledger: no ledger file at {missing}"
    assert not missing.exists()


# -- the package of a Sui ledger -------------------------------------------------------------


def _record(environment: Path, records: Any) -> Path:
    path = environment / "data" / "dtp" / "deployments.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def test_the_package_comes_from_the_deploy_record(environment: Path) -> None:
    _record(environment, {"testnet": {"package_id": "0xAB" + "ab" * 31, "digest": "D1"}})
    spec = parse_ledger_spec("testnet", setting="--ledger")
    assert resolve_package(spec) == PACKAGE
    ledger = open_ledger(spec)
    try:
        assert isinstance(ledger, SuiLedger)
        assert (ledger.config.rpc, ledger.package) == (TESTNET, PACKAGE)
    finally:
        ledger.close()
    # NETWORK@URL: the network's record, another node
    ledger = open_ledger("testnet@http://127.0.0.1:9")
    try:
        assert (ledger.config.rpc, ledger.package) == ("http://127.0.0.1:9", PACKAGE)
    finally:
        ledger.close()


def test_the_override_and_the_environment_come_first(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(environment, {"testnet": {"package_id": PACKAGE, "digest": None}})
    spec = parse_ledger_spec("testnet")
    monkeypatch.setenv("DTP_SUI_PACKAGE", "0x2")
    assert resolve_package(spec) == "0x" + "0" * 63 + "2"
    assert resolve_package(spec, OTHER) == OTHER
    # a bare node needs one of them
    node = parse_ledger_spec("sui:http://127.0.0.1:9")
    assert resolve_package(node) == "0x" + "0" * 63 + "2"
    ledger = open_ledger(node, package=OTHER)
    try:
        assert ledger.package == OTHER  # type: ignore[attr-defined]
    finally:
        ledger.close()


def test_a_missing_package_is_one_sentence(environment: Path) -> None:
    records = environment / "data" / "dtp" / "deployments.json"
    with pytest.raises(LedgerSpecError) as caught:
        open_ledger("testnet", setting="--ledger")
    assert str(caught.value) == (
        f"No dtp package is recorded for testnet (--ledger; records: {records}): run "
        "`dtp deploy --network testnet`, or set DTP_SUI_PACKAGE (--sui-package, sui_package "
        "in the daemon config)."
    )
    _record(environment, {"devnet": {"package_id": PACKAGE, "digest": None}})
    with pytest.raises(LedgerSpecError, match="No dtp package is recorded for testnet"):
        open_ledger("testnet")
    with pytest.raises(LedgerSpecError) as caught:
        open_ledger("sui:http://127.0.0.1:9", setting="--ledger")
    assert str(caught.value) == (
        "--ledger: 'sui:http://127.0.0.1:9' names a node but no network, so no `dtp deploy` "
        "record gives its dtp package: set DTP_SUI_PACKAGE (--sui-package, sui_package in the "
        "daemon config), or write NETWORK@URL."
    )


def test_a_package_that_is_not_hex_names_its_setting(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = parse_ledger_spec("testnet")
    with pytest.raises(LedgerSpecError) as caught:
        resolve_package(spec, "abc", package_setting="--sui-package")
    assert str(caught.value) == (
        "--sui-package: 'abc' is not a valid package ID (0x followed by 1 to 64 hex digits)."
    )
    monkeypatch.setenv("DTP_SUI_PACKAGE", "0xzz")
    with pytest.raises(LedgerSpecError, match=r"^DTP_SUI_PACKAGE: '0xzz' is not a valid"):
        resolve_package(spec)
    monkeypatch.delenv("DTP_SUI_PACKAGE")
    records = _record(environment, {"testnet": {"package_id": "nope", "digest": None}})
    with pytest.raises(LedgerSpecError, match=rf"^{records}: testnet: 'nope' is not a valid"):
        resolve_package(spec)


def test_a_damaged_deploy_record_is_named(environment: Path) -> None:
    records = _record(environment, ["not", "an", "object"])
    with pytest.raises(LedgerSpecError) as caught:
        open_ledger("testnet")
    assert str(caught.value) == (
        f"{records} is not a deployments record (a JSON object); fix or move it aside."
    )


def test_opening_a_sui_ledger_does_no_io_and_keeps_dtp_sui_settings(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = HostIdentity.generate()
    monkeypatch.setenv("DTP_SUI_KEY", key.to_sui_bech32())
    monkeypatch.setenv("DTP_SUI_GAS_BUDGET", "1234")
    monkeypatch.setenv("DTP_SUI_TIMEOUT", "7")
    ledger = open_ledger("http://127.0.0.1:1", package=PACKAGE)
    try:
        assert isinstance(ledger, SuiLedger)
        config: SuiConfig = ledger.config
        assert (config.gas_budget, config.timeout) == (1234, 7.0)
        assert ledger.default_signer is not None
        assert ledger.default_signer.sui_address == key.sui_address
    finally:
        ledger.close()
    monkeypatch.setenv("DTP_SUI_TIMEOUT", "-1")
    with pytest.raises(SuiConfigError, match="DTP_SUI_TIMEOUT"):
        open_ledger("http://127.0.0.1:1", package=PACKAGE)


# -- the Sui CLI keystore --------------------------------------------------------------------


def _sui_config(environment: Path, keys: list[str], active: str | None, **extra: Any) -> Path:
    """A Sui CLI configuration directory as `sui client` writes it."""
    directory = environment / "sui_config"
    directory.mkdir(exist_ok=True)
    keystore = extra.pop("keystore", directory / "sui.keystore")
    lines = ["---", "keystore:", f"  File: {keystore}", "envs: []", "active_env: localnet"]
    if active is not None:
        lines.append(f'active_address: "{active}"')
    (directory / "client.yaml").write_text("\n".join(lines) + "\n")
    (directory / "sui.keystore").write_text(json.dumps(keys))
    return directory


def _ed25519() -> tuple[str, str]:
    """A real Ed25519 key made by pysui: (keystore string, its Sui address)."""
    _, keypair = create_new_keypair(SignatureScheme.ED25519)
    keystring = keypair.serialize()
    return keystring, HostIdentity.from_sui_keystring(keystring).sui_address


def test_the_keystore_gives_the_active_address_key(environment: Path) -> None:
    other, _ = _ed25519()
    keystring, address = _ed25519()
    _, secp = create_new_keypair(SignatureScheme.SECP256K1)
    _sui_config(environment, [other, secp.serialize(), keystring], address)
    identity = keystore_identity()
    assert identity.sui_address == address == active_address()
    # the Noise key: derived from the seed (the same keystore gives the same identity)
    assert identity == HostIdentity.from_sui_keystring(keystring)
    assert keystore_identity().noise_public == identity.noise_public
    assert identity.noise_public != HostIdentity.from_sui_keystring(other).noise_public


def test_a_keystore_without_the_active_address(environment: Path) -> None:
    keystring, _ = _ed25519()
    _, missing = _ed25519()
    directory = _sui_config(environment, [keystring], missing)
    with pytest.raises(LedgerSpecError) as caught:
        keystore_identity()
    assert str(caught.value) == (
        f"{directory / 'sui.keystore'} holds no key for the Sui CLI's active address "
        f"{missing} (client.yaml: {directory / 'client.yaml'}); or create a DTP identity "
        "with `dtp keys new`, or pass --identity."
    )
    _sui_config(environment, [keystring], None)
    with pytest.raises(LedgerSpecError, match="names no active_address: choose one with"):
        keystore_identity()


@pytest.mark.parametrize(
    ("scheme", "name"),
    [(SignatureScheme.SECP256K1, "Secp256k1"), (SignatureScheme.SECP256R1, "Secp256r1")],
)
def test_an_active_key_that_is_not_ed25519(
    environment: Path, scheme: SignatureScheme, name: str
) -> None:
    _, keypair = create_new_keypair(scheme)
    # (a Sui address: blake2b-256 of the scheme flag and the public key)
    address = (
        "0x" + hashlib.blake2b(keypair.public_key.scheme_and_key(), digest_size=32).hexdigest()
    )
    directory = _sui_config(environment, [keypair.serialize()], address)
    with pytest.raises(LedgerSpecError) as caught:
        keystore_identity()
    assert str(caught.value) == (
        f"The Sui CLI's active address {address} has a {name} key in "
        f"{directory / 'sui.keystore'}, and DTP signs with Ed25519 keys only: switch to an "
        "Ed25519 address with `sui client switch --address`, or create a DTP identity with "
        "`dtp keys new`, or pass --identity."
    )


def test_no_sui_configuration_at_all(environment: Path) -> None:
    with pytest.raises(LedgerSpecError) as caught:
        keystore_identity()
    assert str(caught.value) == (
        f"No DTP identity file, and no Sui CLI configuration at "
        f"{environment / 'sui_config' / 'client.yaml'}: set SUI_CONFIG_DIR to the Sui CLI's "
        "configuration directory, or create a DTP identity with `dtp keys new`, or pass "
        "--identity."
    )


def test_damaged_sui_files_are_named(environment: Path) -> None:
    keystring, address = _ed25519()
    directory = _sui_config(environment, [keystring], address)
    (directory / "sui.keystore").write_text('{"not": "a list"}')
    with pytest.raises(LedgerSpecError, match="is not a Sui keystore"):
        keystore_identity()
    (directory / "client.yaml").write_text("keystore: [unclosed\n")
    with pytest.raises(LedgerSpecError, match=r"is not the Sui CLI's client\.yaml"):
        keystore_identity()
    (directory / "client.yaml").write_text(f'keystore: InMem\nactive_address: "{address}"\n')
    with pytest.raises(LedgerSpecError, match="not a keystore file"):
        keystore_identity()


# -- what a Sui node is asked to filter -------------------------------------------------------


def test_narrowing_takes_what_a_node_can_filter() -> None:
    sender = "0x" + "12" * 32
    assert narrowing(None) == {} and narrowing(EventFilter(object_id=sender)) == {}
    assert narrowing(EventFilter(sender="0x12")) == {"sender": "0x" + "0" * 62 + "12"}
    assert narrowing(EventFilter(type="dtp::transport_control::ConnectionOpened")) == {
        "event_type": "::transport_control::ConnectionOpened"
    }
    assert narrowing(EventFilter(module="escrow")) == {"event_type": "::escrow"}
    assert narrowing(EventFilter(type="ReceiptClaimed", module="escrow")) == {
        "event_type": "::escrow::ReceiptClaimed"
    }
    # what no node would take, or no event of the package has, is left to the filter
    assert narrowing(EventFilter(type="ReceiptClaimed")) == {}
    assert narrowing(EventFilter(type="other::m::N", sender="not an address")) == {}
    assert narrowing(EventFilter(module="bad module")) == {}


class _Capture:
    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def list_events(self, message: Any) -> AsyncIterator[Any]:
        self.requests.append(message)
        yield sui_prot.ListEventsResponse(watermark=sui_prot.Watermark(cursor=b"\x01"))


class _CapturingNode(SuiNode):
    def __init__(self, stub: _Capture) -> None:
        super().__init__("http://127.0.0.1:9", timeout=5)
        self.stub = stub

    def _stub(self, service: Any) -> Any:
        return self.stub


def test_a_sui_node_filters_on_the_sender_and_type() -> None:
    ledger = SuiLedger(SuiConfig("http://127.0.0.1:9", PACKAGE, timeout=5))
    ledger._node.close()
    stub = _Capture()
    ledger._node = _CapturingNode(stub)
    client = "0x" + "34" * 32
    try:
        wanted = EventFilter(type="dtp::transport_control::ConnectionOpened", sender=client)
        assert ledger.events(None, wanted, 10) == ([], "01")
        assert ledger.events(None, None, 10) == ([], "01")
    finally:
        ledger.close()
    narrowed, everything = (r.filter.terms for r in stub.requests)
    assert [len(t.literals) for t in narrowed] == [2]  # one term: its literals ANDed
    by_type, by_sender = narrowed[0].literals
    assert by_type.event_type.event_type == f"{PACKAGE}::transport_control::ConnectionOpened"
    assert by_sender.sender.address == client
    assert [lit.event_type.event_type for lit in everything[0].literals] == [PACKAGE]
