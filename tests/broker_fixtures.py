"""MQTT broker fixtures for the whole suite (loaded by ``tests/conftest.py``).

Real brokers on free ports of 127.0.0.1, each started once per test session (per xdist
worker), with username/password and the per-site ACL of
:mod:`pulsebms.services.broker.acl`:

* ``mosquitto_broker``: Mosquitto (``/usr/sbin/mosquitto`` or on PATH; its absence is an
  error naming the package, not a skip: CI installs it through ``.ci/run``);
* ``embedded_broker``: amqtt in-process;
* ``mqtt_broker``: parametrised over both (a test using it runs once on each);
* ``mqtt_site``: a site name of the shared brokers that no other test of this session
  uses, so retained messages (status, allocation) and sessions of one test never reach
  another. Its users are ``{role}-{site}`` for every role (``edge-t03``,
  ``coordinator-t03``, ...), all with the session's password;
* ``broker_factory``: a private broker for tests that stop or restart it
  (``broker_factory("mosquitto")``), closed at the end of the test.

``SITES`` ``site-a`` and ``site-b`` are the fixed pair the ACL tests use.

Example (a test)::

    def test_telemetry_arrives(mqtt_broker, mqtt_site):
        edge = mqtt_broker.link(f"edge-{mqtt_site}", "edge-1")
        ...
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported in the fixtures: loading this plugin costs nothing
    from pulsebms.services.broker import Broker, EmbeddedBroker, MosquittoBroker

SITES = ("site-a", "site-b")
"""Fixed sites of the shared brokers (ACL tests)."""

POOL_SIZE = 48
"""Sites handed out one per test by ``mqtt_site`` (per xdist worker)."""

_POOL = tuple(f"t{i:02d}" for i in range(POOL_SIZE))
_next_site = itertools.count()


@pytest.fixture(scope="session")
def broker_password() -> str:
    """The password of every fixture user (random per session)."""
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def _broker_users(broker_password: str) -> list[Any]:
    from pulsebms.services.broker import site_users

    return site_users((*SITES, *_POOL), password=broker_password)


@pytest.fixture(scope="session")
def mosquitto_broker(
    _broker_users: list[Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MosquittoBroker]:
    """Mosquitto for the whole session (persistence on, ACL, no TLS)."""
    from pulsebms.services.broker import MosquittoBroker

    broker = MosquittoBroker(_broker_users, data_dir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def embedded_broker(
    _broker_users: list[Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedBroker]:
    """Amqtt in-process for the whole session (ACL, no TLS)."""
    from pulsebms.services.broker import EmbeddedBroker

    broker = EmbeddedBroker(_broker_users, data_dir=tmp_path_factory.mktemp("amqtt"))
    broker.start()
    yield broker
    broker.close()


@pytest.fixture(params=["embedded", "mosquitto"])
def mqtt_broker(request: pytest.FixtureRequest) -> Broker:
    """Each shared broker in turn (the test runs once per broker)."""
    broker: Broker = request.getfixturevalue(f"{request.param}_broker")
    return broker


@pytest.fixture
def mqtt_site() -> str:
    """A site of the shared brokers that no other test of this session uses.

    Raises:
        RuntimeError: When the pool is used up (raise ``POOL_SIZE``).
    """
    n = next(_next_site)
    if n >= POOL_SIZE:
        raise RuntimeError(f"tests/broker_fixtures.py: all {POOL_SIZE} sites used; raise POOL_SIZE")
    return _POOL[n]


@pytest.fixture
def broker_factory(broker_password: str, tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make private brokers (``factory(kind, sites=("s1",), **kwargs)``), started; closed after."""
    from pulsebms.services.broker import make_broker, site_users

    made: list[Broker] = []

    def factory(kind: str, sites: tuple[str, ...] = ("s1",), **kwargs: Any) -> Broker:
        users = site_users(sites, password=broker_password)
        broker = make_broker(kind, users, data_dir=tmp_path / f"{kind}-{len(made)}", **kwargs)
        made.append(broker)
        broker.start()
        return broker

    yield factory
    for broker in made:
        broker.close()
