"""Checkpoint → ``policy.onnx`` + ``manifest.json``, refusing anything that fails parity.

Order of work: build the deployed torch module, export it to ONNX bytes in memory, run the
parity check, and only then write both files (to temporary names, renamed into place), so a
failed export leaves no file behind. The manifest records the model's sha256 and, through
:meth:`~pulsebms.edge_runtime.manifest.Manifest.to_json`, the sha256 of its own content
(``manifest_sha256``), both checked by the edge runtime at load.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from pulsebms.edge_runtime.manifest import (
    Manifest,
    ModelInfo,
    SourceInfo,
    ratings_to_dict,
    sha256_bytes,
    sha256_file,
)
from pulsebms.export.errors import ExportError, ParityError
from pulsebms.export.fleet import FleetSpec, fleet_spec_from_env
from pulsebms.export.graph import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, to_onnx
from pulsebms.export.parity import ParityReport, check_parity, parity_observations
from pulsebms.export.source import PolicySource, checkpoint_sha256, load_source

__all__ = [
    "EDGE_UNSUPPORTED_SOURCES",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "ExportResult",
    "export_checkpoint",
    "export_policy",
    "versions",
]

MODEL_FILE = "policy.onnx"
"""Default model file name."""
MANIFEST_FILE = "manifest.json"
"""Default manifest file name."""

EDGE_UNSUPPORTED_SOURCES = ("grid_import_limit_w", "grid_export_limit_w", "feed_in_price_per_kwh")
"""Observation sources the edge runtime has no value for (the ``PulseBMS/FleetSite-v0``
site fields): a policy reading them is refused at export instead of failing on the device."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes:
        model_path: The ONNX file.
        manifest_path: The manifest.
        manifest: The manifest's content.
        parity: The parity check it passed.
    """

    model_path: Path
    manifest_path: Path
    manifest: Manifest
    parity: ParityReport


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(opset: int) -> dict[str, str]:
    """Versions recorded in the manifest (packages, Python, opset)."""
    return {
        "pulsebms": _version("pulsebms"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": _version("onnxruntime"),
        "stable_baselines3": _version("stable-baselines3"),
        "ray": _version("ray"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "opset": str(opset),
    }


def _write_atomically(files: Mapping[Path, bytes]) -> None:
    """Write every file to a temporary name, then rename all into place."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            temps.append((Path(name), path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(name, 0o644)  # mkstemp creates 0600; these are shareable artefacts
        for tmp, final in temps:
            os.replace(tmp, final)
    except BaseException:
        for tmp, final in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
        raise


def export_policy(
    source: PolicySource,
    fleet: FleetSpec,
    out_dir: str | Path,
    *,
    n_parity: int = 1000,
    tolerance: float = 1e-5,
    observations: NDArray[np.floating] | Sequence[Sequence[float]] | None = None,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    created_utc: str | None = None,
) -> ExportResult:
    """Export a loaded policy, check parity, and write ``policy.onnx`` + ``manifest.json``.

    Args:
        source: The loaded checkpoint (:func:`pulsebms.export.source.load_source`).
        fleet: Layout, ratings, limits, shield settings and ``dt_s`` of the fleet.
        out_dir: Output directory (created if missing).
        n_parity: Observations sampled within the observation space for the parity check.
        tolerance: Largest admissible |onnxruntime − source| over every action entry.
        observations: Extra observations ``[k, obs]`` for the parity check (e.g. recorded
            from the env), checked first.
        seed: Seed of the parity sampler.
        opset: ONNX opset.
        overwrite: Replace existing files; otherwise an existing output is an error.
        created_utc: Creation time to record (ISO-8601); now by default.

    Returns:
        The paths, the manifest and the parity report.

    Raises:
        ExportError: If the layout does not fit the policy, the output exists, or the
            parity check would compare no observation (``n_parity=0`` and none given).
        ParityError: If the parity check fails; nothing is written.
        ValueError: If ``n_parity`` is negative or ``tolerance`` is not finite and >= 0.

    Example:
        >>> source = load_source("runs/ppo/model.zip")  # doctest: +SKIP
        >>> result = export_policy(source, fleet_spec, "deploy/")  # doctest: +SKIP
        >>> result.parity.max_abs_diff < 1e-5  # doctest: +SKIP
        True
    """
    if n_parity < 0:
        raise ValueError(f"n_parity must be >= 0, got {n_parity}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"the parity tolerance must be finite and >= 0, got {tolerance}")
    out = Path(out_dir)
    model_path, manifest_path = out / MODEL_FILE, out / MANIFEST_FILE
    if not overwrite and (model_path.exists() or manifest_path.exists()):
        raise ExportError(f"{out} already holds an export; pass overwrite=True to replace it")
    edge_unknown = sorted(
        {f.source for f in fleet.observation.fields} & set(EDGE_UNSUPPORTED_SOURCES)
    )
    if edge_unknown:
        raise ExportError(
            f"the observation reads {edge_unknown}, which the edge runtime cannot supply yet "
            "(it builds the observation from CAN telemetry and the site source): export a "
            "policy trained on a PulseBMS/Fleet-v0 layout"
        )
    obs_size = int(np.asarray(source.observation_low).size)
    act_size = int(np.asarray(source.action_low).size)
    if fleet.observation_size != obs_size:
        raise ExportError(
            f"the observation layout covers {fleet.observation_size} entries, the policy "
            f"observes {obs_size}: the fleet spec does not belong to this checkpoint"
        )
    if act_size != fleet.ratings.n_packs:
        raise ExportError(
            f"the policy outputs {act_size} actions for a fleet of {fleet.ratings.n_packs} packs"
        )
    try:
        model = to_onnx(source.torch_policy(), obs_size, opset=opset)
    except Exception as exc:
        raise ExportError(f"torch could not export the policy to ONNX: {exc}") from exc
    batch = parity_observations(source, n_parity, seed=seed, given=observations)
    if batch.shape[0] == 0:  # an empty comparison would pass whatever the model does
        raise ExportError(
            "the parity check needs at least one observation: n_parity is 0 and none were "
            "given; nothing was written"
        )
    report = check_parity(model, source, batch, tolerance=tolerance)
    if not report.passed:
        raise ParityError(
            f"parity check failed: max |onnxruntime - {source.kind} {source.algorithm}| = "
            f"{report.max_abs_diff:.3g} > tolerance {tolerance:.3g} on {report.n_observations} "
            f"observations (worst row {report.worst_index}); nothing was written",
            max_abs_diff=report.max_abs_diff,
            tolerance=tolerance,
        )
    norm = source.normalization_path
    manifest = Manifest(
        model=ModelInfo(
            file=MODEL_FILE,
            sha256=sha256_bytes(model),
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            observation_size=obs_size,
            action_size=act_size,
            opset=opset,
        ),
        source=SourceInfo(
            kind=source.kind,
            algorithm=source.algorithm,
            path=str(source.checkpoint_path.resolve()),
            sha256=checkpoint_sha256(source.checkpoint_path),
            normalization_path=None if norm is None else str(norm.resolve()),
            normalization_sha256=None if norm is None else sha256_file(norm),
        ),
        observation=fleet.observation,
        action=fleet.action,
        ratings=ratings_to_dict(fleet.ratings),
        limits=tuple({k: float(v) for k, v in vars(lim).items()} for lim in fleet.limits),
        shield=fleet.shield_settings(),
        dt_s=fleet.dt_s,
        versions=versions(opset),
        created_utc=created_utc or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        parity={
            "n_observations": float(report.n_observations),
            "max_abs_diff": report.max_abs_diff,
            "tolerance": report.tolerance,
        },
        path=manifest_path,
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically({model_path: model, manifest_path: manifest.to_json().encode("utf-8")})
    return ExportResult(model_path, manifest_path, manifest, report)


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    fleet: FleetSpec | None = None,
    env_id: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    normalization: str | Path | None = None,
    kind: str = "auto",
    shield: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> ExportResult:
    """Load a checkpoint and export it (see :func:`export_policy` for ``kwargs``).

    The fleet side comes from ``fleet`` or, when ``None``, from a fresh
    ``gymnasium.make(env_id, **env_kwargs)`` (which also records ``n`` observations of a
    short rollout of the policy for the parity check).

    Args:
        checkpoint: SB3 ``.zip``, or an RLlib algorithm checkpoint directory (its manifest
            ``source.sha256`` is :func:`~pulsebms.export.source.checkpoint_sha256` over
            the directory's files).
        out_dir: Output directory.
        fleet: The fleet spec; or give ``env_id``.
        env_id: Gymnasium id of the training env (e.g. ``PulseBMS/FleetSmall-v0``).
        env_kwargs: Keyword arguments of ``gymnasium.make``.
        normalization: ``VecNormalize`` pickle (looked up beside the zip when ``None``);
            SB3 only (an RLlib checkpoint holds its ``MeanStdFilter`` statistics).
        kind: Checkpoint kind (``auto``, ``sb3``, ``rllib``, ``ensemble``).
        shield: Shield settings to record (with an env).
        **kwargs: Passed to :func:`export_policy`.

    Returns:
        The export result.

    Raises:
        ExportError: If neither ``fleet`` nor ``env_id`` is given, or see
            :func:`export_policy`.
    """
    source = load_source(checkpoint, normalization, kind=kind)
    if fleet is None:
        if env_id is None:
            raise ExportError("give the fleet: a FleetSpec (--fleet JSON) or an env id (--env-id)")
        fleet, recorded = _fleet_from_env(source, env_id, dict(env_kwargs or {}), shield)
        given = kwargs.pop("observations", None)
        if given is None:
            kwargs["observations"] = recorded
    return export_policy(source, fleet, out_dir, **kwargs)


def _fleet_from_env(
    source: PolicySource,
    env_id: str,
    env_kwargs: dict[str, Any],
    shield: Mapping[str, Any] | None,
    n_steps: int = 16,
) -> tuple[FleetSpec, NDArray[np.float32]]:
    import gymnasium as gym

    import pulsebms.envs  # noqa: F401 - registers the ids

    env = gym.make(env_id, **env_kwargs)
    try:
        spec = fleet_spec_from_env(env, shield=shield)
        if spec.observation_size != int(np.asarray(source.observation_low).size):
            raise ExportError(
                f"{env_id} observes {spec.observation_size} entries, the policy "
                f"{np.asarray(source.observation_low).size}: wrong env or env kwargs"
            )
        obs, _ = env.reset(seed=0)
        rows = [np.asarray(obs, dtype=np.float32)]
        for _ in range(n_steps):
            action = source.predict(rows[-1].reshape(1, -1))[0]
            obs, _r, terminated, truncated, _info = env.step(action)
            rows.append(np.asarray(obs, dtype=np.float32))
            if terminated or truncated:
                break
        return spec, np.stack(rows)
    finally:
        cast(Any, env).close()
