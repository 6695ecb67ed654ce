"""LocalLedger's reads of the applications' objects: registries, response escrows, the
payment models' objects and a sponsor lane's pledges (their calls are stated with their
declarations, run by ``LocalStore._move``)."""

from __future__ import annotations

from typing import Any

from dtp.errors import ObjectNotFound
from dtp.ledger._coordination import RegistryState
from dtp.ledger._economics import EconomicsObject, economics_object_from_fields
from dtp.ledger._objects import check_fields, normalize_id
from dtp.ledger.interface import ResponseEscrow
from dtp.ledger.local import rules
from dtp.ledger.local._store import LocalStore
from dtp.ledger.local._stored import SHAPE_ERRORS, SqlStore


class AppReads(LocalStore):
    """The objects of ``dtp::registry``, ``dtp::response_escrow``, ``dtp::subscription``,
    ``dtp::sponsor``, ``dtp::tickets`` and ``dtp::retention``, read from their rows."""

    def _row(self, object_id: str, struct: str) -> tuple[int, dict[str, Any]]:
        """The version and stored fields of the ``struct`` ``object_id`` (normalized)."""
        row = SqlStore(self._db).load(object_id)
        if row is None or row[0] != rules.OBJECT_TYPES[struct]:
            raise ObjectNotFound(f"No {struct} with ID {object_id} exists.")
        return row[2], row[3]

    def get_registry(self, registry_id: str) -> RegistryState:
        object_id = normalize_id(registry_id)

        def read() -> RegistryState:
            version, data = self._row(object_id, "Registry")
            try:
                return RegistryState.from_fields(object_id, version, data)
            except SHAPE_ERRORS as exc:
                raise rules.wrong_shape(f"object {object_id}", exc) from exc

        return self._read_one(read)

    def get_response_escrow(self, escrow_id: str) -> ResponseEscrow:
        object_id = normalize_id(escrow_id)

        def read() -> ResponseEscrow:
            version, d = self._row(object_id, "ResponseEscrow")
            try:
                escrow = ResponseEscrow.from_fields(object_id, version, d)
                # from_fields copies the fields as stored: their types are checked here
                check_fields(escrow)
                return escrow
            except SHAPE_ERRORS as exc:
                raise rules.wrong_shape(f"object {object_id}", exc) from exc

        return self._read_one(read)

    def _model(self, object_id: str, struct: str) -> EconomicsObject:
        object_id = normalize_id(object_id)

        def read() -> EconomicsObject:
            version, data = self._row(object_id, struct)
            try:
                model = economics_object_from_fields(struct, object_id, version, data)
                # it copies the fields as stored: their types are checked here
                check_fields(model)
                return model
            except SHAPE_ERRORS as exc:
                # the struct is one it builds (the type matched): the data is at fault
                raise rules.wrong_shape(f"object {object_id}", exc) from exc

        return self._read_one(read)

    def _model_data(self, object_id: str, struct: str) -> dict[str, Any]:
        """The stored fields of the ``struct`` ``object_id``."""
        object_id = normalize_id(object_id)
        return self._read_one(lambda: self._row(object_id, struct)[1])

    def _sponsor_pledge(self, lane_id: str, connection_id: str) -> int | None:
        lane = normalize_id(lane_id)
        data = self._model_data(lane, "SponsorLane")
        try:
            pledge = data["pledges"].get(normalize_id(connection_id))
            if pledge is not None and (type(pledge) is not int or not 0 <= pledge <= rules.U64_MAX):
                raise TypeError(f"a pledge of {pledge!r:.40}")
        except SHAPE_ERRORS as exc:
            raise rules.wrong_shape(f"object {lane}", exc) from exc
        return pledge
