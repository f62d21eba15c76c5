"""``pulsebms-fleet up``: the whole site in one command.

Broker + HIL fleet on virtual CAN + edges + coordinator + digital-twin and health services
over one telemetry store.

Usage::

    pulsebms-fleet up                      # embedded broker, 2 edges × 3 packs, 4 h at 600x
    pulsebms-fleet up --edges 4 --ticks 96 --speed 1200 --policy mpc
    pulsebms-fleet up --broker 127.0.0.1:1883 --broker-user ops --broker-password-file pw
    pulsebms-fleet up --store postgresql://pulsebms@127.0.0.1:5432/site --json fleet.json
    pulsebms-fleet up --manifest deploy/manifest.json --fallback hold --no-services

With no ``--manifest`` a tiny policy is trained and exported once into
``--workdir``/policy (about half a minute; reused afterwards): the edges only run it as
their fallback while the coordinator's allocation is stale. With no ``--health-model``
the health models are trained once into ``--workdir``/health (15–40 s; reused
afterwards). The run prints one line per stage and the summary (allocations sent,
rebalances, violations, telemetry delivered, stale-allocation fallbacks, the store, twin
forecasts, calibrations, health messages, anomalies); ``--json`` also writes the report,
``--traces-csv`` the per-tick traces.

Exit status: 0 the run was clean (no violation, every telemetry message delivered); 1 it
was not, or the broker, the store or the health models could not be used (a model folder
whose sha256 does not match is refused); 2 bad arguments or a policy that does not fit the
twin.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pulsebms.services.fleet.run import DEFAULT_SITE, run_fleet

__all__ = ["main"]

PROG = "pulsebms-fleet"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``pulsebms-fleet up``."""
    p = _Parser(prog=f"{PROG} up", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--manifest", help="the edges' exported policy (default: a tiny one)")
    p.add_argument("--workdir", default="runs/fleet", help="where the tiny policy is kept")
    p.add_argument("--edges", type=_count, default=2, help="edge devices (default 2)")
    p.add_argument("--ticks", type=_count, default=48, help="control ticks (default 48)")
    p.add_argument(
        "--speed", type=_positive, default=600.0, help="simulated s per wall s (default 600)"
    )
    p.add_argument("--site", default=DEFAULT_SITE, help=f"site name (default {DEFAULT_SITE})")
    p.add_argument("--broker", metavar="HOST:PORT", help="use this broker (default: embedded)")
    p.add_argument("--broker-user", help="user on --broker (every client uses it)")
    p.add_argument("--broker-password-file", help="file holding that user's password")
    p.add_argument(
        "--period-s", type=_positive, default=600.0, help="coordinator period [s] (default 600)"
    )
    p.add_argument(
        "--allocation-timeout-s",
        type=_positive,
        help="allocation age past which an edge falls back [s] (default 2 periods)",
    )
    p.add_argument(
        "--fallback", choices=("local", "hold", "zero"), default="local", help="edge fallback"
    )
    p.add_argument(
        "--policy",
        default="proportional",
        help="coordinator policy: proportional (default), equal, health, mpc, onnx:PATH, "
        "sb3:PATH, rllib:PATH (pulsebms.services.coordinator.make_policy)",
    )
    p.add_argument(
        "--forecast",
        default="profile",
        help="coordinator demand forecast: profile (default), persistence, csv:PATH",
    )
    p.add_argument("--store", help="telemetry store URL (default: SQLite in a temporary folder)")
    p.add_argument(
        "--health-model", help="health model folder (default: trained once in --workdir)"
    )
    p.add_argument(
        "--no-services", action="store_true", help="no twin/health services (and no store)"
    )
    p.add_argument("--no-events", action="store_true", help="inject no offline/fault events")
    p.add_argument("--seed", type=int, default=0, help="seed of the twins")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--traces-csv", help="write the per-tick traces here")
    p.add_argument("--log-level", default="ERROR", help="logging level (default ERROR)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pulsebms-fleet``; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] != ["up"]:
        print(f"usage: {PROG} up [options]   ({PROG} up --help)", file=sys.stderr)
        return 2
    args = build_parser().parse_args(args_list[1:])
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    password = None
    if args.broker_password_file:
        try:
            password = Path(args.broker_password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"{PROG}: error: cannot read the password file: {exc}", file=sys.stderr)
            return 2
    try:
        report = run_fleet(
            args.manifest,
            n_edges=args.edges,
            n_ticks=args.ticks,
            speed=args.speed,
            site=args.site,
            broker=args.broker,
            broker_username=args.broker_user,
            broker_password=password,
            period_s=args.period_s,
            allocation_timeout_s=args.allocation_timeout_s,
            fallback=args.fallback,
            coordinator_policy=args.policy,
            events=() if args.no_events else None,
            seed=args.seed,
            workdir=args.workdir,
            progress=lambda line: print(line, flush=True),
            services=not args.no_services,
            store=args.store,
            health_model=args.health_model,
            demand_forecast=args.forecast,
        )
    except ValueError as exc:  # a bad argument, a manifest that does not fit the twin
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError, RuntimeError) as exc:  # broker, store or models refused
        print(f"{PROG}: cannot run: {exc}", file=sys.stderr)
        return 1
    print()
    print(report.summary(), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    if args.traces_csv:
        report.traces.frame().to_csv(args.traces_csv, index=False)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
