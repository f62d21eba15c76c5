"""Fleet state of one site, fed by MQTT messages (raw or already validated).

Each message is validated with :func:`pulsebms.core.messaging.decode` (or arrives
validated from :class:`~pulsebms.edge_runtime.mqtt_link.MqttLink`) and sequence-checked per
device and kind with :class:`~pulsebms.core.messaging.SequenceTracker`. Malformed,
duplicate or out-of-order messages are counted and dropped; :meth:`FleetState.handle` and
:meth:`FleetState.apply` never raise on input.

A pack is **usable** (the allocation may give it power) when its device is online (its
last status was not "offline", e.g. the broker's last will), the device's last message
arrived within ``stale_after_s`` on the receiver's clock, and the edge does not hold the
pack in its safe state (a fault). Everything else is excluded. The state is not
thread-safe: the coordinator serialises access with its lock.

Example:
    >>> from pulsebms.core.messaging import encode
    >>> st = FleetState("s1")
    >>> pack = {"pack_id": "p0", "soc": 0.5, "soh": 1.0, "current_a": 0.0,
    ...         "voltage_v": 51.2, "cell_voltage_min_v": 3.2, "cell_voltage_max_v": 3.3,
    ...         "temperature_min_c": 24.0, "temperature_max_c": 26.0, "setpoint_w": 0.0,
    ...         "safe": False, "reasons": 0, "fresh": True}
    >>> msg = {"site": "s1", "device": "e1", "session": "a", "seq": 0, "timestamp_s": 1.0,
    ...        "period_s": 1.0, "packs": [pack]}
    >>> st.handle("pulsebms/s1/e1/telemetry", encode("telemetry", msg), received_s=10.0)
    True
    >>> st.usable(now_s=11.0), st.usable(now_s=100.0, stale_after_s=30.0)
    ([('e1', 'p0')], [])
    >>> r = st.readings(["p0", "p9"], now_s=11.0)
    >>> r.cell_voltage_v.tolist(), r.usable.tolist(), r.devices
    ([3.25, nan], [True, False], ('e1', None))
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pulsebms.core.messaging import MessageError, SequenceTracker, decode
from pulsebms.core.types import BoolArray, FloatArray

__all__ = ["FleetState", "PackState", "SiteReadings"]


@dataclass
class PackState:
    """Latest known state of one pack.

    Attributes:
        device: Edge device that controls it.
        pack_id: Pack name.
        readings: The pack's latest telemetry entry (as decoded).
        safe: Whether the edge holds it in its safe state.
        reasons: Safe-state reason bit flags.
        timestamp_s: Sender clock of the latest telemetry [s].
    """

    device: str
    pack_id: str
    readings: dict[str, Any] = field(default_factory=dict)
    safe: bool = False
    reasons: int = 0
    timestamp_s: float = 0.0


@dataclass(frozen=True)
class SiteReadings:
    """Per-pack quantities in a requested pack order (NaN where unknown).

    Attributes:
        soc: State of charge.
        soh: State of health.
        temperature_c: Midpoint of the pack's temperature window [°C].
        cell_voltage_v: Midpoint of the pack's cell-voltage window [V].
        current_a: Pack current [A], + = discharge.
        usable: Whether each pack may be given power now.
        devices: The device that last reported each pack (``None``: never seen).
        why: Per excluded pack, why (``never_seen``, ``offline``, ``stale``, ``safe``).
    """

    soc: FloatArray
    soh: FloatArray
    temperature_c: FloatArray
    cell_voltage_v: FloatArray
    current_a: FloatArray
    usable: BoolArray
    devices: tuple[str | None, ...]
    why: dict[str, str]


def _num(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    )


class FleetState:
    """Packs, device online/offline, staleness and faults of one site.

    Args:
        site: Site name; messages of other sites are counted as ``topic_mismatch``.
    """

    def __init__(self, site: str) -> None:
        self.site = site
        self.packs: dict[tuple[str, str], PackState] = {}
        self.device_of: dict[str, str] = {}
        """Pack name → the device that last reported it (what :meth:`readings` reads: pack
        names are unique within a site, so a pack that moves is followed)."""
        self.online: dict[str, bool] = {}
        self.last_seen_s: dict[str, float] = {}
        """Device → receiver clock of its last accepted message [s]."""
        self.site_values: dict[str, Any] = {}
        self.dropped: Counter[str] = Counter()
        self.offline_events = 0
        self.fault_events = 0
        self._seq = {"telemetry": SequenceTracker(), "status": SequenceTracker()}

    # ---------------------------------------------------------------- input
    def handle(self, topic: str, payload: bytes, *, received_s: float = math.inf) -> bool:
        """Decode, validate and apply one raw message; see :meth:`apply`.

        Args:
            topic: MQTT topic it arrived on.
            payload: Raw payload.
            received_s: Receiver clock at arrival [s] (``inf``: never stale).

        Returns:
            Whether the set of usable packs changed (``False`` for dropped messages).
        """
        try:
            msg = decode(payload, topic=topic)
        except MessageError as err:
            self.dropped[err.reason] += 1
            return False
        return self.apply(topic.rsplit("/", 1)[-1], msg, received_s=received_s)

    def apply(self, kind: str, msg: Mapping[str, Any], *, received_s: float = math.inf) -> bool:
        """Apply one validated message (telemetry or status).

        Args:
            kind: ``"telemetry"`` or ``"status"`` (other kinds are counted as ``kind``).
            msg: The decoded message.
            received_s: Receiver clock at arrival [s].

        Returns:
            ``True`` when a device went offline/online, a pack appeared, moved device or
            changed its safe flag, or a stale device reported again (a rebalance is due).
        """
        if kind not in self._seq:
            self.dropped["kind"] += 1
            return False
        if msg.get("site") != self.site:
            self.dropped["topic_mismatch"] += 1
            return False
        device = str(msg["device"])
        if not self._seq[kind].accept(device, str(msg["session"]), int(msg["seq"])):
            self.dropped["sequence"] += 1
            return False
        changed = False
        previous_seen = self.last_seen_s.get(device)
        self.last_seen_s[device] = received_s
        if kind == "telemetry":
            if not self.online.get(device, False):
                changed = True
            self.online[device] = True
            timestamp = float(msg["timestamp_s"])
            for entry in msg["packs"]:
                changed |= self._update_pack(device, entry, timestamp, telemetry=True)
            values = msg.get("site_values")
            if values:
                self.site_values = dict(values)
        else:
            is_online = msg["state"] == "online"
            was_online = self.online.get(device, False)
            if not is_online and was_online:
                self.offline_events += 1
            changed |= is_online != was_online
            self.online[device] = is_online
            for entry in msg.get("packs") or ():
                changed |= self._update_pack(device, entry, None, telemetry=False)
        if previous_seen is not None and received_s - previous_seen > self.stale_hint_s:
            changed = True  # it may have been excluded as stale meanwhile
        return changed

    stale_hint_s: float = math.inf
    """Gap after which a device's next message counts as a change (set by the coordinator
    to its ``stale_after_s``, so a device that comes back from stale triggers a re-plan)."""

    def _update_pack(
        self, device: str, entry: Mapping[str, Any], timestamp_s: float | None, *, telemetry: bool
    ) -> bool:
        pack_id = str(entry["pack_id"])
        key = (device, pack_id)
        pack = self.packs.get(key)
        changed = False
        if pack is None:
            pack = self.packs[key] = PackState(device, pack_id)
            changed = True
        if self.device_of.get(pack_id) != device:  # new, or moved to another device
            self.device_of[pack_id] = device
            changed = True
        safe = bool(entry["safe"])
        if safe != pack.safe:
            changed = True
            if safe:
                self.fault_events += 1
        pack.safe = safe
        pack.reasons = int(entry["reasons"])
        if telemetry:
            pack.readings = dict(entry)
            if timestamp_s is not None:
                pack.timestamp_s = timestamp_s
        return changed

    # ---------------------------------------------------------------- queries
    def _why_excluded(self, pack: PackState, now_s: float, stale_after_s: float) -> str | None:
        device = pack.device
        if not self.online.get(device, False):
            return "offline"
        if now_s - self.last_seen_s.get(device, -math.inf) > stale_after_s:
            return "stale"
        if pack.safe:
            return "safe"
        return None

    def usable(
        self, now_s: float = -math.inf, stale_after_s: float = math.inf
    ) -> list[tuple[str, str]]:
        """``(device, pack_id)`` of usable packs (online, fresh, not safe), sorted."""
        return sorted(
            k for k, p in self.packs.items() if self._why_excluded(p, now_s, stale_after_s) is None
        )

    def excluded(self, now_s: float = -math.inf, stale_after_s: float = math.inf) -> list[str]:
        """``device/pack_id`` of known packs left out (offline, stale or safe), sorted."""
        use = set(self.usable(now_s, stale_after_s))
        return sorted(f"{d}/{p}" for d, p in self.packs if (d, p) not in use)

    def stale_devices(self, now_s: float, stale_after_s: float) -> frozenset[str]:
        """Online devices whose last message is older than ``stale_after_s``."""
        return frozenset(
            d
            for d, seen in self.last_seen_s.items()
            if self.online.get(d, False) and now_s - seen > stale_after_s
        )

    def readings(
        self, pack_ids: Sequence[str], now_s: float = -math.inf, stale_after_s: float = math.inf
    ) -> SiteReadings:
        """The packs' latest quantities in ``pack_ids`` order, and which are usable.

        Cell voltage and temperature are the midpoints of the reported windows (as on the
        edge). A pack never reported reads NaN and is excluded as ``never_seen``.
        """
        n = len(pack_ids)
        values = np.full((5, n), np.nan)
        usable = np.zeros(n, dtype=bool)
        devices: list[str | None] = []
        why: dict[str, str] = {}
        for i, pack_id in enumerate(pack_ids):
            device = self.device_of.get(pack_id)
            devices.append(device)
            pack = None if device is None else self.packs.get((device, pack_id))
            if pack is None:
                why[pack_id] = "never_seen"
                continue
            r = pack.readings
            values[0, i] = _num(r.get("soc"))
            values[1, i] = _num(r.get("soh"))
            values[2, i] = (_num(r.get("temperature_min_c")) + _num(r.get("temperature_max_c"))) / 2
            values[3, i] = (
                _num(r.get("cell_voltage_min_v")) + _num(r.get("cell_voltage_max_v"))
            ) / 2
            values[4, i] = _num(r.get("current_a"))
            reason = self._why_excluded(pack, now_s, stale_after_s)
            if reason is None and not r:
                reason = "never_seen"  # a status named it, no telemetry yet
            if reason is None:
                usable[i] = True
            else:
                why[pack_id] = reason
        return SiteReadings(
            soc=values[0],
            soh=values[1],
            temperature_c=values[2],
            cell_voltage_v=values[3],
            current_a=values[4],
            usable=usable,
            devices=tuple(devices),
            why=why,
        )

    def counts(self) -> dict[str, int]:
        """Accepted telemetry/status and the drop counters by reason."""
        out = {f"{k}_accepted": t.accepted for k, t in self._seq.items()}
        out.update(self.dropped)
        return out

    def sequence_counts(self, kind: str = "telemetry") -> dict[str, int]:
        """The :class:`SequenceTracker` counters of a kind (duplicates, missing, ...)."""
        return self._seq[kind].counts()
