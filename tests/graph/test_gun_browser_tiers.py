"""A page as a full peer of the graph's three tiers: headless Chromium on
web/dtp-client's demo/graph.html (a gun.js app with src/graph, written from docs/graph.md),
whose Gun relay is dtp's Gun endpoint (``python -m dtp.graph gun``, its own process),
and a Python peer syncing with the endpoint over DTP. The page reads a private space a
Python author made it a reader of, and is refused what is written after its removal
(under a new key); it writes its own private space for a Python reader; protected fields
signed with its Sui key verify in Python, and Python's verify in the page; forged signed
fields are refused by the endpoint (as a Python peer refuses them) and by the page, from
a hostile Gun peer. Screenshots go into the test log (build/screenshots/)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from bench import gun_peer
from dtp.errors import NotAReader
from dtp.graph import Graph, namespace, open_stored
from dtp.graph import _private as private
from dtp.identity.keys import HostIdentity
from tests.support.browser import Chromium, Page, need, need_chromium
from tests.support.graph_sync import following
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.web.browser_client import need_client, served_package

SHOTS = ROOT / "build" / "screenshots"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gun_peer.EndpointProcess]:
    need_chromium()
    need("node and npm", gun_peer.available())
    need_client()
    gun_dir = gun_peer.install()
    db = tmp_path_factory.mktemp("relay") / "relay.db"
    with gun_peer.EndpointProcess(
        "--db", str(db), "--sync", "127.0.0.1:0", "--gun-dir", str(gun_dir), "--no-site"
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def python_peer(endpoint: gun_peer.EndpointProcess) -> Iterator[Graph]:
    """A graph in this process, synced live with the endpoint's over DTP."""
    with following(endpoint.info) as graph:
        yield graph


@pytest.fixture(scope="module")
def browser(endpoint: gun_peer.EndpointProcess) -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """web/dtp-client over HTTP (the page, src/ and the @noble packages it imports)."""
    with served_package() as base:
        yield base


def _keystring() -> str:
    return base64.b64encode(b"\x00" + os.urandom(32)).decode()


def _open(browser: Chromium, site: str, endpoint: gun_peer.EndpointProcess, **params: str) -> Page:
    page = browser.new_page()
    query = urllib.parse.urlencode({"gun": endpoint.url.rstrip("/"), **params})
    page.goto(f"{site}/demo/graph.html?{query}", ready="document.body.dataset.ready")
    assert page.evaluate("document.body.dataset.ready") == "1", page.evaluate(
        "document.getElementById('status').textContent"
    )
    return page


def js(page: Page, body: str) -> Any:
    """Run async JavaScript in the page (``body`` of an async function, with ``p`` the
    page's window.dtpPage): ``{"ok": value}`` or ``{"error": name, "message": text}``."""
    return page.evaluate(
        "(async (p) => { try { return {ok: await (async () => {" + body + "})()}; }"
        " catch (e) { return {error: e.name, message: String(e.message)}; } })(window.dtpPage)"
    )


def ok(page: Page, body: str) -> Any:
    answer = js(page, body)
    assert "ok" in answer, answer
    return answer["ok"]


def _shot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = page.screenshot(SHOTS / f"graph-tiers-{name}.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    with capsys.disabled():
        print(f"\n[screenshot] {path}")


def _key_ids(graph: Graph, soul: str) -> dict[str, bytes]:
    """The content key each stored field of a private node is under."""
    out = {}
    for field, _, stored in graph.stored_node(soul):
        body = private.body_of(stored)
        assert body is not None
        key_id = private.value_key_id(body)
        assert key_id is not None
        out[field.decode()] = key_id
    return out


def test_the_page_reads_a_private_space_until_it_is_removed(
    browser: Chromium,
    site: str,
    endpoint: gun_peer.EndpointProcess,
    python_peer: Graph,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the page keeps its own key (localStorage), and says which key it reads with
    page = _open(browser, site, endpoint)
    address, reader = ok(page, "return [p.identity.address, p.readerKey]")
    kept = page.evaluate("localStorage.getItem('dtp-graph-identity')")
    same = HostIdentity.from_sui_keystring(kept)  # the same keystring, in Python
    assert (same.sui_address, same.noise_public.hex()) == (address, reader)

    alice = HostIdentity.generate()
    diary = python_peer.private("diary", alice)
    assert diary.add_reader(bytes.fromhex(reader))
    diary.put({"monday": "rain", "day1": {"text": "met bob", "mood": 7}})
    mine = f"p.graph.private('diary', {{author: '{alice.sui_address}'}})"
    reads = f"return (await {mine}.get())?.monday === 'rain'"
    assert wait_for(lambda: ok(page, reads), 20, 0.1), "the page reads alice's diary"
    assert ok(page, f"return {mine}.child('day1').get()") == {"text": "met bob", "mood": 7}
    assert ok(page, f"return {mine}.readers()") == [reader]

    # removed: what alice writes next is under a new key, which the page does not hold
    assert diary.remove_reader(bytes.fromhex(reader))
    diary.put({"tuesday": "storm"})
    keys = _key_ids(python_peer, diary.soul)
    assert keys["tuesday"] != keys["monday"]
    held = f"return Object.keys(p.gun._.graph['{diary.soul}'] || {{}})"
    assert wait_for(lambda: "tuesday" in ok(page, held), 20, 0.1), "the new field at the page"
    refused = js(page, f"return {mine}.getField('tuesday')")
    assert refused["error"] == "NotAReader" and "not a reader when the value" in refused["message"]
    assert set(ok(page, f"return {mine}.get()")) == {"monday", "day1"}  # its past, still
    assert ok(page, f"return {mine}.readers()") == []
    # the Python author reads it all, and the page's write there is refused locally
    assert diary.get_field("tuesday") == "storm"
    assert js(page, f"return {mine}.put({{x: 1}})")["error"] == "NotTheAuthor"
    page.evaluate(
        f"document.getElementById('other-author').value = '{alice.sui_address}';"
        "document.getElementById('other-path').value = 'diary/day1';"
        "document.getElementById('other-form').requestSubmit()"
    )
    page.wait_for("document.getElementById('other').textContent.includes('met bob')")
    _shot(page, "reader", capsys)


def test_the_page_writes_its_private_space_for_a_python_reader(
    browser: Chromium,
    site: str,
    endpoint: gun_peer.EndpointProcess,
    python_peer: Graph,
    capsys: pytest.CaptureFixture[str],
) -> None:
    page = _open(browser, site, endpoint, keystring=_keystring())
    address = ok(page, "return p.identity.address")
    bob = HostIdentity.generate()
    notes = "p.graph.private('notes')"
    assert ok(page, f"return {notes}.addReader('{bob.noise_public.hex()}')") is True
    state = ok(page, f"return {notes}.put({{text: 'from the page', more: {{n: 1.5}}}})")
    his = python_peer.private("notes", bob, author=address)
    note = {"text": "from the page", "more": {"#": f"{his.soul}/more"}}
    more = his.child("more")  # (a node of its own: it may come in a batch of its own)
    assert wait_for(lambda: _readable(his) == note and _readable(more), 20, 0.1), "the note"
    assert more.get() == {"n": 1.5}
    assert python_peer.state_of(his.soul, "text") == state
    (field, at, stored), *_ = python_peer.stored_node(his.soul)
    opened = open_stored(his.soul, field, at, stored)  # the page's signature, verified here
    assert (opened.tier, opened.author) == ("private", address)
    assert his.readers() == [bob.noise_public]
    # bob removed: the next note is under a key wrapped to the page alone
    assert ok(page, f"return {notes}.removeReader('{bob.noise_public.hex()}')") is True
    ok(page, f"return {notes}.put({{later: 'not for bob'}})")
    assert wait_for(lambda: python_peer.state_of(his.soul, "later"), 20, 0.1), "the later note"
    with pytest.raises(NotAReader):
        his.get_field("later")
    assert set(his.get() or {}) == {"text", "more"}
    assert ok(page, f"return {notes}.get()") == {
        "text": "from the page",
        "more": {"#": f"{his.soul}/more"},
        "later": "not for bob",
    }
    page.wait_for("document.getElementById('notes').textContent.includes('not for bob')")
    _shot(page, "author", capsys)


def _readable(node: Any) -> Any:
    try:
        return node.get()
    except NotAReader:
        return None


@pytest.mark.parametrize("sea", [False, True], ids=["gun", "gun-and-sea"])
def test_protected_fields_round_trip_both_ways(
    browser: Chromium,
    site: str,
    endpoint: gun_peer.EndpointProcess,
    python_peer: Graph,
    sea: bool,
) -> None:
    """With SEA loaded too, its user spaces' rule leaves dtp's ~0x souls alone."""
    page = _open(browser, site, endpoint, keystring=_keystring(), **({"sea": "1"} if sea else {}))
    assert ok(page, "return !!window.Gun.SEA") is sea
    address = ok(page, "return p.identity.address")
    state = ok(
        page,
        "const profile = p.graph.protected('profile');"
        "return profile.put({name: 'Ann', age: 30, links: {home: {'#': 'x'}}})",
    )
    theirs = python_peer.protected("profile", author=address)
    links = theirs.child("links")
    assert wait_for(lambda: theirs.get_field("age") == 30 and links.get(), 20, 0.1), "profile"
    assert theirs.get() == {"name": "Ann", "age": 30, "links": {"#": f"{theirs.soul}/links"}}
    assert links.get() == {"home": {"#": "x"}}
    for field, at, stored in python_peer.stored_node(theirs.soul):
        value = open_stored(theirs.soul, field, at, stored)  # the page's Ed25519 signature
        assert (value.tier, value.author, at) == ("protected", address, state)

    # Python writes; the page verifies and reads it, and hears the next change live
    alice = HostIdentity.generate()
    python_peer.protected("profile", alice).put({"name": "Alice"})
    hers = f"p.graph.protected('profile', {{author: '{alice.sui_address}'}})"
    hers_read = f"return {hers}.get()"
    assert wait_for(lambda: ok(page, hers_read) == {"name": "Alice"}, 20, 0.1), "alice's profile"
    # two subscriptions to the node; one ended, the other still hears
    ok(
        page,
        "window.heard = []; window.early = [];"
        f"window.ended = {hers}.on((c) => window.early.push(c.value));"
        f"{hers}.on((c) => window.heard.push([c.field, c.value])); return 1",
    )
    python_peer.protected("profile", alice).put({"name": "Alice Liddell"})
    page.wait_for("window.heard.some(([f, v]) => v === 'Alice Liddell')")
    assert ok(page, "window.ended.off(); return window.early") == ["Alice Liddell"]
    python_peer.protected("profile", alice).put({"name": "Alice P. Liddell"})
    page.wait_for("window.heard.some(([f, v]) => v === 'Alice P. Liddell')")
    assert ok(page, "return window.early") == ["Alice Liddell"]
    assert ok(page, "return p.graph.refusedByReason()") == {}


def test_forged_signed_fields_are_refused_by_python_and_by_the_page(
    browser: Chromium,
    site: str,
    endpoint: gun_peer.EndpointProcess,
    python_peer: Graph,
) -> None:
    page = _open(browser, site, endpoint, keystring=_keystring())
    address = ok(page, "return p.identity.address")
    ok(page, "return p.graph.protected('profile').put({name: 'Ann'})")
    soul = namespace.user_soul(address, "profile")
    assert wait_for(lambda: python_peer.get_field(soul, "name") == "Ann", 20, 0.1), "the profile"
    wire = ok(page, f"return p.gun._.graph['{soul}'].name")
    state = ok(page, f"return p.gun._.graph['{soul}']._['>'].name")
    assert wire.startswith(namespace.WIRE_PREFIX)

    # sent raw to the endpoint, past the page's own guard: each refused with its reason
    forgeries = {
        "bad_signature": (soul, "name", state + 1, wire),  # moved to a later state
        "unsigned": (soul, "name", state + 2, "Mallory"),
        "private_bad_signature": _moved_private(page),
    }
    for reason, (s, f, at, value) in forgeries.items():
        err = _raw_put(page, endpoint, s, f, at, value)
        assert err is not None and f"({reason};" in err, (reason, err)
    assert python_peer.get_field(soul, "name") == "Ann"
    assert python_peer.state_of(soul, "name") == state

    # a hostile Gun peer serves the page alice's profile, one field forged
    alice = HostIdentity.generate()
    good_soul = namespace.user_soul(alice.sui_address, "profile")
    python_peer.protected("profile", alice).put({"name": "Alice"})
    ((_, at, stored),) = python_peer.stored_node(good_soul)
    good = namespace.to_wire(stored)
    assert good is not None
    mallory = HostIdentity.generate()
    forged = namespace.to_wire(
        namespace.seal(
            mallory,
            namespace.user_soul(mallory.sui_address, "profile").encode(),
            b"bio",
            at,
            b'"evil"',
        )
    )
    node = {
        "_": {"#": good_soul, ">": {"name": at, "bio": at, "age": at}},
        "name": good,
        "bio": forged,
        "age": good[:-2] + '7"',
    }
    with HostileGunPeer({good_soul: node}) as hostile:
        answer = ok(
            page,
            f"const gun = window.Gun({{peers: ['{hostile.url}'], localStorage: false}});"
            f"const author = '{alice.sui_address}';"
            "const node = p.tiersOver(gun).protected('profile', {author});"
            "const read = await node.get();"
            f"return {{read, held: Object.keys(gun._.graph['{good_soul}'] || {{}}),"
            " refused: p.refusedByReason(gun)}",
        )
    assert answer["read"] == {"name": "Alice"}
    assert sorted(answer["held"]) == ["_", "name"]  # the forgeries never reached gun's graph
    assert set(answer["refused"]) == {"wrong_key", "bad_signature"}


def _moved_private(page: Page) -> tuple[str, str, float, str]:
    """A field of the page's private space, copied to another field (its signature
    covers the field it was written in)."""
    ok(page, "return p.graph.private('box').put({a: 'secret'})")
    soul = ok(page, "return p.graph.private('box').soul")
    value = ok(page, f"return p.gun._.graph['{soul}'].a")
    at = ok(page, f"return p.gun._.graph['{soul}']._['>'].a")
    return soul, "b", at, value


def _raw_put(
    page: Page, endpoint: gun_peer.EndpointProcess, soul: str, field: str, state: float, value: str
) -> str | None:
    """A put sent on a WebSocket of its own from the page to the endpoint: its err."""
    url = endpoint.url.replace("http://", "ws://") + "gun"
    message = {
        "#": "forged-" + os.urandom(4).hex(),
        "put": {soul: {"_": {"#": soul, ">": {field: state}}, field: value}},
    }
    answer = ok(
        page,
        f"const ws = new WebSocket('{url}'); const msg = {json.dumps(message)};"
        "return await new Promise((resolve, reject) => {"
        " setTimeout(() => reject(new Error('no acknowledgement')), 10000);"
        " ws.onopen = () => ws.send(JSON.stringify(msg));"
        " ws.onmessage = (e) => { for (const m of [].concat(JSON.parse(e.data))) {"
        "  if (m['@'] === msg['#']) { ws.close(); resolve(m.err ?? null); } } }; })",
    )
    return answer if answer is None else str(answer)


class HostileGunPeer:
    """A Gun peer that answers every get of a soul it knows with the node it was given
    (forgeries included), as a hostile relay would."""

    def __init__(self, nodes: dict[str, dict[str, Any]]) -> None:
        from websockets.sync.server import serve

        self.nodes = nodes
        self._server = serve(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.socket.getsockname()[1]}/gun"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _serve(self, ws: Any) -> None:
        with contextlib.suppress(Exception):
            ws.send(json.dumps({"#": "hostile-hi", "dam": "?", "pid": "hostile"}))
            for frame in ws:
                data = json.loads(frame)
                for msg in data if isinstance(data, list) else [data]:
                    soul = (msg.get("get") or {}).get("#")
                    if isinstance(soul, str) and soul in self.nodes:
                        reply = {
                            "#": "hostile-" + os.urandom(4).hex(),
                            "@": msg["#"],
                            "put": {soul: self.nodes[soul]},
                        }
                        ws.send(json.dumps(reply))

    def __enter__(self) -> HostileGunPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(10)
