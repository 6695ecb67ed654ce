"""Small supporting modules (session 36 review): rate limits, the backend pool, the
daemon's config file and DTP addresses.

* Config: a TOML integer beyond the float range as a number of seconds or a share
  (``drain_timeout = 1000…0``) raised OverflowError out of the config check, and an
  integer literal past 4300 digits a plain ValueError out of tomllib, not an error
  naming the file (and key); a ``host:port`` whose port ran past 4300 digits raised
  ValueError from int().
* Config: an endpoint's host holding a space (``" 127.0.0.1:80"``, ``"web 1:80"``) was
  taken, and failed in getaddrinfo at every connect (or the bind); brackets around what
  is no IPv6 address (``"[localhost]:80"``, ``"[[::1]]:80"``) were taken, and published
  so, no client's URL parser takes them; a ``public_endpoint`` with port 0 was
  published, a port no client can connect to.
* Rate limits: an int rate beyond the float range raised OverflowError (ValueError is
  what is said), a bool was taken for a rate, a ``RateLimiter`` made with a bad limit
  failed only at its first client's acquire, a NaN ``refresh_interval`` passed
  ``HostPolicy`` (the Host was never read again), and a NaN charge made every delay
  NaN (no wait at all).
* Backend pool: ``stop()`` swallowed a cancellation of the task waiting for the health
  checks to end, and that task went on as if never cancelled.
* Addresses: whitespace inside an address (``"dtp:// 0x1:80"``) was taken on the host
  side and refused on the port side.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any, cast

import pytest

from dtp.address import HostAddress, InvalidAddress, is_dtp_address
from dtp.chain.objects import Host
from dtp.daemon.balancer import BackendPool
from dtp.daemon.config import Backend, parse_config
from dtp.errors import DaemonConfigError
from dtp.ratelimit import HostPolicy, RateLimiter, TokenBucket

CONFIG = """\
[daemon]
ledger = "ledger"
identity = "host.key"
{daemon}

[[service]]
name = "web"
port = 80
backends = [{backend}]
{service}
"""


def parse(daemon: str = "", service: str = "", backend: str = '"127.0.0.1:8080"') -> Any:
    text = CONFIG.format(daemon=daemon, service=service, backend=backend)
    return parse_config(text, Path("/etc/dtp/dtp.toml"))


# -- config: numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("daemon", "service", "where"),
    [
        ("drain_timeout = 1" + "0" * 400, "", "dtp.toml:4: daemon.drain_timeout"),
        ("", "health_interval = 1" + "0" * 400, "dtp.toml:10: service[0].health_interval"),
        ("", "loss_allowance = 1" + "0" * 400, "dtp.toml:10: service[0].loss_allowance"),
    ],
)
def test_config_integer_beyond_the_float_range_is_a_config_error(
    daemon: str, service: str, where: str
) -> None:
    with pytest.raises(DaemonConfigError, match=re.escape(where)) as info:
        parse(daemon, service)
    assert len(str(info.value)) < 300  # the value is cut short in the message


def test_config_integer_literal_past_python_digit_limit_is_a_config_error() -> None:
    with pytest.raises(DaemonConfigError, match=r"dtp\.toml"):
        parse("faucet = 1" + "0" * 5000)


def test_config_port_of_thousands_of_digits_is_a_config_error() -> None:
    with pytest.raises(DaemonConfigError, match=r"dtp.toml:4: daemon.listen: port 9+\.\.\."):
        parse('listen = "127.0.0.1:' + "9" * 5000 + '"')
    # leading zeros as before
    assert parse('listen = "127.0.0.1:' + "0" * 5000 + '80"').daemon.listen.port == 80


# -- config: endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ['" 127.0.0.1:8080"', '"127.0.0.1 :8080"', '"web 1:8080"', '"web\\t1:8080"']
)
def test_config_host_with_whitespace_is_refused(backend: str) -> None:
    with pytest.raises(DaemonConfigError, match=r"service\[0\]\.backends: .*no valid host name"):
        parse(backend=backend)


@pytest.mark.parametrize("listen", ["[localhost]:80", "[[::1]]:80", "[127.0.0.1]:80", "[]:80"])
def test_config_brackets_hold_an_ipv6_address_alone(listen: str) -> None:
    with pytest.raises(DaemonConfigError, match=r"daemon\.listen: expected an IPv6 address"):
        parse(f'listen = "{listen}"')
    # (as before)
    config = parse('listen = "[::1]:7700"', backend='"[2001:db8::1]:8080"')
    assert config.daemon.listen == Backend("::1", 7700)
    assert config.services[0].backends == (Backend("2001:db8::1", 8080),)


def test_config_public_endpoint_port_zero_is_refused() -> None:
    with pytest.raises(DaemonConfigError, match=r"daemon\.public_endpoint: port 0"):
        parse('public_endpoint = "dtp.example.com:0"')
    # listening on port 0 (any free port) stays allowed
    assert parse('listen = "127.0.0.1:0"').daemon.listen.port == 0
    assert parse('public_endpoint = "dtp.example.com:7700"').daemon.public_endpoint == (
        "dtp.example.com:7700"
    )


# -- rate limits -------------------------------------------------------------------------


def test_rate_beyond_the_float_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        TokenBucket(10**400, 0.0)
    limiter = RateLimiter()
    with pytest.raises(ValueError, match="finite"):
        limiter.set_limits(10**400, 0, 0.0)
    assert (limiter.bytes_per_sec, limiter.requests_per_sec) == (0, 0)


def test_bool_is_no_rate() -> None:
    with pytest.raises(TypeError):
        TokenBucket(True, 0.0)
    with pytest.raises(TypeError):
        RateLimiter().set_limits(0, True, 0.0)


@pytest.mark.parametrize("limits", [(-1, 0), (0, math.nan), (math.inf, 0)])
def test_rate_limiter_refuses_a_bad_limit_when_made(limits: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(*limits)  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", [math.nan, math.inf, 10**400], ids=["nan", "inf", "huge"])
def test_host_policy_refuses_a_refresh_interval_that_is_no_positive_finite_number(
    interval: float,
) -> None:
    with pytest.raises(ValueError, match="refresh_interval"):
        HostPolicy(cast(Host, None), 0.0, interval)


def test_nan_charge_does_not_poison_the_bucket() -> None:
    bucket = TokenBucket(100, 0.0)
    assert bucket.charge(math.nan, 0.0) == 0.0
    # within the same instant (no refill to wash a NaN out) the debt is still seen
    delay = bucket.charge(125, 0.0)
    assert delay == pytest.approx(1.0)
    assert bucket.delay(0.0) == pytest.approx(1.0)


# -- backend pool ------------------------------------------------------------------------


def test_pool_stop_does_not_swallow_the_callers_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        pool = BackendPool("web", (Backend("127.0.0.1", 1),), 2.0, 2.0)
        cleaning = asyncio.Event()

        async def checks() -> None:
            # health checks whose end takes a moment (a probe's close, say)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cleaning.set()
                await asyncio.sleep(3)
                raise

        pool._task = asyncio.create_task(checks())
        await asyncio.sleep(0)
        stopper = asyncio.create_task(pool.stop())
        await cleaning.wait()
        stopper.cancel()
        await asyncio.wait({stopper}, timeout=4)
        assert stopper.done()
        assert stopper.cancelled()  # (old: it returned, the cancellation lost)

        # (as before) checks that died of a fault are logged, not raised; others are
        # cancelled and waited for
        async def broken() -> None:
            raise RuntimeError("boom")

        pool._task = asyncio.create_task(broken())
        await asyncio.sleep(0)
        await pool.stop()
        assert pool._task is None

        pool._task = waiting = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        await pool.stop()
        assert waiting.cancelled()

    with caplog.at_level("ERROR", logger="dtp.daemon.balancer"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["health checks failed"]


# -- addresses ---------------------------------------------------------------------------

FULL = "0x" + "ab" * 32


@pytest.mark.parametrize(
    "text",
    [f"dtp:// {FULL}:80", f"dtp://{FULL} :80", f"dtp://{FULL}\t:80", f"dtp://\u00a0{FULL}:80"],
)
def test_address_with_whitespace_inside_is_refused(text: str) -> None:
    with pytest.raises(InvalidAddress):
        HostAddress.parse(text)
    assert not is_dtp_address(text)
    # around it, as before
    assert HostAddress.parse(f"  dtp://{FULL}:80\n") == HostAddress(FULL, 80)
