"""The MQTT contract: topics, payload validation, published JSON Schemas, sequence checks."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest

from pulsebms.core.messaging import (
    SPECS,
    MessageError,
    SequenceTracker,
    TopicError,
    decode,
    encode,
    json_schema,
    parse_topic,
    telemetry_topic,
)
from pulsebms.core.messaging.schema import schema_path
from pulsebms.core.messaging.topics import device_topic


def _pack(pack_id: str = "p0") -> dict[str, Any]:
    return {
        "pack_id": pack_id,
        "soc": 0.5,
        "soh": 0.98,
        "current_a": -3.0,
        "voltage_v": 51.2,
        "cell_voltage_min_v": 3.2,
        "cell_voltage_max_v": 3.21,
        "temperature_min_c": 24.0,
        "temperature_max_c": None,
        "setpoint_w": -150.0,
        "safe": False,
        "reasons": 0,
        "fresh": True,
    }


HEADER = {"site": "s1", "session": "abc", "seq": 3, "timestamp_s": 1.7e9}

EXAMPLES: dict[str, dict[str, Any]] = {
    "telemetry": {
        **HEADER,
        "device": "e1",
        "period_s": 1.0,
        "packs": [_pack(), _pack("p1")],
        "site_values": {"demand_w": 1000.0, "price_per_kwh": 0.3},
    },
    "status": {
        **HEADER,
        "device": "e1",
        "state": "online",
        "mode": "coordinator",
        "allocation_seq": 4,
        "allocation_age_s": 2.5,
        "packs": [{"pack_id": "p0", "safe": False, "reasons": 0}],
    },
    "commands": {
        **HEADER,
        "device": "e1",
        "issuer": "operator",
        "command": "limit_override",
        "packs": ["p0"],
        "current_limit_a": 50.0,
        "expires_after_s": 60.0,
    },
    "allocation": {
        **HEADER,
        "reason": "rebalance",
        "policy": "mpc",
        "period_s": 600.0,
        "valid_for_s": 900.0,
        "demand_w": 2000.0,
        "setpoints": [{"device": "e1", "pack_id": "p0", "power_w": 1000.0}],
        "excluded": ["e2/p3"],
    },
    "forecast": {
        **HEADER,
        "period_s": 300.0,
        "duty": "default: 1 cycle/day",
        "horizon_days": 365.0,
        "packs": [
            {
                "device": "e1",
                "pack_id": "p0",
                "soh": 0.97,
                "rul_days": 900.0,
                "end_of_life_soh": 0.8,
                "trajectory": [{"t_days": 0.0, "soh": 0.97}, {"t_days": 30.0, "soh": 0.965}],
            }
        ],
    },
    "health": {
        **HEADER,
        "device": "e1",
        "model": "hgb-1",
        "packs": [
            {
                "pack_id": "p0",
                "health_score": 0.95,
                "soh_forecast": 0.93,
                "anomaly_score": 0.1,
                "anomalies": [],
                "priority": 0.2,
                "rank": 0,
            }
        ],
    },
}

# (kind, mutation, reason): each must be refused by decode AND by the published schema.
BAD: list[tuple[str, str, str]] = [
    ("telemetry", "soc_above_one", "field"),
    ("telemetry", "seq_negative", "field"),
    ("telemetry", "seq_float", "field"),
    ("telemetry", "bool_as_number", "field"),
    ("telemetry", "missing_packs", "field"),
    ("telemetry", "wrong_schema", "schema"),
    ("telemetry", "wrong_version", "version"),
    ("status", "bad_enum", "field"),
    ("commands", "packs_not_strings", "field"),
    ("allocation", "setpoint_null_power", "field"),
]


def _mutate(kind: str, name: str) -> dict[str, Any]:
    msg = copy.deepcopy(EXAMPLES[kind])
    msg.update(schema=f"pulsebms.{kind}", version=1)
    if name == "soc_above_one":
        msg["packs"][0]["soc"] = 1.2
    elif name == "seq_negative":
        msg["seq"] = -1
    elif name == "seq_float":
        msg["seq"] = 1.5
    elif name == "bool_as_number":
        msg["packs"][1]["current_a"] = True
    elif name == "missing_packs":
        del msg["packs"]
    elif name == "wrong_schema":
        msg["schema"] = "pulsebms.status"
    elif name == "wrong_version":
        msg["version"] = 2
    elif name == "bad_enum":
        msg["mode"] = "turbo"
    elif name == "packs_not_strings":
        msg["packs"] = [1, 2]
    elif name == "setpoint_null_power":
        msg["setpoints"][0]["power_w"] = None
    return msg


def test_published_schema_files_match_the_specs() -> None:
    for kind in SPECS:
        on_disk = json.loads(schema_path(kind).read_text())
        assert on_disk == json_schema(kind), (
            f"{schema_path(kind).name} is stale: "
            "run python -m pulsebms.core.messaging.schema --write"
        )
        jsonschema.Draft202012Validator.check_schema(on_disk)


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_examples_round_trip_and_pass_the_published_schema(kind: str) -> None:
    data = encode(kind, EXAMPLES[kind])
    back = decode(data, kind)
    assert back == {"schema": f"pulsebms.{kind}", "version": 1, **EXAMPLES[kind]}
    jsonschema.validate(back, json_schema(kind))


@pytest.mark.parametrize(("kind", "mutation", "reason"), BAD)
def test_invalid_payloads_are_refused_by_decoder_and_schema_alike(
    kind: str, mutation: str, reason: str
) -> None:
    msg = _mutate(kind, mutation)
    with pytest.raises(MessageError) as info:
        decode(json.dumps(msg), kind)
    assert info.value.reason == reason
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(msg, json_schema(kind))
    with pytest.raises(MessageError):
        encode(kind, msg)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b'{"soc": NaN}', "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"x"', "not_object"),
        (b"{" * 100_000, "not_json"),
        (b" " * (4 * 1024 * 1024 + 1), "too_large"),
    ],
)
def test_garbage_gives_a_reason_never_another_exception(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(payload, "telemetry")
    assert info.value.reason == reason


def test_extra_fields_are_accepted_for_forward_compatibility() -> None:
    msg = {**EXAMPLES["status"], "new_field_from_v1_1": [1, 2, 3]}
    assert decode(encode("status", msg), "status")["new_field_from_v1_1"] == [1, 2, 3]


def test_topic_must_match_payload_site_and_device() -> None:
    data = encode("telemetry", EXAMPLES["telemetry"])
    assert decode(data, topic=telemetry_topic("s1", "e1"))["device"] == "e1"
    for topic in (telemetry_topic("s2", "e1"), telemetry_topic("s1", "e2"), "pulsebms/x"):
        with pytest.raises(MessageError) as info:
            decode(data, topic=topic)
        assert info.value.reason == "topic_mismatch"


def test_encode_refuses_non_finite_numbers() -> None:
    msg = copy.deepcopy(EXAMPLES["telemetry"])
    msg["packs"][0]["current_a"] = float("nan")
    with pytest.raises(MessageError, match="finite"):
        encode("telemetry", msg)


def test_topic_names_are_checked() -> None:
    assert parse_topic("pulsebms/a/b/health") == ("a", "b", "health")
    for site, device in (("a/b", "e"), ("a", "#"), ("", "e"), ("a", "coordinator")):
        with pytest.raises(TopicError):
            device_topic(site, device, "telemetry")
    with pytest.raises(TopicError):
        parse_topic("pulsebms/a/b/unknown")


def test_sequence_tracker_counts_duplicates_reordering_gaps_and_new_sessions() -> None:
    t = SequenceTracker()
    seen = [t.accept("e1", "s1", n) for n in (0, 1, 2, 2, 1, 5, 6)]
    assert seen == [True, True, True, False, False, True, True]
    assert t.accept("e1", "s2", 0)  # a restarted sender
    assert t.accept("e2", "s9", 7)  # another key
    assert t.counts() == {
        "accepted": 7,
        "duplicates": 1,
        "out_of_order": 1,
        "missing": 2,
        "sessions": 3,
    }
    assert t.last_seq("e1") == 0


def test_messaging_imports_only_the_standard_library() -> None:
    code = (
        "import sys; import pulsebms.core.messaging; "
        "print(sorted(m for m in ('numpy', 'torch', 'pybamm', 'gymnasium', 'paho') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # pulsebms.core's __init__ may import numpy; nothing heavier may load.
    assert set(json.loads(out.stdout.replace("'", '"'))) <= {"numpy"}
