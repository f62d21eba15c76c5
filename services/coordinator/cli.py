r"""``pulsebms-coordinator``: plan a site's fleet over MQTT until stopped.

Connects to the broker as the site's coordinator user, subscribes to the site's telemetry and
status, publishes allocations (periodic, and a rebalance within seconds when a pack goes
offline or faults), and prints a summary as the last line (``RESULT {json}``) when stopped
(Ctrl-C, SIGTERM or ``--duration-s``)::

    export PULSEBMS_MQTT_PASSWORD=...        # never on the command line
    pulsebms-coordinator --site plant-1 --fleet deploy/ --policy onnx:deploy/ \
        --broker mqtt.example:8883 --username coordinator-plant-1 --tls-ca ca.pem

``--fleet`` is an export folder, its ``manifest.json`` or a fleet spec JSON (the packs'
names, ratings, limits and the observation layout); ``--policy`` is ``proportional``
(default), ``equal``, ``health``, ``mpc``, ``onnx:PATH``, ``sb3:PATH`` or ``rllib:PATH``
(:func:`~pulsebms.services.coordinator.policies.make_policy`). ``--forecast`` is the site
demand forecast the observation and the MPC's horizon use: ``persistence`` (default),
``profile`` (a daily profile learned from the edges' telemetry, and from ``--store``'s history
when given) or ``csv:PATH`` (:mod:`~pulsebms.services.coordinator.demand`). The coordinator
also follows the twin's forecasts and the health service's verdicts (safety anomalies
exclude a pack, a stuck sensor derates it to ``--derate-fraction``;
:mod:`~pulsebms.services.coordinator.site_health`). ``--speed 60`` runs the coordinator's
clock 60× faster than real time (the accelerated fleet demo).

Exit status: 0 after a clean stop, 2 on bad arguments, 1 when the broker refuses the
connection or the fleet/policy cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="pulsebms-coordinator",
        description="Plan a site's battery fleet over MQTT (periodic allocation + rebalance).",
    )
    p.add_argument("--site", required=True, help="site name (topic level)")
    p.add_argument("--fleet", required=True, help="export folder, manifest.json or fleet spec")
    p.add_argument("--policy", default="proportional", help="policy spec (default proportional)")
    p.add_argument("--broker", default="127.0.0.1:1883", help="host:port (default %(default)s)")
    p.add_argument("--username", help="broker user (default coordinator-SITE)")
    p.add_argument(
        "--password-env",
        default="PULSEBMS_MQTT_PASSWORD",
        help="environment variable holding the password (default %(default)s)",
    )
    p.add_argument("--tls-ca", help="CA file: connect with TLS and verify the broker")
    p.add_argument("--protocol", choices=("3.1.1", "5"), default="3.1.1")
    p.add_argument("--client-id", help="MQTT client id (default pulsebms-coordinator-SITE)")
    p.add_argument("--period-s", type=float, default=600.0, help="re-planning period [s]")
    p.add_argument("--debounce-s", type=float, default=2.0, help="rebalance debounce [s]")
    p.add_argument("--stale-after-s", type=float, default=30.0, help="silent device excluded [s]")
    p.add_argument("--valid-for-s", type=float, help="allocation validity (1.5 × period)")
    p.add_argument(
        "--forecast",
        default="persistence",
        help="site demand forecast: persistence (default), profile, csv:PATH",
    )
    p.add_argument("--store", help="telemetry store URL a profile forecast learns from")
    p.add_argument(
        "--derate-fraction",
        type=float,
        default=0.5,
        help="power limit of a pack with a stuck sensor, fraction of its rating (0.5)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="clock speed (60 = 60× real time)")
    p.add_argument("--duration-s", type=float, help="stop after this many wall seconds")
    p.add_argument("--log-level", default="WARNING")
    return p


def _broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--broker must be host:port, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """Run the coordinator (see the module)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        host, port = _broker(args.broker)
    except argparse.ArgumentTypeError as exc:
        print(f"pulsebms-coordinator: {exc}", file=sys.stderr)
        return 2
    from pulsebms.edge_runtime.mqtt_link import MqttConnectError, MqttLink, TlsSettings
    from pulsebms.services.coordinator import (
        AcceleratedClock,
        Coordinator,
        CoordinatorSettings,
        SiteFleet,
        make_policy,
    )
    from pulsebms.services.coordinator.demand import make_demand_forecast
    from pulsebms.services.coordinator.site_health import HealthRules
    from pulsebms.services.store import StoreError, open_store

    try:
        fleet = SiteFleet.from_file(args.fleet)
        policy, name = make_policy(args.policy, fleet)
        settings = CoordinatorSettings(
            period_s=args.period_s,
            rebalance_debounce_s=args.debounce_s,
            stale_after_s=args.stale_after_s,
            valid_for_s=args.valid_for_s,
        )
        clock = AcceleratedClock(args.speed)
        rules = HealthRules(derate_fraction=args.derate_fraction)
        store = open_store(args.store) if args.store else None
        try:
            forecast = make_demand_forecast(
                args.forecast, fleet.dt_s, store=store, pack_ids=fleet.pack_ids
            )
        finally:
            if store is not None:
                store.close()
    except (OSError, ValueError, StoreError) as exc:
        print(f"pulsebms-coordinator: {exc}", file=sys.stderr)
        return 1
    link = MqttLink(
        args.client_id or f"pulsebms-coordinator-{args.site}",
        host,
        port,
        username=args.username or f"coordinator-{args.site}",
        password=os.environ.get(args.password_env),
        tls=TlsSettings(args.tls_ca) if args.tls_ca else None,
        protocol=args.protocol,
    )
    coordinator = Coordinator(
        args.site,
        fleet,
        policy,
        name,
        link=link,
        settings=settings,
        clock=clock,
        forecast=forecast,
        health_rules=rules,
    )
    coordinator.attach()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not link.connect(timeout_s=30.0):
            print(f"pulsebms-coordinator: waiting for {args.broker} ...", file=sys.stderr)
    except MqttConnectError as exc:
        print(f"pulsebms-coordinator: {exc}", file=sys.stderr)
        return 1
    coordinator.start()
    started = time.monotonic()
    while not stop.wait(0.2):
        if args.duration_s is not None and time.monotonic() - started >= args.duration_s:
            break
    coordinator.stop()
    link.close()
    summary: dict[str, Any] = {"site": args.site, "policy": name, **coordinator.summary()}
    print("RESULT " + json.dumps(summary, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
