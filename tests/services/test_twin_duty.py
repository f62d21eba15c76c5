"""Per-pack duties read from telemetry, and the forecasts they give.

Two NMC packs of the same SoH run different duties on the equivalent-circuit truth twin for
two days (telemetry every 10 min); the twin service, reading a real SQLite store, must
forecast each under its own duty: the pack cycled harder gets the shorter remaining life.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pulsebms.core.messaging import decode, encode, telemetry_topic
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.services.store import SqliteTelemetryStore
from pulsebms.services.twin.duty import DEFAULT_DUTY, Duty
from pulsebms.services.twin.forecast import forecast_soh
from pulsebms.services.twin.recording import record_telemetry, telemetry_messages
from pulsebms.services.twin.service import TwinService, TwinServiceConfig
from pulsebms.services.twin.usage import UsageSettings, observed_duty

DT_S = 600.0
HARD = Duty(cycles_per_day=3.0, depth_of_discharge=0.6, c_rate=0.6, mean_soc=0.5)
EASY = Duty(cycles_per_day=0.5, depth_of_discharge=0.4, c_rate=0.2, mean_soc=0.5)
SPECS = {"hard": PackSpec("NMC", series=14, parallel=4), "easy": PackSpec("NMC", series=14,
         parallel=4)}  # fmt: skip


def _columns(duty: Duty, days: float, capacity_ah: float = 50.0) -> dict[str, np.ndarray]:
    """Exact telemetry of a duty: current, SoC by coulomb counting, constant temperature."""
    current = duty.current_profile(np.array([capacity_ah]), DT_S, days * 86400.0)[:, 0]
    t = DT_S * np.arange(1, current.size + 1)
    top = duty.mean_soc + duty.depth_of_discharge / 2.0
    soc = top - np.cumsum(current) * DT_S / 3600.0 / capacity_ah
    return {"t_s": t, "current_a": current, "soc": soc, "temperature_c": np.full(t.size, 31.0)}


def test_observed_duty_recovers_the_duty_and_falls_back() -> None:
    got = observed_duty(_columns(HARD, 3.0), 50.0)
    assert got.source == "observed"
    d = got.duty
    assert d.cycles_per_day == pytest.approx(HARD.cycles_per_day, rel=0.1)
    assert d.c_rate == pytest.approx(HARD.c_rate, rel=0.05)
    assert d.depth_of_discharge == pytest.approx(HARD.depth_of_discharge, rel=0.1)
    assert d.mean_soc == pytest.approx(HARD.mean_soc, abs=0.05)
    assert d.temperature_c == pytest.approx(31.0)
    assert got.efc_per_day == pytest.approx(HARD.cycles_per_day * HARD.depth_of_discharge, rel=0.05)
    # Too little history: the stated duty, said so.
    short = observed_duty(_columns(HARD, 0.5), 50.0, stated=EASY)
    assert (short.duty, short.source) == (EASY, "stated")
    # An idle pack: no cycles, the stated C-rate (not observable).
    idle = _columns(HARD, 2.0)
    idle["current_a"] = np.zeros_like(idle["current_a"])
    idle["soc"] = np.full_like(idle["soc"], 0.6)
    quiet = observed_duty(idle, 50.0)
    assert quiet.source == "observed"
    assert quiet.duty.cycles_per_day == 0.0
    assert quiet.duty.c_rate == DEFAULT_DUTY.c_rate
    # No SoC reported: depth from charge alone, the stated mean SoC.
    blind = _columns(HARD, 2.0)
    blind["soc"] = np.full_like(blind["soc"], np.nan)
    got = observed_duty(blind, 50.0, stated=Duty(mean_soc=0.45))
    assert got.duty.depth_of_discharge == pytest.approx(HARD.depth_of_discharge, rel=0.1)
    assert got.duty.mean_soc == 0.45
    # A pack that cycles flat out all day stays a valid duty (≤ 24 h of cycling).
    flat_out = _columns(HARD, 2.0)
    flat_out["current_a"] = np.where(np.arange(flat_out["t_s"].size) % 2, 40.0, -40.0)
    assert observed_duty(flat_out, 50.0).duty.cycles_per_day > 0
    with pytest.raises(ValueError, match="capacity_ah"):
        observed_duty(_columns(HARD, 2.0), 0.0)
    with pytest.raises(ValueError, match="min_depth"):
        UsageSettings(min_depth=0.0)


def test_per_pack_duties_match_one_run_per_pack() -> None:
    """One vectorised run with a duty per pack = a run per pack (guards the batching)."""
    duties = [HARD, EASY, Duty(cycles_per_day=0.0, pulse_c_rate=0.05)]
    chems, soh = ["NMC", "LFP", "LCO"], np.array([0.95, 0.9, 0.85])
    batched = forecast_soh(chems, soh, duty=duties, horizon_days=730.0, step_days=30.0)
    assert batched.duties == tuple(duties)
    for k in range(3):
        one = forecast_soh([chems[k]], soh[k : k + 1], duty=duties[k], horizon_days=730.0,
                           step_days=30.0)  # fmt: skip
        np.testing.assert_allclose(batched.soh[k], one.soh[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="2 duties for 3 packs"):
        forecast_soh(chems, soh, duty=duties[:2])


def _messages() -> list[dict[str, Any]]:
    ids = list(SPECS)
    truth = [PackSpec(s.chemistry, series=s.series, parallel=s.parallel, initial_soc=0.8,
                      initial_soh=0.9) for s in SPECS.values()]  # fmt: skip
    twin = make_twin(truth, "ecm", degradation="none")
    capacity = np.asarray(twin.ratings.cell_capacity_ah * twin.ratings.parallel) * 0.9
    days = 2.0 * 86400.0
    current = np.column_stack(
        [
            HARD.current_profile(capacity[:1], DT_S, days)[:, 0],
            EASY.current_profile(capacity[1:], DT_S, days)[:, 0],
        ]
    )
    rec = record_telemetry(twin, current, DT_S, ids, t0_s=1_000.0)
    series = {i: s.series for i, s in SPECS.items()}
    return telemetry_messages(rec.rows, site="s1", device="edge-1", series=series, period_s=DT_S)


@pytest.mark.parametrize("from_telemetry", [True, False])
def test_service_forecasts_the_harder_cycled_pack_shorter_lived(from_telemetry: bool) -> None:
    messages = _messages()
    store = SqliteTelemetryStore(":memory:")
    now = [messages[0]["timestamp_s"]]
    config = TwinServiceConfig(
        site="s1", horizon_days=3650.0, step_days=30.0, duty_from_telemetry=from_telemetry,
        degradation_acceleration=3.0,  # so that both reach end of life within the horizon
    )  # fmt: skip
    service = TwinService(config, store, packs=SPECS, clock=lambda: now[0])
    for m in messages:
        now[0] = m["timestamp_s"]
        service.handle_payload(telemetry_topic("s1", "edge-1"), encode("telemetry", m))
    service.flush()
    message = service.forecast()
    assert message is not None
    decoded = decode(encode("forecast", message), "forecast")
    by_pack = {p["pack_id"]: p for p in decoded["packs"]}
    if not from_telemetry:
        assert {p["duty_source"] for p in by_pack.values()} == {"stated"}
        assert decoded["duty"] == DEFAULT_DUTY.describe()
        assert service.stats["duties_stated"] == 2
        store.close()
        return
    assert {p["duty_source"] for p in by_pack.values()} == {"observed"}
    assert decoded["duty"].startswith("per pack, observed over the last 7 days (2 of 2)")
    hard, easy = by_pack["hard"], by_pack["easy"]
    assert hard["duty"].startswith("3 cycles/day") or hard["duty"].startswith("2.9")
    assert hard["soh"] == easy["soh"] == pytest.approx(0.9)  # the BMS's SoH: same start
    assert hard["rul_days"] is not None
    assert easy["rul_days"] is None or hard["rul_days"] < 0.5 * easy["rul_days"]
    assert hard["trajectory"][-1]["soh"] < easy["trajectory"][-1]["soh"]
    assert service.stats["duties_observed"] == 2
    store.close()
