"""Twin service loop: telemetry messages in, store, mirror, calibration, forecast out.

Driven by recorded HIL-style telemetry of aged packs (equivalent-circuit truth twin, ±2 mV
noise) on a simulated clock, with a real SQLite store and, once, a real PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pulsebms.core.messaging import decode, encode, forecast_topic, telemetry_topic
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.hil.noise import SensorNoise
from pulsebms.services.store import PostgresTelemetryStore, SqliteTelemetryStore, TelemetryStore
from pulsebms.services.twin.duty import Duty
from pulsebms.services.twin.recording import record_telemetry, telemetry_messages
from pulsebms.services.twin.service import TwinService, TwinServiceConfig

SITE = "s1"
DEVICE = "edge-1"
TRUE_SOH = {"nmc-a": 0.9, "lfp-b": 0.85}
SPECS = {
    "nmc-a": PackSpec("NMC", series=14, parallel=4),
    "lfp-b": PackSpec("LFP", series=16, parallel=8),
}


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture(scope="module")
def messages() -> list[dict[str, Any]]:
    """2 h of telemetry every 10 s from two aged packs, as the edge would publish it."""
    ids = list(SPECS)
    truth = [
        PackSpec(s.chemistry, series=s.series, parallel=s.parallel, initial_soc=0.8,
                 initial_soh=TRUE_SOH[i])
        for i, s in SPECS.items()
    ]  # fmt: skip
    twin = make_twin(truth, "ecm", degradation="none")
    soh = np.array([TRUE_SOH[i] for i in ids])
    capacity = np.asarray(twin.ratings.cell_capacity_ah * twin.ratings.parallel) * soh
    duty = Duty(cycles_per_day=6.0, depth_of_discharge=0.6, c_rate=0.5, pulse_c_rate=0.2)
    current = duty.current_profile(capacity, 10.0, 2 * 3600.0, seed=3)
    noise = SensorNoise(
        2, seed=4, voltage_noise_v=0.002, current_gain_error=0.0, current_offset_a=0.0,
        current_noise_a=0.0, temperature_offset_c=0.0, temperature_noise_c=0.0,
    )  # fmt: skip
    rec = record_telemetry(twin, current, 10.0, ids, noise=noise, t0_s=1_000.0)
    return telemetry_messages(
        rec.rows, site=SITE, device=DEVICE, series={i: s.series for i, s in SPECS.items()},
        period_s=10.0,
    )  # fmt: skip


def _run(
    store: TelemetryStore,
    messages: list[dict[str, Any]],
    *,
    packs: dict[str, PackSpec] | None = SPECS,
    extra: Callable[[TwinService, int], None] | None = None,
) -> tuple[TwinService, list[tuple[str, str, dict[str, Any]]]]:
    clock = Clock()
    published: list[tuple[str, str, dict[str, Any]]] = []
    config = TwinServiceConfig(
        site=SITE, period_s=300.0, calibration_period_s=2 * 3600.0 - 5.0,
        calibration_window_s=2 * 3600.0, flush_rows=500, horizon_days=1825.0, step_days=30.0,
    )  # fmt: skip
    service = TwinService(
        config, store, packs=packs, clock=clock, publish=lambda *a: published.append(a)
    )
    topic = telemetry_topic(SITE, DEVICE)
    for k, message in enumerate(messages):
        clock.now_s = message["timestamp_s"]
        service.handle_payload(topic, encode("telemetry", message))
        if extra is not None:
            extra(service, k)
        service.tick()
    return service, published


def test_service_calibrates_forecasts_publishes_and_stores(messages: list[dict[str, Any]]) -> None:
    store = SqliteTelemetryStore(":memory:")
    service, published = _run(store, messages)
    assert service.stats["messages"] == len(messages)
    assert service.stats["rows_written"] == 2 * len(messages)  # every row reached the store
    assert store.query("nmc-a", 0.0, 1e12)["t_s"].size == len(messages)
    assert service.stats["calibrations"] == 1
    for pid, soh in TRUE_SOH.items():
        assert service.packs[pid].soh == pytest.approx(soh, rel=0.01)
    # A forecast every 300 s of the clock, published on the site's topic and stored.
    span = messages[-1]["timestamp_s"] - messages[0]["timestamp_s"]
    assert len(published) == int(span // 300.0)
    kind, topic, last = published[-1]
    assert (kind, topic) == ("forecast", forecast_topic(SITE))
    assert [m[2]["seq"] for m in published] == list(range(len(published)))
    decoded = decode(encode("forecast", last), "forecast")
    by_pack = {p["pack_id"]: p for p in decoded["packs"]}
    assert set(by_pack) == set(TRUE_SOH)
    for pid, soh in TRUE_SOH.items():
        entry = by_pack[pid]
        assert entry["device"] == DEVICE
        assert entry["soh"] == pytest.approx(soh, rel=0.01)
        assert entry["rul_days"] is None or entry["rul_days"] > 0
        traj = entry["trajectory"]
        assert traj[0]["t_days"] == 0.0
        assert all(b["soh"] <= a["soh"] for a, b in itertools.pairwise(traj))
        assert entry["voltage_rmse_v"] is not None
    stored = store.latest_forecast(SITE)
    assert stored is not None
    assert json.loads(stored[1])["seq"] == last["seq"]
    # The mirror followed the packs: voltage prediction error of a few mV per cell.
    mirror = service._mirror
    assert mirror is not None
    rmse_cell = mirror.voltage_rmse_v / mirror.series
    assert np.all(rmse_cell < 0.02)
    assert mirror.synchronisations >= 24  # every 300 s over 2 h
    store.close()


def test_service_on_postgres_and_inferred_packs(
    postgres_conninfo: str, messages: list[dict[str, Any]]
) -> None:
    """The server store behind the same service; packs inferred from telemetry fields."""
    cap = {"nmc-a": 4 * 5.15, "lfp-b": 8 * 2.3}
    chem = {"nmc-a": "NMC", "lfp-b": "LFP"}
    enriched = []
    for m in messages[:60]:
        m = json.loads(json.dumps(m))
        for p in m["packs"]:
            p["chemistry"], p["capacity_ah"] = chem[p["pack_id"]], cap[p["pack_id"]]
        enriched.append(m)
    store = PostgresTelemetryStore(postgres_conninfo)
    service, published = _run(store, enriched, packs=None)
    assert service.stats["packs_inferred"] == 2
    assert service.packs["nmc-a"].spec.series == 14
    assert service.packs["lfp-b"].spec.parallel == 8
    assert store.query("lfp-b", 0.0, 1e12)["t_s"].size == 60
    assert published  # a forecast from the BMS's own SoH (not calibrated yet)
    assert store.latest_forecast(SITE) is not None
    store.close()


def test_service_survives_bad_input(messages: list[dict[str, Any]]) -> None:
    store = SqliteTelemetryStore(":memory:")
    topic = telemetry_topic(SITE, DEVICE)
    good = messages[:40]

    def inject(service: TwinService, k: int) -> None:
        if k == 5:
            service.handle_payload(topic, b"not json")
            service.handle_payload(topic, b'{"schema": "pulsebms.telemetry"}')
            service.handle_payload(topic, encode("telemetry", {**good[0], "device": "other"}))
            service.handle_payload("pulsebms/s1/edge-1/status", b"{}")
        if k == 6:  # nulls where a pack has not reported yet, an unknown pack
            m = json.loads(json.dumps(good[k]))
            m["seq"] = 999
            m["packs"][0].update(voltage_v=None, soc=None, temperature_min_c=None)
            m["packs"].append({**m["packs"][1], "pack_id": "stranger"})
            service.handle_payload(topic, encode("telemetry", m))
        if k == 7:  # a validated dict with values the schema would not let through
            service.handle_telemetry(topic, {"timestamp_s": float("nan"), "packs": "x"})
            service.handle_telemetry(
                topic, {"timestamp_s": 5.0, "device": DEVICE, "packs": [None, 3]}
            )

    service, published = _run(store, good, extra=inject)
    assert service.stats["malformed_not_json"] == 1
    assert service.stats["malformed_version"] == 1
    assert service.stats["malformed_topic_mismatch"] == 1
    assert service.stats["malformed_schema"] == 1  # a status topic with no status payload
    assert service.stats["unknown_pack"] == 1
    assert service.stats["rows_incomplete"] == 1
    assert service.stats["malformed_fields"] == 1
    assert service.stats["malformed_pack"] == 2
    assert service.stats["handler_errors"] == 0
    # the null-voltage row left out; the other pack of the seq-999 message repeats
    # good[6]'s (pack, time): the store keeps the first (schema version 2)
    assert service.stats["rows_written"] == 2 * len(good)
    assert published
    # A store that fails (closed) is counted and the rows are kept for the next flush.
    store.close()
    service.handle_payload(topic, encode("telemetry", {**messages[50], "seq": 5000}))
    assert service.flush() == 0
    assert service.stats["store_errors"] == 1
    assert len(service._buffer) == 2
    service.clock = lambda: 1e9
    service.tick()  # calibration and forecast fail on the closed store: counted, no raise
    assert service.stats["tick_errors"] == 1
    assert len(service._buffer) == 2


def test_cli_replays_recorded_telemetry(
    tmp_path: Path, messages: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from pulsebms.services.twin.cli import main

    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"packs": {
        "nmc-a": {"chemistry": "NMC", "series": 14, "parallel": 4},
        "lfp-b": {"chemistry": "LFP", "series": 16, "parallel": 8},
    }}))  # fmt: skip
    recorded = tmp_path / "telemetry.jsonl"
    lines = [json.dumps(m) for m in messages[:200]]
    recorded.write_text("\n".join([*lines[:100], "{broken", *lines[100:]]) + "\n")
    db = tmp_path / "twin.db"
    argv = ["--site", SITE, "--replay", str(recorded), "--fleet", str(fleet),
            "--store", f"sqlite:///{db}", "--period-s", "600", "--horizon-days", "365",
            "--duty", '{"cycles_per_day": 2.0, "c_rate": 0.3}']  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    forecasts = [decode(line.encode(), "forecast") for line in out.splitlines()]
    assert len(forecasts) == 3  # 2000 s of telemetry, one forecast per 600 s
    assert forecasts[-1]["duty"].startswith("2 cycles/day")
    assert '"malformed_replay":1' in err
    store = SqliteTelemetryStore(db)
    assert store.query("nmc-a", 0.0, 1e12)["t_s"].size == 200
    assert store.latest_forecast(SITE) is not None
    store.close()
    fleet.write_text('{"packs": {"x": {"series": 3}}}')
    assert main(argv) == 2
    assert "needs at least a chemistry" in capsys.readouterr().err


@pytest.mark.slow
def test_service_fits_electrode_fractions_after_a_rest() -> None:
    """Physics calibration in the loop: a pack rests 20 min, then drives for an hour (~15 s)."""
    from pulsebms.services.twin.electrode import reference_voltage

    series, parallel, truth = 14, 4, (0.69, 0.6)
    duty = Duty(cycles_per_day=6.0, depth_of_discharge=0.6, c_rate=1.0, pulse_c_rate=0.3)
    cell_i = duty.current_profile(np.array([5.15]), 10.0, 3600.0, seed=5)[:, 0]
    v = reference_voltage("NMC", truth, 0.8, cell_i, 10.0)
    rng = np.random.default_rng(0)
    n_rest = 120
    cell_v = np.r_[np.full(n_rest, v[0]), v[1:]] + rng.uniform(-0.002, 0.002, n_rest + v.size - 1)
    current = np.r_[np.zeros(n_rest), cell_i] * parallel
    soc = np.r_[np.full(n_rest, 0.8), 0.8 - np.cumsum(cell_i) * 10.0 / 3600.0 / 5.15]
    rows = [("nmc-z", 1_000.0 + 10.0 * k, float(soc[k]), 1.0, float(current[k]),
             float(cell_v[k] * series), 25.0) for k in range(cell_v.size)]  # fmt: skip
    messages = telemetry_messages(rows, site=SITE, device=DEVICE, series={"nmc-z": series})
    clock = Clock()
    config = TwinServiceConfig(
        site=SITE,
        calibration_period_s=2.5 * 3600.0,
        electrode_calibration=True,
        horizon_days=365.0,
        step_days=30.0,
    )
    store = SqliteTelemetryStore(":memory:")
    service = TwinService(config, store, packs={"nmc-z": PackSpec("NMC", series=14, parallel=4)},
                          clock=clock)  # fmt: skip
    for m in messages:
        clock.now_s = m["timestamp_s"]
        service.handle_telemetry(telemetry_topic(SITE, DEVICE), m)
    service.flush()
    service.calibrate()
    fractions = service.packs["nmc-z"].electrode_fractions
    assert fractions is not None
    np.testing.assert_allclose(fractions, truth, atol=0.015)
    forecast = service.forecast()
    assert forecast is not None
    entry = decode(encode("forecast", forecast), "forecast")["packs"][0]
    np.testing.assert_allclose(entry["active_material_fractions"], truth, atol=0.015)
    store.close()
