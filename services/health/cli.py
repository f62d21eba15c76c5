"""``pulsebms-health``: reproduce the health-analytics metrics, regenerate the public sample.

Sub-commands:

* ``pulsebms-health metrics [--quick | --full] [--seed N] [--json PATH]`` — runs
  :func:`pulsebms.services.health.metrics.run_metrics`, prints the Markdown tables, and ends
  with one line ``RESULT {json}`` (as ``pulsebms-bench`` does);
* ``pulsebms-health sample [DIR]`` — regenerates the Battery Archive sample files from the
  twin (default: the shipped ones in the package's ``data/`` folder).

Example:
    $ pulsebms-health metrics --quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
