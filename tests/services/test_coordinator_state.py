from pulsebms.core.messaging import encode, status_topic, telemetry_topic
from pulsebms.services.coordinator import FleetState


def _pack(pid: str, safe: bool = False) -> dict[str, object]:
    return {
        "pack_id": pid, "soc": 0.5, "soh": 1.0, "current_a": 0.0, "voltage_v": 51.2,
        "cell_voltage_min_v": 3.2, "cell_voltage_max_v": 3.21, "temperature_min_c": 24.0,
        "temperature_max_c": 25.0, "setpoint_w": 0.0, "safe": safe, "reasons": int(safe),
        "fresh": True,
    }  # fmt: skip


def _telemetry(device: str, seq: int, safe: bool = False) -> bytes:
    return bytes(encode(
        "telemetry",
        {"site": "s1", "device": device, "session": "a", "seq": seq, "timestamp_s": 1.0 + seq,
         "period_s": 1.0, "packs": [_pack("p0", safe), _pack("p1")]},
    ))  # fmt: skip


def test_state_tracks_packs_offline_and_faults() -> None:
    st = FleetState("s1")
    assert st.handle(telemetry_topic("s1", "e1"), _telemetry("e1", 0))
    st.handle(telemetry_topic("s1", "e2"), _telemetry("e2", 0))
    assert len(st.usable()) == 4
    offline = encode(
        "status",
        {"site": "s1", "device": "e2", "session": "a", "seq": 0, "timestamp_s": 2.0,
         "state": "offline", "mode": "stopped"},
    )  # fmt: skip
    assert st.handle(status_topic("s1", "e2"), offline)
    assert st.usable() == [("e1", "p0"), ("e1", "p1")]
    assert st.excluded() == ["e2/p0", "e2/p1"]
    assert st.offline_events == 1
    assert st.handle(telemetry_topic("s1", "e1"), _telemetry("e1", 1, safe=True))
    assert st.usable() == [("e1", "p1")]


def test_state_counts_malformed_and_out_of_order_without_raising() -> None:
    st = FleetState("s1")
    topic = telemetry_topic("s1", "e1")
    assert not st.handle(topic, b"{not json")
    assert not st.handle(topic, _telemetry("e1", 0).replace(b'"soc":0.5', b'"soc":7', 1))
    st.handle(topic, _telemetry("e1", 3))
    assert not st.handle(topic, _telemetry("e1", 2))
    assert not st.handle(telemetry_topic("s1", "e9"), _telemetry("e1", 4))
    c = st.counts()
    assert c == {"telemetry_accepted": 1, "status_accepted": 0, "not_json": 1, "field": 1,
                 "sequence": 1, "topic_mismatch": 1}  # fmt: skip
