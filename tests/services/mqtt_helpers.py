"""Messages and waiting helpers shared by the MQTT tests (no broker logic of their own)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def pack(pack_id: str, *, soc: float = 0.5, safe: bool = False, **extra: Any) -> dict[str, Any]:
    """One pack's telemetry entry (plausible LFP readings)."""
    entry: dict[str, Any] = {
        "pack_id": pack_id, "soc": soc, "soh": 1.0, "current_a": 0.0, "voltage_v": 51.2,
        "cell_voltage_min_v": 3.25, "cell_voltage_max_v": 3.3, "temperature_min_c": 24.0,
        "temperature_max_c": 25.0, "setpoint_w": 0.0, "safe": safe, "reasons": int(safe),
        "fresh": True,
    }  # fmt: skip
    entry.update(extra)
    return entry


def telemetry(
    site: str,
    device: str,
    seq: int,
    packs: list[dict[str, Any]] | None = None,
    *,
    session: str = "run-1",
    timestamp_s: float | None = None,
    demand_w: float | None = None,
) -> dict[str, Any]:
    """A telemetry message of one device."""
    msg: dict[str, Any] = {
        "site": site,
        "device": device,
        "session": session,
        "seq": seq,
        "timestamp_s": float(seq) if timestamp_s is None else timestamp_s,
        "period_s": 1.0,
        "packs": packs if packs is not None else [pack("p0")],
    }
    if demand_w is not None:
        msg["site_values"] = {"demand_w": demand_w}
    return msg


def status(
    site: str, device: str, seq: int, state: str = "online", *, session: str = "run-1"
) -> dict[str, Any]:
    """A status message of one device."""
    return {
        "site": site,
        "device": device,
        "session": session,
        "seq": seq,
        "timestamp_s": float(seq),
        "state": state,
        "mode": "coordinator" if state == "online" else "stopped",
    }


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` every 10 ms until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Inbox:
    """A thread-safe list of what a handler received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[str, Any]] = []

    def __call__(self, topic: str, message: Any) -> None:
        with self._lock:
            self.items.append((topic, message))

    def __len__(self) -> int:
        with self._lock:
            return len(self.items)

    def messages(self) -> list[Any]:
        """The messages (without topics), in arrival order."""
        with self._lock:
            return [m for _, m in self.items]

    def topics(self) -> list[str]:
        """The topics, in arrival order."""
        with self._lock:
            return [t for t, _ in self.items]
