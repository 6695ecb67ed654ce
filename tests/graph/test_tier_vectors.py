"""docs/graph.md's vectors of the signed tiers against dtp.graph (web/dtp-client's
test/graph-envelopes.test.js checks the same vectors against the JavaScript, so the two
implementations agree byte for byte): reader keys derived from a Sui keystring,
protected fields stored and on Gun's wire, private values, wrapped keys and reader
records sealed with the vector's nonce and ephemeral key and opened again, and each
refusal with its reason -- from merge(), the way a peer's batch meets it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dtp.graph import Graph, namespace
from dtp.graph import _private as private
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.paths import GRAPH_MD
from tests.support.vectors import load_vectors

KINDS = ("graph-reader-key", "graph-signed-field", "graph-private-field", "graph-refused")


def _identity(seed_hex: str) -> HostIdentity:
    keystring = base64.b64encode(b"\x00" + bytes.fromhex(seed_hex)).decode()
    return HostIdentity.from_sui_keystring(keystring)


def _vectors(kind: str) -> list[dict[str, Any]]:
    return load_vectors(kind, GRAPH_MD)


def test_there_are_vectors_of_every_kind() -> None:
    for kind in KINDS:
        assert _vectors(kind), kind
    refused = {v["reason"] for v in _vectors("graph-refused")}
    assert set(namespace.MESSAGES) | set(private.MESSAGES) == refused  # each reason shown


@pytest.mark.parametrize("v", _vectors("graph-reader-key"), ids=lambda v: v["name"])
def test_a_reader_key_is_the_noise_key_of_the_keystring(v: dict[str, Any]) -> None:
    me = HostIdentity.from_sui_keystring(v["keystring"])
    assert base64.b64decode(v["keystring"])[1:].hex() == v["seed"]
    assert me.sui_address == v["address"]
    assert me.noise_private_bytes().hex() == v["reader_secret"]
    assert me.noise_public.hex() == v["reader_key"]


@pytest.mark.parametrize("v", _vectors("graph-signed-field"), ids=lambda v: v["name"])
def test_a_signed_field_stored_and_on_guns_wire(v: dict[str, Any]) -> None:
    owner = _identity(v["seed"])
    soul, field = v["soul"].encode(), v["field"].encode()
    text = encode_value(v["value"])
    assert text.decode() == v["text"]
    stored = namespace.seal(owner, soul, field, v["state"], text)
    assert stored.hex() == v["stored"]
    assert namespace.to_wire(stored) == v["wire"]
    assert namespace.from_wire(v["wire"]) == stored
    assert namespace.check(HamUpdate(soul, field, v["state"], stored)) is None


@pytest.mark.parametrize("v", _vectors("graph-private-field"), ids=lambda v: v["name"])
def test_a_private_field_sealed_signed_and_opened(v: dict[str, Any]) -> None:
    author = _identity(v["seed"])
    soul, field, state = v["soul"].encode(), v["field"].encode(), v["state"]
    if v["body_kind"] == "value":
        text = encode_value(v["value"])
        assert text.decode() == v["text"]
        key = bytes.fromhex(v["content_key"])
        body = private.seal_value(
            key,
            bytes.fromhex(v["key_id"]),
            soul,
            field,
            state,
            text,
            nonce=bytes.fromhex(v["nonce"]),
        )
        assert private.open_value(key, soul, field, state, bytes.fromhex(v["body"])) == text
    elif v["body_kind"] == "wrap":
        reader = _identity(v["reader_seed"])
        assert field.decode() == private.wrap_field(bytes.fromhex(v["key_id"]), reader.noise_public)
        ephemeral = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["ephemeral_secret"]))
        body = private.wrap(
            bytes.fromhex(v["content_key"]),
            reader.noise_public,
            soul,
            field,
            state,
            ephemeral_secret=ephemeral,
        )
        secret = X25519PrivateKey.from_private_bytes(reader.noise_private_bytes())
        opened = private.unwrap(secret, soul, field, state, bytes.fromhex(v["body"]))
        assert opened.hex() == v["content_key"]
    else:
        assert field.decode() == private.reader_field(_identity_key(v))
        body = bytes([private.READER, 1 if v["on"] else 0])
    assert body.hex() == v["body"]
    stored = private.sign(author, soul, field, state, body)
    assert json.loads(stored) == v["stored"]
    assert private.check(HamUpdate(soul, field, state, stored)) is None


def _identity_key(v: dict[str, Any]) -> bytes:
    (reader,) = [r for r in _vectors("graph-reader-key") if v["field"].endswith(r["reader_key"])]
    return bytes.fromhex(reader["reader_key"])


@pytest.mark.parametrize("v", _vectors("graph-refused"), ids=lambda v: v["name"])
def test_each_refusal_has_the_reason_the_vector_names(v: dict[str, Any]) -> None:
    soul, field = v["soul"].encode(), v["field"].encode()
    if namespace.is_user_space(soul):
        stored = namespace.from_wire(v["value"]) or encode_value(v["value"])
    else:
        stored = encode_value(v["value"])
    g = Graph()
    report = g.merge(encode_ham_batch([HamUpdate(soul, field, v["state"], stored)]))
    assert report.refused == 1 and g.stats["refused_by_reason"] == {v["reason"]: 1}
    g.close()
