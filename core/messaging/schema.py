"""Versioned JSON payloads of the MQTT messages: one spec, a validator and the JSON Schemas.

Each message kind (:data:`~pulsebms.core.messaging.topics.KINDS`) has one :class:`MessageSpec`
in :data:`SPECS`. From it come

* :func:`decode`: bytes from the broker → a validated ``dict`` (or :class:`MessageError`
  with a short ``reason`` code a receiver counts before dropping the message);
* :func:`encode`: a ``dict`` → compact JSON bytes, validated the same way (a sender never
  publishes what a receiver would drop);
* :func:`json_schema`: the JSON Schema (draft 2020-12) published as
  ``core/messaging/schemas/<kind>.v<version>.json`` (regenerate with
  ``python -m pulsebms.core.messaging.schema --write``; a test checks they match).

Every payload carries a common header: ``schema`` (``"pulsebms.<kind>"``), ``version``
(:data:`SCHEMA_VERSION`), ``site``, ``session`` (the sender's run id: sequence numbers
restart with a new session), ``seq`` (≥ 0, +1 per message of that kind and session) and
``timestamp_s`` (the sender's clock, UNIX seconds; the simulated clock in accelerated
runs). Fields carry their unit in their name; power is + for discharge, as everywhere in
PulseBMS. Numbers must be finite (``NaN``/``Infinity`` are not JSON); a quantity a pack has
not reported yet is ``null``. Unknown extra fields are accepted and ignored, so a newer
sender with additive fields stays readable; a different ``version`` is refused.

Only the standard library is used, so the edge runtime imports this at no cost.

Example:
    >>> msg = {"site": "s1", "device": "edge-1", "session": "a1", "seq": 0,
    ...        "timestamp_s": 1.5, "period_s": 1.0,
    ...        "packs": [{"pack_id": "p0", "soc": 0.5, "soh": 1.0, "current_a": -3.0,
    ...                   "voltage_v": 51.2, "cell_voltage_min_v": 3.2,
    ...                   "cell_voltage_max_v": 3.21, "temperature_min_c": 24.0,
    ...                   "temperature_max_c": 25.0, "setpoint_w": -150.0,
    ...                   "safe": False, "reasons": 0, "fresh": True}]}
    >>> data = encode("telemetry", msg)
    >>> decode(data, "telemetry")["packs"][0]["soc"]
    0.5
    >>> try:
    ...     decode(data.replace(b'"soc":0.5', b'"soc":7'), "telemetry")
    ... except MessageError as err:
    ...     print(err.reason, "|", err)
    field | packs[0].soc: 7 is above the maximum 1.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pulsebms.core.messaging.topics import KINDS, TopicError, parse_topic

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "SPECS",
    "Field",
    "MessageError",
    "MessageSpec",
    "ObjectSpec",
    "decode",
    "encode",
    "json_schema",
    "schema_path",
]

SCHEMA_VERSION = 1
"""Version of every payload schema in this release."""

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
"""Larger payloads are refused before parsing (``reason="too_large"``)."""

FieldKind = Literal["integer", "number", "string", "boolean", "array", "object"]

_REASONS = (
    "too_large",
    "not_json",
    "not_object",
    "schema",
    "version",
    "field",
    "topic_mismatch",
)


class MessageError(ValueError):
    """A payload that is not a valid message; ``reason`` is one of a few short codes.

    Attributes:
        reason: ``too_large``, ``not_json``, ``not_object``, ``schema`` (wrong or missing
            ``schema`` name), ``version``, ``field`` (a field missing, of the wrong type or
            out of range) or ``topic_mismatch`` (site/device differ from the topic's).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason if reason in _REASONS else "field"


@dataclass(frozen=True)
class Field:
    """One field of a payload object.

    Attributes:
        name: JSON key.
        kind: JSON type.
        description: What it holds, with its unit.
        required: Whether the key must be present.
        nullable: Whether ``null`` is allowed (a quantity not known yet).
        minimum: Inclusive lower bound (numbers, integers).
        maximum: Inclusive upper bound.
        enum: Allowed values (strings).
        items: Element of an array: an :class:`ObjectSpec` or a scalar :class:`Field`.
        properties: Members of an object field.
        max_items: Longest array allowed.
        max_length: Longest string allowed.
    """

    name: str
    kind: FieldKind
    description: str
    required: bool = True
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    items: ObjectSpec | Field | None = None
    properties: ObjectSpec | None = None
    max_items: int | None = None
    max_length: int | None = 256


@dataclass(frozen=True)
class ObjectSpec:
    """An object's fields (extra keys are allowed and ignored)."""

    fields: tuple[Field, ...]
    description: str = ""

    def names(self) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in self.fields)


@dataclass(frozen=True)
class MessageSpec:
    """A message kind's payload: the common header plus its own fields."""

    kind: str
    title: str
    body: ObjectSpec
    per_device: bool = True
    version: int = SCHEMA_VERSION
    header: ObjectSpec = field(init=False)

    def __post_init__(self) -> None:
        head = [
            Field("schema", "string", f'Always "pulsebms.{self.kind}".', enum=(self.name,)),
            Field(
                "version", "integer", "Schema version.", minimum=self.version, maximum=self.version
            ),
            Field("site", "string", "Site name (a topic level).", max_length=64),
            Field(
                "session",
                "string",
                "Sender run id; seq restarts with a new session.",
                max_length=64,
            ),
            Field(
                "seq", "integer", "Sequence number of this kind in the session, +1 each.", minimum=0
            ),
            Field("timestamp_s", "number", "Sender clock when sent [UNIX s].", minimum=0.0),
        ]
        if self.per_device:
            head.append(
                Field("device", "string", "Edge device name (a topic level).", max_length=64)
            )
        object.__setattr__(self, "header", ObjectSpec(tuple(head)))

    @property
    def name(self) -> str:
        """``pulsebms.<kind>``."""
        return f"pulsebms.{self.kind}"

    @cached_property
    def fields(self) -> ObjectSpec:
        """Header and body fields together (built once: every decode reads it)."""
        return ObjectSpec(self.header.fields + self.body.fields, self.title)


def _num(name: str, description: str, **kw: Any) -> Field:
    """A nullable number (a measured quantity that may not be known yet)."""
    return Field(name, "number", description, nullable=True, **kw)


_PACK_TELEMETRY = ObjectSpec(
    (
        Field("pack_id", "string", "Pack name, unique within the site.", max_length=64),
        _num("soc", "State of charge [0-1].", minimum=0.0, maximum=1.0),
        _num("soh", "State of health, capacity / rated [0-1.5].", minimum=0.0, maximum=1.5),
        _num("current_a", "Pack current [A], + = discharge."),
        _num("voltage_v", "Pack terminal voltage [V].", minimum=0.0),
        _num("cell_voltage_min_v", "Lowest cell voltage [V].", minimum=0.0),
        _num("cell_voltage_max_v", "Highest cell voltage [V].", minimum=0.0),
        _num("temperature_min_c", "Lowest temperature [°C].", minimum=-273.15),
        _num("temperature_max_c", "Highest temperature [°C].", minimum=-273.15),
        Field("setpoint_w", "number", "Power set-point last commanded [W], + = discharge."),
        Field("safe", "boolean", "Whether the edge holds the pack in its safe state."),
        Field("reasons", "integer", "Safe-state reason bit flags (edge SafeReason).", minimum=0),
        Field("fresh", "boolean", "Whether every quantity arrived within the watchdog."),
        _num("rated_power_w", "Rated pack power [W].", required=False, minimum=0.0),
        _num("capacity_ah", "Rated pack capacity [Ah].", required=False, minimum=0.0),
        Field(
            "chemistry", "string", "Cell chemistry (LFP, NMC, LCO).", required=False, max_length=32
        ),
    ),
    "One pack's latest telemetry at the edge.",
)

_SITE_VALUES = ObjectSpec(
    (
        _num("demand_w", "Site demand the fleet should serve [W], + = discharge."),
        _num("price_per_kwh", "Energy price [currency/kWh].", required=False),
        _num("ambient_c", "Ambient temperature [°C].", required=False, minimum=-273.15),
    ),
    "The site values the edge sees.",
)

_PACK_STATUS = ObjectSpec(
    (
        Field("pack_id", "string", "Pack name.", max_length=64),
        Field("safe", "boolean", "Held in the safe state."),
        Field("reasons", "integer", "Safe-state reason bit flags.", minimum=0),
    )
)

_SETPOINT = ObjectSpec(
    (
        Field("device", "string", "Edge device that controls the pack.", max_length=64),
        Field("pack_id", "string", "Pack name.", max_length=64),
        Field("power_w", "number", "Power set-point [W], + = discharge."),
    )
)

_TRAJECTORY_POINT = ObjectSpec(
    (
        Field("t_days", "number", "Time from the forecast's timestamp [days].", minimum=0.0),
        Field("soh", "number", "Forecast state of health.", minimum=0.0, maximum=1.5),
        _num("soh_std", "Standard deviation of the forecast SoH.", required=False, minimum=0.0),
    )
)

_PACK_FORECAST = ObjectSpec(
    (
        Field("device", "string", "Edge device.", max_length=64),
        Field("pack_id", "string", "Pack name.", max_length=64),
        Field("soh", "number", "Calibrated state of health now.", minimum=0.0, maximum=1.5),
        _num("soh_std", "Its standard deviation.", required=False, minimum=0.0),
        _num("capacity_ah", "Calibrated capacity [Ah].", required=False, minimum=0.0),
        _num("resistance_ohm", "Calibrated pack resistance [Ω].", required=False, minimum=0.0),
        _num(
            "voltage_rmse_v",
            "Twin voltage prediction RMSE over the window [V].",
            required=False,
            minimum=0.0,
        ),
        _num("rul_days", "Remaining useful life to end_of_life_soh [days].", minimum=0.0),
        Field(
            "end_of_life_soh", "number", "SoH that ends the useful life.", minimum=0.0, maximum=1.0
        ),
        Field(
            "trajectory", "array", "Forecast SoH points.", items=_TRAJECTORY_POINT, max_items=10_000
        ),
    )
)

_PACK_HEALTH = ObjectSpec(
    (
        Field("pack_id", "string", "Pack name.", max_length=64),
        Field("health_score", "number", "Estimated state of health.", minimum=0.0, maximum=1.5),
        _num("soh_forecast", "SoH forecast horizon_cycles ahead.", minimum=0.0, maximum=1.5),
        _num(
            "horizon_cycles",
            "Forecast horizon [equivalent full cycles].",
            required=False,
            minimum=0.0,
        ),
        _num("anomaly_score", "Anomaly score (higher = more anomalous)."),
        Field(
            "anomalies",
            "array",
            "Names of the anomalies detected.",
            items=Field("anomaly", "string", "Anomaly name.", max_length=64),
            max_items=64,
        ),
        _num("priority", "Maintenance priority score (higher = sooner)."),
        Field(
            "rank",
            "integer",
            "Place in the site's maintenance queue (0 = first).",
            required=False,
            nullable=True,
            minimum=0,
        ),
    )
)

SPECS: dict[str, MessageSpec] = {
    "telemetry": MessageSpec(
        "telemetry",
        "Edge telemetry: every pack's latest readings and commanded set-point.",
        ObjectSpec(
            (
                Field("period_s", "number", "Telemetry publishing period [s].", minimum=0.0),
                Field(
                    "packs", "array", "The device's packs.", items=_PACK_TELEMETRY, max_items=4096
                ),
                Field(
                    "site_values",
                    "object",
                    "Site values the edge sees.",
                    required=False,
                    nullable=True,
                    properties=_SITE_VALUES,
                ),
            )
        ),
    ),
    "status": MessageSpec(
        "status",
        "Edge status (retained); the broker publishes the last will (state offline).",
        ObjectSpec(
            (
                Field("state", "string", "online or offline.", enum=("online", "offline")),
                Field(
                    "mode",
                    "string",
                    "What drives the set-points: the coordinator's allocation, the local "
                    "policy (allocation stale), hold (last allocation kept), safe, stopped.",
                    enum=("coordinator", "local_policy", "hold", "safe", "stopped"),
                ),
                Field(
                    "allocation_seq",
                    "integer",
                    "seq of the allocation applied.",
                    required=False,
                    nullable=True,
                    minimum=0,
                ),
                _num(
                    "allocation_age_s",
                    "Age of that allocation at the edge [s].",
                    required=False,
                    minimum=0.0,
                ),
                Field(
                    "packs",
                    "array",
                    "Safe-state summary per pack.",
                    required=False,
                    items=_PACK_STATUS,
                    max_items=4096,
                ),
                Field(
                    "detail", "string", "Human-readable detail.", required=False, max_length=1024
                ),
            )
        ),
    ),
    "commands": MessageSpec(
        "commands",
        "An operator or coordinator command to one edge device.",
        ObjectSpec(
            (
                Field("issuer", "string", "Who sent it (user or service name).", max_length=64),
                Field(
                    "command",
                    "string",
                    "safe_state: put packs safe; enable: release them; limit_override: "
                    "tighten limits; clear_override: drop the override.",
                    enum=("safe_state", "enable", "limit_override", "clear_override"),
                ),
                Field(
                    "packs",
                    "array",
                    "Pack names it applies to; null = every pack.",
                    nullable=True,
                    required=False,
                    items=Field("pack_id", "string", "Pack name.", max_length=64),
                    max_items=4096,
                ),
                _num(
                    "current_limit_a",
                    "limit_override: |current| cap [A].",
                    required=False,
                    minimum=0.0,
                ),
                _num(
                    "power_limit_w", "limit_override: |power| cap [W].", required=False, minimum=0.0
                ),
                _num(
                    "expires_after_s",
                    "Override lifetime from receipt [s]; null = until cleared.",
                    required=False,
                    minimum=0.0,
                ),
            )
        ),
    ),
    "allocation": MessageSpec(
        "allocation",
        "The coordinator's power allocation for every pack of the site (retained).",
        ObjectSpec(
            (
                Field(
                    "reason",
                    "string",
                    "Why it was computed.",
                    enum=("initial", "periodic", "rebalance", "manual"),
                ),
                Field("policy", "string", "Policy that computed it.", max_length=128),
                Field("period_s", "number", "Re-planning period [s].", minimum=0.0),
                Field(
                    "valid_for_s",
                    "number",
                    "How long after receipt the edge may apply it [s].",
                    minimum=0.0,
                ),
                _num("demand_w", "Site demand the allocation serves [W], + = discharge."),
                Field(
                    "setpoints",
                    "array",
                    "One set-point per pack.",
                    items=_SETPOINT,
                    max_items=100_000,
                ),
                Field(
                    "excluded",
                    "array",
                    "Packs left out (offline or faulted).",
                    required=False,
                    items=Field("pack_id", "string", "Pack name.", max_length=130),
                    max_items=100_000,
                ),
            )
        ),
        per_device=False,
    ),
    "forecast": MessageSpec(
        "forecast",
        "The twin service's calibrated state and degradation forecast per pack (retained).",
        ObjectSpec(
            (
                Field("period_s", "number", "Forecast period [s].", minimum=0.0),
                Field("duty", "string", "Duty assumed for the forecast.", max_length=256),
                Field("horizon_days", "number", "Forecast horizon [days].", minimum=0.0),
                Field("packs", "array", "Per pack.", items=_PACK_FORECAST, max_items=100_000),
            )
        ),
        per_device=False,
    ),
    "health": MessageSpec(
        "health",
        "Health analytics of one device's packs (retained).",
        ObjectSpec(
            (
                Field("model", "string", "Model version that scored the packs.", max_length=128),
                Field("packs", "array", "Per pack.", items=_PACK_HEALTH, max_items=4096),
            )
        ),
    ),
}
"""Payload spec per message kind."""

if set(SPECS) != set(KINDS):  # pragma: no cover - a programming error caught at import
    raise RuntimeError("SPECS and topics.KINDS disagree")


# ---------------------------------------------------------------- validation


def _fail(path: str, text: str) -> MessageError:
    return MessageError("field", f"{path}: {text}")


def _check_value(f: Field, value: Any, path: str) -> None:
    if value is None:
        if not f.nullable:
            raise _fail(path, "must not be null")
        return
    kind = f.kind
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, f"expected a {kind}, got {type(value).__name__}")
        if kind == "integer" and not isinstance(value, int):
            raise _fail(path, f"expected an integer, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(path, "must be finite")
        if f.minimum is not None and value < f.minimum:
            raise _fail(path, f"{value!r} is below the minimum {f.minimum!r}")
        if f.maximum is not None and value > f.maximum:
            raise _fail(path, f"{value!r} is above the maximum {f.maximum!r}")
    elif kind == "string":
        if not isinstance(value, str):
            raise _fail(path, f"expected a string, got {type(value).__name__}")
        if f.max_length is not None and len(value) > f.max_length:
            raise _fail(path, f"longer than {f.max_length} characters")
        if f.enum is not None and value not in f.enum:
            raise _fail(path, f"{value!r} is not one of {list(f.enum)}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _fail(path, f"expected true/false, got {value!r}")
    elif kind == "array":
        if not isinstance(value, list):
            raise _fail(path, f"expected an array, got {type(value).__name__}")
        if f.max_items is not None and len(value) > f.max_items:
            raise _fail(path, f"more than {f.max_items} items")
        for i, item in enumerate(value):
            if isinstance(f.items, ObjectSpec):
                _check_object(f.items, item, f"{path}[{i}]")
            elif f.items is not None:
                _check_value(f.items, item, f"{path}[{i}]")
    elif kind == "object" and f.properties is not None:
        _check_object(f.properties, value, path)


def _check_object(spec: ObjectSpec, value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _fail(path or "payload", f"expected an object, got {type(value).__name__}")
    for f in spec.fields:
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            if f.required:
                raise _fail(sub, "missing")
            continue
        _check_value(f, value[f.name], sub)


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


def _validate(spec: MessageSpec, obj: dict[str, Any]) -> None:
    name = obj.get("schema")
    if name != spec.name:
        raise MessageError("schema", f"schema {name!r} is not {spec.name!r}")
    version = obj.get("version")
    if version != spec.version or isinstance(version, bool):
        raise MessageError("version", f"{spec.name} version {version!r} is not {spec.version}")
    _check_object(spec.fields, obj, "")


def decode(
    payload: bytes | bytearray | str, kind: str | None = None, *, topic: str | None = None
) -> dict[str, Any]:
    """Parse and validate one message.

    Args:
        payload: The MQTT payload (UTF-8 JSON).
        kind: Expected kind; taken from ``topic`` when not given.
        topic: The topic it arrived on; when given, the payload's ``site`` (and ``device``
            for per-device kinds) must match it.

    Returns:
        The message as a ``dict`` (header and body fields).

    Raises:
        MessageError: Anything that is not a valid message of that kind (``reason`` says
            what, for counters).
    """
    topic_parts: tuple[str, str, str] | None = None
    if topic is not None:
        try:
            topic_parts = parse_topic(topic)
        except TopicError as exc:
            raise MessageError("topic_mismatch", str(exc)) from None
        if kind is None:
            kind = topic_parts[2]
    if kind is None or kind not in SPECS:
        raise MessageError("schema", f"unknown message kind {kind!r}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError("too_large", f"payload of {len(payload)} B > {MAX_PAYLOAD_BYTES} B")
    try:
        obj = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MessageError("not_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError("not_object", f"payload is a {type(obj).__name__}, not an object")
    spec = SPECS[kind]
    _validate(spec, obj)
    if topic_parts is not None:
        site, device, _ = topic_parts
        if obj["site"] != site:
            raise MessageError("topic_mismatch", f"site {obj['site']!r} on topic {topic!r}")
        if spec.per_device and obj["device"] != device:
            raise MessageError("topic_mismatch", f"device {obj['device']!r} on topic {topic!r}")
    return obj


def encode(kind: str, message: Mapping[str, Any]) -> bytes:
    """Validate a message and serialise it as compact UTF-8 JSON.

    ``schema`` and ``version`` are filled in when absent.

    Raises:
        MessageError: The message would not pass :func:`decode`.
    """
    if kind not in SPECS:
        raise MessageError("schema", f"unknown message kind {kind!r}")
    spec = SPECS[kind]
    obj = {"schema": spec.name, "version": spec.version, **message}
    _validate(spec, obj)
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MessageError("field", f"not serialisable: {exc}") from None
    return text.encode()


# ---------------------------------------------------------------- JSON Schema


def _field_schema(f: Field) -> dict[str, Any]:
    out: dict[str, Any] = {"description": f.description}
    if f.kind == "array":
        out["type"] = "array"
        if isinstance(f.items, ObjectSpec):
            out["items"] = _object_schema(f.items)
        elif f.items is not None:
            out["items"] = _field_schema(f.items)
        if f.max_items is not None:
            out["maxItems"] = f.max_items
    elif f.kind == "object":
        out.update(_object_schema(f.properties or ObjectSpec(())))
        out["description"] = f.description
    else:
        out["type"] = f.kind
        if f.minimum is not None:
            out["minimum"] = f.minimum
        if f.maximum is not None:
            out["maximum"] = f.maximum
        if f.enum is not None:
            out["enum"] = list(f.enum)
        if f.kind == "string" and f.max_length is not None:
            out["maxLength"] = f.max_length
    if f.nullable:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _object_schema(spec: ObjectSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {f.name: _field_schema(f) for f in spec.fields},
        "required": [f.name for f in spec.fields if f.required],
        "additionalProperties": True,
    }
    if spec.description:
        out["description"] = spec.description
    return out


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a message kind."""
    spec = SPECS[kind]
    body = _object_schema(spec.fields)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://pulsebms.dev/schemas/{spec.name}.v{spec.version}.json",
        "title": spec.name,
        "description": spec.title,
        **{k: v for k, v in body.items() if k != "description"},
    }


def schema_path(kind: str) -> Path:
    """Where the published schema file of a kind lives (package data)."""
    return Path(__file__).with_name("schemas") / f"{kind}.v{SPECS[kind].version}.json"


def _write_all() -> list[Path]:
    written = []
    for kind in SPECS:
        path = schema_path(kind)
        path.write_text(json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - maintenance command
    import sys

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m pulsebms.core.messaging.schema --write")
    for p in _write_all():
        print(p)
