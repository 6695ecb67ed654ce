"""The DTP protocol, sans I/O: the connection state machine
(:mod:`dtp.protocol.connection`), its states and close codes (:mod:`~dtp.protocol.state`),
the events it reports (:mod:`~dtp.protocol.events`), acknowledgement and loss recovery
(:mod:`~dtp.protocol.recovery`) and bytes-like checks (:mod:`~dtp.protocol.buffers`).
Nothing here opens a socket, reads a clock or starts a thread."""
