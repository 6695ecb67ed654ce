"""What a station's tippers have had accepted (:class:`StationTipState`): the totals per
tipper, and the tip state file that carries them to a restarted station."""

from __future__ import annotations

import json
import os

from dtp.errors import InvalidObjectId
from dtp.ledger.objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.broadcast.checks import _same_id
from dtp.messaging.broadcast.station_state import StationState


class StationTipState(StationState):
    """The tip totals of :class:`~dtp.messaging.broadcast.station.BroadcastStation`."""

    @property
    def tipped(self) -> dict[str, int]:
        """MIST of tips accepted per tipper address (this station's and the totals it
        was started with): what a replacement station takes as ``tipped``."""
        with self._lock:
            return dict(self._tipped)

    def _load_tip_state(self) -> dict[str, int]:
        """The totals in the tip state file (none when there is no file yet). A file
        that cannot be read, is damaged or is another broadcast's raises
        :class:`~dtp.messaging.errors.StationError` naming it, as the sealed inbox's
        state file raises SealedError (a damaged one raised a bare JSONDecodeError,
        UnicodeDecodeError or ValueError)."""
        path = self._tip_state
        if path is None:
            return {}
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:  # JSON and UTF-8 errors too
            raise E.StationError(f"tip state file {path!r} cannot be read ({exc})") from None
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("tipped"), dict)
            or not _same_id(str(state.get("broadcast_id")), self.broadcast_id)
        ):
            raise E.StationError(f"tip state file {path!r} is not this broadcast's tip state")
        tipped: dict[str, int] = {}
        for address, total in state["tipped"].items():
            try:
                key: str | None = normalize_id(address, "tipper address")
            except InvalidObjectId:
                key = None
            if key is None or type(total) is not int or total < 0:
                raise E.StationError(
                    f"tip state file {path!r} is damaged (a total of {total!r} for "
                    f"{address!r}, not an int of MIST >= 0 for an address)"
                )
            tipped[key] = max(tipped.get(key, 0), total)
        return tipped

    def _save_tip_state(self) -> None:
        """Write the totals to the tip state file, atomically (a crash leaves the old
        file or the new one), before the tip counts as accepted. The totals are read
        under the save lock, so a later write never holds older totals (one may hold
        a tip whose own write then failed: a total too high refuses tips, never
        accepts one twice)."""
        assert self._tip_state is not None
        tmp = f"{self._tip_state}.tmp"
        with self._save_lock:
            with self._lock:
                tipped = dict(self._tipped)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"broadcast_id": self.broadcast_id, "tipped": tipped}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._tip_state)
