"""``pulsebms-export``: checkpoint → ``policy.onnx`` + ``manifest.json``.

Usage::

    pulsebms-export runs/ppo/model.zip --out deploy/ --env-id PulseBMS/FleetSmall-v0
    pulsebms-export model.zip --out deploy/ --fleet fleet.json --tolerance 1e-6
    pulsebms-export runs/rllib/ckpt --out deploy/ --env-id PulseBMS/FleetSmall-v0

The checkpoint is an SB3 ``.zip`` or an RLlib algorithm checkpoint directory (detected by
its ``rllib_checkpoint.json``; ``--kind`` overrides the detection).

Exit status: 0 written; 1 refused (parity failed, layout mismatch, existing output: the
message says which; nothing written); 2 bad arguments or unreadable inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from pulsebms.core.console_scripts import missing_extra_message
from pulsebms.export.errors import ExportError

__all__ = ["build_parser", "main"]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pulsebms-export``."""
    p = argparse.ArgumentParser(
        prog="pulsebms-export",
        description="Export a trained policy to policy.onnx + manifest.json for pulsebms-edge, "
        "refusing any model whose onnxruntime actions differ from the source policy.",
    )
    p.add_argument(
        "checkpoint",
        help="SB3 .zip file, RLlib algorithm checkpoint directory or ensemble folder",
    )
    p.add_argument("--out", required=True, help="output directory")
    fleet = p.add_mutually_exclusive_group(required=True)
    fleet.add_argument("--env-id", help="Gymnasium id of the training env (reads layout, ...)")
    fleet.add_argument("--fleet", help="fleet spec JSON (observation, ratings, limits, dt_s)")
    p.add_argument("--env-kwargs", type=_json_object, default={}, help="JSON kwargs of make")
    p.add_argument(
        "--vecnormalize",
        help="SB3 VecNormalize pickle (default: beside the zip; RLlib: from the checkpoint)",
    )
    p.add_argument("--kind", default="auto", choices=("auto", "sb3", "rllib", "ensemble"))
    p.add_argument("--shield", type=_json_object, default={}, help="JSON shield settings")
    p.add_argument("--n-parity", type=_count, default=1000, help="sampled parity observations")
    p.add_argument("--tolerance", type=_tolerance, default=1e-5, help="max |onnx - source|")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity sampler")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from pulsebms.export.exporter import export_checkpoint
    from pulsebms.export.fleet import load_fleet_spec

    try:
        fleet = load_fleet_spec(args.fleet) if args.fleet else None
        result = export_checkpoint(
            args.checkpoint,
            args.out,
            fleet=fleet,
            env_id=args.env_id,
            env_kwargs=args.env_kwargs,
            normalization=args.vecnormalize,
            kind=args.kind,
            shield=args.shield,
            n_parity=args.n_parity,
            tolerance=args.tolerance,
            seed=args.seed,
            opset=args.opset,
            overwrite=args.overwrite,
        )
    except ExportError as exc:
        print(f"pulsebms-export: refused: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # e.g. --env-id without the sim extra
        message = missing_extra_message("pulsebms-export", exc)
        print(message or f"pulsebms-export: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, NotImplementedError, OSError, ImportError) as exc:
        print(f"pulsebms-export: error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "model": str(result.model_path),
                "manifest": str(result.manifest_path),
                "sha256": result.manifest.model.sha256,
                "manifest_sha256": result.manifest.content_sha256(),
                "parity_max_abs_diff": result.parity.max_abs_diff,
                "parity_n_observations": result.parity.n_observations,
            },
            indent=2,
        )
    )
    return 0
