"""What a ledger carrier's receiver has seen of one inner pipe of its peer's pipe
(:class:`_Lane`): the seqs seen, the gap and its timer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Lane:
    """What the receiver has seen of one inner pipe of a peer pipe."""

    prefix: int = 0
    """Every seq below this was seen (or given up)."""
    above: set[int] = field(default_factory=set)
    """Seqs seen at or above ``prefix`` (never contains ``prefix``)."""
    gap_since: float | None = None
    """When the gap timer started (``above`` became non-empty with ``prefix`` missing)."""
    horizon: int = 0
    """The largest seq seen when the gap timer started (at that moment, so a whole batch
    read then): every seq below it still missing when the timer expires is given up."""

    def see(self, seq: int, now: float) -> bool:
        """Record ``seq`` (seen at ``now``); False if it was seen before."""
        if seq < self.prefix or seq in self.above:
            return False
        self.above.add(seq)
        self._advance()
        if self.gap_since == now:
            self.horizon = max(self.horizon, seq)
        self.start_gap_timer(now)
        return True

    def _advance(self) -> None:
        while self.prefix in self.above:
            self.above.remove(self.prefix)
            self.prefix += 1

    def start_gap_timer(self, now: float) -> None:
        """Start the gap timer if a gap opened, stop it if none is left."""
        if not self.above:
            self.gap_since = None
        elif self.gap_since is None:
            self.gap_since = now
            self.horizon = max(self.above)

    def give_up_gap(self, now: float) -> int:
        """The gap timer expired: skip every missing seq below the horizon at once, and
        start a new timer for the gaps among the seqs seen later; returns how many were
        skipped. (Skipped up to the smallest seq seen, one gap went per timer, and the
        next timer started afresh: under steady loss ``above`` grew without bound and
        the prefix fell ever further behind.)"""
        skipped = 0
        if self.horizon >= self.prefix:
            kept = {seq for seq in self.above if seq > self.horizon}
            skipped = self.horizon + 1 - self.prefix - (len(self.above) - len(kept))
            self.above = kept
            self.prefix = self.horizon + 1
            self._advance()
        self.gap_since = None
        self.start_gap_timer(now)
        return skipped
