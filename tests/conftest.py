"""Shared fixtures. ``backend`` runs a test once per core backend: the C extension
(``dtp._core`` native names) and the pure-Python twin (``dtp._reference``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from dtp import _core, _reference
from tests.netns import NetnsUnavailable, TwoMachines, two_machines

if TYPE_CHECKING:
    from tests.sui_network import SuiNetwork

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("sanitizer", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

NATIVE = SimpleNamespace(
    name="c",
    Aead=_core.NativeAead,
    Reassembler=_core.NativeReassembler,
    HamGraph=_core.NativeHamGraph,
    Lane=_core.NativeLane,
    decode_frames=_core.native_decode_frames,
    encode_frames=_core.native_encode_frames,
    parse_records=_core.native_parse_records,
    write_record_header=_core.native_write_record_header,
    find_ham_souls=_core.native_find_ham_souls,
    zero_negative_states=_core.native_zero_negative_states,
)
REFERENCE = SimpleNamespace(
    name="python",
    Aead=_reference.Aead,
    Reassembler=_reference.Reassembler,
    HamGraph=_reference.HamGraph,
    Lane=_reference.Lane,
    decode_frames=_reference.decode_frames,
    encode_frames=_reference.encode_frames,
    parse_records=_reference.parse_records,
    write_record_header=_reference.write_record_header,
    find_ham_souls=_reference.find_ham_souls,
    zero_negative_states=_reference.zero_negative_states,
)
BACKENDS = [NATIVE, REFERENCE] if _core.HAVE_NATIVE else [REFERENCE]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> SimpleNamespace:
    return request.param


def require_native() -> None:
    if not _core.HAVE_NATIVE:
        pytest.fail("the C extension is not built; differential tests need it")


@pytest.fixture
def netns() -> Iterator[TwoMachines]:
    """Two machines: network namespaces joined by a veth pair (tests/netns.py), removed
    after the test; skipped, with the reason, where namespaces cannot be made."""
    stack = contextlib.ExitStack()
    try:
        machines = stack.enter_context(two_machines())
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    with stack:
        yield machines


@pytest.fixture
def sui_network() -> Iterator[SuiNetwork]:
    """A Sui node with a funded key: the stand-in, or the real node DTP_SUI_RPC,
    DTP_SUI_PACKAGE and DTP_SUI_KEY name (tests/sui_network.py, the one switch)."""
    from tests import sui_network as networks

    with networks.sui_network() as network:
        yield network
