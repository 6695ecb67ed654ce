"""Messaging on top of DTP connections: RPC (:mod:`.rpc`, JSON-RPC in :mod:`.jsonrpc`),
pub/sub (:mod:`.pubsub`), sealed messages to a host (:mod:`.sealed`), paid broadcast
(:mod:`.broadcast`) and discovery (:mod:`.discovery`). Wire format: docs/messaging.md."""
