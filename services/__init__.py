"""The site/cloud half of PulseBMS: broker, coordinator, digital-twin service, health analytics.

Edges publish telemetry over MQTT (payloads: :mod:`pulsebms.core.messaging`); the
coordinator re-plans the fleet's power allocation and sends it down; the twin service
calibrates and forecasts; the health models score packs. Each lives in its own subpackage.
"""
