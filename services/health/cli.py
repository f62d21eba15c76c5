r"""``pulsebms-health``: metrics, model training, the live service, the public sample.

Sub-commands:

* ``pulsebms-health metrics [--quick | --full] [--seed N] [--json PATH]`` — runs
  :func:`pulsebms.services.health.metrics.run_metrics`, prints the Markdown tables, and ends
  with one line ``RESULT {json}`` (as ``pulsebms-bench`` does);
* ``pulsebms-health train --out DIR [--seed N] [--packs N] [--days N] [--dt-s S]`` — trains
  the health score and the LSTM forecaster on a simulated fleet and saves them as a model
  folder (two ONNX files and a manifest with their sha256, :mod:`~pulsebms.services.health.
  persist`); small by default (a minute or two on 2 cores); ``RESULT {json}`` last;
* ``pulsebms-health serve --site S --broker HOST:PORT --store URL --model DIR`` — the health
  service of a site: reads its telemetry from the store, learns its packs from their MQTT
  telemetry (or ``--fleet``), and publishes one retained ``health`` message per device on
  ``pulsebms/{site}/{device}/health`` every ``--period-s``, until SIGINT/SIGTERM or
  ``--duration-s``; the password comes from ``--password-file`` or the environment
  variable ``PULSEBMS_MQTT_PASSWORD``;
* ``pulsebms-health sample [DIR]`` — regenerates the Battery Archive sample files from the
  twin (default: the shipped ones in the package's ``data/`` folder).

Exit status: 0 done; 1 the broker could not be reached; 2 bad arguments, or a model folder
that is refused (missing, modified: its sha256 does not match, or stale).

Example:
    $ pulsebms-health metrics --quick
    $ pulsebms-health train --out models/health
    $ pulsebms-health serve --site plant-1 --broker 127.0.0.1:1883 \
          --store postgresql://pulsebms@db/pulsebms --model models/health
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
from pathlib import Path
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments (``sys.argv[1:]`` when None).

    Returns:
        Exit status (0 on success, 2 on bad arguments).
    """
    parser = argparse.ArgumentParser(prog="pulsebms-health", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("metrics", help="reproduce the metrics table (RESULT {json} last)")
    size = m.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke sizes (seconds)")
    size.add_argument("--full", action="store_true", help="larger fleet (minutes)")
    m.add_argument("--seed", type=int, default=0, help="seed of the whole run (default 0)")
    m.add_argument("--json", type=Path, default=None, help="also write the figures here")
    s = sub.add_parser("sample", help="regenerate the Battery Archive sample from the twin")
    s.add_argument("directory", nargs="?", type=Path, default=None)
    t = sub.add_parser("train", help="train and save the models a service runs")
    t.add_argument("--out", type=Path, required=True, help="model folder to write")
    t.add_argument("--seed", type=int, default=0, help="seed of the whole run (default 0)")
    t.add_argument("--packs", type=int, default=12, help="simulated packs (default 12)")
    t.add_argument("--days", type=int, default=60, help="days of history (default 60)")
    t.add_argument("--epochs", type=int, default=10, help="LSTM epochs (default 10)")
    t.add_argument(
        "--dt-s", type=float, default=60.0, help="the site's telemetry period [s] (default 60)"
    )
    v = sub.add_parser("serve", help="the health service of a site (MQTT + store)")
    v.add_argument("--site", required=True, help="site name (topic level)")
    v.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker host:port")
    v.add_argument("--username", help="broker user (default health-SITE)")
    v.add_argument("--password-file", help="file holding the password (else the environment)")
    v.add_argument("--tls-ca", help="CA file: connect with TLS and verify the broker")
    v.add_argument("--client-id", help="MQTT client id (default pulsebms-health-SITE)")
    v.add_argument("--store", required=True, help="telemetry store: sqlite:///… or postgresql://…")
    v.add_argument("--model", type=Path, required=True, help="model folder (pulsebms-health train)")
    v.add_argument("--fleet", help="fleet JSON (pack id → chemistry, series, parallel)")
    v.add_argument("--period-s", type=float, default=3600.0, help="publish period [s] (3600)")
    v.add_argument(
        "--reference-s", type=float, default=86400.0, help="commissioning period [s] (1 day)"
    )
    v.add_argument("--start-s", type=float, default=0.0, help="earliest telemetry read [UNIX s]")
    v.add_argument("--duration-s", type=float, help="stop after this many wall seconds")
    v.add_argument("--connect-timeout-s", type=float, default=10.0)
    v.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "serve":
        return _serve(args)

    if args.command == "sample":
        from pulsebms.services.health.public_format import sample_paths, write_twin_sample

        target = args.directory or sample_paths()[0].parent
        for path in write_twin_sample(target):
            print(path)
        return 0

    from pulsebms.services.health.metrics import MetricsConfig, format_table, run_metrics

    if args.quick:
        config = MetricsConfig.quick(seed=args.seed)
    elif args.full:
        config = MetricsConfig.full(seed=args.seed)
    else:
        config = MetricsConfig(seed=args.seed)
    result = run_metrics(config)
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print("RESULT " + json.dumps(result, sort_keys=True, separators=(",", ":")))
    sys.stdout.flush()
    return 0


def _train(args: argparse.Namespace) -> int:
    from pulsebms.services.health.train import TrainConfig, train_models

    if args.packs < 4 or args.days < 10 or args.epochs < 1 or not args.dt_s > 0:
        print("pulsebms-health train: need --packs >= 4, --days >= 10, --epochs >= 1, --dt-s > 0",
              file=sys.stderr)  # fmt: skip
        return 2
    config = TrainConfig(
        n_packs=args.packs, n_cycles=args.days, epochs=args.epochs, dt_s=args.dt_s, seed=args.seed
    )
    result = train_models(config, args.out)
    print(f"saved {result['manifest']}")
    print("RESULT " + json.dumps(result, sort_keys=True, separators=(",", ":")))
    return 0


def _pack_infos(path: str) -> dict[str, Any]:
    """PackInfo (device unknown until telemetry) from a twin-service fleet file."""
    from pulsebms.envs.twin.parameters import cell_facts
    from pulsebms.services.health.fleet import PackInfo
    from pulsebms.services.twin.cli import load_fleet

    out: dict[str, Any] = {}
    for pid, spec in load_fleet(path).items():
        capacity = cell_facts(spec.chemistry).capacity_ah * spec.parallel
        out[pid] = PackInfo(pid, "", spec.chemistry, capacity, spec.series)
    return out


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from pulsebms.edge_runtime.mqtt_link import MqttConnectError, MqttLink, TlsSettings
    from pulsebms.services.health.persist import HealthModelError, load_models
    from pulsebms.services.health.service import HealthService
    from pulsebms.services.store import StoreError, open_store

    host, sep, port = args.broker.rpartition(":")
    if not sep or not host or not port.isdigit():
        print(f"pulsebms-health serve: --broker must be host:port, got {args.broker!r}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        models = load_models(args.model)
        known = _pack_infos(args.fleet) if args.fleet else {}
        password = (
            Path(args.password_file).read_text(encoding="utf-8").strip()
            if args.password_file
            else os.environ.get("PULSEBMS_MQTT_PASSWORD")
        )
        store = open_store(args.store)
    except (HealthModelError, OSError, ValueError, StoreError) as exc:
        print(f"pulsebms-health serve: {exc}", file=sys.stderr)
        return 2
    link = MqttLink(
        args.client_id or f"pulsebms-health-{args.site}",
        host,
        int(port),
        username=args.username or f"health-{args.site}",
        password=password,
        tls=TlsSettings(args.tls_ca) if args.tls_ca else None,
    )
    try:
        service = HealthService(
            store, [], models, site=args.site, period_s=args.period_s, start_s=args.start_s,
            reference_s=args.reference_s, known_packs=known,
        )  # fmt: skip
    except ValueError as exc:
        store.close()
        print(f"pulsebms-health serve: {exc}", file=sys.stderr)
        return 2
    service.attach(link)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not link.connect(timeout_s=args.connect_timeout_s):
            raise MqttConnectError("timeout", f"no connection to the MQTT broker at {args.broker}")
        service.start()
        started = time.monotonic()
        while not stop.wait(0.2):
            if args.duration_s is not None and time.monotonic() - started >= args.duration_s:
                break
        return 0
    except MqttConnectError as exc:
        print(f"pulsebms-health serve: {exc}", file=sys.stderr)
        return 1
    finally:
        service.stop()
        link.close()
        store.close()
        counters = dict(sorted(service.counters.items()))
        print("RESULT " + json.dumps({"site": args.site, "model": models.version, **counters},
                                     sort_keys=True))  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
