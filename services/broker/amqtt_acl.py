"""An amqtt topic plugin that enforces the per-site rules of :mod:`pulsebms.services.broker.acl`.

amqtt 0.12's own ``TopicAccessControlListPlugin`` reads ``publish_acl`` and the deprecated
``acl`` from its dataclass configuration only (``subscribe-acl`` and ``receive-acl`` are
reachable only through the deprecated ``topic-check`` section), and it reads ``+`` in a
requested filter as the character it is. :class:`SiteAclPlugin` uses amqtt's plugin API
(``BaseTopicPlugin.topic_filtering``) with its own configuration and the standard MQTT
matching of :func:`~pulsebms.services.broker.acl.topic_matches` and
:func:`~pulsebms.services.broker.acl.filter_covers`:

* ``PUBLISH``: the topic must match one of the user's publish patterns; otherwise amqtt
  drops the message (MQTT 3.1.1 has no way to tell the sender);
* ``SUBSCRIBE``: the requested filter must be covered by one of the user's subscribe
  filters; otherwise the SUBACK carries 0x80 (failure);
* ``RECEIVE``: each message is delivered only if its topic matches one of the receiving
  user's subscribe filters (defence in depth: a subscription that slipped through still
  reads nothing of another site).

A client without a user name is refused everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session

from pulsebms.services.broker.acl import filter_covers, topic_matches

__all__ = ["SiteAclPlugin"]


class SiteAclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type information
    """Per-user publish/subscribe rules (configured by ``EmbeddedBroker``)."""

    @dataclass
    class Config:
        """User name → patterns.

        Attributes:
            publish: Topic patterns each user may publish to.
            subscribe: Filters each user may subscribe to and receive through.
        """

        publish: dict[str, list[str]] = field(default_factory=dict)
        subscribe: dict[str, list[str]] = field(default_factory=dict)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        """Whether ``session``'s user may do ``action`` on ``topic`` (see the module)."""
        user = session.username if session is not None else None
        if not user or not topic:
            return False
        config: Any = self.config
        if action == Action.PUBLISH:
            return any(topic_matches(p, topic) for p in config.publish.get(user, ()))
        if action == Action.SUBSCRIBE:
            return any(filter_covers(p, topic) for p in config.subscribe.get(user, ()))
        if action == Action.RECEIVE:
            return any(topic_matches(p, topic) for p in config.subscribe.get(user, ()))
        return False
