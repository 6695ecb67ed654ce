/// A sending side's pipe for the ledger carrier: a few independent `InnerPipe` lanes
/// (so that several streams don't wait on one another), owned by the side that sends.
///
/// The pipe is an address-owned object, so sending needs no consensus and only its owner
/// can send through it. It is bound to one connection, and can be created only by a
/// participant of that connection while the connection is not Closed.
module dtp::pipe;

use dtp::inner_pipe::{Self, InnerPipe};
use dtp::transport_control::TransportControl;
use sui::event;

#[error(code = 70)]
const EInvalidInnerCount: vector<u8> = b"A pipe has between 1 and 8 inner pipes";
#[error(code = 71)]
const EInnerNotFound: vector<u8> = b"No inner pipe with this index";

const MAX_INNERS: u64 = 8;

public struct Pipe has key {
    id: UID,
    /// The connection (TransportControl) this pipe carries data for.
    connection: ID,
    owner: address,
    inners: vector<InnerPipe>,
}

public struct PipeCreated has copy, drop {
    pipe: ID,
    connection: ID,
    owner: address,
    inners: u64,
}

public struct PipeDestroyed has copy, drop {
    pipe: ID,
    connection: ID,
}

/// Create a pipe with `inner_count` lanes for the sender's side of `tc` and send it to
/// the sender. Aborts with `ENotParticipant` / `EConnectionClosed` from
/// `dtp::transport_control`, or `EInvalidInnerCount`.
public fun create(tc: &TransportControl, inner_count: u64, ctx: &mut TxContext): ID {
    tc.check_version();
    let owner = ctx.sender();
    tc.assert_participant(owner);
    tc.assert_not_closed();
    assert!(inner_count >= 1 && inner_count <= MAX_INNERS, EInvalidInnerCount);
    let mut inners = vector[];
    let mut i = 0;
    while (i < inner_count) {
        inners.push_back(inner_pipe::new(i));
        i = i + 1;
    };
    let pipe = Pipe { id: object::new(ctx), connection: tc.connection_id(), owner, inners };
    let pipe_id = object::id(&pipe);
    event::emit(PipeCreated { pipe: pipe_id, connection: pipe.connection, owner, inners: inner_count });
    transfer::transfer(pipe, owner);
    pipe_id
}

/// Send one record on lane `inner`; returns its sequence number.
public fun send(pipe: &mut Pipe, inner: u64, data: vector<u8>): u64 {
    assert!(inner < pipe.inners.length(), EInnerNotFound);
    let pipe_id = object::id(pipe);
    inner_pipe::send(&mut pipe.inners[inner], pipe_id, data)
}

/// Record that the receiver acknowledged every sequence number below `acked` on `inner`.
public fun sync(pipe: &mut Pipe, inner: u64, acked: u64) {
    assert!(inner < pipe.inners.length(), EInnerNotFound);
    let pipe_id = object::id(pipe);
    inner_pipe::sync(&mut pipe.inners[inner], pipe_id, acked);
}

/// Delete the pipe.
public fun destroy(pipe: Pipe) {
    let Pipe { id, connection, owner: _, inners: _ } = pipe;
    event::emit(PipeDestroyed { pipe: id.to_inner(), connection });
    id.delete();
}

public fun connection(pipe: &Pipe): ID { pipe.connection }

public fun owner(pipe: &Pipe): address { pipe.owner }

public fun inner_count(pipe: &Pipe): u64 { pipe.inners.length() }

public fun inner(pipe: &Pipe, index: u64): &InnerPipe {
    assert!(index < pipe.inners.length(), EInnerNotFound);
    &pipe.inners[index]
}
