"""Health analytics on a tiny twin fleet: data, models, ONNX, anomalies, the service.

One module-scoped fleet (6 packs × 40 days on the ECM twin, the last two days sample by
sample with one fault of each kind) feeds every test here; the determinism test runs its
own 5-day fleets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from pulsebms.core.messaging import decode, encode, health_topic
from pulsebms.services.health.anomaly import AnomalyDetector, evaluate_detector
from pulsebms.services.health.dataset import HealthDataset, split_packs
from pulsebms.services.health.faults import FAULT_KINDS
from pulsebms.services.health.fleet import FleetConfig, FleetHistory, generate_fleet
from pulsebms.services.health.forecast import (
    SohLstm,
    TrainSettings,
    evaluate_forecaster,
    make_windows,
    train_forecaster,
)
from pulsebms.services.health.forecast_onnx import (
    OnnxForecaster,
    ParityError,
    check_parity,
    export_forecaster,
)
from pulsebms.services.health.score import evaluate_health_score
from pulsebms.services.health.service import HealthModels, HealthService
from pulsebms.services.store import SqliteTelemetryStore, StoreError

_DAY_S = 86400.0
_SETTINGS = TrainSettings(lookback=6, horizon=5, hidden=8, epochs=3, seed=2, members=3)


@pytest.fixture(scope="module")
def fleet() -> FleetHistory:
    return generate_fleet(
        FleetConfig(
            n_packs=6,
            n_cycles=40,
            seed=11,
            telemetry_cycles=2,
            future_cycles=2,
            fault_fraction=0.5,
            packs_per_device=3,
        )
    )


@pytest.fixture(scope="module")
def data(fleet: FleetHistory) -> HealthDataset:
    return HealthDataset.from_history(fleet)


def _columns(fleet: FleetHistory, k: int, mask: np.ndarray) -> dict[str, np.ndarray]:
    tel = fleet.telemetry
    assert tel is not None
    return {
        "t_s": tel.t_s[mask],
        "current_a": tel.current_a[k][mask],
        "voltage_v": tel.voltage_v[k][mask],
        "temperature_c": tel.temperature_c[k][mask],
        "soc": tel.soc[k][mask],
    }


def test_fleet_is_bit_for_bit_reproducible_and_fade_scales() -> None:
    config = FleetConfig(n_packs=3, n_cycles=5, seed=4, telemetry_cycles=1)
    a, b = generate_fleet(config), generate_fleet(config)
    for k in range(3):
        np.testing.assert_array_equal(a.soh[k], b.soh[k])
        for name in ("discharge_ah", "capacity_ah", "resistance_ohm", "temperature_mean_c"):
            np.testing.assert_array_equal(
                getattr(a.cycles[k], name), getattr(b.cycles[k], name), err_msg=name
            )
    assert a.telemetry is not None
    assert b.telemetry is not None
    np.testing.assert_array_equal(a.telemetry.voltage_v, b.telemetry.voltage_v)
    faster = generate_fleet(FleetConfig(n_packs=3, n_cycles=5, seed=4, fade_acceleration=9.0))
    for k in range(3):
        loss = a.duties[k].initial_soh - a.soh[k][-1]
        loss_fast = faster.duties[k].initial_soh - faster.soh[k][-1]
        assert loss > 0
        assert loss_fast > 2.0 * loss


def test_fleet_history_is_physical(fleet: FleetHistory) -> None:
    assert len(fleet.packs) == 6
    assert {p.device for p in fleet.packs} == {"edge-0", "edge-1"}
    assert {p.chemistry for p in fleet.packs} == {"LFP", "NMC", "LCO"}
    for k, pack in enumerate(fleet.packs):
        soh = fleet.soh[k]
        assert soh.shape == (40,)
        assert np.all(np.diff(soh) < 0)
        assert 0.5 < soh[-1] < soh[0] <= 1.0
        assert fleet.future_soh[k].shape == (2,)
        assert fleet.future_soh[k][0] < soh[-1]
        cycles = fleet.cycles[k]
        # The capacity estimate tracks the true SoH within the BMS's SoC noise.
        ratio = cycles.capacity_ah / pack.nominal_capacity_ah
        ok = np.isfinite(ratio)
        assert ok.sum() >= 35
        assert np.sqrt(np.mean((ratio[ok] - soh[ok]) ** 2)) < 0.06
        assert np.all(np.isfinite(cycles.resistance_ohm[:30]))
        assert np.all(cycles.resistance_ohm[:30] > 0)
        assert np.all(np.diff(fleet.efc[k]) > 0)


def test_injected_faults_show_their_physics(fleet: FleetHistory) -> None:
    tel = fleet.telemetry
    assert tel is not None
    assert {f.kind for f in fleet.faults} == set(FAULT_KINDS)
    for f in fleet.faults:
        lab = tel.labels[f.pack]
        after = tel.t_s >= f.start_s
        assert np.all(lab[after[: lab.size]] != 0)
        assert np.all(lab[~after] == 0)
        if f.kind == "stuck_sensor":
            reading = getattr(tel, f.signal)[f.pack][after]
            assert np.unique(reading).size == 1
        elif f.kind == "internal_short":
            # The BMS sees no current at rest, yet the SoC falls at about the leak rate.
            rest = after & (np.abs(tel.current_a[f.pack]) < 0.15)
            t_h = tel.t_s[rest] / 3600.0
            slope = np.polyfit(t_h, tel.soc[f.pack][rest], 1)[0]
            assert slope < -0.5 * f.severity
        else:
            # Heated: warmer than the same hours the day before by a good part of ΔT.
            same_hours = (tel.t_s >= f.start_s - _DAY_S + 3600.0) & (
                tel.t_s < f.start_s - _DAY_S + 7200.0
            )
            hot = (tel.t_s >= f.start_s + 3600.0) & (tel.t_s < f.start_s + 7200.0)
            rise = (
                tel.temperature_c[f.pack][hot].mean() - tel.temperature_c[f.pack][same_hours].mean()
            )
            assert rise > 0.5 * f.severity


def test_detector_names_each_injected_fault(fleet: FleetHistory) -> None:
    tel = fleet.telemetry
    assert tel is not None
    ref = tel.t_s < tel.t_s[0] + _DAY_S
    ids = fleet.pack_ids
    reference = {ids[k]: _columns(fleet, k, ref) for k in range(6)}
    later = {ids[k]: _columns(fleet, k, ~ref) for k in range(6)}
    labels = {ids[k]: tel.labels[k][~ref] for k in range(6)}
    report = evaluate_detector(AnomalyDetector().fit(reference), later, labels, FAULT_KINDS)
    for kind in FAULT_KINDS:
        assert report.n_positive[kind] > 0
        assert report.recall[kind] >= 0.5, (kind, report)
    assert report.detection_precision >= 0.8
    forest = AnomalyDetector(method="isolation_forest").fit(reference)
    forest_report = evaluate_detector(forest, later, labels, FAULT_KINDS)
    assert forest_report.detection_recall > 0.3


def test_health_score_and_forecast_beat_naive_references(data: HealthDataset) -> None:
    train, test = split_packs(data.chemistries, test_fraction=0.5, seed=0)
    score = evaluate_health_score(data, train, test)
    assert score.n_test_rows == 40 * len(test)
    assert score.rmse_gbr < 0.03
    assert score.rmse_linear < 0.03
    fc = evaluate_forecaster(data, train, test, _SETTINGS)
    assert fc.n_windows == len(test) * (40 - 6 - 5 + 1)
    assert fc.rmse_lstm < fc.rmse_persistence
    assert fc.rmse_fade_law < fc.rmse_persistence


def test_forecaster_training_is_deterministic_and_exports_to_onnx(data: HealthDataset) -> None:
    packs = [0, 1, 2, 3]
    a, fill = train_forecaster(data, packs, _SETTINGS)
    b, _ = train_forecaster(data, packs, _SETTINGS)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    win = make_windows(data, [4, 5], lookback=6, horizon=5, fill=fill)
    # The ensemble forecasts its members' mean correction on the anchor.
    assert a.members == 3
    single = []
    for k in range(3):
        m = SohLstm(win.x.shape[-1], 8, a.mean.numpy(), a.std.numpy(), 5, lookback=6,
                    relative=a.relative.numpy())  # fmt: skip
        m.lstms[0].load_state_dict(a.lstms[k].state_dict())
        m.heads[0].load_state_dict(a.heads[k].state_dict())
        single.append(m.predict(win.x))
    assert np.ptp(np.array(single), axis=0).max() > 0  # the members differ
    np.testing.assert_allclose(a.predict(win.x), np.mean(single, axis=0), atol=1e-6)
    # The capacity estimate is read relative to its latest value: shifting the pack's
    # level shifts the forecast by as much and leaves the predicted fade alone.
    shifted = win.x.copy()
    shifted[:, :, 0] -= 0.05
    np.testing.assert_allclose(a.predict(shifted), a.predict(win.x) - 0.05, atol=1e-6)
    onnx_bytes = export_forecaster(a, fill=fill)
    session = OnnxForecaster(onnx_bytes)
    assert (session.horizon, session.lookback, session.prior) == (5, 6, "capacity")
    np.testing.assert_array_equal(session.fill, fill)
    assert check_parity(a, session, win.x) < 1e-5
    np.testing.assert_allclose(
        session.predict_fade(win.x), win.x[:, -1, 0] - session.predict(win.x), atol=1e-12
    )
    assert session.predict(win.x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="windows must be"):
        session.predict(win.x[:, :3])
    with pytest.raises(ParityError):
        check_parity(a, session, win.x, atol=-1.0)
    # A plain ONNX model without the forecaster's metadata is refused.
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    plain = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    with pytest.raises(ValueError, match="not a PulseBMS SoH forecaster"):
        OnnxForecaster(plain.SerializeToString())


class _Recorder:
    """A publisher that keeps what it was given, encoded as a link would send it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, kind: str, topic: str, message: Mapping[str, Any]) -> bool:
        self.sent.append((topic, encode(kind, message)))
        return True


class _FlakyStore:
    """A real SQLite store whose queries fail for one pack (a lost connection)."""

    def __init__(self, inner: SqliteTelemetryStore, failing: str) -> None:
        self.inner = inner
        self.failing = failing

    def query(self, pack_id: str, t0_s: float, t1_s: float) -> dict[str, np.ndarray]:
        if pack_id == self.failing:
            raise StoreError("connection lost")
        return self.inner.query(pack_id, t0_s, t1_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def models(fleet: FleetHistory, data: HealthDataset) -> HealthModels:
    tel = fleet.telemetry
    assert tel is not None
    ids = fleet.pack_ids
    ref = tel.t_s < tel.t_s[0] + _DAY_S
    detector = AnomalyDetector().fit({ids[k]: _columns(fleet, k, ref) for k in range(6)})
    train = list(range(6))
    score = evaluate_health_score(data, train, train).model
    lstm, fill = train_forecaster(data, train, _SETTINGS)
    return HealthModels(
        score=score,
        forecaster=OnnxForecaster(export_forecaster(lstm, fill=fill)),
        detector=detector,
        version="test-1",
    )


def _service(
    fleet: FleetHistory,
    store: Any,
    models: HealthModels,
    publisher: Any,
    now: list[float],
    site: str = "s1",
) -> HealthService:
    """A service that starts from the cycles before the telemetry days and reads the rest."""
    tel = fleet.telemetry
    assert tel is not None
    n_before = fleet.config.n_cycles - fleet.config.telemetry_cycles
    return HealthService(
        store,
        fleet.packs,
        models,
        site=site,
        publisher=publisher,
        clock=lambda: now[0],
        period_s=3600.0,
        start_s=float(tel.t_s[0]) - 1.0,
        initial_cycles={
            pid: fleet.cycles[k].select(slice(0, n_before)) for k, pid in enumerate(fleet.pack_ids)
        },
        session="sess",
    )


def test_service_publishes_per_device_from_the_store(
    fleet: FleetHistory, models: HealthModels
) -> None:
    tel = fleet.telemetry
    assert tel is not None
    ids = fleet.pack_ids
    store = SqliteTelemetryStore(":memory:")
    tel.write_to(store, ids)
    n_before = fleet.config.n_cycles - fleet.config.telemetry_cycles
    now = [float(tel.t_s[-1]) + 1.0]
    recorder = _Recorder()
    service = _service(fleet, _FlakyStore(store, failing=ids[5]), models, recorder, now)
    assert service.step()
    assert not service.step()  # not due yet
    assert service.counters["skipped_StoreError"] == 1
    topics = [t for t, _ in recorder.sent]
    assert topics == [health_topic("s1", "edge-0"), health_topic("s1", "edge-1")]
    messages = [decode(payload, topic=topic) for topic, payload in recorder.sent]
    assert [m["seq"] for m in messages] == [0, 1]
    entries = {e["pack_id"]: e for m in messages for e in m["packs"]}
    assert set(entries) == set(ids[:5])
    assert sorted(e["rank"] for e in entries.values()) == list(range(5))
    assert all(m["model"] == "test-1" for m in messages)
    for k in range(5):
        e = entries[ids[k]]
        assert abs(e["health_score"] - fleet.soh[k][-1]) < 0.05
        assert e["soh_forecast"] is not None
        assert e["horizon_cycles"] == 5
    # The service rebuilt the telemetry days' cycles from raw rows (one still open).
    assert service._packs[ids[0]].n_cycles >= n_before + 1
    faulty = {fleet.pack_ids[f.pack]: f.kind for f in fleet.faults if f.pack != 5}
    for pid, kind in faulty.items():
        assert kind in entries[pid]["anomalies"], (pid, kind, entries[pid])
    first = min(entries.values(), key=lambda e: e["rank"])
    assert first["anomalies"]  # a faulty pack leads the queue
    now[0] += 3600.0
    assert service.step()
    assert decode(recorder.sent[-1][1], "health")["seq"] == 3
    store.close()


def test_service_publishes_on_a_real_broker(
    fleet: FleetHistory, models: HealthModels, mqtt_broker: Any, mqtt_site: str
) -> None:
    from mqtt_helpers import Inbox, wait_until

    tel = fleet.telemetry
    assert tel is not None
    store = SqliteTelemetryStore(":memory:")
    tel.write_to(store, fleet.pack_ids)
    site = mqtt_site
    inbox = Inbox()
    now = [float(tel.t_s[-1]) + 1.0]
    with (
        mqtt_broker.link(f"health-{site}", f"{site}-health") as link,
        mqtt_broker.link(f"monitor-{site}", f"{site}-monitor") as monitor,
    ):
        monitor.subscribe(f"pulsebms/{site}/+/health", inbox)
        assert monitor.connect(10.0)
        assert link.connect(10.0)
        service = _service(fleet, store, models, link, now, site=site)
        assert service.step()
        assert service.counters["published"] == 2
        assert wait_until(lambda: len(inbox.messages()) >= 2)
        got = {m["device"]: m for m in inbox.messages()}
        assert set(got) == {"edge-0", "edge-1"}
        entries = [e for m in got.values() for e in m["packs"]]
        assert sorted(e["pack_id"] for e in entries) == sorted(fleet.pack_ids)
        assert sorted(e["rank"] for e in entries) == list(range(6))
        assert monitor.stats()["handler_errors"] == 0
    # Retained: a subscriber that comes later still gets each device's latest message.
    late = Inbox()
    with mqtt_broker.link(f"monitor-{site}", f"{site}-late") as later:
        later.subscribe(f"pulsebms/{site}/+/health", late)
        assert later.connect(10.0)
        assert wait_until(lambda: len(late.messages()) >= 2)
    assert {m["device"] for m in late.messages()} == {"edge-0", "edge-1"}
    store.close()


def test_service_learns_baselines_online_and_scores_alike_on_onnx(
    fleet: FleetHistory, models: HealthModels
) -> None:
    """No baselines shipped: the first telemetry day is each pack's commissioning reference.

    The faults (injected after a healthy first day) are found as with baselines fitted
    offline; the health score exported to ONNX gives the scikit-learn scores.
    """
    import dataclasses

    from pulsebms.services.health.score_onnx import OnnxHealthScore, export_health_score

    tel = fleet.telemetry
    assert tel is not None
    store = SqliteTelemetryStore(":memory:")
    tel.write_to(store, fleet.pack_ids)
    now = [float(tel.t_s[-1]) + 1.0]
    onnx_score = OnnxHealthScore(export_health_score(models.score))  # type: ignore[arg-type]
    fresh = dataclasses.replace(models, score=onnx_score, detector=AnomalyDetector())
    recorder = _Recorder()
    service = _service(fleet, store, fresh, recorder, now)
    assert service.step()
    assert service.counters["baselines_learned"] == 6
    entries = {e["pack_id"]: e for _, p in recorder.sent for e in decode(p, "health")["packs"]}
    for f in fleet.faults:
        assert f.kind in entries[fleet.pack_ids[f.pack]]["anomalies"], f
    reference = _service(fleet, store, models, None, now)
    reference.assess()
    for pid, a in reference.last_round.items():
        assert entries[pid]["health_score"] == pytest.approx(a.health.health_score, abs=1e-5)
    store.close()
