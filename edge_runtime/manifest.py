"""The deployment manifest: what an exported policy observes, commands and must respect.

``manifest.json`` is written by :mod:`pulsebms.export` next to ``policy.onnx`` and read here,
on the device. It is plain JSON (no pickle, no code): the observation and action layouts with
units, the pack ratings, limits per pack, the shield settings, the control interval, the
source checkpoint and the sha256 of the model. :func:`load_manifest` validates it and
:meth:`Manifest.read_verified_model` refuses a model whose sha256 differs from the recorded
one, so a tampered or swapped ``policy.onnx`` never runs.

The manifest's own content is covered too: ``manifest_sha256`` is the sha256 of the
canonical JSON of every other key (limits, shield settings, layouts, ratings, model and
source info, versions, parity: see :func:`canonical_json`), written by :meth:`Manifest.save`
(so by the exporter) and checked by :func:`load_manifest` before anything else is read. An
edited manifest (a limit raised by hand, ``"temperature_max_c": 600``) is refused with
:class:`ManifestIntegrityError`; a manifest written before the hash existed
(``schema_version`` 1) is refused with a message to re-export it. The hash detects edits
and corruption; it is not a signature (whoever can write the file can recompute it).

The observation layout is the environment's own
:class:`~pulsebms.core.observation.ObservationLayout`: each
:class:`~pulsebms.core.observation.ObsField` names the physical quantity it reads
(``source``, one of :data:`PACK_SOURCES` or :data:`SITE_SOURCES`) and the ``scale`` such
that stored value × ``scale`` = physical value; the stored value is then clipped to
``[low, high]`` (the observation space). In JSON it is the list of fields
(``"observation"``) and the pack labels (``"pack_names"``, optional: manifests written
before it was recorded read unchanged).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pulsebms.core.observation import PACK_SOURCES, SITE_SOURCES, ObservationLayout, ObsField
from pulsebms.safety.limits import PackLimits
from pulsebms.safety.state import PackRatings

__all__ = [
    "MANIFEST_HASH_KEY",
    "PACK_SOURCES",
    "SCHEMA_VERSION",
    "SITE_SOURCES",
    "ActionField",
    "Manifest",
    "ManifestError",
    "ManifestIntegrityError",
    "ModelInfo",
    "ModelIntegrityError",
    "ObsField",
    "ObservationField",
    "ObservationLayout",
    "SourceInfo",
    "canonical_json",
    "load_manifest",
    "manifest_sha256",
    "ratings_from_dict",
    "ratings_to_dict",
    "sha256_bytes",
    "sha256_file",
]

SCHEMA_VERSION = 2
"""Version of the manifest format; a change of meaning of any field is a new version.

2: ``manifest_sha256`` covers the whole content (1 had no content hash and is refused).
"""

MANIFEST_HASH_KEY = "manifest_sha256"
"""The JSON key holding the content sha256 (the one key the hash does not cover)."""

ObservationField = ObsField
"""Former name of :class:`~pulsebms.core.observation.ObsField` (kept for compatibility).

The positional order is the core type's (``name, start, stop, unit, scale, low, high,
description, source, pack``); pass ``source``/``pack`` by keyword.
"""


class ManifestError(ValueError):
    """The manifest is missing, unreadable or inconsistent."""


class ModelIntegrityError(RuntimeError):
    """The model file's sha256 differs from the one recorded in the manifest."""


class ManifestIntegrityError(ManifestError, ModelIntegrityError):
    """The manifest's content differs from what its ``manifest_sha256`` records, or it has none.

    Both a :class:`ManifestError` (the manifest is unusable) and a
    :class:`ModelIntegrityError` (the deployed pair was modified), so a caller that catches
    either refuses it.
    """


def canonical_json(data: Mapping[str, Any]) -> str:
    r"""The canonical JSON text the content hash is computed over.

    Every key but :data:`MANIFEST_HASH_KEY`, sorted at every level, no whitespace
    (separators ``","`` and ``":"``), ASCII only (other characters as ``\uXXXX``), floats
    as Python's shortest round-trip ``repr`` (``60.0``, ``1e-05``), no NaN or infinity.

    Args:
        data: The manifest's JSON object (as written, or as :func:`json.loads` read it).

    Returns:
        The canonical text.

    Raises:
        ManifestError: If the content holds NaN, infinity or a value JSON cannot hold.

    Example:
        >>> canonical_json({"b": [1, 2.5], "a": "x", "manifest_sha256": "ignored"})
        '{"a":"x","b":[1,2.5]}'
    """
    content = {k: v for k, v in data.items() if k != MANIFEST_HASH_KEY}
    try:
        return json.dumps(
            content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest content is not plain JSON: {exc}") from exc


def manifest_sha256(data: Mapping[str, Any]) -> str:
    """Hex sha256 of :func:`canonical_json` of ``data`` (UTF-8): what ``manifest_sha256`` holds.

    Args:
        data: The manifest's JSON object; its own ``manifest_sha256`` key is ignored.

    Returns:
        The lower-case hex digest.

    Raises:
        ManifestError: If the content is not plain JSON (see :func:`canonical_json`).
    """
    return sha256_bytes(canonical_json(data).encode("utf-8"))


def _check_content_hash(data: Mapping[str, Any], where: str) -> None:
    """Refuse a manifest without a content hash, of another schema, or edited since written."""
    recorded = data.get(MANIFEST_HASH_KEY)
    version = data.get("schema_version")
    if recorded is None:
        raise ManifestIntegrityError(
            f"manifest{where} has no {MANIFEST_HASH_KEY} (schema_version {version}; written "
            "by an older pulsebms-export), so its limits and settings cannot be verified; "
            "re-export the policy with pulsebms-export"
        )
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"manifest{where} schema_version {version} is not supported "
            f"(this runtime reads {SCHEMA_VERSION}); re-export the policy"
        )
    actual = manifest_sha256(data)
    if recorded != actual:
        raise ManifestIntegrityError(
            f"manifest{where} was modified after export: its content has sha256 {actual}, "
            f"{MANIFEST_HASH_KEY} records {recorded}; refusing to run it (limits, shield "
            "settings, layouts and ratings are covered: re-export the policy instead of "
            "editing the manifest)"
        )


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks.

    Args:
        path: The file.

    Returns:
        The lower-case hex digest.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ActionField:
    """One named slice of the flat action vector.

    Attributes:
        name: Name (``"power_setpoint"``).
        start: First index.
        stop: One past the last index (one entry per pack).
        unit: Unit of the action entries.
        description: What an entry means physically.
        low: Lower bound of every entry.
        high: Upper bound of every entry.
    """

    name: str
    start: int
    stop: int
    unit: str = "1"
    description: str = "pack power set-point / rated pack power, + = discharge"
    low: float = -1.0
    high: float = 1.0


@dataclass(frozen=True)
class ModelInfo:
    """The ONNX model the manifest belongs to.

    Attributes:
        file: File name of the model, relative to the manifest.
        sha256: Hex sha256 of the model bytes.
        input_name: Name of the graph's observation input (``float32[batch, obs]``).
        output_name: Name of the graph's action output (``float32[batch, act]``).
        observation_size: Length of one observation.
        action_size: Length of one action.
        opset: ONNX opset of the graph.
    """

    file: str
    sha256: str
    input_name: str
    output_name: str
    observation_size: int
    action_size: int
    opset: int


@dataclass(frozen=True)
class SourceInfo:
    """The checkpoint the model was exported from.

    Attributes:
        kind: Training library (``"sb3"``; ``"rllib"`` later).
        algorithm: Algorithm class (``"PPO"``, ``"SAC"``).
        path: Checkpoint path at export time.
        sha256: Hex sha256 of the checkpoint file.
        normalization_path: Observation-normalisation statistics file (VecNormalize), if any.
        normalization_sha256: Its sha256, if any.
    """

    kind: str
    algorithm: str
    path: str
    sha256: str
    normalization_path: str | None = None
    normalization_sha256: str | None = None


def ratings_to_dict(ratings: PackRatings) -> dict[str, Any]:
    """Plain-JSON form of :class:`~pulsebms.safety.state.PackRatings`."""
    return {
        "chemistry": list(ratings.chemistry),
        "series": [int(v) for v in ratings.series],
        "parallel": [int(v) for v in ratings.parallel],
        "cell_capacity_ah": [float(v) for v in ratings.cell_capacity_ah],
        "rated_power_w": [float(v) for v in ratings.rated_power_w],
    }


def ratings_from_dict(data: Mapping[str, Any]) -> PackRatings:
    """Rebuild :class:`~pulsebms.safety.state.PackRatings` from :func:`ratings_to_dict`.

    Raises:
        ManifestError: If a key is missing or the arrays disagree in length.
    """
    try:
        return PackRatings(
            chemistry=tuple(str(c) for c in data["chemistry"]),
            series=np.asarray(data["series"], dtype=np.int64),
            parallel=np.asarray(data["parallel"], dtype=np.int64),
            cell_capacity_ah=np.asarray(data["cell_capacity_ah"], dtype=np.float64),
            rated_power_w=np.asarray(data["rated_power_w"], dtype=np.float64),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"manifest 'ratings' is invalid: {exc}") from exc


_OBS_FLOATS = ("scale", "low", "high")

_Field = TypeVar("_Field", ObsField, ActionField)


def _typed(item: _Field, *, ints: tuple[str, ...], floats: tuple[str, ...]) -> _Field:
    """``item`` with the named attributes as exact ``int`` / ``float`` (itself if they are)."""
    changes: dict[str, Any] = {}
    for name in ints:
        value = getattr(item, name)
        if type(value) is not int:
            changes[name] = int(value)
    for name in floats:
        value = getattr(item, name)
        if type(value) is not float:
            changes[name] = float(value)
    return replace(item, **changes) if changes else item


@dataclass(frozen=True)
class Manifest:
    """Everything the edge runtime needs to run an exported policy safely.

    Attributes:
        model: The ONNX model and its sha256.
        source: The checkpoint it came from.
        observation: Observation layout, ordered by ``start``, covering every entry (a
            sequence of fields is accepted and turned into a layout).
        action: Action layout (one entry per pack).
        ratings: Pack ratings as plain data (see :func:`ratings_to_dict`).
        limits: Safe operating limits, one mapping per pack (field name → value, units in
            the names), as :mod:`pulsebms.safety` defines them.
        shield: Shield settings: keyword arguments of :class:`pulsebms.safety.shield.Shield`
            besides ratings and limits (``dt_s``, ``derating_band_c``, margins ...), plus
            ``track_demand`` (aim the fleet total at the site demand, as the training
            ``ShieldWrapper`` did).
        dt_s: Control interval the policy was trained with [s].
        versions: Package versions at export (``pulsebms``, ``torch``, ``onnx``, ...).
        created_utc: ISO-8601 creation time (UTC).
        parity: Parity-check figures (``n_observations``, ``max_abs_diff``, ``tolerance``).
        path: Where the manifest was loaded from (not serialised).
        schema_version: Manifest format version.
    """

    model: ModelInfo
    source: SourceInfo
    observation: ObservationLayout
    action: tuple[ActionField, ...]
    ratings: dict[str, Any]
    limits: tuple[dict[str, float], ...]
    shield: dict[str, Any]
    dt_s: float
    versions: dict[str, str]
    created_utc: str
    parity: dict[str, float] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        layout = self.observation
        if not isinstance(layout, ObservationLayout):  # a plain sequence of fields
            layout = ObservationLayout(tuple(sorted(layout, key=lambda f: f.start)))
        # Numbers in the types JSON reads them back as (``-2`` → ``-2.0``), so that
        # ``from_dict(to_dict())`` equals the manifest and its content hash is stable.
        try:
            fields = tuple(
                _typed(f, ints=("start", "stop"), floats=_OBS_FLOATS) for f in layout.fields
            )
            if any(new is not old for new, old in zip(fields, layout.fields, strict=True)):
                layout = ObservationLayout(fields, tuple(layout.pack_names))
            normalized = {
                "observation": layout,  # the caller's own object when already typed
                "action": tuple(
                    _typed(a, ints=("start", "stop"), floats=("low", "high")) for a in self.action
                ),
                "limits": tuple({str(k): float(v) for k, v in lim.items()} for lim in self.limits),
                "parity": {str(k): float(v) for k, v in self.parity.items()},
                "dt_s": float(self.dt_s),
            }
        except (TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"manifest holds a value of the wrong type: {exc}") from exc
        for name, value in normalized.items():
            object.__setattr__(self, name, value)
        self.validate()

    @property
    def n_packs(self) -> int:
        """Number of packs in the fleet."""
        return len(self.ratings.get("chemistry", ()))

    def pack_ratings(self) -> PackRatings:
        """The ratings as :class:`~pulsebms.safety.state.PackRatings`."""
        return ratings_from_dict(self.ratings)

    def pack_limits(self) -> tuple[PackLimits, ...]:
        """The limits as :class:`~pulsebms.safety.limits.PackLimits`, one per pack.

        Raises:
            ManifestError: If an entry names an unknown field or is not a valid limit set.
        """
        try:
            return tuple(PackLimits(**lim) for lim in self.limits)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"manifest 'limits' is invalid: {exc}") from exc

    def validate(self) -> None:
        """Check internal consistency.

        Raises:
            ManifestError: On the first inconsistency, saying what to fix.
        """
        if self.schema_version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {self.schema_version} is not supported "
                f"(this runtime reads {SCHEMA_VERSION}); re-export the policy"
            )
        n = len(ratings_from_dict(self.ratings).chemistry)
        if n == 0:
            raise ManifestError("manifest describes a fleet of 0 packs")
        if len(self.limits) != n:
            raise ManifestError(f"manifest has {len(self.limits)} limit entries for {n} packs")
        self.pack_limits()
        if not (math.isfinite(self.dt_s) and self.dt_s > 0):
            raise ManifestError(f"manifest dt_s must be > 0, got {self.dt_s}")
        pack_names = self.observation.pack_names
        if pack_names and len(pack_names) != n:
            raise ManifestError(f"manifest names {len(pack_names)} packs ({pack_names}) for {n}")
        expected = 0
        for obs in sorted(self.observation.fields, key=lambda f: f.start):
            if obs.start != expected or obs.stop <= obs.start:
                raise ManifestError(
                    f"observation field {obs.name!r} spans [{obs.start}, {obs.stop}); "
                    f"expected it to start at {expected} with width >= 1"
                )
            if obs.source not in PACK_SOURCES and obs.source not in SITE_SOURCES:
                known = sorted(PACK_SOURCES) + sorted(SITE_SOURCES)
                raise ManifestError(
                    f"observation field {obs.name!r} reads unknown source {obs.source!r}; "
                    f"known: {known}"
                )
            if obs.scale == 0 or not math.isfinite(obs.scale) or not obs.low <= obs.high:
                raise ManifestError(
                    f"observation field {obs.name!r}: scale must be finite and non-zero and "
                    f"low <= high, got scale={obs.scale}, low={obs.low}, high={obs.high}"
                )
            if obs.per_pack:
                width = 1 if obs.pack is not None else n
                if obs.width != width or (obs.pack is not None and not 0 <= obs.pack < n):
                    raise ManifestError(
                        f"per-pack observation field {obs.name!r} has width {obs.width} "
                        f"(pack={obs.pack}); expected {width} for {n} packs"
                    )
            expected = obs.stop
        if expected != self.model.observation_size:
            raise ManifestError(
                f"observation layout covers {expected} entries, model expects "
                f"{self.model.observation_size}"
            )
        act_width = sum(a.stop - a.start for a in self.action)
        if act_width != self.model.action_size or self.model.action_size != n:
            raise ManifestError(
                f"action layout covers {act_width} entries, model outputs "
                f"{self.model.action_size}, fleet has {n} packs (one set-point per pack)"
            )
        if len(self.model.sha256) != 64:
            raise ManifestError("manifest model.sha256 is not a hex sha256 digest")

    def _content(self) -> dict[str, Any]:
        """Every serialised key but the hash, as plain JSON values (lists, not tuples)."""
        data = asdict(self)
        data.pop("path")
        data["limits"] = [dict(lim) for lim in self.limits]
        # JSON has no infinity: an open bound is null (ObsField.to_dict)
        data["observation"] = [f.to_dict() for f in self.observation.fields]
        data["pack_names"] = list(self.observation.pack_names)
        try:  # what json.loads will read back, so the hash written is the hash checked
            plain: dict[str, Any] = json.loads(json.dumps(data, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"manifest content is not plain JSON: {exc}") from exc
        return plain

    def content_sha256(self) -> str:
        """The sha256 of the canonical content: the ``manifest_sha256`` that :meth:`save` writes."""
        return manifest_sha256(self._content())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``path`` excluded), ``manifest_sha256`` included."""
        data = self._content()
        data[MANIFEST_HASH_KEY] = manifest_sha256(data)
        return data

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, two-space indent, trailing newline).

        It carries ``manifest_sha256``: this is the one way a manifest is written (the
        exporter, tests and tools all go through it), so what is written always loads.
        """
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` (content hash included) to ``path`` and return it.

        Example:
            >>> manifest.save("deploy/manifest.json")  # doctest: +SKIP
            >>> load_manifest("deploy/manifest.json") == manifest  # doctest: +SKIP
            True
        """
        out = Path(path)
        out.write_text(self.to_json(), encoding="utf-8")
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, path: Path | None = None, verify: bool = True
    ) -> Manifest:
        """Build and validate a manifest from its JSON form.

        Args:
            data: The JSON object (:meth:`to_dict`).
            path: Where it was read from (kept on the manifest, named in errors).
            verify: Check ``manifest_sha256`` against the content first (the default, and
                what :func:`load_manifest` does). ``False`` builds a manifest from content
                that was edited on purpose, e.g. by a tool or a test that then writes it
                with :meth:`save` (which records the new hash); never on a device.

        Raises:
            ManifestIntegrityError: If ``verify`` and the hash is missing or differs.
            ManifestError: If a key is missing, has the wrong type, or the content is
                inconsistent.
        """
        if verify:
            _check_content_hash(data, f" {path}" if path else "")
        try:
            return cls(
                model=ModelInfo(**data["model"]),
                source=SourceInfo(**data["source"]),
                observation=ObservationLayout(
                    tuple(ObsField.from_dict(f) for f in data["observation"]),
                    tuple(str(p) for p in data.get("pack_names", ())),
                ),
                action=tuple(ActionField(**f) for f in data["action"]),
                ratings=dict(data["ratings"]),
                limits=tuple({str(k): float(v) for k, v in lim.items()} for lim in data["limits"]),
                shield=dict(data.get("shield", {})),
                dt_s=float(data["dt_s"]),
                versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
                created_utc=str(data["created_utc"]),
                parity={str(k): float(v) for k, v in data.get("parity", {}).items()},
                path=path,
                schema_version=int(data.get("schema_version", -1)),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            where = f" {path}" if path else ""
            raise ManifestError(
                f"manifest{where} is malformed: {type(exc).__name__}: {exc}"
            ) from exc

    def model_path(self, model_path: str | Path | None = None) -> Path:
        """The model file: ``model_path`` if given, else ``model.file`` beside the manifest."""
        if model_path is not None:
            return Path(model_path)
        base = self.path.parent if self.path is not None else Path.cwd()
        return base / self.model.file

    def read_verified_model(self, model_path: str | Path | None = None) -> bytes:
        """Read the model and check its sha256 against the manifest.

        Args:
            model_path: The model file; defaults to ``model.file`` beside the manifest.

        Returns:
            The model bytes, safe to hand to onnxruntime.

        Raises:
            ModelIntegrityError: If the sha256 differs (tampered, truncated or another model).
            FileNotFoundError: If the model file does not exist.
        """
        path = self.model_path(model_path)
        data = path.read_bytes()
        digest = sha256_bytes(data)
        if digest != self.model.sha256:
            raise ModelIntegrityError(
                f"model {path} has sha256 {digest}, the manifest expects {self.model.sha256}: "
                "the model was modified or does not belong to this manifest; refusing to run it"
            )
        return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook refusing duplicate keys (a second value would hide an edit)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate ``manifest.json``.

    Args:
        path: The manifest file.

    Returns:
        The validated manifest (its ``path`` set).

    Raises:
        ManifestIntegrityError: If the content differs from its ``manifest_sha256`` (edited
            after export) or has none (written before the hash existed: re-export).
        ManifestError: If the file is missing, not JSON, or invalid.

    Example:
        >>> manifest = load_manifest("out/manifest.json")  # doctest: +SKIP
        >>> model_bytes = manifest.read_verified_model()  # doctest: +SKIP
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {p} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {p} is not readable JSON: {exc}") from exc
    except ManifestError as exc:  # a duplicate key
        raise ManifestError(f"manifest {p} is not canonical: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {p} must hold a JSON object")
    return Manifest.from_dict(data, path=p)
