r"""``pulsebms-edge``: run an exported policy on a CAN bus, shield in front of the actuators.

Usage::

    pulsebms-edge --manifest deploy/manifest.json --interface socketcan --channel can0
    pulsebms-edge --manifest deploy/manifest.json --interface virtual --channel test --n-ticks 50
    pulsebms-edge --manifest m.json --signal-map bms.yaml --site fixed:20000 \
        --bus rack1=socketcan:can0 --bus rack2=socketcan:can1
    pulsebms-edge signal-map --template > my_bms.json
    pulsebms-edge --manifest m.json --mqtt broker.local:1883 --mqtt-site site-a --device edge-1 \
        --mqtt-user edge-site-a --mqtt-password-file /etc/pulsebms/mqtt.pw --fallback hold

The model is ``model.file`` beside the manifest unless ``--model`` is given; its sha256 is
checked first. Three clocks are set separately: ``--telemetry-period-s`` (how often each
BMS reports), ``--safety-period-s`` (the safety timer: stale packs and stop requests are
acted on within it) and ``--tick-s`` (the control interval). On SIGINT or SIGTERM no
enabled command is sent any more, every pack is commanded safe at once (within one safety
period), the process exits within a second and prints its metrics as JSON, as it does at
``--n-ticks`` or ``--duration-s``.

With ``--mqtt HOST:PORT`` the edge also joins its site over MQTT
(:mod:`pulsebms.edge_runtime.mqtt_bridge`): it publishes telemetry every
``--mqtt-telemetry-period-s`` and its status (last will "offline"), applies the
coordinator's allocation through the shield, falls back (``--fallback``) when the allocation
is older than ``--allocation-timeout-s``, and obeys the site's commands. The site and device
names are ``--mqtt-site`` and ``--device`` (``--site`` is the site demand source and
``--telemetry-period-s`` the BMS period). An unreachable broker does not stop the edge: the
link keeps retrying while CAN control runs; a broker that refuses the credentials does
(exit 1).

Exit status: 0 ran (also when stopped by a signal); 1 refused to start (invalid manifest,
model sha256 mismatch, signal map that does not fit the DBC, bus that cannot open); 2 bad
arguments (a value out of range, a model whose inputs or outputs do not match its
manifest), reported on one line.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import can

from pulsebms.edge_runtime.codec import CanCodec, SignalMap
from pulsebms.edge_runtime.manifest import ManifestError, ModelIntegrityError, load_manifest
from pulsebms.edge_runtime.policy import OnnxPolicy
from pulsebms.edge_runtime.runtime import EdgeRuntime
from pulsebms.edge_runtime.site import SiteSource, parse_site_spec

__all__ = ["build_parser", "main", "signal_map_template_text"]

PROG = "pulsebms-edge"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit 2 (no usage block, no traceback)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: str, test: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text}")
        return value

    return parse


_positive = _number("> 0", lambda v: v > 0)
_non_negative = _number(">= 0", lambda v: v >= 0)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _bus_spec(text: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition("=")
    interface, sep2, channel = rest.partition(":")
    if not (sep and sep2 and name and interface and channel):
        raise argparse.ArgumentTypeError(f"expected NAME=INTERFACE:CHANNEL, got {text!r}")
    return name, interface, channel


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not (sep and host and 0 < number < 65536):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), number


def _site(text: str) -> SiteSource:
    try:
        return parse_site_spec(text)
    except (ValueError, OSError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pulsebms-edge`` (the run command)."""
    p = _Parser(
        prog=PROG,
        description="Run an exported PulseBMS policy on a CAN bus with the safety shield. "
        "'pulsebms-edge signal-map --template' prints a signal map to start from.",
    )
    p.add_argument("--manifest", required=True, help="manifest.json written by pulsebms-export")
    p.add_argument("--model", help="policy.onnx (default: the manifest's, beside it)")
    p.add_argument("--interface", default="socketcan", help="python-can interface")
    p.add_argument("--channel", default="can0", help="python-can channel")
    p.add_argument(
        "--bus",
        type=_bus_spec,
        action="append",
        default=[],
        metavar="NAME=INTERFACE:CHANNEL",
        help="a named bus of the signal map (repeatable); default: one bus from "
        "--interface/--channel for every name",
    )
    p.add_argument("--bitrate", type=int, help="bus bitrate (interfaces that set it)")
    p.add_argument(
        "--bus-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra can.Bus keyword for every bus (repeatable), e.g. port=43114",
    )
    p.add_argument("--tick-s", type=_positive, help="control interval [s] (default: manifest dt_s)")
    p.add_argument(
        "--telemetry-period-s",
        type=_positive,
        default=1.0,
        help="expected BMS telemetry period [s] (default 1); --stale-after-s must exceed it",
    )
    p.add_argument(
        "--stale-after-s",
        type=_positive,
        help="pack watchdog [s], > telemetry period (default: 2 x telemetry period)",
    )
    p.add_argument("--site-stale-after-s", type=_positive, help="site watchdog [s]")
    p.add_argument(
        "--safety-period-s", type=_positive, default=0.05, help="safety timer period [s]"
    )
    p.add_argument(
        "--recovery-hold-s", type=_non_negative, default=5.0, help="clean time to recover [s]"
    )
    p.add_argument(
        "--site",
        type=_site,
        metavar="SPEC",
        help="site demand: can (default), fixed:DEMAND_W, csv:PATH, csv-loop:PATH",
    )
    p.add_argument(
        "--counter-tolerance", type=_count, help="stuck rolling counters tolerated in a row"
    )
    p.add_argument("--checksum-tolerance", type=_count, help="bad checksums tolerated in a row")
    p.add_argument("--dbc", help="DBC file (default: the project DBC)")
    p.add_argument("--signal-map", help="signal map for another DBC (see docs/signal_map.md)")
    p.add_argument("--n-ticks", type=_count, help="stop after this many ticks")
    p.add_argument("--duration-s", type=_non_negative, help="stop after this long")
    p.add_argument("--metrics-json", help="also write the final metrics here")
    p.add_argument(
        "--no-estimator",
        action="store_true",
        help="no SoC/SoH estimator (packs whose BMS reports no SoC/SoH then stay safe)",
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    mqtt = p.add_argument_group("site link (MQTT)")
    mqtt.add_argument(
        "--mqtt", type=_host_port, metavar="HOST:PORT", help="join the site over this broker"
    )
    mqtt.add_argument("--mqtt-site", metavar="SITE", help="site name (a topic level)")
    mqtt.add_argument("--device", help="this edge's device name (a topic level)")
    mqtt.add_argument("--mqtt-user", help="broker user name")
    mqtt.add_argument("--mqtt-password-file", help="file holding the broker password")
    mqtt.add_argument("--mqtt-client-id", help="MQTT client id (default pulsebms-SITE-DEVICE)")
    mqtt.add_argument("--mqtt-tls-ca", help="CA file: connect with TLS, verifying the broker")
    mqtt.add_argument(
        "--mqtt-connect-timeout-s",
        type=_non_negative,
        default=10.0,
        help="wait this long for the broker at start [s] (default 10); the edge then runs "
        "anyway and the link keeps retrying",
    )
    mqtt.add_argument(
        "--mqtt-telemetry-period-s",
        type=_positive,
        default=1.0,
        help="MQTT telemetry period [s] (default 1)",
    )
    mqtt.add_argument(
        "--allocation-timeout-s",
        type=_positive,
        default=1200.0,
        help="allocation age past which the edge falls back [s] (default 1200)",
    )
    mqtt.add_argument(
        "--fallback",
        choices=("local", "hold", "zero"),
        default="local",
        help="on a stale allocation: the local policy (default), hold the last one, or zero",
    )
    mqtt.add_argument(
        "--mqtt-issuer",
        action="append",
        default=None,
        metavar="NAME",
        help="accept commands from this issuer only (repeatable; default: any issuer the "
        "broker lets publish on this device's command topic)",
    )
    return p


def _mqtt_bridge(args: argparse.Namespace, runtime: EdgeRuntime) -> Any:
    """The MQTT bridge of ``--mqtt`` (connected or retrying), or ``None`` without it.

    Raises:
        ValueError: On missing or bad site/device names or an unreadable password file.
        MqttConnectError: If the broker refuses the credentials.
    """
    if args.mqtt is None:
        return None
    if not (args.mqtt_site and args.device):
        raise ValueError("--mqtt needs --mqtt-site and --device")
    from pulsebms.edge_runtime.mqtt_bridge import MqttBridge
    from pulsebms.edge_runtime.mqtt_link import TlsSettings

    password = None
    if args.mqtt_password_file:
        try:
            password = Path(args.mqtt_password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read --mqtt-password-file: {exc}") from None
    host, port = args.mqtt
    return MqttBridge.connect(
        runtime,
        host=host,
        port=port,
        site=args.mqtt_site,
        device=args.device,
        username=args.mqtt_user,
        password=password,
        tls=TlsSettings(args.mqtt_tls_ca) if args.mqtt_tls_ca else None,
        client_id=args.mqtt_client_id,
        telemetry_period_s=args.mqtt_telemetry_period_s,
        allocation_timeout_s=args.allocation_timeout_s,
        fallback=args.fallback,
        allowed_issuers=args.mqtt_issuer,
        connect_timeout_s=args.mqtt_connect_timeout_s,
    )


def signal_map_template_text() -> str:
    """The signal map template: the codec's ``signal_map_template()`` where it has one.

    Falls back to the default map (:meth:`SignalMap.default`) as JSON.
    """
    for module in ("pulsebms.edge_runtime.signal_map", "pulsebms.edge_runtime.codec"):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        template = getattr(found, "signal_map_template", None)
        if callable(template):
            return str(template())
    return json.dumps(SignalMap.default().to_dict(), indent=2)


def _signal_map_main(argv: Sequence[str]) -> int:
    p = _Parser(prog=f"{PROG} signal-map", description="Signal map helpers.")
    p.add_argument(
        "--template", action="store_true", help="print the default signal map to start from"
    )
    args = p.parse_args(argv)
    if not args.template:
        p.error("nothing to do: use --template")
    text = signal_map_template_text()
    print(text if text.endswith("\n") else text + "\n", end="")
    return 0


def _open_buses(args: argparse.Namespace) -> dict[str, can.BusABC] | can.BusABC:
    kwargs: dict[str, Any] = dict(args.bus_option)
    if args.bitrate is not None:
        kwargs["bitrate"] = args.bitrate
    if not args.bus:
        return can.Bus(interface=args.interface, channel=args.channel, **kwargs)
    opened: dict[str, can.BusABC] = {}
    try:
        for name, interface, channel in args.bus:
            if name in opened:
                raise ValueError(f"bus {name!r} given twice")
            opened[name] = can.Bus(interface=interface, channel=channel, **kwargs)
    except BaseException:
        for bus in opened.values():
            bus.shutdown()
        raise
    return opened


def _shutdown(buses: dict[str, can.BusABC] | can.BusABC) -> None:
    for bus in buses.values() if isinstance(buses, dict) else (buses,):
        bus.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["signal-map"]:
        return _signal_map_main(args_list[1:])
    if args_list[:1] == ["run"]:
        args_list = args_list[1:]
    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        manifest = load_manifest(args.manifest)
        model = manifest.read_verified_model(args.model)  # fail fast, before opening the bus
        signal_map = SignalMap.load(args.signal_map) if args.signal_map else None
        codec = CanCodec(manifest.n_packs, dbc_path=args.dbc, signal_map=signal_map)
    except (ManifestError, ModelIntegrityError, FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: refusing to start: {exc}", file=sys.stderr)
        return 1
    if args.site is None and not getattr(codec, "has_site", True):
        print(
            f"{PROG}: error: the signal map has no site frame on CAN: give --site "
            "fixed:DEMAND_W or --site csv:PATH",
            file=sys.stderr,
        )
        return 2
    try:
        info = manifest.model
        policy = OnnxPolicy(
            model, info.observation_size, info.action_size, info.input_name, info.output_name
        )
    except ValueError as exc:
        print(f"{PROG}: error: the model does not fit its manifest: {exc}", file=sys.stderr)
        return 2
    try:
        buses = _open_buses(args)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        print(f"{PROG}: cannot open the bus: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    running: list[EdgeRuntime] = []
    received: list[str] = []

    def _stop(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()
        for rt in running:
            rt.request_stop()  # lock-free: the safety timer commands every pack safe now

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            runtime = EdgeRuntime(
                manifest,
                policy,
                buses,
                codec=codec,
                tick_s=args.tick_s,
                telemetry_period_s=args.telemetry_period_s,
                stale_after_s=args.stale_after_s,
                site_stale_after_s=args.site_stale_after_s,
                safety_period_s=args.safety_period_s,
                recovery_hold_s=args.recovery_hold_s,
                site_source=args.site,
                counter_tolerance=args.counter_tolerance,
                checksum_tolerance=args.checksum_tolerance,
                estimator=None if args.no_estimator else "auto",
            )
        except ValueError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except ManifestError as exc:
            print(f"{PROG}: refusing to start: {exc}", file=sys.stderr)
            return 1
        running.append(runtime)
        try:
            bridge = _mqtt_bridge(args, runtime)
        except ValueError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except ConnectionError as exc:  # MqttConnectError: credentials or ACL refused
            print(f"{PROG}: refusing to start: MQTT: {exc}", file=sys.stderr)
            return 1
        if stop.is_set():
            runtime.request_stop()
        gc.collect()  # run() then freezes what start-up left: steadier tick latency
        if bridge is not None:
            bridge.start()
        try:
            metrics = runtime.run(n_ticks=args.n_ticks, duration_s=args.duration_s, stop=stop)
        finally:
            if bridge is not None:
                bridge.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _shutdown(buses)
    summary: dict[str, Any] = dict(metrics.to_dict())
    if bridge is not None:
        summary["mqtt"] = {"bridge": dict(bridge.counters), "link": bridge.link.stats()}
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text, flush=True)
    if received:
        print(f"{PROG}: stopped by {received[0]}; every pack commanded safe", file=sys.stderr)
    if args.metrics_json:
        Path(args.metrics_json).write_text(text + "\n", encoding="utf-8")
    return 0
