"""Brokers: per-site ACLs enforced by both (real clients), configuration, topic matching."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mqtt_helpers import Inbox, telemetry, wait_until

from pulsebms.core.messaging import allocation_topic, commands_topic, encode, telemetry_topic
from pulsebms.edge_runtime.mqtt_link import MqttConnectError, MqttLink
from pulsebms.services.broker import (
    Broker,
    BrokerError,
    BrokerUser,
    EmbeddedBroker,
    MosquittoBroker,
    filter_covers,
    find_mosquitto,
    mosquitto_acl,
    site_users,
    topic_matches,
)
from pulsebms.services.broker import mosquitto as mosquitto_module


def _allocation(site: str) -> dict[str, object]:
    return {
        "site": site, "session": "forged", "seq": 0, "timestamp_s": 1.0, "reason": "manual",
        "policy": "x", "period_s": 600.0, "valid_for_s": 900.0, "demand_w": 0.0,
        "setpoints": [{"device": "e1", "pack_id": "p0", "power_w": 1e6}],
    }  # fmt: skip


def test_site_a_can_neither_publish_to_nor_read_site_b(mqtt_broker: Broker) -> None:
    """Site A's edge writes to B and subscribes to B and to everything.

    B's subscriber never sees A's message; A's subscriptions never deliver B's traffic.
    """
    b_inbox, spy = Inbox(), Inbox()
    tag = f"{mqtt_broker.name}-{time.monotonic_ns()}"
    with (
        mqtt_broker.link("coordinator-site-b", f"b-coord-{tag}") as b_coord,
        mqtt_broker.link("edge-site-b", f"b-edge-{tag}") as b_edge,
        mqtt_broker.link("edge-site-a", f"a-edge-{tag}") as a_edge,
    ):
        b_coord.subscribe_raw("pulsebms/site-b/#", b_inbox)
        for flt in ("pulsebms/site-b/#", "pulsebms/#", "#", "pulsebms/+/+/telemetry"):
            a_edge.subscribe_raw(flt, spy)
        for link in (b_coord, b_edge, a_edge):
            assert link.connect(10.0)
        device = f"e-{tag}"
        # A forges B's telemetry (3.1.1: the broker drops it without telling A)
        a_edge.publish(
            "telemetry", telemetry_topic("site-b", device), telemetry("site-b", device, 0)
        )
        # B's own telemetry: reaches B's coordinator, never A's spy subscriptions
        b_edge.publish(
            "telemetry", telemetry_topic("site-b", device), telemetry("site-b", device, 1)
        )
        assert wait_until(lambda: any(device in t for t in b_inbox.topics()))
        time.sleep(0.3)  # let a (wrongly) forwarded message arrive, if any
        a_stats = a_edge.stats()
    from_a = [t for t, p in b_inbox.items if device in t and b'"seq":0' in p]
    assert from_a == []
    assert [t for t in spy.topics() if "site-b" in t] == []
    assert a_stats["published"] == 1
    if mqtt_broker.name == "embedded":  # amqtt refuses the subscriptions themselves
        assert a_stats["subscribe_denied"] == 4


def test_an_edge_cannot_forge_an_allocation_or_a_command(mqtt_broker: Broker) -> None:
    inbox = Inbox()
    tag = f"{mqtt_broker.name}-{time.monotonic_ns()}"
    with (
        mqtt_broker.link("monitor-site-a", f"mon-{tag}") as monitor,
        mqtt_broker.link("edge-site-a", f"edge-{tag}") as edge,
        mqtt_broker.link("operator-site-a", f"op-{tag}") as operator,
    ):
        monitor.subscribe_raw("pulsebms/site-a/+/commands", inbox)
        monitor.subscribe_raw("pulsebms/site-a/coordinator/allocation", inbox)
        for link in (monitor, edge, operator):
            assert link.connect(10.0)
        device = f"e-{tag}"
        command = {
            "site": "site-a", "device": device, "session": tag, "seq": 0, "timestamp_s": 1.0,
            "issuer": "x", "command": "enable",
        }  # fmt: skip
        edge.publish_bytes(
            allocation_topic("site-a"), encode("allocation", _allocation("site-a")), 1
        )
        edge.publish("commands", commands_topic("site-a", device), command)
        operator.publish("commands", commands_topic("site-a", device), dict(command, seq=1))
        assert wait_until(lambda: len(inbox) >= 1)
        time.sleep(0.3)
    received = [p for _, p in inbox.items]
    assert len(received) == 1
    assert b'"seq":1' in received[0]


def test_anonymous_and_unknown_users_are_refused(mqtt_broker: Broker) -> None:
    for username, password in ((None, None), ("nobody", "pw")):
        link = MqttLink(
            "anon", mqtt_broker.host, mqtt_broker.port, username=username, password=password
        )
        with pytest.raises(MqttConnectError):
            link.connect(10.0)


def test_mosquitto_restart_keeps_retained_messages_and_port(
    broker_factory: Callable[..., Broker],
) -> None:
    broker = broker_factory("mosquitto")
    assert isinstance(broker, MosquittoBroker)
    assert broker.persistent
    port = broker.port
    with broker.link("operator-s1", "op") as op:
        assert op.connect(10.0)
        op.publish_bytes("pulsebms/s1/e1/commands", b"kept", 1, retain=True)
        assert wait_until(lambda: op.stats()["pending"] == 0)
    broker.restart()
    assert broker.running
    assert broker.port == port
    inbox = Inbox()
    with broker.link("monitor-s1", "mon") as mon:
        mon.subscribe_raw("pulsebms/s1/#", inbox)
        assert mon.connect(10.0)
        assert wait_until(lambda: len(inbox) == 1)
    assert inbox.items == [("pulsebms/s1/e1/commands", b"kept")]


def test_broker_configuration_files(tmp_path: Path) -> None:
    users = [
        BrokerUser("edge-s1", "pw", "s1", "edge"),
        BrokerUser("coord-s1", "pw2", "s1", "coordinator"),
    ]
    broker = MosquittoBroker(users, port=18999, data_dir=tmp_path)
    conf = broker.config_text()
    for line in (
        "listener 18999 127.0.0.1", "allow_anonymous false", "persistence true",
        f"password_file {tmp_path / 'passwd'}", f"acl_file {tmp_path / 'acl'}",
        "max_queued_messages 100000",
    ):  # fmt: skip
        assert line in conf.splitlines()
    assert "certfile" not in conf
    passwd = (tmp_path / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["edge-s1", "coord-s1"]
    assert all(line.split(":", 1)[1].startswith("$7$") for line in passwd)  # hashed
    assert "pw" not in (tmp_path / "passwd").read_text().replace("$", " ").split()
    acl = (tmp_path / "acl").read_text()
    assert "topic write pulsebms/s1/coordinator/allocation" in acl
    assert acl == mosquitto_acl(users)
    embedded = EmbeddedBroker(users, port=18998, data_dir=tmp_path / "e")
    config = embedded.config()
    assert config["listeners"]["default"] == {"type": "tcp", "bind": "127.0.0.1:18998"}
    acl_cfg = config["plugins"]["pulsebms.services.broker.amqtt_acl.SiteAclPlugin"]
    assert acl_cfg["publish"]["edge-s1"] == ["pulsebms/s1/+/telemetry", "pulsebms/s1/+/status"]
    assert acl_cfg["subscribe"]["coord-s1"] == ["pulsebms/s1/#"]
    assert (tmp_path / "e" / "passwd").read_text().count("$argon2id$") == 2


def test_missing_mosquitto_is_an_error_that_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(mosquitto_module, "MOSQUITTO_PATHS", (str(tmp_path / "sbin/mosquitto"),))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        find_mosquitto()


def test_users_are_checked() -> None:
    with pytest.raises(ValueError, match="role"):
        BrokerUser("u", "pw", "s1", "root")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="site"):
        BrokerUser("u", "pw", "a/b", "edge")
    with pytest.raises(ValueError, match="user name"):
        BrokerUser("a b", "pw", "s1", "edge")
    with pytest.raises(ValueError, match="unique"):
        EmbeddedBroker([BrokerUser("u", "pw", "s1", "edge"), BrokerUser("u", "p", "s2", "edge")])
    assert len({u.password for u in site_users(["s1"])}) == 6  # random, one per user


# ---------------------------------------------------------------- matching (properties)
_LEVEL = st.sampled_from(["a", "b", "c", ""])
_TOPIC = st.lists(_LEVEL, min_size=1, max_size=4).map("/".join)
_FILTER = st.lists(st.sampled_from(["a", "b", "+", ""]), min_size=1, max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"])])
)


@given(allowed=_FILTER, requested=_FILTER, topic=_TOPIC)
def test_a_covered_filter_matches_only_topics_the_allowed_filter_matches(
    allowed: str, requested: str, topic: str
) -> None:
    """Property (unknown bug shapes): ``filter_covers`` is sound for every topic."""
    if filter_covers(allowed, requested) and topic_matches(requested, topic):
        assert topic_matches(allowed, topic)


@pytest.mark.parametrize(
    ("flt", "topic", "expected"),
    [
        ("pulsebms/A/#", "pulsebms/A", True),  # '#' matches the parent level
        ("pulsebms/A/+", "pulsebms/A/x/y", False),
        ("pulsebms/+/e/telemetry", "pulsebms/B/e/telemetry", True),
        ("#", "$SYS/broker/uptime", False),
        ("pulsebms/A/+/status", "pulsebms/A//status", True),  # empty level is a level
    ],
)
def test_topic_matching_regressions(flt: str, topic: str, expected: bool) -> None:
    """Regression data (known shapes of MQTT matching mistakes)."""
    assert topic_matches(flt, topic) is expected
