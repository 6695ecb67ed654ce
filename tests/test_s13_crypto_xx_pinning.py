"""A client that pins the server's key in XX (``expected_server_static``) checks the key
message 2 reveals before it writes message 3, which carries its own static key: an
impostor learns nothing of the client."""

from __future__ import annotations

import pytest

from dtp.connection import CloseCode
from dtp.keys import HostIdentity
from tests.protocol.test_connection import make_pair


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_pinned_xx_client_sends_no_message_3_to_an_impostor(reliable: bool) -> None:
    expected = HostIdentity.generate().noise_public  # the server is not its holder
    client, impostor = make_pair(
        ik=False, expected_server_static=expected, reliable_carrier=reliable
    )
    impostor.receive_data(client.data_to_send(0.0), 0.0)
    client.receive_data(impostor.data_to_send(0.0), 0.0)
    assert client.closed
    term = client.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED
    assert "expected" in term.reason
    sent = client.data_to_send(0.0)
    assert sent == b""  # no HS_FINAL (record kind 3) with the client's static key
    timer = client.get_timer()
    if timer is not None:  # nor later, from a resend timer
        client.handle_timer(timer)
    assert client.data_to_send(1e9) == b""
    assert impostor._hs.remote_static is None and not impostor._hs.complete
