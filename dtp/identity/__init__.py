"""Who a host is: its Sui (Ed25519) and Noise (X25519) keys (:mod:`dtp.identity.keys`),
keys made ahead of need (:mod:`~dtp.identity.ahead`), the Noise handshake with its
Sui-signed identity proof (:mod:`~dtp.identity.noise`), Ed25519 as Sui verifies it
(:mod:`~dtp.identity.ed25519`), BCS integers (:mod:`~dtp.identity.bcs`) and DTP's own
files (:mod:`~dtp.identity.files`)."""
