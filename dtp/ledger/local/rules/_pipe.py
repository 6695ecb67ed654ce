"""The rules of ``dtp::pipe``: the ledger carrier's data plane."""

from __future__ import annotations

from typing import Any

from dtp.errors import move_error
from dtp.ledger._objects import MAX_DATA_LENGTH, MAX_INNERS
from dtp.ledger.local.rules._common import Exec, rule
from dtp.ledger.local.rules._transport_control import assert_participant, closed_error


@rule("pipe::create")
def pipe_create(x: Exec, tc_id: str, inner_count: int) -> str:
    tc = x.load(tc_id, "TransportControl")
    assert_participant(x, tc, tc_id)
    if tc["state"]["kind"] == "Closed":
        raise closed_error(tc_id)
    if not 1 <= inner_count <= MAX_INNERS:
        raise move_error("pipe", "EInvalidInnerCount", f"got {inner_count}")
    inners = [{"index": i, "next_seq": 0, "acked": 0} for i in range(inner_count)]
    pipe_id = x.create("Pipe", x.sender, {"connection": tc_id, "owner": x.sender, "inners": inners})
    x.emit(
        "pipe",
        "PipeCreated",
        {"pipe": pipe_id, "connection": tc_id, "owner": x.sender, "inners": inner_count},
    )
    return pipe_id


def _inner(pipe: dict[str, Any], pipe_id: str, inner: int) -> dict[str, Any]:
    if inner >= len(pipe["inners"]):
        raise move_error(
            "pipe", "EInnerNotFound", f"pipe {pipe_id} has {len(pipe['inners'])} inner pipes"
        )
    lane: dict[str, Any] = pipe["inners"][inner]
    return lane


@rule("pipe::send")
def pipe_send(x: Exec, pipe_id: str, inner: int, data: bytes) -> int:
    pipe = x.load(pipe_id, "Pipe")
    lane = _inner(pipe, pipe_id, inner)
    if len(data) > MAX_DATA_LENGTH:
        raise move_error("inner_pipe", "EDataTooLarge", f"{len(data)} > {MAX_DATA_LENGTH} bytes")
    seq: int = lane["next_seq"]
    lane["next_seq"] = seq + 1
    x.emit(
        "inner_pipe", "PipeDataSent", {"pipe": pipe_id, "inner": inner, "seq": seq, "data": data}
    )
    return seq


@rule("pipe::sync")
def pipe_sync(x: Exec, pipe_id: str, inner: int, acked: int) -> None:
    pipe = x.load(pipe_id, "Pipe")
    lane = _inner(pipe, pipe_id, inner)
    if acked > lane["next_seq"]:
        raise move_error(
            "inner_pipe", "EAckBeyondSent", f"acked {acked} > next seq {lane['next_seq']}"
        )
    if acked < lane["acked"]:
        raise move_error("inner_pipe", "EAckRegressed", f"acked {acked} < {lane['acked']}")
    lane["acked"] = acked
    x.emit("inner_pipe", "PipeSynced", {"pipe": pipe_id, "inner": inner, "acked": acked})


@rule("pipe::destroy")
def pipe_destroy(x: Exec, pipe_id: str) -> None:
    pipe = x.load(pipe_id, "Pipe")
    x.delete(pipe_id)
    x.emit("pipe", "PipeDestroyed", {"pipe": pipe_id, "connection": pipe["connection"]})
