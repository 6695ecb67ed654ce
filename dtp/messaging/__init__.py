"""Messaging on top of DTP connections: RPC (:mod:`.rpc`, JSON-RPC in :mod:`.jsonrpc`),
pub/sub (:mod:`.pubsub`), sealed messages to a host (:mod:`.sealed`), paid broadcast
(:mod:`.broadcast`), discovery and group membership (:mod:`.discovery`; the membership
engine in :mod:`.membership`) and coordination on the ledger: leases, locks with fencing
tokens, a small key-value registry and watches (:mod:`.coordination`,
docs/coordination.md). Wire format: docs/messaging.md."""
