"""MQTT brokers for the site loop: the embedded default (amqtt) and Mosquitto.

Both have one interface (:class:`~pulsebms.services.broker.base.Broker`): ``start()``,
``stop()``, ``restart()``, ``host``, ``port``, ``users``, ``link(username, client_id)``, and
use as a context manager. Both authenticate by user name and password and confine each
user to its site (:mod:`pulsebms.services.broker.acl`); both serve TLS when given a
certificate.

* :class:`EmbeddedBroker`: amqtt in-process, in its own thread; nothing to install beyond
  the ``services`` extra; no persistence across a restart.
* :class:`MosquittoBroker`: the Debian package's binary as a subprocess with a generated
  configuration; persistence on, so a restart loses no queued QoS≥1 message.

The deployer's guide is ``docs/mqtt.md``.
"""

from pulsebms.services.broker.acl import (
    ROLES,
    BrokerUser,
    filter_covers,
    mosquitto_acl,
    site_users,
    topic_matches,
)
from pulsebms.services.broker.base import (
    Broker,
    BrokerError,
    BrokerTls,
    free_port,
    self_signed_tls,
)
from pulsebms.services.broker.embedded import EmbeddedBroker
from pulsebms.services.broker.mosquitto import MosquittoBroker, find_mosquitto

__all__ = [
    "ROLES",
    "Broker",
    "BrokerError",
    "BrokerTls",
    "BrokerUser",
    "EmbeddedBroker",
    "MosquittoBroker",
    "filter_covers",
    "find_mosquitto",
    "free_port",
    "make_broker",
    "mosquitto_acl",
    "self_signed_tls",
    "site_users",
    "topic_matches",
]


def make_broker(kind: str, users: list[BrokerUser], **kwargs: object) -> Broker:
    """A broker by name: ``"embedded"`` (amqtt) or ``"mosquitto"``.

    Raises:
        ValueError: On another name.
    """
    if kind == "embedded":
        return EmbeddedBroker(users, **kwargs)  # type: ignore[arg-type]  # keywords checked by the class
    if kind == "mosquitto":
        return MosquittoBroker(users, **kwargs)  # type: ignore[arg-type]  # keywords checked by the class
    raise ValueError(f"broker kind must be 'embedded' or 'mosquitto', got {kind!r}")
