"""Who a host is: its Sui (Ed25519) and Noise (X25519) keys (:mod:`dtp.identity.keys`),
keys made ahead of need (:mod:`~dtp.identity._ahead`), the Noise handshake with its
Sui-signed identity proof (:mod:`~dtp.identity._noise`), Sui signatures of every scheme
(:mod:`~dtp.identity._schemes`) and the Sui node's check of zkLogin ones
(:mod:`~dtp.identity._zklogin`), the wallets a client proves itself with
(:mod:`~dtp.identity.wallets`), Ed25519 as Sui verifies it (:mod:`~dtp.identity._ed25519`),
BCS integers (:mod:`~dtp.identity._bcs`) and DTP's own files (:mod:`~dtp.identity._files`)."""
