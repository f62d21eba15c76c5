"""The edge's MQTT bridge on real brokers (amqtt in-process, Mosquitto) and virtual CAN buses.

Each test runs a real :class:`EdgeRuntime` (3 NMC packs, a constant policy) on a python-can
``virtual`` bus fed with telemetry frames, ticked by hand on a settable clock, with its
:class:`MqttBridge` on a real broker; other clients of the site (coordinator, operator,
monitor) are real MQTT links with their own per-site users.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import can
import numpy as np
import pytest
from edge_helpers import (
    GOOD,
    N_PACKS,
    ConstantPolicy,
    FakeClock,
    make_manifest,
)

from pulsebms.core.messaging import (
    allocation_topic,
    commands_topic,
    site_filter,
)
from pulsebms.core.observation import fleet_observation_layout
from pulsebms.edge_runtime.codec import CanCodec, SetpointFrame
from pulsebms.edge_runtime.mqtt_bridge import AllocationPolicy, MqttBridge
from pulsebms.edge_runtime.mqtt_link import MqttLink, offline_will
from pulsebms.edge_runtime.runtime import EdgeRuntime, SafeReason, TickReport
from pulsebms.edge_runtime.site import FixedSite
from pulsebms.services.broker import Broker
from pulsebms.services.coordinator import (
    Coordinator,
    CoordinatorSettings,
    SiteFleet,
    make_policy,
)
from pulsebms.services.fleet.netcut import CuttableLine

OTHER = "site-b"  # a fixed site of the shared brokers (tests/broker_fixtures.py)
T0 = 1_750_000_000.0  # a UNIX time: message timestamps are UNIX seconds
_channels = itertools.count()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll until ``predicate()`` (MQTT delivery is asynchronous); return its last value."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@dataclass
class Monitor:
    """A monitor-role subscriber of the site: every message, decoded, in arrival order."""

    link: MqttLink
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of(self, kind: str, device: str) -> list[dict[str, Any]]:
        return [
            m
            for t, m in list(self.messages)
            if t.endswith("/" + kind) and m.get("device") == device
        ]


def _client(broker: Broker, user: str, **kw: Any) -> MqttLink:
    kw.setdefault("clean_start", True)
    return broker.link(user, f"{user}-{uuid.uuid4().hex[:8]}", reconnect_max_delay_s=0.5, **kw)


@pytest.fixture
def broker(mosquitto_broker: Broker) -> Broker:
    """The session's Mosquitto (the embedded broker runs the whole loop in test_fleet.py)."""
    return mosquitto_broker


@pytest.fixture
def monitor(broker: Broker, mqtt_site: str) -> Iterator[Monitor]:
    mon = Monitor(_client(broker, f"monitor-{mqtt_site}"))
    mon.link.subscribe(site_filter(mqtt_site), lambda t, m: mon.messages.append((t, m)))
    assert mon.link.connect(timeout_s=10.0)
    yield mon
    mon.link.close()


def _role_link(broker: Broker, user: str) -> Iterator[MqttLink]:
    link = _client(broker, user)
    assert link.connect(timeout_s=10.0)
    yield link
    link.close()


@pytest.fixture
def coordinator(broker: Broker, mqtt_site: str) -> Iterator[MqttLink]:
    yield from _role_link(broker, f"coordinator-{mqtt_site}")


@pytest.fixture
def operator(broker: Broker, mqtt_site: str) -> Iterator[MqttLink]:
    yield from _role_link(broker, f"operator-{mqtt_site}")


class Rig:
    """Runtime + bridge + the pack side of the CAN bus, on one settable clock."""

    def __init__(
        self, broker: Broker, site: str, *, port: int | None = None, **bridge_kw: Any
    ) -> None:
        self.site = site
        self.device = f"edge-{uuid.uuid4().hex[:8]}"
        self.clock = FakeClock()
        self.clock.now_s = T0
        channel = f"mqtt-edge-{next(_channels)}-{self.device}"
        self.rt_bus = can.Bus(interface="virtual", channel=channel)
        self.pack_bus = can.Bus(interface="virtual", channel=channel)
        self.codec = CanCodec(N_PACKS)
        self.runtime = EdgeRuntime(
            make_manifest(),
            ConstantPolicy([0.2] * N_PACKS),
            self.rt_bus,
            tick_s=60.0,
            stale_after_s=150.0,
            recovery_hold_s=0.0,
            clock=self.clock,
            site_source=FixedSite(600.0),
        )
        session = uuid.uuid4().hex[:12]
        user = broker.users[f"edge-{site}"]
        self.link = MqttLink(
            self.device,
            broker.host,
            broker.port if port is None else port,
            username=user.username,
            password=user.password,
            will=offline_will(site, self.device, session),
            reconnect_max_delay_s=0.5,
            keepalive_s=5,
        )
        options: dict[str, Any] = {
            "allocation_timeout_s": 600.0,
            "telemetry_period_s": 60.0,
            **bridge_kw,
        }
        self.bridge = MqttBridge(
            self.runtime,
            self.link,
            site=site,
            device=self.device,
            session=session,
            clock=self.clock,
            close_link=True,
            **options,
        )
        self.counters = [0] * N_PACKS
        self._alloc_seq = itertools.count()
        self._cmd_seq = itertools.count()

    def connect(self, monitor: Monitor) -> Rig:
        """Connect and announce; return once the broker routed the edge's first status.

        The subscriptions went out before that status on the same connection, so they are
        in place too (a command, which is not retained, sent earlier would be missed).
        """
        assert self.link.connect(timeout_s=10.0)
        self.bridge.start(thread=False)
        assert wait_for(lambda: bool(monitor.of("status", self.device)))
        return self

    def feed(self, values: dict[int, dict[str, float]] | None = None) -> None:
        """One telemetry cycle of every pack on CAN (``values``: per-pack changes)."""
        for pack in range(N_PACKS):
            frame_values = {**GOOD, **(values or {}).get(pack, {})}
            for msg in self.codec.encode_telemetry(
                pack, frame_values, status=0, counter=self.counters[pack]
            ):
                self.pack_bus.send(msg)
            self.counters[pack] += 1
        self.runtime.poll(0.0)

    def tick(self, values: dict[int, dict[str, float]] | None = None) -> TickReport:
        """Telemetry, tick, bridge step; then the clock moves one tick (60 s) on."""
        self.feed(values)
        report = self.runtime.tick()
        self.bridge.step()
        self.clock.now_s += 60.0
        return report

    def setpoints(self) -> list[SetpointFrame]:
        """The set-point frames the runtime sent since the last call."""
        out = []
        while (msg := self.pack_bus.recv(timeout=0.0)) is not None:
            frame = self.codec.decode(msg)
            if isinstance(frame, SetpointFrame):
                out.append(frame)
        return out

    def allocation(
        self, powers_w: dict[str, float], *, seq: int | None = None, age_s: float = 0.0
    ) -> dict[str, Any]:
        """An allocation for this device's packs (and one of another device)."""
        return {
            "site": self.site,
            "session": "coordinator-run",
            "seq": next(self._alloc_seq) if seq is None else seq,
            "timestamp_s": self.clock() - age_s,
            "reason": "periodic",
            "policy": "test",
            "period_s": 600.0,
            "valid_for_s": 1200.0,
            "demand_w": sum(powers_w.values()),
            "setpoints": [
                *({"device": self.device, "pack_id": p, "power_w": w} for p, w in powers_w.items()),
                {"device": "edge-other", "pack_id": "p0", "power_w": 123.0},
            ],
        }

    def command(self, name: str, *, age_s: float = 0.0, **fields: Any) -> dict[str, Any]:
        """A command to this device from issuer ``ops``."""
        return {
            "site": self.site,
            "device": self.device,
            "session": "ops-console",
            "seq": next(self._cmd_seq),
            "timestamp_s": self.clock() - age_s,
            "issuer": "ops",
            "command": name,
            **fields,
        }

    @property
    def commands_topic(self) -> str:
        return commands_topic(self.site, self.device)

    @property
    def allocation_topic(self) -> str:
        return allocation_topic(self.site)

    def wait_counter(self, name: str, value: int) -> bool:
        return wait_for(lambda: self.bridge.counters[name] >= value)

    def close(self) -> None:
        self.bridge.stop()
        self.rt_bus.shutdown()
        self.pack_bus.shutdown()


@pytest.fixture
def rig(broker: Broker, mqtt_site: str, monitor: Monitor) -> Iterator[Rig]:
    r = Rig(broker, mqtt_site).connect(monitor)
    yield r
    r.close()


# ---------------------------------------------------------------- allocation


def test_allocation_goes_through_the_shield_and_telemetry_reports_it(
    rig: Rig, coordinator: MqttLink, monitor: Monitor
) -> None:
    rig.tick()
    # p0 +500 W is safe; p1 is all but full (SoC 0.944, the shield keeps 0.945): charging it
    # is not; p2 asks 5x its rating, which the bridge first keeps in the action space.
    msg = rig.allocation({"p0": 500.0, "p1": -800.0, "p2": 5000.0})
    coordinator.publish("allocation", rig.allocation_topic, msg)
    assert rig.wait_counter("allocation_applied", 1)
    report = rig.tick({1: {"soc": 0.944}})
    assert report.policy_action.tolist() == pytest.approx([0.5, -0.8, 1.0])
    assert not report.safe.any()
    assert report.intervened[1]
    assert report.action[1] > -0.1  # the shield clipped the unsafe charge request
    assert report.reasons[1] & SafeReason.INTERVENED
    assert rig.bridge.counters["allocation_beyond_rating"] == 1
    sent = {f.pack: f.power_w for f in rig.setpoints()}
    assert sent[1] == pytest.approx(report.setpoint_w[1], abs=1.0)
    assert wait_for(lambda: len(monitor.of("telemetry", rig.device)) == 2)
    tel = monitor.of("telemetry", rig.device)[-1]
    assert tel["seq"] == 1
    assert tel["packs"][1]["soc"] == pytest.approx(0.944, abs=1e-3)
    assert tel["packs"][0]["rated_power_w"] == 1000.0
    assert tel["site_values"]["demand_w"] == pytest.approx(600.0)
    assert tel["period_s"] == 60.0
    assert rig.bridge.mode() == "coordinator"


def test_stale_allocation_falls_back_and_status_says_so(
    rig: Rig, coordinator: MqttLink, monitor: Monitor
) -> None:
    def last_status() -> dict[str, Any]:
        statuses = monitor.of("status", rig.device)
        return statuses[-1] if statuses else {}

    assert wait_for(lambda: last_status().get("mode") == "local_policy")  # none received yet
    coordinator.publish("allocation", rig.allocation_topic, rig.allocation({"p0": 300.0}))
    assert rig.wait_counter("allocation_applied", 1)
    assert rig.tick().policy_action.tolist() == pytest.approx([0.3, 0.0, 0.0])
    assert wait_for(lambda: last_status().get("mode") == "coordinator")
    for _ in range(10):  # the allocation is 600 s old after ten 60 s ticks: still valid
        rig.tick()
    assert rig.bridge.policy.fallbacks == 0
    report = rig.tick()
    assert report.policy_action.tolist() == pytest.approx([0.2] * N_PACKS)  # the local policy
    assert rig.bridge.policy.fallbacks == 1
    assert wait_for(lambda: last_status().get("mode") == "local_policy")
    status = last_status()
    assert status["fallback"] == "local"
    assert status["allocation_age_s"] > 600.0
    assert status["state"] == "online"


@pytest.mark.parametrize(("fallback", "expected"), [("hold", [0.5, -0.5]), ("zero", [0.0, 0.0])])
def test_hold_and_zero_fallbacks(fallback: str, expected: list[float]) -> None:
    now = [0.0]
    policy = AllocationPolicy(2, fallback=fallback, timeout_s=10.0, clock=lambda: now[0])
    obs = np.zeros(4, dtype=np.float32)
    assert policy.act(obs).tolist() == [0.0, 0.0]  # nothing received yet
    assert policy.mode() == "hold"
    policy.update(np.array([0.5, -0.5]), seq=0, valid_for_s=5.0)
    assert policy.act(obs).tolist() == [0.5, -0.5]
    now[0] = 6.0  # past the allocation's own valid_for_s, within the timeout
    assert policy.act(obs).tolist() == expected
    assert policy.fallbacks == 1
    with pytest.raises(ValueError, match="fallback"):
        AllocationPolicy(2, fallback="guess")
    with pytest.raises(ValueError, match="own policy"):
        AllocationPolicy(2, fallback="local")


def test_malformed_and_out_of_order_allocations_are_counted_and_dropped(
    rig: Rig, coordinator: MqttLink
) -> None:
    topic = rig.allocation_topic
    coordinator.publish("allocation", topic, rig.allocation({"p0": 100.0}, seq=5))
    assert rig.wait_counter("allocation_applied", 1)
    coordinator.publish_bytes(topic, b"\xff not json", 1)
    coordinator.publish_bytes(topic, json.dumps({"schema": "pulsebms.allocation"}).encode(), 1)
    bad = {"schema": "pulsebms.allocation", "version": 1, **rig.allocation({"p0": 1.0}, seq=6)}
    bad["setpoints"][0]["power_w"] = "lots"
    coordinator.publish_bytes(topic, json.dumps(bad).encode(), 1)
    coordinator.publish("allocation", topic, rig.allocation({"p0": 900.0}, seq=4))
    coordinator.publish("allocation", topic, rig.allocation({"p0": 900.0}, seq=5))
    coordinator.publish("allocation", topic, rig.allocation({"p0": 900.0}, seq=7, age_s=3600))
    counters = rig.bridge.counters
    assert wait_for(lambda: counters["allocation_received"] == 7)
    assert counters["allocation_applied"] == 1
    assert counters["allocation_dropped"] == 6
    assert counters["allocation_dropped_not_json"] == 1
    assert counters["allocation_dropped_version"] == 1
    assert counters["allocation_dropped_field"] == 1
    assert counters["allocation_dropped_sequence"] == 2  # one older, one repeated
    assert counters["allocation_dropped_stale"] == 1
    report = rig.tick()  # the loop goes on, with the one good allocation
    assert report.policy_action.tolist() == pytest.approx([0.1, 0.0, 0.0])


# ---------------------------------------------------------------- commands


def test_commands_are_authorised_per_site_device_issuer_and_sequence(
    broker: Broker, mqtt_site: str, operator: MqttLink, monitor: Monitor
) -> None:
    rig = Rig(broker, mqtt_site, allowed_issuers={"ops"}).connect(monitor)
    try:
        other_site = _client(broker, f"operator-{OTHER}")
        assert other_site.connect(timeout_s=10.0)
        # Site B's operator may not publish on site A's topics: the broker drops it.
        other_site.publish("commands", rig.commands_topic, rig.command("safe_state"))
        assert wait_for(lambda: other_site.pending() == 0)
        other_site.close()
        refused = [
            {**rig.command("safe_state"), "site": OTHER},  # site A's user, site B's payload
            {**rig.command("safe_state"), "device": "edge-other"},
            {**rig.command("safe_state"), "issuer": "mallory"},
            rig.command("safe_state", age_s=3600.0),  # too old
            rig.command("safe_state", packs=["p7"]),
        ]
        for msg in refused:
            operator.publish("commands", rig.commands_topic, msg)
        first = rig.command("safe_state", packs=["p1"])
        operator.publish("commands", rig.commands_topic, first)
        replay = {**first, "command": "enable"}  # same issuer, session and seq
        operator.publish("commands", rig.commands_topic, replay)
        counters = rig.bridge.counters
        assert wait_for(lambda: counters["commands_received"] == 7)
        assert counters["commands_refused_site"] == 1
        assert counters["commands_refused_device"] == 1
        assert counters["commands_refused_issuer"] == 1
        assert counters["commands_refused_expired"] == 1
        assert counters["commands_refused_unknown_pack"] == 1
        assert counters["commands_refused_sequence"] == 1
        assert counters["commands_applied"] == 1
        assert rig.runtime.held.tolist() == [False, True, False]
        report = rig.tick()
        assert report.safe.tolist() == [False, True, False]
        assert report.reasons[1] & SafeReason.OPERATOR
        assert wait_for(lambda: monitor.of("status", rig.device)[-1]["packs"][1]["safe"])
        operator.publish("commands", rig.commands_topic, rig.command("enable"))
        assert rig.wait_counter("commands_applied", 2)
        assert not rig.tick().safe.any()
    finally:
        rig.close()


def test_limit_override_only_tightens_and_clears(
    rig: Rig, coordinator: MqttLink, operator: MqttLink
) -> None:
    coordinator.publish("allocation", rig.allocation_topic, rig.allocation({"p0": 800.0}))
    assert rig.wait_counter("allocation_applied", 1)
    base = rig.runtime.shield
    manifest_limits = rig.runtime.limits
    looser = rig.command("limit_override", packs=["p0"], power_limit_w=1e6)
    operator.publish("commands", rig.commands_topic, looser)
    assert rig.wait_counter("commands_applied", 1)
    assert rig.bridge.effective_limits() == manifest_limits  # never looser than the manifest
    assert rig.tick().policy_action[0] == pytest.approx(0.8)
    tighter = rig.command("limit_override", packs=["p0"], power_limit_w=200.0, current_limit_a=3)
    operator.publish("commands", rig.commands_topic, tighter)
    assert rig.wait_counter("commands_applied", 2)
    limits = rig.bridge.effective_limits()[0]
    assert limits.current_max_a == pytest.approx(min(3.0, 200.0 / (4.2 * 14)))
    assert limits.current_min_a == -limits.current_max_a
    assert rig.runtime.shield is not base
    report = rig.tick()
    assert report.policy_action[0] == pytest.approx(0.2)  # 200 W of 1000 W rated
    assert report.setpoint_w[0] <= 200.0 + 1e-6
    operator.publish("commands", rig.commands_topic, rig.command("clear_override"))
    assert rig.wait_counter("commands_applied", 3)
    assert rig.runtime.shield is base
    assert rig.tick().policy_action[0] == pytest.approx(0.8)


def test_override_expires(rig: Rig, operator: MqttLink) -> None:
    expiring = rig.command("limit_override", current_limit_a=1.0, expires_after_s=90.0)
    operator.publish("commands", rig.commands_topic, expiring)
    assert rig.wait_counter("commands_applied", 1)
    assert len(rig.bridge.overrides) == N_PACKS
    rig.tick()  # the bridge steps at 0 s and 60 s after the command: still on
    rig.tick()
    assert len(rig.bridge.overrides) == N_PACKS
    rig.tick()  # 120 s after the command: lapsed at the bridge's step
    assert rig.bridge.overrides == {}
    assert rig.bridge.counters["overrides_expired"] == N_PACKS


# ---------------------------------------------------------------- offline, broker outage


def test_last_will_takes_the_edge_out_of_the_coordinators_allocation(
    broker: Broker, mqtt_site: str, monitor: Monitor
) -> None:
    """The network goes: the broker sends the will, the coordinator rebalances at once."""
    with CuttableLine(broker.host, broker.port) as line:
        rig = Rig(broker, mqtt_site, port=line.port)
        names = ("p0", "p1", "p2")
        fleet = SiteFleet(
            fleet_observation_layout(names, 0, 3000.0),
            rig.runtime.ratings,
            rig.runtime.limits,
            60.0,
        )
        coordinator = Coordinator(
            mqtt_site,
            fleet,
            *make_policy("equal", fleet),
            settings=CoordinatorSettings(period_s=600.0, stale_after_s=600.0),
            clock=rig.clock,
        )
        watcher = _client(broker, f"coordinator-{mqtt_site}")
        coordinator.attach(watcher)
        assert watcher.connect(timeout_s=10.0)
        rig.connect(monitor)
        try:
            rig.tick()
            rig.tick()  # telemetry again, 60 s later (the coordinator subscribed meanwhile)
            assert wait_for(lambda: coordinator.state.counts()["telemetry_accepted"] == 2)
            assert len(coordinator.state.usable()) == 3
            rig.clock.now_s += 5.0  # past the coordinator's 2 s debounce
            first = coordinator.step()
            assert first is not None
            assert first["reason"] == "initial"
            assert first["excluded"] == []
            assert rig.wait_counter("allocation_applied", 1)
            assert rig.tick().policy_action.tolist() == pytest.approx([0.2] * 3)  # 600 W / 3

            line.cut()  # the edge's network is gone: no DISCONNECT, the broker sends the will
            assert wait_for(lambda: coordinator.state.online.get(rig.device) is False)

            def will() -> list[dict[str, Any]]:
                return [s for s in monitor.of("status", rig.device) if s["state"] == "offline"]

            assert wait_for(lambda: bool(will()))
            assert will()[-1]["session"].endswith(":will")
            rig.clock.now_s += 5.0  # past the coordinator's 2 s rebalance debounce
            rebalance = coordinator.step()
            assert rebalance is not None
            assert rebalance["reason"] == "rebalance"  # seconds after the will, not a period
            assert sorted(rebalance["excluded"]) == [f"{rig.device}/{p}" for p in names]
            assert {s["power_w"] for s in rebalance["setpoints"]} == {0.0}
            rig.setpoints()
            rig.tick()  # CAN control goes on meanwhile, on the allocation it still holds
            assert sorted(f.pack for f in rig.setpoints() if f.enable) == [0, 1, 2]

            line.restore()

            def back_online() -> bool:
                rig.bridge.step()  # (its thread does this every half second)
                return coordinator.state.online.get(rig.device) is True

            assert wait_for(back_online)  # reconnected: "online" replaces the will
            sent = rig.bridge.counters["telemetry_sent"]
            assert sent >= 3  # one of them queued while the line was cut
            accepted = coordinator.state.sequence_counts("telemetry")
            assert wait_for(lambda: coordinator.state.counts()["telemetry_accepted"] == sent)
            assert accepted["missing"] == 0
        finally:
            rig.close()
            watcher.close()


def test_broker_killed_mid_run_can_control_goes_on_and_telemetry_resumes(
    broker_factory: Callable[..., Broker], mqtt_site: str
) -> None:
    server = broker_factory("mosquitto", sites=(mqtt_site,))
    mon = Monitor(_client(server, f"monitor-{mqtt_site}", clean_start=False))
    mon.link.subscribe(site_filter(mqtt_site), lambda t, m: mon.messages.append((t, m)))
    assert mon.link.connect(timeout_s=10.0)
    rig = Rig(server, mqtt_site).connect(mon)

    def received() -> list[int]:
        return [m["seq"] for m in mon.of("telemetry", rig.device)]

    try:
        for _ in range(2):
            rig.tick()
        assert wait_for(lambda: received()[-1:] == [1])
        rig.setpoints()
        server.kill()  # type: ignore[attr-defined]  # MosquittoBroker: SIGKILL, a crash
        assert wait_for(lambda: not rig.link.connected)
        for _ in range(3):  # no broker: ticks, set-points on CAN, telemetry queued
            report = rig.tick()
            assert not report.safe.any()
            assert sorted(f.pack for f in rig.setpoints() if f.enable) == [0, 1, 2]
        assert rig.runtime.metrics.ticks == 5
        assert rig.link.stats()["published_offline"] >= 3
        server.start()
        assert rig.link.wait_connected(15.0)
        assert mon.link.wait_connected(15.0)

        def resumed() -> bool:  # the monitor re-subscribes after a crash lost its session
            rig.tick()
            return wait_for(lambda: max(received()) >= 5, timeout_s=0.5)

        assert wait_for(resumed, timeout_s=15.0)  # telemetry resumes
    finally:
        rig.close()
        mon.link.close()
