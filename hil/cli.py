"""``pulsebms-hil`` / ``python -m pulsebms.hil``: one HIL run, its KPIs printed as JSON.

``--dbc`` and ``--signal-map`` make both sides speak another protocol (e.g. the shipped
``foreign_bms.dbc`` with ``foreign_bms.json``); see ``docs/signal_map.md``.

Exit status: 0 when the run completed and the observation parity held, 1 when it refused
to start (missing or tampered manifest or model, bad signal map or DBC), 2 when the run
completed but the runtime's observation did not match the twin's (the report's ``parity``
says why). ``--noise SEED`` adds seeded sensor noise to the twin's readings; the report's
``estimation`` rates the runtime's SoC estimate against the twin's truth per pack.

Example:
    >>> main(["--manifest", "deploy/manifest.json", "--n-ticks", "50"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pulsebms.edge_runtime.codec import SignalMap
from pulsebms.edge_runtime.manifest import ManifestError, ModelIntegrityError
from pulsebms.hil.parity import DEFAULT_OBS_TOLERANCE
from pulsebms.hil.run import run_hil
from pulsebms.hil.simulator import HilFaults

__all__ = ["EXIT_PARITY_FAILED", "EXIT_REFUSED", "main"]

EXIT_REFUSED = 1
"""Exit status when the run refused to start."""
EXIT_PARITY_FAILED = 2
"""Exit status when the run completed but the observation parity failed."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pulsebms-hil",
        description="Edge runtime against the fleet twin on a python-can bus (HIL).",
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--model")
    p.add_argument("--n-ticks", type=int, default=288)
    p.add_argument("--interface", default="virtual")
    p.add_argument("--channel", default="pulsebms-hil")
    p.add_argument("--env-id", default="PulseBMS/FleetSmall-v0")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON kwargs of make")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tick-s", type=float)
    p.add_argument("--silent-pack", type=int, action="append", default=[], metavar="PACK")
    p.add_argument("--malformed-every", type=int, default=0)
    p.add_argument(
        "--dbc",
        action="append",
        metavar="DBC",
        help="DBC file both sides speak (repeat for several); the project DBC by default",
    )
    p.add_argument("--signal-map", help="signal map (JSON/YAML) of the DBC; docs/signal_map.md")
    p.add_argument("--codec-backend", choices=("compiled", "cantools"), default="compiled")
    p.add_argument(
        "--noise",
        type=int,
        metavar="SEED",
        help="seeded sensor noise on the twin's readings (±10 mV, ±0.5 %% current gain, ...)",
    )
    p.add_argument(
        "--no-estimator",
        action="store_true",
        help="run the edge runtime without its SoC/SoH estimator",
    )
    p.add_argument(
        "--obs-tolerance",
        type=float,
        default=DEFAULT_OBS_TOLERANCE,
        help="largest per-entry observation difference counted as equal",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`~pulsebms.hil.run.run_hil` and print the KPIs as JSON.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` by default).

    Returns:
        The exit status: 0 ok, :data:`EXIT_REFUSED`, or :data:`EXIT_PARITY_FAILED`.
    """
    p = _parser()
    args = p.parse_args(argv)
    faults = HilFaults(
        silent_packs={pack: args.n_ticks // 2 for pack in args.silent_pack},
        malformed_every=args.malformed_every,
    )
    try:
        signal_map = SignalMap.load(args.signal_map) if args.signal_map else None
    except (ValueError, OSError) as exc:
        print(f"{p.prog}: refusing to start: signal map: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        report = run_hil(
            args.manifest,
            args.model,
            n_ticks=args.n_ticks,
            interface=args.interface,
            channel=args.channel,
            env_id=args.env_id,
            env_kwargs=args.env_kwargs,
            seed=args.seed,
            tick_s=args.tick_s,
            faults=faults,
            obs_tolerance=args.obs_tolerance,
            dbc_path=args.dbc,
            signal_map=signal_map,
            codec_backend=args.codec_backend,
            noise=args.noise,
            runtime_kwargs={"estimator": None} if args.no_estimator else None,
        )
    except (ManifestError, ModelIntegrityError, FileNotFoundError, ValueError) as exc:
        print(f"{p.prog}: refusing to start: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    if not report.parity_ok:
        print(f"{p.prog}: observation parity failed: {report.parity}", file=sys.stderr)
        return EXIT_PARITY_FAILED
    return 0
