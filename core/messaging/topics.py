"""MQTT topic names and their QoS (the design's site/cloud contract).

Every topic sits under ``pulsebms/{site}/``; a *device* is one edge runtime (it controls
one or several packs). Site and device names are MQTT topic levels, so they must not be
empty or hold ``/``, ``+``, ``#`` or NUL (:func:`check_name`).

========================================  ====  ========  ==============================
topic                                     QoS   retained  sender → receiver
========================================  ====  ========  ==============================
``pulsebms/{site}/{device}/telemetry``    1     no        edge → coordinator, twin service
``pulsebms/{site}/{device}/commands``     2     no        operator/coordinator → edge
``pulsebms/{site}/{device}/status``       0     yes       edge (last will "offline")
``pulsebms/{site}/{device}/health``       1     yes       health service → anyone
``pulsebms/{site}/coordinator/allocation``1     yes       coordinator → edges
``pulsebms/{site}/twin/forecast``         1     yes       twin service → coordinator
========================================  ====  ========  ==============================

Example:
    >>> telemetry_topic("site-a", "edge-1")
    'pulsebms/site-a/edge-1/telemetry'
    >>> parse_topic("pulsebms/site-a/edge-1/status")
    ('site-a', 'edge-1', 'status')
    >>> parse_topic("pulsebms/site-a/coordinator/allocation")
    ('site-a', 'coordinator', 'allocation')
    >>> QOS["commands"], RETAINED["status"]
    (2, True)
"""

from __future__ import annotations

__all__ = [
    "KINDS",
    "QOS",
    "RESERVED_DEVICES",
    "RETAINED",
    "ROOT",
    "TopicError",
    "allocation_topic",
    "check_name",
    "commands_topic",
    "device_topic",
    "forecast_topic",
    "health_topic",
    "parse_topic",
    "site_filter",
    "status_topic",
    "telemetry_topic",
]

ROOT = "pulsebms"
"""First level of every topic."""

KINDS = ("telemetry", "commands", "status", "health", "allocation", "forecast")
"""Message kinds, which are also the last topic level."""

QOS: dict[str, int] = {
    "telemetry": 1,
    "commands": 2,
    "status": 0,
    "health": 1,
    "allocation": 1,
    "forecast": 1,
}
"""MQTT QoS per kind."""

RETAINED: dict[str, bool] = {
    "telemetry": False,
    "commands": False,
    "status": True,
    "health": True,
    "allocation": True,
    "forecast": True,
}
"""Whether the broker keeps the last message of a kind for new subscribers."""

RESERVED_DEVICES = ("coordinator", "twin")
"""Second-level names used by the site services, not allowed as edge device names."""

_BAD_CHARS = frozenset("/+#\x00")


class TopicError(ValueError):
    """A site/device name or a topic that does not fit the topic contract."""


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is usable as one topic level, else raise :class:`TopicError`.

    Args:
        name: A site or device name.
        what: What the name is, for the message ("site", "device").

    Raises:
        TopicError: Empty, longer than 64 characters, or holding ``/ + #`` or NUL.
    """
    if not isinstance(name, str) or not name:
        raise TopicError(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > 64:
        raise TopicError(f"{what} {name!r} is longer than 64 characters")
    if _BAD_CHARS & set(name):
        raise TopicError(f"{what} {name!r} holds one of '/', '+', '#' or NUL")
    return name


def device_topic(site: str, device: str, kind: str) -> str:
    """The topic of an edge device's message kind (telemetry, commands, status, health).

    Raises:
        TopicError: Bad names, a reserved device name or a kind that is not per device.
    """
    check_name(site, "site")
    check_name(device, "device")
    if device in RESERVED_DEVICES:
        raise TopicError(f"device name {device!r} is reserved for the site services")
    if kind not in ("telemetry", "commands", "status", "health"):
        raise TopicError(f"{kind!r} is not a per-device message kind")
    return f"{ROOT}/{site}/{device}/{kind}"


def telemetry_topic(site: str, device: str) -> str:
    """``pulsebms/{site}/{device}/telemetry``."""
    return device_topic(site, device, "telemetry")


def commands_topic(site: str, device: str) -> str:
    """``pulsebms/{site}/{device}/commands``."""
    return device_topic(site, device, "commands")


def status_topic(site: str, device: str) -> str:
    """``pulsebms/{site}/{device}/status``."""
    return device_topic(site, device, "status")


def health_topic(site: str, device: str) -> str:
    """``pulsebms/{site}/{device}/health``."""
    return device_topic(site, device, "health")


def allocation_topic(site: str) -> str:
    """``pulsebms/{site}/coordinator/allocation``."""
    return f"{ROOT}/{check_name(site, 'site')}/coordinator/allocation"


def forecast_topic(site: str) -> str:
    """``pulsebms/{site}/twin/forecast``."""
    return f"{ROOT}/{check_name(site, 'site')}/twin/forecast"


def site_filter(site: str, kind: str = "+") -> str:
    """Subscription filter for one kind of every device of a site (``+`` = every kind).

    Example:
        >>> site_filter("s1", "telemetry")
        'pulsebms/s1/+/telemetry'
    """
    check_name(site, "site")
    if kind != "+" and kind not in KINDS:
        raise TopicError(f"unknown message kind {kind!r}")
    return f"{ROOT}/{site}/+/{kind}"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a PulseBMS topic into ``(site, device, kind)``.

    Raises:
        TopicError: Not four levels under ``pulsebms/``, or an unknown kind.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != ROOT:
        raise TopicError(f"not a PulseBMS topic: {topic!r}")
    _, site, device, kind = parts
    check_name(site, "site")
    check_name(device, "device")
    if kind not in KINDS:
        raise TopicError(f"unknown message kind {kind!r} in {topic!r}")
    return site, device, kind
