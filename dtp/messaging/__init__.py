"""Messaging on top of DTP connections: RPC (:mod:`.rpc`, JSON-RPC in :mod:`.jsonrpc`),
pub/sub (:mod:`.pubsub`), sealed messages to a host (:mod:`.sealed`), paid broadcast
(:mod:`.broadcast`), discovery and group membership (:mod:`.discovery`; the membership
engine in :mod:`.membership`). Wire format: docs/messaging.md."""
