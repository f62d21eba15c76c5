"""The coordinator with the site's services: twin forecasts, health verdicts, demand forecasts.

The rules (exclusion on a safety anomaly, derating on a stuck sensor, the twin's SoH and
remaining life in the plan), the demand forecast sources (a daily profile learned from a
real SQLite store, a scenario file) and the MPC planning its whole horizon on them; then
the same over a real Mosquitto with each service under its own broker user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_helpers import Inbox, pack, telemetry, wait_until

from pulsebms.core.messaging import encode, forecast_topic, health_topic, telemetry_topic
from pulsebms.core.observation import fleet_observation_layout
from pulsebms.safety.state import PackRatings
from pulsebms.services.broker import Broker
from pulsebms.services.coordinator import (
    Coordinator,
    CoordinatorSettings,
    DailyProfileForecast,
    FileForecast,
    HealthRules,
    SiteFleet,
    SiteHealth,
    make_demand_forecast,
    make_policy,
)
from pulsebms.services.coordinator.site_health import (
    SAFETY_ANOMALIES,
    SENSOR_ANOMALIES,
    rul_cost_factor,
    rul_share,
)
from pulsebms.services.store import SqliteTelemetryStore

PACKS = ("a", "b", "c", "d")
DEVICES = {"e1": ("a", "b"), "e2": ("c", "d")}
T0 = 1_000_000.0


@pytest.fixture(scope="module")
def fleet() -> SiteFleet:
    n = len(PACKS)
    ratings = PackRatings(
        ("LFP",) * n, np.full(n, 16), np.full(n, 16), np.full(n, 2.5), np.full(n, 1000.0)
    )
    return SiteFleet(fleet_observation_layout(PACKS, 2, 1000.0 * n), ratings, dt_s=60.0)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _feed(coord: Coordinator, seq: int, demand_w: float = 2000.0, site: str = "s1") -> None:
    for device, ids in DEVICES.items():
        msg = telemetry(site, device, seq, [pack(p) for p in ids], demand_w=demand_w,
                        timestamp_s=T0 + seq)  # fmt: skip
        coord.on_message(telemetry_topic(site, device), msg)


def _forecast(seq: int, rul: dict[str, float | None], soh: float = 0.9, site: str = "s1") -> dict:
    return {
        "site": site, "session": "twin", "seq": seq, "timestamp_s": T0, "period_s": 300.0,
        "duty": "observed", "horizon_days": 3650.0,
        "packs": [{"device": "e1" if p in "ab" else "e2", "pack_id": p, "soh": soh,
                   "rul_days": r, "end_of_life_soh": 0.8, "trajectory": []}
                  for p, r in rul.items()],
    }  # fmt: skip


def _health(device: str, seq: int, anomalies: dict[str, list[str]], site: str = "s1") -> dict:
    return {
        "site": site, "device": device, "session": "health", "seq": seq, "timestamp_s": T0,
        "model": "test", "packs": [{"pack_id": p, "health_score": 0.9, "soh_forecast": 0.89,
                                    "anomaly_score": 9.0 if a else 0.5, "anomalies": a,
                                    "priority": 4.0 if a else 0.1} for p, a in anomalies.items()],
    }  # fmt: skip


def _power(alloc: dict[str, Any]) -> dict[str, float]:
    return {s["pack_id"]: s["power_w"] for s in alloc["setpoints"]}


def test_site_health_rules_and_sequence() -> None:
    import pulsebms.services.health.priority as priority

    # One truth for the tiers: the health service's priority engine.
    assert SAFETY_ANOMALIES == priority.SAFETY_ANOMALIES
    assert SENSOR_ANOMALIES == priority.SENSOR_ANOMALIES
    sh = SiteHealth("s1", HealthRules(derate_fraction=0.3))
    assert sh.apply("health", _health("e1", 0, {"a": ["internal_short"], "b": ["stuck_sensor"]}),
                    received_s=T0)  # fmt: skip
    assert sh.excluded(PACKS) == {"a": "internal_short"}
    assert sh.derate(PACKS).tolist() == [1.0, 0.3, 1.0, 1.0]
    # The same verdict again changes nothing; an older message is dropped.
    same = _health("e1", 1, {"a": ["internal_short"], "b": ["stuck_sensor"]})
    assert not sh.apply("health", same, received_s=T0)
    assert not sh.apply("health", _health("e1", 0, {}), received_s=T0)
    assert sh.counts()["health_sequence_dropped"] == 1
    # Another site's message and an unknown kind are counted, not applied.
    assert not sh.apply("health", _health("e1", 5, {"a": []}, site="s2"), received_s=T0)
    assert not sh.apply("status", {}, received_s=T0)
    assert sh.excluded(PACKS) == {"a": "internal_short"}
    # Cleared by the next message of that device, also when it no longer lists the pack.
    assert sh.apply("health", _health("e1", 2, {"b": []}), received_s=T0)
    assert sh.excluded(PACKS) == {}
    assert sh.derate(PACKS).tolist() == [1.0] * 4
    # Forecasts: fresh for three periods, RUL null = beyond the horizon.
    assert not sh.apply("forecast", _forecast(0, {"a": 100.0, "b": None}), received_s=T0)
    assert sh.soh(PACKS, T0 + 899.0)[:2].tolist() == [0.9, 0.9]
    assert np.isnan(sh.soh(PACKS, T0)[2])
    assert sh.rul_days(PACKS, T0).tolist()[:2] == [100.0, np.inf]
    assert np.isnan(sh.soh(PACKS, T0 + 901.0)).all()  # stale
    with pytest.raises(ValueError, match="derate_fraction"):
        HealthRules(derate_fraction=0.0)
    assert rul_share(np.array([50.0, 200.0, 200.0, np.inf])).tolist() == [0.25, 1.0, 1.0, 1.0]
    assert rul_cost_factor(np.array([np.nan, np.nan])).tolist() == [1.0, 1.0]


def test_health_verdicts_exclude_and_derate_and_trigger_a_rebalance(fleet: SiteFleet) -> None:
    clock = Clock()
    settings = CoordinatorSettings(rebalance_debounce_s=1.0, stale_after_s=1e6)
    coord = Coordinator("s1", fleet, *make_policy("equal", fleet), clock=clock, settings=settings)
    _feed(coord, 0)
    clock.now += 1.0
    first = coord.step()
    assert first is not None
    assert _power(first) == {p: 500.0 for p in PACKS}
    # The health service flags heating on c and a stuck sensor on a.
    coord.on_message(health_topic("s1", "e2"), _health("e2", 0, {"c": ["abnormal_heating"],
                                                                 "d": []}))  # fmt: skip
    coord.on_message(health_topic("s1", "e1"), _health("e1", 0, {"a": ["stuck_sensor"], "b": []}))
    clock.now += 1.0
    rebalance = coord.step()
    assert rebalance is not None
    assert rebalance["reason"] == "rebalance"
    encode("allocation", rebalance)  # the additive fields stay schema-valid
    power = _power(rebalance)
    assert power["c"] == 0.0
    assert "e2/c" in rebalance["excluded"]
    assert rebalance["health_excluded"] == ["e2/c"]
    assert rebalance["derated"] == ["e1/a"]
    assert abs(power["a"]) <= 500.0 + 1e-6  # derated to half its 1000 W rating
    assert sum(power.values()) == pytest.approx(2000.0)  # b and d carry the rest
    assert power["b"] == pytest.approx(power["d"])
    assert power["b"] > 500.0
    summary = coord.summary()
    assert summary["health_received"] == 2
    assert summary["health_excluded"] == ["c"]


def test_health_policy_uses_the_twins_soh_and_remaining_life(fleet: SiteFleet) -> None:
    clock = Clock()
    coord = Coordinator("s1", fleet, *make_policy("health", fleet), clock=clock)
    _feed(coord, 0, demand_w=1000.0)
    before = _power(coord.plan())
    assert before["a"] == pytest.approx(before["b"])  # identical telemetry, identical share
    # The twin: a is due for its end of life in 100 days, the others in 400 or beyond.
    coord.on_message(forecast_topic("s1"), _forecast(0, {"a": 100.0, "b": 400.0, "c": 400.0,
                                                         "d": None}))  # fmt: skip
    after = coord.plan()
    power = _power(after)
    assert power["a"] < 0.5 * power["b"]  # RUL share 0.25
    assert power["b"] == pytest.approx(power["c"]) == pytest.approx(power["d"])
    assert sum(power.values()) == pytest.approx(1000.0)
    assert after["forecast_soh_packs"] == 4
    assert coord.summary()["forecast_received"] == 1


def test_daily_profile_learns_from_a_real_store_and_online() -> None:
    store = SqliteTelemetryStore(":memory:")
    rows = []
    for k in range(3 * 96):  # three days, every 15 min, two packs splitting a day/night load
        t = T0 - 3 * 86400.0 + k * 900.0
        load_w = 1500.0 if 8 <= (t % 86400.0) / 3600.0 < 18 else -600.0
        for pid in ("a", "b"):
            current = load_w / 2.0 / 50.0
            rows.append((pid, t, 0.5, 1.0, current, 50.0, 25.0))
    store.write_batch(rows)
    f = DailyProfileForecast(dt_s=3600.0, bin_s=900.0, halflife_days=None)
    assert f.learn_from_store(store, ["a", "b", "zz"], T0 - 3 * 86400.0, T0) == 3 * 96
    now = T0 - T0 % 86400.0 + 5 * 3600.0  # 05:00 local (UTC)
    ahead = f(now, 6)  # 06:00 .. 11:00
    np.testing.assert_allclose(ahead, [-600.0, -600.0, 1500.0, 1500.0, 1500.0, 1500.0])
    # The same from the spec string the CLIs take.
    g = make_demand_forecast("profile", 3600.0, store=store, pack_ids=["a", "b"], now_s=T0)
    assert isinstance(g, DailyProfileForecast)
    assert g.observations == 3 * 96
    empty = DailyProfileForecast(dt_s=60.0)
    empty.observe(T0, 321.0)
    assert empty(T0 + 7200.0, 2).tolist() == [321.0, 321.0]  # no data there: persistence
    empty.observe(T0, float("nan"))  # ignored
    assert empty.observations == 1
    with pytest.raises(ValueError, match="divide a day"):
        DailyProfileForecast(dt_s=60.0, bin_s=7000.0)
    store.close()


def test_file_forecast_reads_both_layouts_and_refuses_bad_files(tmp_path: Path) -> None:
    absolute = tmp_path / "abs.csv"
    absolute.write_text("t_s,demand_w\n0,0\n100,1000\n")
    f = FileForecast(absolute, dt_s=25.0)
    assert f(0.0, 5).tolist() == [250.0, 500.0, 750.0, 1000.0, 1000.0]
    daily = tmp_path / "daily.csv"
    daily.write_text("hour,demand_w\n0,100\n12,1300\n")
    g = make_demand_forecast(f"csv:{daily}", 3600.0)
    assert isinstance(g, FileForecast)
    assert g(86400.0 * 5 + 11 * 3600.0, 2).tolist() == [1300.0, 1200.0]  # 12:00, 13:00
    assert g(86400.0 * 5 + 22 * 3600.0, 2).tolist() == pytest.approx([200.0, 100.0])  # wraps
    for text, match in (
        ("time,demand_w\n1,2\n", "needs a header"),
        ("t_s,demand_w\n0,1\n5,x\n", r"abs.csv:3: not a number"),
        ("t_s,demand_w\n5,1\n0,2\n", "must increase"),
        ("t_s,demand_w\n", "no rows"),
        ("hour,demand_w\n0,1\n30,2\n", "within 0..24"),
    ):
        absolute.write_text(text)
        with pytest.raises(ValueError, match=match):
            FileForecast(absolute, 60.0)
    assert make_demand_forecast("persistence", 60.0) is None
    with pytest.raises(ValueError, match="unknown demand forecast"):
        make_demand_forecast("oracle", 60.0)


def test_mpc_plans_its_horizon_on_the_forecast_and_weights_wear(
    fleet: SiteFleet, tmp_path: Path
) -> None:
    path = tmp_path / "demand.csv"
    times = T0 + 60.0 * np.arange(0, 10)
    values = [2000.0, 2000.0, 2500.0, 3000.0, 3500.0, -1000.0, -1000.0, 0.0, 0.0, 0.0]
    rows = "".join(f"{t},{v}\n" for t, v in zip(times, values, strict=True))
    path.write_text("t_s,demand_w\n" + rows)
    policy, name = make_policy("mpc", fleet, horizon_steps=6)
    clock = Clock()
    coord = Coordinator("s1", fleet, policy, name, clock=clock, forecast=FileForecast(path, 60.0))
    _feed(coord, 0, demand_w=2000.0)
    coord.on_message(forecast_topic("s1"), _forecast(0, {"a": 50.0, "b": 200.0, "c": 200.0,
                                                         "d": 200.0}))  # fmt: skip
    alloc = coord.plan()
    # The MPC's demand parameter: now, then the file's next five intervals [kW].
    planned_kw = np.asarray(policy.p_demand.value)  # type: ignore[attr-defined]
    np.testing.assert_allclose(planned_kw, np.array([2000.0, *values[1:6]]) / 1000.0)
    np.testing.assert_allclose(policy.degradation_weight, [4.0, 1.0, 1.0, 1.0])  # type: ignore[attr-defined]
    assert sum(_power(alloc).values()) == pytest.approx(2000.0, abs=1.0)
    assert coord.counts["policy_errors"] == 0

    def broken(now_s: float, steps: int) -> np.ndarray:
        return np.full(steps + 3, 1.0)

    coord.forecast = broken  # a source that returns the wrong length: persistence, counted
    coord.plan()
    assert coord.counts["forecast_errors"] == 2  # the observation's field and the horizon
    assert coord.counts["observation_errors"] == 0
    np.testing.assert_allclose(policy.p_demand.value, np.full(6, 2.0))  # type: ignore[attr-defined]


def test_site_services_reach_the_coordinator_over_mosquitto(
    mosquitto_broker: Broker, mqtt_site: str, fleet: SiteFleet
) -> None:
    """Twin and health publish as their own users; the coordinator re-plans without c."""
    site = mqtt_site
    settings = CoordinatorSettings(period_s=600.0, rebalance_debounce_s=0.1, tick_s=0.02)
    profile = DailyProfileForecast(dt_s=60.0)
    inbox = Inbox()
    coord_link = mosquitto_broker.link(f"coordinator-{site}", f"{site}-coordinator")
    coord = Coordinator(site, fleet, *make_policy("health", fleet), link=coord_link,
                        settings=settings, forecast=profile)  # fmt: skip
    coord.attach()
    with (
        mosquitto_broker.link(f"edge-{site}", f"{site}-edge") as edge,
        mosquitto_broker.link(f"twin-{site}", f"{site}-twin") as twin,
        mosquitto_broker.link(f"health-{site}", f"{site}-health") as health,
    ):
        edge.subscribe(f"pulsebms/{site}/coordinator/allocation", inbox)
        try:
            assert coord_link.connect(10.0)
            coord.start()
            for link in (edge, twin, health):
                assert link.connect(10.0)
            for device, ids in DEVICES.items():
                msg = telemetry(site, device, 0, [pack(p) for p in ids], demand_w=1200.0)
                assert edge.publish("telemetry", telemetry_topic(site, device), msg)
            assert wait_until(lambda: len(inbox) >= 1)
            assert twin.publish("forecast", forecast_topic(site), _forecast(
                0, {"a": 100.0, "b": 400.0, "c": 400.0, "d": 400.0}, site=site))  # fmt: skip
            assert health.publish("health", health_topic(site, "e2"), _health(
                "e2", 0, {"c": ["internal_short"], "d": []}, site=site))  # fmt: skip
            assert wait_until(lambda: any(m["health_excluded"] for m in inbox.messages()), 20.0)
        finally:
            coord.stop()
            coord_link.close(drain_timeout_s=0)
    rebalance = next(m for m in inbox.messages() if m["health_excluded"])
    assert rebalance["reason"] == "rebalance"
    assert rebalance["health_excluded"] == ["e2/c"]
    assert _power(rebalance)["c"] == 0.0
    assert sum(_power(rebalance).values()) == pytest.approx(1200.0)
    summary = coord.summary()
    assert summary["health_received"] == 1
    assert summary["forecast_received"] == 1
    assert profile.observations == 2  # the demand the edges reported, learned online
