"""The MQTT contract of the site/cloud loop: topics, versioned JSON payloads, sequence checks.

Standard library only (the edge runtime imports it):

* :mod:`pulsebms.core.messaging.topics`: topic names per site and device, QoS, retention;
* :mod:`pulsebms.core.messaging.schema`: payload specs, :func:`decode` / :func:`encode`
  with validation, and the JSON Schemas published in ``core/messaging/schemas/``;
* :mod:`pulsebms.core.messaging.sequence`: duplicates, out-of-order and missing messages.
"""

from pulsebms.core.messaging.schema import (
    SCHEMA_VERSION,
    SPECS,
    MessageError,
    decode,
    encode,
    json_schema,
)
from pulsebms.core.messaging.sequence import SequenceTracker
from pulsebms.core.messaging.topics import (
    KINDS,
    QOS,
    RETAINED,
    TopicError,
    allocation_topic,
    commands_topic,
    forecast_topic,
    health_topic,
    parse_topic,
    site_filter,
    status_topic,
    telemetry_topic,
)

__all__ = [
    "KINDS",
    "QOS",
    "RETAINED",
    "SCHEMA_VERSION",
    "SPECS",
    "MessageError",
    "SequenceTracker",
    "TopicError",
    "allocation_topic",
    "commands_topic",
    "decode",
    "encode",
    "forecast_topic",
    "health_topic",
    "json_schema",
    "parse_topic",
    "site_filter",
    "status_topic",
    "telemetry_topic",
]
