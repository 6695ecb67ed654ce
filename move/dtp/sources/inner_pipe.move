/// One ordered lane of a `dtp::pipe::Pipe`: the ledger carrier's data plane.
///
/// Sending a record emits `PipeDataSent { pipe, inner, seq, data }`; the receiver reads
/// these events. Sequence numbers count from 0 per inner pipe and never repeat, so the
/// receiver can reorder and detect gaps. `sync` records how far the receiver has
/// acknowledged (every seq below `acked`), which the sender learns in-band.
module dtp::inner_pipe;

use sui::event;

#[error(code = 72)]
const EDataTooLarge: vector<u8> = b"Record data exceeds the per-record limit";
#[error(code = 73)]
const EAckBeyondSent: vector<u8> = b"Acknowledged sequence number was never sent";
#[error(code = 74)]
const EAckRegressed: vector<u8> = b"Acknowledged sequence number went backwards";

/// Largest `data` per record, in bytes (well under Sui's per-event size limit).
/// Sui refuses a pure transaction argument of 16384 bytes or more before any Move
/// code runs, and a `vector<u8>` argument carries a 2-byte length: 16381 is the most
/// a transaction can pass, so it is the bound here too (docs/escrow.md §8).
const MAX_DATA_LENGTH: u64 = 16_381;

public struct InnerPipe has store, drop {
    /// Position in the owning pipe.
    index: u64,
    /// Sequence number the next record gets.
    next_seq: u64,
    /// The receiver has acknowledged every sequence number below this.
    acked: u64,
}

public struct PipeDataSent has copy, drop {
    pipe: ID,
    inner: u64,
    seq: u64,
    data: vector<u8>,
}

public struct PipeSynced has copy, drop {
    pipe: ID,
    inner: u64,
    acked: u64,
}

public(package) fun new(index: u64): InnerPipe {
    InnerPipe { index, next_seq: 0, acked: 0 }
}

/// Emit one record and return its sequence number.
public(package) fun send(inner: &mut InnerPipe, pipe: ID, data: vector<u8>): u64 {
    assert!(data.length() <= MAX_DATA_LENGTH, EDataTooLarge);
    let seq = inner.next_seq;
    inner.next_seq = seq + 1;
    event::emit(PipeDataSent { pipe, inner: inner.index, seq, data });
    seq
}

/// Record the receiver's acknowledgement: every seq below `acked` arrived.
/// `acked` may not pass what was sent nor go backwards.
public(package) fun sync(inner: &mut InnerPipe, pipe: ID, acked: u64) {
    assert!(acked <= inner.next_seq, EAckBeyondSent);
    assert!(acked >= inner.acked, EAckRegressed);
    inner.acked = acked;
    event::emit(PipeSynced { pipe, inner: inner.index, acked });
}

public fun index(inner: &InnerPipe): u64 { inner.index }

public fun next_seq(inner: &InnerPipe): u64 { inner.next_seq }

public fun acked(inner: &InnerPipe): u64 { inner.acked }

/// Records sent but not yet acknowledged.
public fun in_flight(inner: &InnerPipe): u64 { inner.next_seq - inner.acked }

public fun max_data_length(): u64 { MAX_DATA_LENGTH }
