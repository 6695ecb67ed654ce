"""DTP for Python: TCP-like, end-to-end encrypted connections between hosts named by
Sui object IDs, with an on-chain firewall, fees in escrow, messaging and a replicated
graph store."""

__version__ = "0.1.0"

__all__ = ["__version__"]
