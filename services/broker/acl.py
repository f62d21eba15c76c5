"""Broker users and per-site access rules, in one model that both brokers are configured from.

Every user belongs to one site and has one role. A role grants, **under
``pulsebms/{site}/`` only**, the topics it may publish and the filters it may subscribe to:

===============  ===============================================  ==================
role             may publish                                      may subscribe
===============  ===============================================  ==================
``edge``         ``+/telemetry``, ``+/status`` (incl. its will)    ``#`` (its site)
``coordinator``  ``coordinator/allocation``, ``+/commands``        ``#``
``twin``         ``twin/forecast``                                 ``#``
``health``       ``+/health``                                      ``#``
``operator``     ``+/commands``                                    ``#``
``monitor``      nothing                                           ``#``
===============  ===============================================  ==================

So a user of site A can neither publish to nor read anything of site B, and an edge cannot
forge an allocation or a command. Rules bind users to sites, not to devices: two edges of
the same site could publish each other's telemetry (bind a device to its user with
Mosquitto's ``pattern`` rules and ``%u`` if that matters; see ``docs/mqtt.md``).

:func:`mosquitto_acl` writes Mosquitto's ``acl_file``; :func:`publish_rules` and
:func:`subscribe_rules` feed the embedded broker's ACL plugin, which checks with
:func:`topic_matches` and :func:`filter_covers` (standard library only).

Example:
    >>> users = site_users(["A"], password="pw")
    >>> sorted(u.username for u in users)[:2]
    ['coordinator-A', 'edge-A']
    >>> print(mosquitto_acl([u for u in users if u.role == "edge"]))
    user edge-A
    topic write pulsebms/A/+/telemetry
    topic write pulsebms/A/+/status
    topic read pulsebms/A/#
    <BLANKLINE>
    >>> topic_matches("pulsebms/A/+/telemetry", "pulsebms/A/edge-1/telemetry")
    True
    >>> filter_covers("pulsebms/A/#", "pulsebms/#")
    False
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pulsebms.core.messaging.topics import ROOT, check_name

__all__ = [
    "ROLES",
    "BrokerUser",
    "Role",
    "filter_covers",
    "mosquitto_acl",
    "publish_rules",
    "site_users",
    "subscribe_rules",
    "topic_matches",
]

Role = Literal["edge", "coordinator", "twin", "health", "operator", "monitor"]

ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "edge": (("+/telemetry", "+/status"), ("#",)),
    "coordinator": (("coordinator/allocation", "+/commands"), ("#",)),
    "twin": (("twin/forecast",), ("#",)),
    "health": (("+/health",), ("#",)),
    "operator": (("+/commands",), ("#",)),
    "monitor": ((), ("#",)),
}
"""Role → (publish patterns, subscribe filters), relative to ``pulsebms/{site}/``."""

_USERNAME_BAD = frozenset(" :#+/\n\r\t\x00")


@dataclass(frozen=True)
class BrokerUser:
    """One broker account.

    Attributes:
        username: Login name (no spaces, ``:``, ``/``, ``+``, ``#``).
        password: Its password (kept in memory to hand to clients; the brokers store only
            hashes).
        site: The one site it may touch (a topic level).
        role: What it may publish there (:data:`ROLES`).

    Raises:
        ValueError: On an unknown role, a bad site or user name, or an empty password.
    """

    username: str
    password: str = field(repr=False)
    site: str
    role: Role

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; roles: {sorted(ROLES)}")
        check_name(self.site, "site")
        if not self.username or _USERNAME_BAD & set(self.username):
            raise ValueError(f"user name {self.username!r} is empty or holds ' :#+/' or NUL")
        if not self.password:
            raise ValueError(f"user {self.username!r} needs a password")

    @property
    def publish(self) -> tuple[str, ...]:
        """Topic patterns this user may publish to (absolute)."""
        return tuple(f"{ROOT}/{self.site}/{p}" for p in ROLES[self.role][0])

    @property
    def subscribe(self) -> tuple[str, ...]:
        """Filters this user may subscribe to, and read through (absolute)."""
        return tuple(f"{ROOT}/{self.site}/{p}" for p in ROLES[self.role][1])


def site_users(
    sites: Iterable[str],
    roles: Sequence[Role] = ("edge", "coordinator", "twin", "health", "operator", "monitor"),
    *,
    password: str | None = None,
) -> list[BrokerUser]:
    """One user per role and site, named ``{role}-{site}``.

    Args:
        sites: Site names.
        roles: Roles to create for each site.
        password: One password for all (tests); a fresh random one per user when ``None``.

    Returns:
        The users.
    """
    return [
        BrokerUser(f"{role}-{site}", password or secrets.token_urlsafe(18), site, role)
        for site in sites
        for role in roles
    ]


def _levels(topic: str) -> list[str]:
    return topic.split("/")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a topic name matches an MQTT filter (``+`` one level, ``#`` the rest).

    ``#`` also matches the parent level (``a/#`` matches ``a``), as MQTT 3.1.1 §4.7.1.2
    says; topics starting with ``$`` match no filter starting with a wildcard.

    Example:
        >>> topic_matches("a/#", "a"), topic_matches("a/+", "a/b/c"), topic_matches("#", "$SYS/x")
        (True, False, False)
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f, t = _levels(topic_filter), _levels(topic)
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether every topic ``requested`` can match is also matched by ``allowed``.

    Used for subscriptions: ``pulsebms/A/#`` covers ``pulsebms/A/+/telemetry`` but not
    ``pulsebms/#`` or ``pulsebms/+/x/telemetry``.

    Example:
        >>> filter_covers("pulsebms/A/#", "pulsebms/A/+/telemetry")
        True
        >>> filter_covers("pulsebms/A/+/status", "pulsebms/A/#")
        False
    """
    a, r = _levels(allowed), _levels(requested)
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(r):
            return False
        if r[i] == "#":
            return False
        if level == "+":
            continue
        if r[i] == "+" or r[i] != level:
            return False
    return len(a) == len(r)


def publish_rules(users: Iterable[BrokerUser]) -> dict[str, list[str]]:
    """User name → topic patterns it may publish to."""
    return {u.username: list(u.publish) for u in users}


def subscribe_rules(users: Iterable[BrokerUser]) -> dict[str, list[str]]:
    """User name → filters it may subscribe to (and receive through)."""
    return {u.username: list(u.subscribe) for u in users}


def mosquitto_acl(users: Iterable[BrokerUser]) -> str:
    """The text of a Mosquitto ``acl_file`` granting each user its role's topics.

    Anything not granted is refused (Mosquitto denies by default once an ACL file is set).
    """
    lines: list[str] = []
    for u in users:
        lines.append(f"user {u.username}")
        lines.extend(f"topic write {p}" for p in u.publish)
        lines.extend(f"topic read {p}" for p in u.subscribe)
        lines.append("")
    return "\n".join(lines)
