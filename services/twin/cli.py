r"""``pulsebms-twin-service``: the digital-twin service of one site.

Two ways to feed it:

* **broker** (default): subscribes to ``pulsebms/{site}/+/telemetry`` on an MQTT broker
  through :class:`pulsebms.edge_runtime.mqtt_link.MqttLink` and publishes forecasts on
  ``pulsebms/{site}/twin/forecast``, until SIGINT/SIGTERM;
* ``--replay FILE``: recorded telemetry messages (JSON lines, as published), replayed on a
  simulated clock taken from their timestamps; forecasts are printed as JSON lines.

Telemetry and forecasts go to the store of ``--store`` (``sqlite:///twin.db`` by default;
``postgresql://user@host/db`` for the server). Packs come from ``--fleet`` (a JSON file
``{"packs": {"<pack_id>": {"chemistry": "NMC", "series": 14, "parallel": 4}, …}}``) and/or
are inferred from telemetry that states chemistry and capacity.

Examples:
    $ pulsebms-twin-service --site site-a --broker 127.0.0.1:1883 --username twin \\
          --password-file twin.pw --store postgresql://postgres@127.0.0.1:5432/pulsebms
    $ pulsebms-twin-service --site site-a --replay telemetry.jsonl --store sqlite:///:memory:
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pulsebms.envs.pack import PackSpec
from pulsebms.services.store import StoreError, open_store
from pulsebms.services.twin.duty import DEFAULT_DUTY, Duty
from pulsebms.services.twin.service import TwinService, TwinServiceConfig

__all__ = ["load_fleet", "main", "replay", "serve"]

_log = logging.getLogger(__name__)


def load_fleet(path: str | Path) -> dict[str, PackSpec]:
    """Pack specs from a fleet file (see the module docstring).

    Raises:
        ValueError: A file that is not such a JSON object, or a bad pack entry.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    packs = data.get("packs") if isinstance(data, dict) else None
    if not isinstance(packs, dict):
        raise ValueError(f"{path}: expected {{'packs': {{pack_id: {{chemistry, ...}}}}}}")
    out: dict[str, PackSpec] = {}
    for pid, spec in packs.items():
        if not isinstance(spec, dict) or "chemistry" not in spec:
            raise ValueError(f"{path}: pack {pid!r} needs at least a chemistry")
        try:
            out[str(pid)] = PackSpec(**{"name": str(pid), **spec})
        except TypeError as exc:
            raise ValueError(f"{path}: pack {pid!r}: {exc}") from exc
    return out


def replay(service: TwinService, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Feed recorded telemetry messages in time order on a simulated clock.

    The service's clock must be settable: this sets ``service.clock`` to the replay clock.

    Returns:
        The forecasts produced (also published and stored as usual).
    """
    from pulsebms.core.messaging import encode, telemetry_topic

    now = [0.0]
    service.clock = lambda: now[0]
    produced: list[dict[str, Any]] = []
    seen = service.stats["forecasts"]
    ordered = sorted(messages, key=lambda m: float(m.get("timestamp_s", 0.0)))
    if ordered:
        now[0] = float(ordered[0].get("timestamp_s", 0.0))
    service.reset_schedule()
    for message in ordered:
        now[0] = float(message.get("timestamp_s", now[0]))
        topic = telemetry_topic(service.config.site, str(message.get("device", "unknown")))
        try:
            payload = encode("telemetry", message)
        except Exception:
            service.stats["malformed_replay"] += 1
            continue
        service.handle_payload(topic, payload)
        service.tick()
        if service.stats["forecasts"] != seen and service.last_forecast is not None:
            seen = service.stats["forecasts"]
            produced.append(service.last_forecast)
    service.flush()
    return produced


def serve(
    service: TwinService,
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
    stop: threading.Event | None = None,
    connect_timeout_s: float = 10.0,
    tick_s: float = 1.0,
) -> None:
    """Run ``service`` against an MQTT broker until ``stop`` is set.

    The MQTT client is :class:`pulsebms.edge_runtime.mqtt_link.MqttLink` (persistent
    session: the broker keeps telemetry queued while the service restarts); the client id
    defaults to ``twin-<site>`` so that a restart resumes the same session.

    Raises:
        ConnectionError: When the broker cannot be reached or refuses the connection.
    """
    from pulsebms.edge_runtime.mqtt_link import MqttLink

    link = MqttLink(
        client_id or f"twin-{service.config.site}",
        host,
        port,
        username=username,
        password=password,
    )
    try:
        if not link.connect(timeout_s=connect_timeout_s):
            raise ConnectionError(f"no connection to the MQTT broker at {host}:{port}")
        service.run(link, stop=stop, tick_s=tick_s)
    finally:
        link.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pulsebms-twin-service", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--site", required=True, help="site name (topic level)")
    p.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker host:port")
    p.add_argument("--username", default=None)
    p.add_argument("--password-file", default=None, help="file holding the MQTT password")
    p.add_argument("--client-id", default=None, help="MQTT client id (default twin-<site>)")
    p.add_argument("--connect-timeout-s", type=float, default=10.0, help="broker connect wait")
    p.add_argument("--store", default="sqlite:///twin.db", help="sqlite:///… or postgresql://…")
    p.add_argument("--fleet", default=None, help="fleet JSON file (pack id → spec)")
    p.add_argument("--replay", default=None, help="JSON-lines file of telemetry messages")
    p.add_argument("--period-s", type=float, default=300.0, help="forecast period [s]")
    p.add_argument("--calibration-period-s", type=float, default=3600.0)
    p.add_argument("--calibration-window-s", type=float, default=6 * 3600.0)
    p.add_argument("--horizon-days", type=float, default=3650.0)
    p.add_argument("--end-of-life-soh", type=float, default=0.8)
    p.add_argument("--acceleration", type=float, default=1.0, help="fade factor (HIL runs)")
    p.add_argument(
        "--duty",
        default=None,
        help='forecast duty as JSON, e.g. \'{"cycles_per_day": 1.5, "c_rate": 0.3}\'',
    )
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on bad arguments or files)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        packs = load_fleet(args.fleet) if args.fleet else {}
        duty = Duty(**json.loads(args.duty)) if args.duty else DEFAULT_DUTY
        config = TwinServiceConfig(
            site=args.site,
            period_s=args.period_s,
            calibration_period_s=args.calibration_period_s,
            calibration_window_s=args.calibration_window_s,
            horizon_days=args.horizon_days,
            end_of_life_soh=args.end_of_life_soh,
            degradation_acceleration=args.acceleration,
            duty=duty,
        )
        store = open_store(args.store)
    except (OSError, ValueError, TypeError, StoreError) as exc:
        print(f"pulsebms-twin-service: {exc}", file=sys.stderr)
        return 2
    service = TwinService(config, store, packs=packs)
    try:
        if args.replay:
            lines = Path(args.replay).read_text(encoding="utf-8").splitlines()
            messages = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    messages.append(json.loads(line))
                except json.JSONDecodeError:
                    service.stats["malformed_replay"] += 1
            from pulsebms.core.messaging import encode

            for forecast in replay(service, messages):
                print(encode("forecast", forecast).decode(), flush=True)
            print("STATS " + service.summary(), file=sys.stderr)
            return 0
        host, _, port = args.broker.rpartition(":")
        password = (
            Path(args.password_file).read_text(encoding="utf-8").strip()
            if args.password_file
            else None
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        serve(
            service,
            host or "127.0.0.1",
            int(port),
            username=args.username,
            password=password,
            client_id=args.client_id,
            stop=stop,
            connect_timeout_s=args.connect_timeout_s,
        )
        print("STATS " + service.summary(), file=sys.stderr)
        return 0
    except ConnectionError as exc:
        print(f"pulsebms-twin-service: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    raise SystemExit(main())
