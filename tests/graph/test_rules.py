"""Validation rules (dtp.graph.rules) on a graph's own paths in: a local put is judged
whole before anything is written, a peer's batch loses exactly the updates a rule
refuses, every refusal is counted by rule and listed in the merge's report, and what a
rule sees (value, current value, state, author) is what the update and the table hold.
Refused updates are absent from the SQLite file too. With no rule, and for a batch
under no rule's prefix, nothing is decoded in Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.graph import Graph, link, rules
from dtp.graph.namespace import user_soul
from dtp.graph.rules import RuleRefused, Update
from dtp.graph.sea import SeaPair
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import decode_ham_batch, encode_ham_batch
from dtp.native.types import HamUpdate

HAMS = ["c", "python"]


def short_text(update: Update) -> str | None:
    if not isinstance(update.value, str):
        return "a tag is a string"
    return None if len(update.value) <= 8 else "a tag is at most 8 characters"


def batch_of(*updates: tuple[str, str, float, object]) -> bytes:
    return encode_ham_batch(
        [HamUpdate(s.encode(), f.encode(), st, encode_value(v)) for s, f, st, v in updates]
    )


@pytest.mark.parametrize("ham", HAMS)
def test_a_local_put_a_rule_refuses_writes_nothing(ham: str, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    g = Graph(db, ham=ham)
    g.rules.add("tags", short_text, prefix="tags/")
    g.put("tags/1", {"a": "ok"})
    with pytest.raises(RuleRefused) as caught:
        # one field of the two is refused: neither is written
        g.put("tags/1", {"a": "fine", "b": "far too long a tag"})
    refusal = caught.value.refusal
    assert (refusal.soul, refusal.field, refusal.rule) == ("tags/1", "b", "tags")
    assert refusal.message == "a tag is at most 8 characters"
    assert "rule 'tags'" in str(caught.value)
    assert g.get("tags/1") == {"a": "ok"}
    assert g.stats["refused_by_rule"] == {"tags": 1}
    # other souls are not the rule's
    g.put("notes/1", {"a": "a long note, under no rule"})
    g.close()
    reopened = Graph(db, ham=ham)
    assert reopened.get("tags/1") == {"a": "ok"}
    assert all(v[1] != encode_value("far too long a tag") for v in reopened.snapshot().values())
    reopened.close()


@pytest.mark.parametrize("ham", HAMS)
def test_a_peer_batch_loses_only_what_a_rule_refuses(ham: str, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    g = Graph(db, ham=ham, now_ms=lambda: 2e12)
    g.rules.add("tags", short_text, prefix="tags/")
    batch = batch_of(
        ("tags/1", "a", 1e12, "ok"),
        ("tags/1", "b", 1e12, "far too long a tag"),
        ("tags/2", "a", 1e12, 42),
        ("other", "x", 1e12, "not a tag, any length"),
    )
    report = g.merge(batch)
    assert (report.applied, report.refused) == (2, 2)
    assert [(r.soul, r.field, r.rule, r.reason) for r in report.refusals] == [
        ("tags/1", "b", "tags", "rule"),
        ("tags/2", "a", "tags", "rule"),
    ]
    assert report.refusals[1].message == "a tag is a string"
    assert g.stats["refused"] == 2
    assert g.stats["refused_by_reason"] == {"rule": 2}
    assert g.stats["refused_by_rule"] == {"tags": 2}
    assert g.get("tags/1") == {"a": "ok"} and "tags/2" not in g
    assert g.get("other") == {"x": "not a tag, any length"}
    g.close()
    stored = Graph(db, ham=ham).snapshot()
    assert set(stored) == {(b"tags/1", b"a"), (b"other", b"x")}


@pytest.mark.parametrize("ham", HAMS)
def test_atomic_merges_take_a_batch_whole_or_not_at_all(ham: str) -> None:
    g = Graph(ham=ham, now_ms=lambda: 2e12)
    g.rules.add("tags", short_text, prefix="tags/")
    bad = batch_of(("tags/1", "a", 1e12, "ok"), ("tags/1", "b", 1e12, "far too long a tag"))
    report = g.merge(bad, atomic=True)
    assert (report.applied, report.refused) == (0, 1)
    assert "tags/1" not in g
    assert g.stats["refused_by_rule"] == {"tags": 1}
    good = batch_of(("tags/1", "a", 1e12, "ok"), ("tags/1", "b", 1e12, "short"))
    assert g.merge(good, atomic=True).applied == 2


def test_what_a_rule_sees() -> None:
    owner = HostIdentity.generate()
    g = Graph(identity=owner, now_ms=lambda: 2e12)
    seen: list[Update] = []

    def record(update: Update) -> None:
        seen.append(update)

    g.rules.add("all", record)  # every soul
    state = g.put("n", {"f": 1})
    g.put("n", {"f": link("other")})
    assert [(u.soul, u.field, u.value, u.current, u.local) for u in seen] == [
        ("n", "f", 1, None, True),
        ("n", "f", {"#": "other"}, 1, True),
    ]
    assert seen[0].state == state and seen[0].current_state is None and not seen[0].exists
    assert seen[1].current_state == state and seen[1].exists
    assert seen[0].author is None  # a public soul has no author
    seen.clear()
    # a signed space: the author is its owner, and the value is read out of the envelope
    soul = user_soul(owner, "profile")
    g.put(soul, {"name": "alice"})
    (update,) = seen
    assert update.author == owner.sui_address and update.value == "alice"
    assert update.stored.endswith(b'"alice"') and len(update.stored) > 96
    seen.clear()
    # a peer's update: not local
    g.merge(batch_of(("m", "g", 1e12, True)))
    assert [(u.soul, u.value, u.local) for u in seen] == [("m", True, False)]


def test_a_sea_update_shows_its_signer_and_its_value() -> None:
    pair = SeaPair.generate()
    g = Graph(now_ms=lambda: 2e12)
    seen: list[Update] = []
    g.rules.add("sea", lambda u: seen.append(u), prefix="~")
    soul = pair.soul + "/profile"
    signed = pair.sign(soul, "name", "Alice", 1e12)
    g.merge(batch_of((soul, "name", 1e12, signed)))
    (update,) = seen
    assert update.author == pair.pub and update.value == "Alice"


def test_prefix_and_souls_pick_what_a_rule_looks_at() -> None:
    g = Graph(now_ms=lambda: 2e12)
    looked: list[str] = []

    def look(update: Update) -> None:
        looked.append(update.soul)

    g.rules.add("votes", look, prefix="vote/", souls=r"vote/\d+")
    g.merge(
        batch_of(
            ("vote/1", "a", 1e12, 1),
            ("vote/x", "a", 1e12, 1),
            ("vote/12", "a", 1e12, 1),
            ("votes/1", "a", 1e12, 1),
            ("a/vote/1", "a", 1e12, 1),
        )
    )
    assert looked == ["vote/1", "vote/12"]


def test_a_rule_that_raises_refuses(caplog: pytest.LogCaptureFixture) -> None:
    g = Graph(now_ms=lambda: 2e12)

    def broken(update: Update) -> None:
        raise ZeroDivisionError("oops")

    g.rules.add("broken", broken, prefix="x")
    report = g.merge(batch_of(("x", "a", 1e12, 1)))
    assert report.refused == 1 and "x" not in g
    assert report.refusals[0].message == "the rule raised ZeroDivisionError: oops"
    assert "rule 'broken' raised" in caplog.text
    with pytest.raises(RuleRefused):
        g.put("x", {"a": 1})


def test_false_and_true_and_a_second_rule() -> None:
    g = Graph(now_ms=lambda: 2e12)
    g.rules.add("yes", lambda u: True, prefix="a")
    g.rules.add("no-b", lambda u: u.field != "b", prefix="a")
    report = g.merge(batch_of(("a", "a", 1e12, 1), ("a", "b", 1e12, 1)))
    assert report.applied == 1
    assert [(r.rule, r.message) for r in report.refusals] == [("no-b", "refused")]


def test_an_update_the_table_holds_already_is_not_judged_again() -> None:
    g = Graph(now_ms=lambda: 2e12)
    batch = batch_of(("a", "a", 1e12, 1))
    g.merge(batch)
    calls: list[Update] = []
    g.rules.add("count", lambda u: calls.append(u) or "no", prefix="a")
    report = g.merge(batch)  # the same update again: merged, it changes nothing
    assert report.same == 1 and report.refused == 0 and calls == []


def test_rules_are_added_removed_and_checked() -> None:
    g = Graph()
    rule = g.rules.add("r", short_text, prefix="p/", souls=r"p/\d+")
    assert "r" in g.rules and len(g.rules) == 1 and g.rules["r"] is rule
    assert [r.name for r in g.rules] == ["r"] and g.rules.active
    with pytest.raises(ValueError, match="registered already"):
        g.rules.add("r", short_text)
    with pytest.raises(ValueError):
        g.rules.add("", short_text)
    with pytest.raises(ValueError):
        g.rules.add("x" * 65, short_text)
    with pytest.raises(TypeError):
        g.rules.add("s", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        g.rules.add("s", short_text, prefix=b"p/")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        g.rules.add("s", short_text, souls=5)  # type: ignore[arg-type]
    g.rules.remove("r")
    assert not g.rules.active and "r" not in g.rules
    with pytest.raises(KeyError):
        g.rules.remove("r")
    g.put("p/1", {"a": "no rule now, any length"})


def test_no_rule_and_no_prefix_in_the_batch_decode_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = Graph(now_ms=lambda: 2e12)
    calls = {"find": 0, "decode": 0}
    real_find, real_decode = rules.find_ham_souls, rules.decode_ham_batch

    def find(batch: bytes, prefix: bytes) -> list[tuple[int, int]]:
        calls["find"] += 1
        return real_find(batch, prefix)

    def decode(batch: bytes) -> list[HamUpdate]:
        calls["decode"] += 1
        return real_decode(batch)

    monkeypatch.setattr(rules, "find_ham_souls", find)
    monkeypatch.setattr(rules, "decode_ham_batch", decode)
    many = batch_of(*[(f"n/{i}", "f", 1e12, i) for i in range(500)])
    g.merge(many)
    assert calls == {"find": 0, "decode": 0}
    g.rules.add("tags", short_text, prefix="tags/")
    g.merge(batch_of(*[(f"n/{i}", "f", 1e12 + 1, i) for i in range(500)]))
    assert calls == {"find": 0, "decode": 0}  # no "tags/" in it: not even looked for
    mixed = [(f"n/{i}", "f", 1e12 + 2, i) for i in range(500)] + [("tags/1", "a", 1e12, "x")]
    g.merge(batch_of(*mixed))
    # one C walk finds the one update under the prefix; only it is decoded
    assert calls == {"find": 1, "decode": 1}


def test_a_value_that_is_not_json_under_a_rule_is_refused() -> None:
    g = Graph(now_ms=lambda: 2e12)
    g.rules.add("tags", short_text, prefix="tags/")
    junk = encode_ham_batch([HamUpdate(b"tags/1", b"a", 1e12, b"{not json")])
    report = g.merge(junk)
    assert report.refused == 1 and report.refusals[0].message == "the value is not JSON"
    (update,) = decode_ham_batch(junk)
    assert report.refusals[0].update == update
