"""The twin service on a real broker: telemetry from an edge link in, forecast out.

Mosquitto with the per-site ACL (the service connects as ``twin-{site}``, may publish only
``twin/forecast``); a coordinator link subscribes to the forecast, validated by its link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_helpers import Inbox, wait_until

from pulsebms.core.messaging import forecast_topic, telemetry_topic
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.services.broker import Broker
from pulsebms.services.store import SqliteTelemetryStore
from pulsebms.services.twin.duty import Duty
from pulsebms.services.twin.recording import record_telemetry, telemetry_messages
from pulsebms.services.twin.service import TwinService, TwinServiceConfig

SPECS = {"a": PackSpec("NMC", series=14, parallel=4), "b": PackSpec("LFP", series=16, parallel=8)}


def _messages(site: str) -> list[dict[str, Any]]:
    truth = [PackSpec(s.chemistry, series=s.series, parallel=s.parallel, initial_soc=0.7,
                      initial_soh=0.9) for s in SPECS.values()]  # fmt: skip
    twin = make_twin(truth, "ecm", degradation="none")
    capacity = np.asarray(twin.ratings.cell_capacity_ah * twin.ratings.parallel) * 0.9
    current = Duty(cycles_per_day=6.0, depth_of_discharge=0.5, c_rate=0.5, mean_soc=0.45)
    rec = record_telemetry(twin, current.current_profile(capacity, 10.0, 600.0), 10.0, list(SPECS))
    series = {k: s.series for k, s in SPECS.items()}
    return telemetry_messages(rec.rows, site=site, device="edge-1", series=series, period_s=10.0)


def test_twin_service_over_mosquitto(mosquitto_broker: Broker, mqtt_site: str) -> None:
    site = mqtt_site
    messages = _messages(site)
    store = SqliteTelemetryStore(":memory:")
    config = TwinServiceConfig(site=site, period_s=0.3, flush_period_s=0.1, horizon_days=365.0,
                               step_days=30.0)  # fmt: skip
    service = TwinService(config, store, packs=SPECS)  # wall clock: forecasts every 0.3 s
    inbox = Inbox()
    with (
        mosquitto_broker.link(f"twin-{site}", f"twin-{site}") as twin_link,
        mosquitto_broker.link(f"coordinator-{site}", f"{site}-coord") as coordinator,
        mosquitto_broker.link(f"edge-{site}", f"{site}-edge") as edge,
    ):
        coordinator.subscribe(forecast_topic(site), inbox)
        assert coordinator.connect(10.0)
        service.attach(twin_link)  # the coordinator's pattern: attach, connect, start
        assert twin_link.connect(10.0)
        service.start(tick_s=0.05)
        assert edge.connect(10.0)
        assert wait_until(lambda: twin_link.stats()["connects"] >= 1)
        for m in messages:
            assert edge.publish("telemetry", telemetry_topic(site, "edge-1"), m)
        assert wait_until(lambda: service.stats["rows_written"] == 2 * len(messages), 20.0)
        n_before = len(inbox.messages())
        assert wait_until(lambda: len(inbox.messages()) > n_before, 10.0)
        service.stop()
        assert service._thread is None
    last = inbox.messages()[-1]
    assert {p["pack_id"] for p in last["packs"]} == set(SPECS)
    assert all(p["device"] == "edge-1" for p in last["packs"])
    assert all(p["soh"] == 0.9 for p in last["packs"])  # the BMS's SoH until calibrated
    assert service.stats["malformed_fields"] == 0
    assert service.stats["forecasts_published"] >= 1
    assert store.query("a", 0.0, 1e12)["t_s"].size == len(messages)
    store.close()


def test_cli_without_a_broker_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pulsebms.services.broker import free_port
    from pulsebms.services.twin.cli import main

    argv = ["--site", "s1", "--broker", f"127.0.0.1:{free_port()}",
            "--store", f"sqlite:///{tmp_path / 'twin.db'}"]  # fmt: skip
    assert main([*argv, "--connect-timeout-s", "1"]) == 1
    assert "broker" in capsys.readouterr().err
