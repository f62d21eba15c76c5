"""The coordinator: timing (initial, periodic, rebalance), exclusions, policies, MQTT, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_helpers import Inbox, pack, status, telemetry, wait_until

from pulsebms.core.messaging import encode, status_topic, telemetry_topic
from pulsebms.core.observation import fleet_observation_layout
from pulsebms.core.types import ObsArray
from pulsebms.edge_runtime.mqtt_link import offline_will
from pulsebms.safety.state import PackRatings
from pulsebms.services.broker import Broker
from pulsebms.services.coordinator import (
    Coordinator,
    CoordinatorSettings,
    SiteFleet,
    make_policy,
)

PACKS = ("a", "b", "c", "d")
DEVICES = {"e1": ("a", "b"), "e2": ("c", "d")}


def make_fleet(shield: dict[str, Any] | None = None) -> SiteFleet:
    n = len(PACKS)
    ratings = PackRatings(
        ("LFP",) * n, np.full(n, 16), np.full(n, 16), np.full(n, 2.5), np.full(n, 1000.0)
    )
    layout = fleet_observation_layout(PACKS, 2, 1000.0 * n)
    return SiteFleet(layout, ratings, dt_s=60.0, shield=shield or {})


@pytest.fixture(scope="module")
def fleet() -> SiteFleet:
    return make_fleet()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tel(device: str, seq: int, *, demand_w: float = 2000.0, safe: tuple[str, ...] = ()) -> dict:
    packs = [pack(p, safe=p in safe) for p in DEVICES[device]]
    return telemetry("s1", device, seq, packs, demand_w=demand_w)


def _feed(coord: Coordinator, device: str, seq: int, **kw: Any) -> None:
    coord.on_message(telemetry_topic("s1", device), _tel(device, seq, **kw))


def _power(alloc: dict[str, Any]) -> dict[str, float]:
    return {s["pack_id"]: s["power_w"] for s in alloc["setpoints"]}


def test_initial_periodic_rebalance_and_debounce(fleet: SiteFleet) -> None:
    clock = Clock()
    settings = CoordinatorSettings(period_s=600.0, rebalance_debounce_s=2.0, stale_after_s=1e6)
    coord = Coordinator("s1", fleet, *make_policy("equal", fleet), clock=clock, settings=settings)
    assert coord.step() is None  # nothing reported yet
    _feed(coord, "e1", 0)
    _feed(coord, "e2", 0)
    clock.now += 1.0
    assert coord.step() is None  # debounce
    clock.now += 1.0
    initial = coord.step()
    assert initial is not None
    assert initial["reason"] == "initial"
    assert _power(initial) == {"a": 500.0, "b": 500.0, "c": 500.0, "d": 500.0}
    assert initial["excluded"] == []
    encode("allocation", initial)  # schema-valid
    clock.now += 300.0
    assert coord.step() is None
    clock.now += 300.0
    periodic = coord.step()
    assert periodic is not None
    assert (periodic["reason"], periodic["seq"]) == ("periodic", 1)
    # e2 goes offline (its last will): its packs are excluded and the demand moves, 2 s later
    coord.on_message(status_topic("s1", "e2"), status("s1", "e2", 0, "offline", session="w"))
    clock.now += 1.0
    # a second change inside the debounce is collected into the same re-plan
    _feed(coord, "e1", 1, safe=("b",))
    assert coord.step() is None
    clock.now += 1.0
    rebalance = coord.step()
    assert rebalance is not None
    assert rebalance["reason"] == "rebalance"
    assert rebalance["excluded"] == ["e1/b", "e2/c", "e2/d"]
    power = _power(rebalance)
    assert power["b"] == power["c"] == power["d"] == 0.0
    assert power["a"] == pytest.approx(1000.0)  # at its rating: the rest is a shortfall
    assert rebalance["shortfall_w"] == pytest.approx(1000.0)
    assert coord.counts["rebalance"] == 1
    # the fault clears: back to three packs
    _feed(coord, "e1", 2)
    clock.now += 2.0
    again = coord.step()
    assert again is not None
    assert again["excluded"] == ["e2/c", "e2/d"]
    assert sum(_power(again).values()) == pytest.approx(2000.0)
    assert coord.summary()["offline_events"] == 1
    assert coord.summary()["fault_events"] == 1


def test_a_silent_device_is_excluded_after_stale_after_s(fleet: SiteFleet) -> None:
    clock = Clock()
    settings = CoordinatorSettings(rebalance_debounce_s=0.0, stale_after_s=10.0)
    coord = Coordinator("s1", fleet, *make_policy("equal", fleet), clock=clock, settings=settings)
    _feed(coord, "e1", 0)
    _feed(coord, "e2", 0)
    first = coord.step()
    assert first is not None
    assert first["excluded"] == []
    for k in range(1, 4):  # e1 keeps reporting, e2 falls silent
        clock.now += 5.0
        _feed(coord, "e1", k)
        coord.step()
    stale = coord.history[-1]
    assert stale["reason"] == "rebalance"
    assert stale["excluded"] == ["e2/c", "e2/d"]
    assert sum(_power(stale).values()) == pytest.approx(2000.0)
    clock.now += 1.0
    _feed(coord, "e2", 1)  # back: a re-plan with every pack
    back = coord.step()
    assert back is not None
    assert back["excluded"] == []


class _Broken:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def act(self, observation: ObsArray) -> Any:
        if self.mode == "raise":
            raise RuntimeError("policy bug")
        if self.mode == "shape":
            return np.zeros(3)
        return np.full(len(PACKS), np.nan)


@pytest.mark.parametrize("mode", ["raise", "shape", "nan"])
def test_a_failing_policy_never_stops_the_plan(fleet: SiteFleet, mode: str) -> None:
    """The zero action (or the shield's sanitised NaN) + demand tracking = a shield split."""
    clock = Clock()
    coord = Coordinator("s1", fleet, _Broken(mode), "broken", clock=clock)
    _feed(coord, "e1", 0)
    _feed(coord, "e2", 0, demand_w=-1000.0)  # charging: the latest site value counts
    alloc = coord.plan("manual")
    assert sum(_power(alloc).values()) == pytest.approx(-1000.0)
    assert coord.counts["policy_errors"] == (0 if mode == "nan" else 1)


def test_packs_never_reported_are_excluded_without_a_setpoint(fleet: SiteFleet) -> None:
    coord = Coordinator("s1", fleet, *make_policy("proportional", fleet), clock=Clock())
    _feed(coord, "e1", 0, demand_w=1500.0)
    alloc = coord.plan()
    assert alloc["excluded"] == ["c", "d"]
    assert sorted(_power(alloc)) == ["a", "b"]
    assert sum(_power(alloc).values()) == pytest.approx(1500.0)


def _constant_onnx(observation_size: int, action_size: int, value: float) -> bytes:
    """An ONNX graph (exporter I/O names) whose action is ``value`` for every pack."""
    from onnx import TensorProto, helper

    def const(name: str, dtype: int, vals: list[float]) -> Any:
        return helper.make_tensor(name, dtype, [1] if dtype == TensorProto.INT64 else [], vals)

    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["observation", "start", "stop", "axis"], ["head"]),
            helper.make_node("Mul", ["head", "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "value"], ["action"]),
        ],
        "constant",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["b", observation_size])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["b", action_size])],
        [
            const("start", TensorProto.INT64, [0]),
            const("stop", TensorProto.INT64, [action_size]),
            const("axis", TensorProto.INT64, [1]),
            const("zero", TensorProto.FLOAT, [0.0]),
            const("value", TensorProto.FLOAT, [value]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return bytes(model.SerializeToString())


def _export_folder(path: Path, fleet: SiteFleet, value: float) -> Path:
    import dataclasses

    from pulsebms.edge_runtime.manifest import (
        ActionField,
        Manifest,
        ModelInfo,
        SourceInfo,
        ratings_to_dict,
        sha256_bytes,
    )

    model = _constant_onnx(fleet.layout.size, fleet.n_packs, value)
    path.mkdir(parents=True)
    (path / "policy.onnx").write_bytes(model)
    manifest = Manifest(
        model=ModelInfo(
            "policy.onnx", sha256_bytes(model), "observation", "action",
            fleet.layout.size, fleet.n_packs, 18,
        ),
        source=SourceInfo("sb3", "PPO", "/nowhere/model.zip", "1" * 64),
        observation=fleet.layout,
        action=(ActionField("power_setpoint", 0, fleet.n_packs),),
        ratings=ratings_to_dict(fleet.ratings),
        limits=tuple(dataclasses.asdict(lim) for lim in fleet.limits),
        shield={"dt_s": 60.0, "track_demand": False},
        dt_s=60.0,
        versions={"pulsebms": "test"},
        created_utc="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    manifest.save(path / "manifest.json")
    return path


def test_onnx_policy_from_an_export_folder(fleet: SiteFleet, tmp_path: Path) -> None:
    folder = _export_folder(tmp_path / "deploy", fleet, 0.25)
    site_fleet = SiteFleet.from_file(folder)
    assert site_fleet.layout == fleet.layout
    policy, name = make_policy(f"onnx:{folder}", site_fleet)
    assert name == "onnx:PPO"
    coord = Coordinator("s1", site_fleet, policy, name, clock=Clock())
    _feed(coord, "e1", 0)
    _feed(coord, "e2", 0)
    alloc = coord.plan()
    # the manifest's shield keeps the policy's own total (track_demand False)
    assert _power(alloc) == {"a": 250.0, "b": 250.0, "c": 250.0, "d": 250.0}
    other = make_fleet()
    object.__setattr__(other, "layout", fleet_observation_layout(PACKS, 3, 4000.0))
    with pytest.raises(ValueError, match="observation layout"):
        make_policy(f"onnx:{folder}", other)


def test_policy_specs_are_checked(fleet: SiteFleet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("best", fleet)
    with pytest.raises(FileNotFoundError):
        make_policy(f"sb3:{tmp_path / 'missing.zip'}", fleet)
    with pytest.raises(ValueError, match="takes no settings"):
        make_policy("equal", fleet, horizon_steps=3)


def test_mpc_plans_the_site(fleet: SiteFleet) -> None:
    policy, name = make_policy("mpc", fleet, horizon_steps=4)
    coord = Coordinator("s1", fleet, policy, name, clock=Clock())
    _feed(coord, "e1", 0)
    _feed(coord, "e2", 0)
    alloc = coord.plan()
    assert alloc["policy"] == "mpc"
    assert coord.counts["policy_errors"] == 0
    assert sum(_power(alloc).values()) == pytest.approx(2000.0, abs=1.0)


# ---------------------------------------------------------------- over a real broker
def test_rebalance_over_mqtt_when_an_edge_dies(mqtt_broker: Broker, mqtt_site: str) -> None:
    """An edge's socket dies: its will reaches the coordinator, which re-plans at once.

    The period is 600 s, so the re-plan seen here is the rebalance, not the periodic one.
    """
    site = mqtt_site
    fleet = make_fleet()
    settings = CoordinatorSettings(period_s=600.0, rebalance_debounce_s=0.2, tick_s=0.02)
    inbox = Inbox()
    coord_link = mqtt_broker.link(f"coordinator-{site}", f"{site}-coordinator")
    coord = Coordinator(
        site, fleet, *make_policy("equal", fleet), link=coord_link, settings=settings
    )
    coord.attach()
    edges = {
        d: mqtt_broker.link(f"edge-{site}", f"{site}-{d}", will=offline_will(site, d, "r"))
        for d in DEVICES
    }
    edges["e1"].subscribe(f"pulsebms/{site}/coordinator/allocation", inbox)
    try:
        assert coord_link.connect(10.0)
        coord.start()
        for d, link in edges.items():
            assert link.connect(10.0)
            packs = [pack(p) for p in DEVICES[d]]
            link.publish(
                "telemetry",
                telemetry_topic(site, d),
                telemetry(site, d, 0, packs, demand_w=2000.0, session="r"),
            )
        assert wait_until(lambda: len(inbox) >= 1)
        assert inbox.messages()[0]["reason"] == "initial"
        # e2 crashes: the network thread stops and the socket closes without DISCONNECT
        edges["e2"]._client.loop_stop()
        sock = edges["e2"]._client.socket()
        assert sock is not None
        sock.close()
        assert wait_until(lambda: any(m["reason"] == "rebalance" for m in inbox.messages()), 20.0)
    finally:
        coord.stop()
        for link in (*edges.values(), coord_link):
            link.close(drain_timeout_s=0)
    rebalance = next(m for m in inbox.messages() if m["reason"] == "rebalance")
    assert rebalance["excluded"] == ["e2/c", "e2/d"]
    assert _power(rebalance)["a"] + _power(rebalance)["b"] == pytest.approx(2000.0)
    assert coord.summary()["offline_events"] == 1


def test_cli_refuses_a_bad_forecast_or_derating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pulsebms.services.coordinator.cli import main

    fleet = make_fleet()
    spec = {
        "observation": [f.to_dict() for f in fleet.layout.fields],
        "pack_names": list(PACKS),
        "ratings": {"chemistry": ["LFP"] * 4, "series": [16] * 4, "parallel": [16] * 4,
                    "cell_capacity_ah": [2.5] * 4, "rated_power_w": [1000.0] * 4},
        "dt_s": 60.0,
    }  # fmt: skip
    (tmp_path / "fleet.json").write_text(json.dumps(spec))
    base = ["--site", "s1", "--fleet", str(tmp_path / "fleet.json"), "--broker", "127.0.0.1:1"]
    assert main([*base, "--forecast", "oracle"]) == 1
    assert "unknown demand forecast" in capsys.readouterr().err
    (tmp_path / "demand.csv").write_text("t_s,demand_w\n0,x\n")
    assert main([*base, "--forecast", f"csv:{tmp_path / 'demand.csv'}"]) == 1
    assert "demand.csv:2: not a number" in capsys.readouterr().err
    assert main([*base, "--derate-fraction", "1.5"]) == 1
    assert "derate_fraction" in capsys.readouterr().err


def test_cli_against_mosquitto(
    mosquitto_broker: Broker, mqtt_site: str, tmp_path: Path, broker_password: str
) -> None:
    site = mqtt_site
    fleet = make_fleet()
    spec = {
        "observation": [f.to_dict() for f in fleet.layout.fields],
        "pack_names": list(PACKS),
        "ratings": {"chemistry": ["LFP"] * 4, "series": [16] * 4, "parallel": [16] * 4,
                    "cell_capacity_ah": [2.5] * 4, "rated_power_w": [1000.0] * 4},
        "dt_s": 60.0,
    }  # fmt: skip
    (tmp_path / "fleet.json").write_text(json.dumps(spec))
    inbox = Inbox()
    with mosquitto_broker.link(f"edge-{site}", f"{site}-edge") as edge:
        edge.subscribe(f"pulsebms/{site}/coordinator/allocation", inbox)
        assert edge.connect(10.0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulsebms.services.coordinator.cli", "--site", site,
             "--fleet", str(tmp_path / "fleet.json"), "--broker", mosquitto_broker.address,
             "--debounce-s", "0.1", "--duration-s", "60"],
            env={**os.environ, "PULSEBMS_MQTT_PASSWORD": broker_password},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            seq = 0
            while proc.poll() is None and len(inbox) == 0 and seq < 200:
                for d, ids in DEVICES.items():
                    msg = telemetry(site, d, seq, [pack(p) for p in ids], demand_w=800.0)
                    edge.publish("telemetry", telemetry_topic(site, d), msg)
                seq += 1
                wait_until(lambda: len(inbox) > 0, 0.1)
            proc.send_signal(signal.SIGTERM)  # a clean stop prints the summary
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert len(inbox) >= 1
    assert sum(_power(inbox.messages()[0]).values()) == pytest.approx(800.0)
    summary = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
    assert summary["allocations"] >= 1
    assert summary["policy"] == "rule_soc"
    assert summary["link"]["connects"] == 1
