"""MqttLink against real brokers (Mosquitto and amqtt): contract, counters, buffering, TLS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mqtt_helpers import Inbox, status, telemetry, wait_until

from pulsebms.core.messaging import MessageError, encode, status_topic, telemetry_topic
from pulsebms.edge_runtime.mqtt_link import MqttConnectError, MqttLink, offline_will
from pulsebms.services.broker import Broker, free_port, self_signed_tls


def test_validated_roundtrip_and_malformed_payloads_are_counted_not_raised(
    mqtt_broker: Broker, mqtt_site: str
) -> None:
    site = mqtt_site
    inbox = Inbox()
    calls = {"n": 0}

    def handler(topic: str, msg: dict[str, object]) -> None:
        calls["n"] += 1
        if msg["seq"] == 1:
            raise RuntimeError("a buggy handler")
        inbox(topic, msg)

    with (
        mqtt_broker.link(f"coordinator-{site}", f"{site}-sub") as sub,
        mqtt_broker.link(f"edge-{site}", f"{site}-edge") as edge,
    ):
        sub.subscribe(f"pulsebms/{site}/+/telemetry", handler)
        assert sub.connect(10.0)
        assert edge.connect(10.0)
        topic = telemetry_topic(site, "e1")
        assert edge.publish("telemetry", topic, telemetry(site, "e1", 0))
        edge.publish_bytes(topic, b"{not json", 1)
        edge.publish_bytes(topic, b"[1, 2]", 1)
        bad = encode("telemetry", telemetry(site, "e1", 9)).replace(b'"soc":0.5', b'"soc":7')
        edge.publish_bytes(topic, bad, 1)
        # a valid message of another device on this device's topic
        edge.publish_bytes(topic, encode("telemetry", telemetry(site, "e2", 0)), 1)
        assert edge.publish("telemetry", topic, telemetry(site, "e1", 1))  # handler raises
        assert edge.publish("telemetry", topic, telemetry(site, "e1", 2))
        assert wait_until(lambda: sub.stats()["received"] >= 7)
        stats = sub.stats()
    assert [m["seq"] for m in inbox.messages()] == [0, 2]
    assert calls["n"] == 3
    assert stats["malformed_not_json"] == 1
    assert stats["malformed_not_object"] == 1
    assert stats["malformed_field"] == 1
    assert stats["malformed_topic_mismatch"] == 1
    assert stats["handler_errors"] == 1
    assert stats["delivered"] == 2
    assert inbox.messages()[0]["packs"][0]["pack_id"] == "p0"


def test_publish_refuses_an_invalid_message_before_it_leaves() -> None:
    link = MqttLink("x", "127.0.0.1", free_port())
    with pytest.raises(MessageError, match="finite"):
        link.publish(
            "telemetry", telemetry_topic("s", "e"), telemetry("s", "e", 0, timestamp_s=float("nan"))
        )
    assert link.stats()["published"] == 0


def test_offline_publishes_are_queued_to_the_bound_and_counted() -> None:
    """No broker at all: QoS 1 is queued up to the bound, QoS 0 dropped, both counted."""
    link = MqttLink("lonely", "127.0.0.1", free_port(), max_queued_messages=3)
    assert link.connect(timeout_s=0) is False
    try:
        sent = [
            link.publish("telemetry", telemetry_topic("s", "e"), telemetry("s", "e", i))
            for i in range(5)
        ]
        assert sent == [True, True, True, False, False]
        assert not link.publish("status", status_topic("s", "e"), status("s", "e", 0))
        stats = link.stats()
        assert stats["published_offline"] == 3
        assert stats["pending"] == 3
        assert stats["dropped_queue_full"] == 2
        assert stats["dropped_qos0_offline"] == 1
        assert wait_until(lambda: link.stats()["connect_failures"] >= 1, 5.0)
    finally:
        link.close(drain_timeout_s=0)


def test_retained_status_reaches_a_late_subscriber(mqtt_broker: Broker, mqtt_site: str) -> None:
    site = mqtt_site
    with mqtt_broker.link(f"edge-{site}", f"{site}-edge") as edge:
        assert edge.connect(10.0)
        edge.publish("status", status_topic(site, "e1"), status(site, "e1", 4))
        assert wait_until(lambda: edge.stats()["pending"] == 0)
        inbox = Inbox()
        with mqtt_broker.link(f"coordinator-{site}", f"{site}-late") as late:
            late.subscribe(f"pulsebms/{site}/+/status", inbox)
            assert late.connect(10.0)
            assert wait_until(lambda: len(inbox) == 1)
    assert inbox.messages()[0]["seq"] == 4


def test_wrong_password_is_a_clear_error(mqtt_broker: Broker, mqtt_site: str) -> None:
    link = MqttLink(
        "intruder", mqtt_broker.host, mqtt_broker.port, username=f"edge-{mqtt_site}", password="x"
    )
    with pytest.raises(MqttConnectError, match="refused") as err:
        link.connect(10.0)
    assert err.value.reason in ("Not authorized", "Bad user name or password")
    assert not link.connected


def test_last_will_fires_when_the_client_vanishes(mqtt_broker: Broker, mqtt_site: str) -> None:
    """The edge's socket dies without DISCONNECT: the broker publishes its offline will."""
    site = mqtt_site
    inbox = Inbox()
    with mqtt_broker.link(f"coordinator-{site}", f"{site}-watch") as watch:
        watch.subscribe(f"pulsebms/{site}/+/status", inbox)
        assert watch.connect(10.0)
        edge = mqtt_broker.link(f"edge-{site}", f"{site}-edge", will=offline_will(site, "e1", "r"))
        assert edge.connect(10.0)
        edge.publish("status", status_topic(site, "e1"), status(site, "e1", 0, session="r"))
        assert wait_until(lambda: len(inbox) == 1)
        # what a crash looks like to the broker: the network thread stops, the socket closes
        edge._client.loop_stop()
        sock = edge._client.socket()
        assert sock is not None
        sock.close()
        assert wait_until(lambda: len(inbox) == 2, 15.0)
    will = inbox.messages()[1]
    assert (will["state"], will["session"], will["seq"]) == ("offline", "r:will", 0)


def test_mqtt5_counts_publishes_the_acl_refuses(mosquitto_broker: Broker, mqtt_site: str) -> None:
    """MQTT 5 (Mosquitto): a refused publish comes back with a reason code and is counted."""
    site = mqtt_site
    with mosquitto_broker.link(f"edge-{site}", f"{site}-v5", protocol="5") as edge:
        assert edge.connect(10.0)
        assert edge.publish("telemetry", telemetry_topic(site, "e1"), telemetry(site, "e1", 0))
        other = "site-b" if site != "site-b" else "site-a"
        edge.publish("telemetry", telemetry_topic(other, "e1"), telemetry(other, "e1", 0))
        assert wait_until(lambda: edge.stats()["publish_refused"] == 1)
        assert edge.stats()["pending"] == 0


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_tls_only_listener(
    kind: str, broker_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = broker_factory(kind, tls=self_signed_tls(tmp_path / "tls"))
    inbox = Inbox()
    with broker.link("coordinator-s1", "c") as sub, broker.link("edge-s1", "e") as edge:
        sub.subscribe("pulsebms/s1/+/telemetry", inbox)
        assert sub.connect(10.0)
        assert edge.connect(10.0)
        edge.publish("telemetry", telemetry_topic("s1", "e1"), telemetry("s1", "e1", 0))
        assert wait_until(lambda: len(inbox) == 1)
    user = broker.users["edge-s1"]
    plain = MqttLink("plain", broker.host, broker.port, username=user.username, password="pw")
    try:
        assert plain.connect(timeout_s=0.5) is False  # no TLS: no MQTT session
        assert plain.stats()["connects"] == 0
    finally:
        plain.close(drain_timeout_s=0)
