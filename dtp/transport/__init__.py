"""Transport: blocking and asyncio drivers, carriers and server limits; imports no ledger or
payment code (docs/architecture.md)."""
