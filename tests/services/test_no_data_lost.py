"""No telemetry lost when the broker restarts mid-run (Mosquitto, persistence on).

An edge-like publisher (MqttLink, persistent session, QoS 1) sends telemetry with sequence
numbers at a steady rate from its own thread; the broker is stopped and started again in the
middle while the publisher keeps publishing; the coordinator-side subscriber (persistent
session) must receive every sequence number. QoS 1 may deliver a message twice:
:class:`SequenceTracker` counts the duplicates, and the set of sequence numbers received
must be exactly what was sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from mqtt_helpers import telemetry, wait_until

from pulsebms.core.messaging import SequenceTracker, telemetry_topic
from pulsebms.services.broker import Broker

N_MESSAGES = 240
PERIOD_S = 0.01
RESTART_AT = 80
DOWN_S = 0.3


class _Receiver:
    """Records every delivered telemetry ``seq`` and feeds a :class:`SequenceTracker`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seqs: list[int] = []
        self.tracker = SequenceTracker()

    def __call__(self, topic: str, msg: dict[str, Any]) -> None:
        with self.lock:
            self.seqs.append(int(msg["seq"]))
            self.tracker.accept(str(msg["device"]), str(msg["session"]), int(msg["seq"]))

    def distinct(self) -> set[int]:
        with self.lock:
            return set(self.seqs)


def test_mosquitto_restart_loses_no_telemetry(broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory("mosquitto")
    assert broker.persistent
    receiver = _Receiver()
    sub = broker.link("coordinator-s1", "coordinator-s1")
    sub.subscribe("pulsebms/s1/+/telemetry", receiver)
    edge = broker.link("edge-s1", "edge-1")
    topic = telemetry_topic("s1", "edge-1")
    reached = threading.Event()

    def publish() -> None:
        for seq in range(N_MESSAGES):
            if seq == RESTART_AT:
                reached.set()
            edge.publish("telemetry", topic, telemetry("s1", "edge-1", seq, session="run"))
            time.sleep(PERIOD_S)

    publisher = threading.Thread(target=publish)
    try:
        assert sub.connect(10.0)
        assert edge.connect(10.0)
        publisher.start()
        assert reached.wait(30.0)
        broker.restart(down_s=DOWN_S)  # the publisher keeps publishing meanwhile
        publisher.join(60.0)
        wait_until(lambda: len(receiver.distinct()) >= N_MESSAGES, 30.0)
    finally:
        publisher.join(60.0)
        edge.close()
        sub.close()
    edge_stats, sub_stats = edge.stats(), sub.stats()
    assert receiver.distinct() == set(range(N_MESSAGES))
    counts = receiver.tracker.counts()
    assert counts["accepted"] == N_MESSAGES
    assert counts["missing"] == 0  # every seq arrived first in order (redeliveries after)
    # QoS 1 redeliveries: the last seen again (duplicate) or older ones (out_of_order)
    assert len(receiver.seqs) == N_MESSAGES + counts["duplicates"] + counts["out_of_order"]
    assert edge_stats["published_offline"] > 0  # the outage was really felt
    assert edge_stats["disconnects"] >= 1
    assert sub_stats["disconnects"] >= 1
    assert edge_stats["dropped_queue_full"] == 0


def test_embedded_broker_restart_reconnects_and_resubscribes(
    broker_factory: Callable[..., Broker],
) -> None:
    """Without persistence the links reconnect, find no session and subscribe again.

    Telemetry flows again; what was published before the subscriber had re-subscribed may
    be lost (amqtt keeps no session across a restart): use Mosquitto where that matters.
    """
    broker = broker_factory("embedded")
    assert not broker.persistent
    receiver = _Receiver()
    sub = broker.link("coordinator-s1", "coordinator-s1")
    sub.subscribe("pulsebms/s1/+/telemetry", receiver)
    edge = broker.link("edge-s1", "edge-1")
    topic = telemetry_topic("s1", "edge-1")
    try:
        assert sub.connect(10.0)
        assert edge.connect(10.0)
        edge.publish("telemetry", topic, telemetry("s1", "edge-1", 0, session="run"))
        assert wait_until(lambda: receiver.distinct() == {0})
        broker.restart()
        assert wait_until(lambda: sub.stats()["connects"] == 2 and edge.stats()["connects"] == 2)
        seq = 1
        while seq < 200:  # until the renewed subscription delivers
            edge.publish("telemetry", topic, telemetry("s1", "edge-1", seq, session="run"))
            if wait_until(lambda s=seq: s in receiver.distinct(), 0.05):  # type: ignore[misc]
                break
            seq += 1
    finally:
        edge.close()
        sub.close()
    assert seq in receiver.distinct()
