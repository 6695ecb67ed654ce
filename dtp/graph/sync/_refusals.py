"""What a sync session refuses of its peer's updates, and tells it (docs/graph.md, "Sync
protocol", REFUSED): the peer's DATA merged, the rules' refusals before its END held back
and tried again once the END is in, every refusal reported to a peer that reads REFUSED;
and the peer's reports of ours, read."""

from __future__ import annotations

import logging
from typing import Any

from dtp.graph._merges import MergeReport
from dtp.graph.rules import RULE, Refusal
from dtp.graph.sync._messages import (
    MAX_REASON,
    MAX_REPORT_MESSAGE,
    MAX_REPORTS,
    REFUSED,
    REPORTS_PER_MESSAGE,
    _fail,
    _is_count,
)
from dtp.graph.sync._session_state import SessionState
from dtp.native.core import encode_ham_batch
from dtp.native.reference._limits import HAM_MAX_KEY

logger = logging.getLogger("dtp.graph.sync")

_HELD_BACK = 16 << 20
"""Bytes of a peer's updates a session holds back to try again at its END, at most."""
_RETRIES = 16
"""Rounds of trying the held-back updates again at the peer's END, at most (each must
let some in)."""


def _wire_reason(refusal: Refusal) -> str:
    return refusal.reason if refusal.rule is None else f"{RULE}:{refusal.rule}"


class SessionRefusals(SessionState):
    """The peer's DATA merged and its refusals reported; the peer's REFUSED read."""

    def _merge_data(self, batch: bytes) -> MergeReport:
        """Merge one DATA batch of the peer's, and report what was refused.

        Before the peer's END, what a rule refuses may only have come before what it
        depends on (a vote before its proposal: the comparison pushes in the order of
        the summary tree, not of the writes); it is held back, uncounted and
        unreported, and tried again once the END is in (:meth:`_after_peer_end`)."""
        holding = not self.end_received
        report = self.graph._merge(batch, self, atomic=False, final=not holding)
        if not report.refused:
            return report
        final: list[Refusal] = []
        overflow: list[Refusal] = []
        held = 0
        for r in report.refusals:
            if r.reason != RULE or not holding:
                final.append(r)
            elif r.update is not None and self._held_back_bytes < _HELD_BACK:
                self._held_back.append(r)
                self._held_back_bytes += len(r.update.soul) + len(r.update.field)
                self._held_back_bytes += len(r.update.value) + 16
                held += 1
            else:
                overflow.append(r)
        if overflow:
            self.graph._count_rule_refusals(overflow)
            final.extend(overflow)
        self._report(report.refused - held, final)
        return report

    def _after_peer_end(self) -> None:
        """The peer's END is in: try the held-back updates again (their dependencies
        have come by now, if the peer had them), count and report those still refused,
        and send a peer that reads REFUSED the final one."""
        held = self._held_back
        self._held_back = []
        self._held_back_bytes = 0
        rounds = 0
        while held and rounds < _RETRIES:
            rounds += 1
            batch = encode_ham_batch([r.update for r in held if r.update is not None])
            report = self.graph._merge(batch, self, atomic=False, final=False)
            still = [r for r in report.refusals if r.reason == RULE]
            progress = len(still) < len(held)
            held = still
            if not progress:
                break
        if held:
            self.graph._count_rule_refusals(held)
        self._report(len(held), held, final=True)

    def _report(self, count: int, refusals: list[Refusal], *, final: bool = False) -> None:
        """Tell a peer that reads REFUSED what was refused of its updates (``count``,
        ``refusals`` describing some of them); ``final`` once its END is handled."""
        if count:
            self.stats["refused"] += count
            logger.debug("graph sync: refused %d of the peer's updates", count)
        if not self.peer_reports or (not count and not final):
            return
        room = max(0, MAX_REPORTS - self._reports_sent)
        described = refusals[:room]
        self._reports_sent += len(described)
        entries = [
            [
                r.update.soul,
                r.update.field,
                r.update.state,
                _wire_reason(r)[:MAX_REASON],
                r.message[:MAX_REPORT_MESSAGE],
            ]
            for r in described
            if r.update is not None
        ]
        step = REPORTS_PER_MESSAGE
        chunks = [entries[i : i + step] for i in range(0, len(entries), step)] or [[]]
        left = count
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            n = left if last else len(chunk)
            left -= n
            self._send([REFUSED, n, chunk, final and last])

    def _on_refused(self, message: list[Any]) -> None:
        """The peer's report of what it refused of ours."""
        if len(message) != 4:
            raise _fail("REFUSED is [6, count, [[soul, field, state, reason, text], ...], final]")
        count, entries, final = message[1], message[2], message[3]
        if (
            not _is_count(count)
            or not isinstance(entries, list)
            or len(entries) > REPORTS_PER_MESSAGE
            or count < len(entries)
            or type(final) is not bool
        ):
            raise _fail("bad REFUSED")
        if final and (self.peer_report_final or not self.end_sent):
            raise _fail("a final REFUSED before our END, or twice")
        parsed: list[Refusal] = []
        for entry in entries:
            if (
                not isinstance(entry, list)
                or len(entry) != 5
                or not isinstance(entry[0], bytes)
                or not 1 <= len(entry[0]) <= HAM_MAX_KEY
                or not isinstance(entry[1], bytes)
                or not 1 <= len(entry[1]) <= HAM_MAX_KEY
                or type(entry[2]) is not float
                or not isinstance(entry[3], str)
                or not 1 <= len(entry[3]) <= MAX_REASON
                or not isinstance(entry[4], str)
                or len(entry[4]) > MAX_REPORT_MESSAGE
            ):
                raise _fail("bad REFUSED entry")
            kind, _, rule = entry[3].partition(":")
            by_rule = kind == RULE and bool(rule)
            parsed.append(
                Refusal(
                    entry[0].decode("utf-8", "replace"),
                    entry[1].decode("utf-8", "replace"),
                    entry[2],
                    RULE if by_rule else entry[3],
                    entry[4],
                    rule if by_rule else None,
                )
            )
        self.peer_refusals.extend(parsed)
        if final:
            self.peer_report_final = True
        if count:
            self.stats["refused_by_peer"] += count
            graph = self.graph
            with graph._lock:
                graph.stats["refused_by_peers"] += count
            logger.warning(
                "graph sync: the peer refused %d of our updates%s",
                count,
                f" (first: {parsed[0]})" if parsed else "",
            )
