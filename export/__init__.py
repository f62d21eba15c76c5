"""Export a trained policy to ``policy.onnx`` + ``manifest.json`` for the edge runtime.

Sources: a stable-baselines3 ``.zip`` (+ its ``VecNormalize`` pickle) or an RLlib (new API
stack) algorithm checkpoint directory, whose ``MeanStdFilter`` statistics are read from the
checkpoint; Ray is imported only when an RLlib checkpoint is loaded.

The ONNX graph holds the whole deployed function (observation normalisation, deterministic
action, clipping to [-1, 1]); the manifest holds the observation/action layout with units,
ratings, limits, shield settings, checkpoint and model sha256 (for a checkpoint directory,
:func:`checkpoint_sha256` over its files) and versions. An export whose onnxruntime actions
differ from the source policy's is refused (:class:`ParityError`).

Example:
    >>> from pulsebms.export import export_checkpoint
    >>> result = export_checkpoint(  # doctest: +SKIP
    ...     "runs/ppo/model.zip", "deploy/", env_id="PulseBMS/FleetSmall-v0"
    ... )
    >>> result = export_checkpoint(  # doctest: +SKIP
    ...     "runs/rllib/ckpt", "deploy-rllib/", env_id="PulseBMS/FleetSmall-v0"
    ... )
    >>> result.manifest.source.kind  # doctest: +SKIP
    'rllib'
"""

from __future__ import annotations

from pulsebms.export.errors import ExportError, ParityError
from pulsebms.export.exporter import (
    MANIFEST_FILE,
    MODEL_FILE,
    ExportResult,
    export_checkpoint,
    export_policy,
)
from pulsebms.export.fleet import (
    FleetSpec,
    fleet_spec_from_dict,
    fleet_spec_from_env,
    load_fleet_spec,
    observation_fields,
)
from pulsebms.export.parity import ParityReport, check_parity, parity_observations
from pulsebms.export.source import PolicySource, checkpoint_sha256, load_source

__all__ = [
    "MANIFEST_FILE",
    "MODEL_FILE",
    "ExportError",
    "ExportResult",
    "FleetSpec",
    "ParityError",
    "ParityReport",
    "PolicySource",
    "check_parity",
    "checkpoint_sha256",
    "export_checkpoint",
    "export_policy",
    "fleet_spec_from_dict",
    "fleet_spec_from_env",
    "load_fleet_spec",
    "load_source",
    "observation_fields",
    "parity_observations",
]
