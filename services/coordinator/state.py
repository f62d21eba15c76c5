"""Fleet state of one site, fed by raw MQTT messages (topic + payload bytes).

Each message is validated with :func:`pulsebms.core.messaging.decode` and sequence-checked
per device and kind with :class:`~pulsebms.core.messaging.SequenceTracker`. Malformed,
duplicate or out-of-order messages are counted and dropped; :meth:`FleetState.handle`
never raises on input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pulsebms.core.messaging import MessageError, SequenceTracker, decode

__all__ = ["FleetState", "PackState"]


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


class FleetState:
    """Packs, device online/offline and faults of one site."""

    def __init__(self, site: str) -> None:
        """Create an empty state.

        Args:
            site: Site name; messages of other sites are counted as ``topic_mismatch``.
        """
        self.site = site
        self.packs: dict[tuple[str, str], PackState] = {}
        self.online: dict[str, bool] = {}
        self.site_values: dict[str, Any] = {}
        self.dropped: Counter[str] = Counter()
        self.offline_events = 0
        self._seq = {"telemetry": SequenceTracker(), "status": SequenceTracker()}

    def handle(self, topic: str, payload: bytes) -> bool:
        """Apply one message; return whether it changed the set of usable packs.

        Args:
            topic: MQTT topic it arrived on.
            payload: Raw payload.

        Returns:
            ``True`` when a device went offline/online or a pack's safe flag changed (a
            rebalance is due), else ``False`` (also for dropped messages).
        """
        try:
            msg = decode(payload, topic=topic)
        except MessageError as err:
            self.dropped[err.reason] += 1
            return False
        kind = topic.rsplit("/", 1)[-1]
        if msg["site"] != self.site or kind not in self._seq:
            self.dropped["topic_mismatch" if msg["site"] != self.site else "kind"] += 1
            return False
        device = str(msg["device"])
        if not self._seq[kind].accept(device, str(msg["session"]), int(msg["seq"])):
            self.dropped["sequence"] += 1
            return False
        before = self.usable()
        if kind == "telemetry":
            self.online.setdefault(device, True)
            for entry in msg["packs"]:
                key = (device, str(entry["pack_id"]))
                pack = self.packs.setdefault(key, PackState(device, key[1]))
                pack.readings = dict(entry)
                pack.safe = bool(entry["safe"])
                pack.reasons = int(entry["reasons"])
                pack.timestamp_s = float(msg["timestamp_s"])
            if msg.get("site_values"):
                self.site_values = dict(msg["site_values"])
        else:
            is_online = msg["state"] == "online"
            if not is_online and self.online.get(device, True):
                self.offline_events += 1
            self.online[device] = is_online
            for entry in msg.get("packs") or ():
                key = (device, str(entry["pack_id"]))
                pack = self.packs.setdefault(key, PackState(device, key[1]))
                pack.safe = bool(entry["safe"])
                pack.reasons = int(entry["reasons"])
        return self.usable() != before

    def usable(self) -> list[tuple[str, str]]:
        """``(device, pack_id)`` of packs on online devices and not in their safe state."""
        return sorted(k for k, p in self.packs.items() if self.online.get(k[0]) and not p.safe)

    def excluded(self) -> list[str]:
        """``device/pack_id`` of known packs left out (device offline or pack safe)."""
        use = set(self.usable())
        return sorted(f"{d}/{p}" for d, p in self.packs if (d, p) not in use)

    def counts(self) -> dict[str, int]:
        """Accepted telemetry/status and the drop counters by reason."""
        out = {f"{k}_accepted": t.accepted for k, t in self._seq.items()}
        out.update(self.dropped)
        return out
