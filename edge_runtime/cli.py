"""``pulsebms-edge``: run an exported policy on a CAN bus, shield in front of the actuators.

Usage::

    pulsebms-edge --manifest deploy/manifest.json --interface socketcan --channel can0
    pulsebms-edge --manifest deploy/manifest.json --interface virtual --channel test --n-ticks 50

The model is ``model.file`` beside the manifest unless ``--model`` is given; its sha256 is
checked first. On exit (``--n-ticks``, ``--duration-s``, SIGINT or SIGTERM) every pack is
commanded to the safe state and the metrics are printed as JSON.

Exit status: 0 ran; 1 refused to start (invalid manifest, model sha256 mismatch, bus that
cannot open); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import can

from pulsebms.edge_runtime.codec import CanCodec, SignalMap
from pulsebms.edge_runtime.manifest import ManifestError, ModelIntegrityError, load_manifest
from pulsebms.edge_runtime.runtime import EdgeRuntime

__all__ = ["build_parser", "main"]


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pulsebms-edge``."""
    p = argparse.ArgumentParser(
        prog="pulsebms-edge",
        description="Run an exported PulseBMS policy on a CAN bus with the safety shield.",
    )
    p.add_argument("--manifest", required=True, help="manifest.json written by pulsebms-export")
    p.add_argument("--model", help="policy.onnx (default: the manifest's, beside it)")
    p.add_argument("--interface", default="socketcan", help="python-can interface")
    p.add_argument("--channel", default="can0", help="python-can channel")
    p.add_argument("--bitrate", type=int, help="bus bitrate (interfaces that set it)")
    p.add_argument(
        "--bus-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra can.Bus keyword (repeatable), e.g. port=43114",
    )
    p.add_argument("--tick-s", type=float, help="control interval [s] (default: manifest dt_s)")
    p.add_argument("--stale-after-s", type=float, default=2.0, help="pack watchdog [s]")
    p.add_argument("--site-stale-after-s", type=float, help="site watchdog [s]")
    p.add_argument("--recovery-hold-s", type=float, default=5.0, help="clean time to recover")
    p.add_argument("--dbc", help="DBC file (default: the project DBC)")
    p.add_argument("--signal-map", help="signal map JSON for another DBC")
    p.add_argument("--n-ticks", type=int, help="stop after this many ticks")
    p.add_argument("--duration-s", type=float, help="stop after this long")
    p.add_argument("--metrics-json", help="also write the final metrics here")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        manifest = load_manifest(args.manifest)
        manifest.read_verified_model(args.model)  # fail fast, before opening the bus
        signal_map = SignalMap.load(args.signal_map) if args.signal_map else None
        codec = CanCodec(manifest.n_packs, dbc_path=args.dbc, signal_map=signal_map)
    except (ManifestError, ModelIntegrityError, FileNotFoundError, ValueError) as exc:
        print(f"pulsebms-edge: refusing to start: {exc}", file=sys.stderr)
        return 1
    bus_kwargs: dict[str, Any] = dict(args.bus_option)
    if args.bitrate is not None:
        bus_kwargs["bitrate"] = args.bitrate
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel, **bus_kwargs)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        print(f"pulsebms-edge: cannot open the bus: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runtime = EdgeRuntime.from_files(
            Path(args.manifest),
            args.model,
            bus=bus,
            codec=codec,
            tick_s=args.tick_s,
            stale_after_s=args.stale_after_s,
            site_stale_after_s=args.site_stale_after_s,
            recovery_hold_s=args.recovery_hold_s,
        )
        gc.collect()
        gc.freeze()  # start-up objects leave the collector's scans: steadier tick latency
        metrics = runtime.run(n_ticks=args.n_ticks, duration_s=args.duration_s, stop=stop)
        runtime.command_safe_state()
    except (ManifestError, ModelIntegrityError) as exc:
        print(f"pulsebms-edge: refusing to start: {exc}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        bus.shutdown()
    text = json.dumps(metrics.to_dict(), indent=2, sort_keys=True)
    print(text)
    if args.metrics_json:
        Path(args.metrics_json).write_text(text + "\n", encoding="utf-8")
    return 0
