"""The DTP protocol, sans I/O: the connection state machine
(:mod:`dtp.protocol.connection`), its states and close codes (:mod:`~dtp.protocol._state`),
the events it reports (:mod:`~dtp.protocol._events`), acknowledgement and loss recovery
(:mod:`~dtp.protocol._recovery`) and bytes-like checks (:mod:`~dtp.protocol._buffers`).
Nothing here opens a socket, reads a clock or starts a thread."""
