"""``pulsebms-edge --mqtt``: the edge joins its site on a real broker, or refuses clearly."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import constant_onnx, make_manifest

from pulsebms.core.messaging import site_filter
from pulsebms.edge_runtime.cli import main as edge_main
from pulsebms.edge_runtime.manifest import sha256_bytes
from pulsebms.services.broker import Broker, free_port


@pytest.fixture
def deploy(tmp_path: Path, broker_password: str) -> Path:
    """A 3-pack manifest with a constant ONNX policy (no training), and the password file."""
    model = constant_onnx(8, 3, 0.25)
    (tmp_path / "policy.onnx").write_bytes(model)
    make_manifest(sha256=sha256_bytes(model)).save(tmp_path / "manifest.json")
    (tmp_path / "pw").write_text(broker_password + "\n")
    return tmp_path


def _argv(deploy: Path, site: str, port: int, device: str, *extra: str) -> list[str]:
    return [
        "--manifest", str(deploy / "manifest.json"), "--interface", "virtual",
        "--channel", f"cli-{device}", "--tick-s", "0.05", "--n-ticks", "4",
        "--site", "fixed:500",
        "--mqtt", f"127.0.0.1:{port}", "--mqtt-site", site, "--device", device,
        "--mqtt-user", f"edge-{site}", "--mqtt-password-file", str(deploy / "pw"),
        "--mqtt-telemetry-period-s", "0.05", *extra,
    ]  # fmt: skip


def test_edge_cli_joins_the_site_and_leaves_it_offline(
    mosquitto_broker: Broker, mqtt_site: str, deploy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    user = f"monitor-{mqtt_site}"
    monitor = mosquitto_broker.link(user, f"mon-{uuid.uuid4().hex[:6]}", clean_start=True)
    monitor.subscribe(site_filter(mqtt_site), lambda t, m: seen.append((t, m)))
    assert monitor.connect(timeout_s=10.0)
    device = f"edge-{uuid.uuid4().hex[:6]}"
    try:
        argv = _argv(deploy, mqtt_site, mosquitto_broker.port, device, "--fallback", "hold")
        assert edge_main(argv) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["ticks"] == 4.0
        assert printed["mqtt"]["bridge"]["telemetry_sent"] >= 1
        assert printed["mqtt"]["link"]["connects"] == 1
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not any(m.get("state") == "offline" for _, m in seen):
            time.sleep(0.01)
    finally:
        monitor.close()
    statuses = [m for t, m in seen if t.endswith("/status") and m["device"] == device]
    assert statuses[0]["state"] == "online"
    assert statuses[0]["mode"] == "hold"  # no allocation: the configured fallback
    assert (statuses[-1]["state"], statuses[-1]["mode"]) == ("offline", "stopped")
    assert any(t.endswith(f"/{device}/telemetry") for t, _ in seen)


def test_edge_cli_mqtt_errors(
    mosquitto_broker: Broker, mqtt_site: str, deploy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = f"edge-{uuid.uuid4().hex[:6]}"
    port = mosquitto_broker.port
    (deploy / "bad").write_text("wrong password")
    bad = _argv(deploy, mqtt_site, port, device, "--mqtt-password-file", str(deploy / "bad"))
    assert edge_main(bad) == 1
    assert "refusing to start: MQTT" in capsys.readouterr().err
    no_device = [a for a in _argv(deploy, mqtt_site, port, device) if a not in ("--device", device)]
    assert edge_main(no_device) == 2
    assert "--mqtt needs --mqtt-site and --device" in capsys.readouterr().err
    # An unreachable broker does not stop the edge: it runs its ticks while retrying.
    down = _argv(deploy, mqtt_site, free_port(), device, "--mqtt-connect-timeout-s", "0.2")
    assert edge_main(down) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ticks"] == 4.0
    assert printed["mqtt"]["link"]["connects"] == 0
    assert printed["mqtt"]["bridge"]["telemetry_sent"] >= 1  # queued for the reconnect
