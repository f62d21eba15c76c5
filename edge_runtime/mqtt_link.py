"""One small MQTT client for the edge and the site services (paho-mqtt, v2 callback API).

:class:`MqttLink` wraps a ``paho.mqtt.client.Client`` with what every PulseBMS sender and
receiver needs, so that the edge bridge and the coordinator behave alike:

* **Persistent session.** By default the broker keeps the client's QoS≥1 subscriptions and
  the messages queued for it while it is away (MQTT 3.1.1 ``clean_session=False``, or
  MQTT 5 ``clean_start=False`` with a session expiry). The client id must therefore be
  stable across restarts of the same device or service.
* **Auto-reconnect** with exponential backoff (``reconnect_min_delay_s`` doubling up to
  ``reconnect_max_delay_s``); subscriptions are renewed when the broker lost the session.
* **Nothing silently lost while disconnected.** QoS≥1 publishes are kept in paho's outgoing
  queue and sent (in order) after the reconnect; the queue is bounded
  (``max_queued_messages``) and what the bound refuses is counted (``dropped_queue_full``).
  QoS 0 messages published while disconnected are dropped and counted
  (``dropped_qos0_offline``), as QoS 0 promises.
* **The message contract on both ends.** :meth:`MqttLink.publish` encodes and validates with
  :func:`pulsebms.core.messaging.encode` and uses the kind's QoS and retain flag from
  :mod:`pulsebms.core.messaging.topics`; :meth:`MqttLink.subscribe` hands the handler
  validated ``dict`` messages (:func:`pulsebms.core.messaging.decode`, site and device
  checked against the topic). A malformed payload is counted by reason
  (``malformed_<reason>``) and dropped.
* **Callbacks never crash the network thread.** A handler that raises is counted
  (``handler_errors``) and logged (rate-limited); the link's own callbacks are guarded too.
* **Thread-safe counters** (:meth:`MqttLink.stats`).

Handlers run on paho's network thread: keep them short, and lock what they share with
other threads. The protocol defaults to MQTT 3.1.1, which both brokers of
:mod:`pulsebms.services.broker` speak (amqtt speaks only 3.1.1); with ``protocol="5"``
(Mosquitto) a publish the broker refuses by its ACL is also counted
(``publish_refused``), where 3.1.1 brokers drop it without telling the sender.

Imports the standard library, paho-mqtt and :mod:`pulsebms.core.messaging` only (the
``edge`` extra).

Example:
    >>> from pulsebms.core.messaging import telemetry_topic
    >>> link = MqttLink("edge-1", "127.0.0.1", 1883, username="edge-s1", password="pw")
    >>> link.connected
    False
    >>> link.publish("telemetry", telemetry_topic("s1", "edge-1"), {"seq": 0})
    Traceback (most recent call last):
    ...
    pulsebms.core.messaging.schema.MessageError: site: missing
    >>> link.stats()["published"]
    0
    >>> link.connect(timeout_s=5.0)  # doctest: +SKIP
    True
    >>> link.subscribe("pulsebms/s1/coordinator/allocation",
    ...                lambda topic, msg: print(msg["seq"]))  # doctest: +SKIP
    >>> link.close()
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MessageState, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pulsebms.core.messaging import QOS, RETAINED, MessageError, decode, encode, status_topic

__all__ = [
    "Handler",
    "MqttConnectError",
    "MqttLink",
    "RawHandler",
    "TlsSettings",
    "Will",
    "offline_will",
    "subscription_qos",
]

_log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], None]
"""``handler(topic, message)``: a validated message (header and body fields)."""

RawHandler = Callable[[str, bytes], None]
"""``handler(topic, payload)``: the raw payload, not decoded."""

_STAT_KEYS = (
    "connects",
    "disconnects",
    "connect_failures",
    "connect_refused",
    "published",
    "published_offline",
    "dropped_queue_full",
    "dropped_qos0_offline",
    "publish_errors",
    "publish_refused",
    "received",
    "delivered",
    "handler_errors",
    "subscribe_denied",
    "unrouted",
    "empty",
)

_LOG_FIRST = 10
"""Handler errors logged with their traceback before logging only every 1000th."""


class MqttConnectError(ConnectionError):
    """The broker refused the connection (credentials, client id, protocol), or none came.

    Attributes:
        reason: The broker's reason (paho's reason-code name), or ``"timeout"``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards the broker (server authentication; client certificates optional).

    Attributes:
        ca_file: PEM file of the certificate authority that signed the broker's certificate.
        cert_file: Client certificate (PEM), for brokers that require one.
        key_file: Its private key (PEM).
        check_hostname: Verify that the broker's certificate names ``host``; turn off only
            for a certificate issued to another name (e.g. an IP-only test certificate).
    """

    ca_file: str | Path
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` that verifies the broker (TLS ≥ 1.2).

        Raises:
            FileNotFoundError: If a file is missing.
            ssl.SSLError: If a file is not a valid certificate or key.
        """
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.check_hostname
        if self.cert_file is not None:
            ctx.load_cert_chain(
                str(self.cert_file), None if self.key_file is None else str(self.key_file)
            )
        return ctx


@dataclass(frozen=True)
class Will:
    """A last-will message: the broker publishes it when the client vanishes ungracefully.

    Build it with :meth:`from_message` (validated like any publish) or
    :func:`offline_will` (the status "offline" of an edge device).

    Attributes:
        topic: Topic the broker publishes it on.
        payload: Encoded payload.
        qos: QoS.
        retain: Retain flag.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool

    @classmethod
    def from_message(cls, kind: str, topic: str, message: Mapping[str, Any]) -> Will:
        """The will for a message of ``kind``, with the kind's QoS and retain flag.

        Raises:
            MessageError: If the message is not valid for its kind.
        """
        return cls(topic, encode(kind, message), QOS[kind], RETAINED[kind])


def offline_will(
    site: str, device: str, session: str, *, timestamp_s: float = 0.0, detail: str = ""
) -> Will:
    """The retained status "offline" an edge device leaves as its last will.

    The will is composed when the client connects, long before it fires, so it cannot carry
    the sequence number the device's statuses will have reached by then. It is therefore
    sent in a session of its own, ``f"{session}:will"`` with ``seq`` 0: a receiver's
    :class:`~pulsebms.core.messaging.SequenceTracker` sees a new session and accepts it,
    and the device's next "online" (its own session again) is accepted the same way.

    Args:
        site: Site name.
        device: Edge device name.
        session: The device's run id.
        timestamp_s: Sender clock at connection [s] (when the will was composed).
        detail: Free text for operators.

    Returns:
        The will (QoS 0, retained, as every status).

    Example:
        >>> w = offline_will("s1", "edge-1", "run-7")
        >>> w.topic, w.qos, w.retain, b'"session":"run-7:will"' in w.payload
        ('pulsebms/s1/edge-1/status', 0, True, True)
    """
    message: dict[str, Any] = {
        "site": site,
        "device": device,
        "session": f"{session}:will",
        "seq": 0,
        "timestamp_s": float(timestamp_s),
        "state": "offline",
        "mode": "stopped",
        "detail": detail or "connection lost (last will)",
    }
    return Will.from_message("status", status_topic(site, device), message)


def subscription_qos(topic_filter: str) -> int:
    """The QoS to subscribe a filter with: its kind's QoS, or 2 when the kind is a wildcard.

    Example:
        >>> subscription_qos("pulsebms/s1/+/telemetry"), subscription_qos("pulsebms/s1/#")
        (1, 2)
    """
    kind = topic_filter.rsplit("/", 1)[-1]
    return QOS.get(kind, 2)


@dataclass
class _Subscription:
    topic_filter: str
    qos: int
    callback: Callable[[paho.Client, Any, paho.MQTTMessage], None]


class MqttLink:
    """An MQTT client with a persistent session, buffering, validation and counters.

    Args:
        client_id: MQTT client id; stable across restarts (the broker keys the persistent
            session by it). At most 23 characters is the portable MQTT 3.1.1 limit;
            Mosquitto and amqtt accept longer ids.
        host: Broker host.
        port: Broker port.
        username: User name (the broker's ACL decides what it may publish and read).
        password: Password.
        tls: TLS settings; ``None`` for plain TCP (only on a trusted network or localhost).
        clean_start: Discard any session the broker holds for this client at connection
            (``False``, the default: keep it, so queued QoS≥1 messages are delivered).
        protocol: ``"3.1.1"`` (both brokers) or ``"5"`` (Mosquitto).
        session_expiry_s: MQTT 5: how long the broker keeps the session after a
            disconnect [s]. MQTT 3.1.1 has no expiry in the protocol: the broker's own
            setting applies (Mosquitto ``persistent_client_expiration``).
        will: Last will (see :func:`offline_will`).
        keepalive_s: MQTT keep-alive [s]; the broker declares the client gone (and
            publishes its will) after 1.5 × this without traffic.
        max_queued_messages: Bound of the outgoing QoS≥1 queue (in flight and waiting);
            a publish beyond it is dropped and counted. ``0`` = unbounded.
        max_inflight: QoS≥1 messages sent but not yet acknowledged, at most.
        reconnect_min_delay_s: First reconnect delay [s]; doubled after each failure.
        reconnect_max_delay_s: Longest reconnect delay [s].

    Raises:
        ValueError: On a non-positive delay, keep-alive or an unknown protocol.
    """

    def __init__(
        self,
        client_id: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        clean_start: bool = False,
        protocol: Literal["3.1.1", "5"] = "3.1.1",
        session_expiry_s: int = 86_400,
        will: Will | None = None,
        keepalive_s: int = 30,
        max_queued_messages: int = 100_000,
        max_inflight: int = 100,
        reconnect_min_delay_s: float = 0.2,
        reconnect_max_delay_s: float = 10.0,
    ) -> None:
        if protocol not in ("3.1.1", "5"):
            raise ValueError(f"protocol must be '3.1.1' or '5', got {protocol!r}")
        if not (0 < reconnect_min_delay_s <= reconnect_max_delay_s):
            raise ValueError("need 0 < reconnect_min_delay_s <= reconnect_max_delay_s")
        if keepalive_s < 1 or max_inflight < 1 or max_queued_messages < 0:
            raise ValueError("keepalive_s and max_inflight must be >= 1, max_queued >= 0")
        self.client_id = client_id
        self.host = host
        self.port = int(port)
        self.protocol = protocol
        self.clean_start = clean_start
        self.session_expiry_s = int(session_expiry_s)
        self.keepalive_s = int(keepalive_s)
        self._v5 = protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self._v5 else clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=True,
        )
        # Second safety net: paho logs (does not raise) what escapes a callback.
        self._client.suppress_exceptions = True
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set_context(tls.context())
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        # The bound applies to this link's own backlog; paho's store holds only what is in
        # flight (or was in flight at an outage), itself bounded by max_inflight.
        self._client.max_queued_messages_set(0)
        self._max_backlog = int(max_queued_messages)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.reconnect_delay_set(reconnect_min_delay_s, reconnect_max_delay_s)  # type: ignore[arg-type]  # paho annotates int; it computes with floats
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_unrouted
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(_STAT_KEYS, 0))
        self._subs: dict[str, _Subscription] = {}
        self._sub_mids: dict[int, str] = {}
        self._connected = threading.Event()
        self._first_result = threading.Event()
        self._first_error: MqttConnectError | None = None
        self._started = False
        self._closed = False
        self._backlog: deque[tuple[str, bytes, int, bool]] = deque()
        self._backlog_lock = threading.Lock()
        self._flowing = False  # connected and paho's store re-sent: publish directly
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None
        self.last_error: str | None = None
        """The last connection problem (reason), for status reports."""

    # ------------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        """Whether the link holds an accepted connection now."""
        return self._connected.is_set()

    def connect(self, timeout_s: float | None = 10.0) -> bool:
        """Start the network thread and connect (reconnecting on its own from then on).

        Args:
            timeout_s: How long to wait for the broker's first answer [s]; ``None`` or 0:
                do not wait (the thread keeps trying, publishes are queued meanwhile).

        Returns:
            Whether the link is connected when this returns. ``False`` after a timeout: the
            broker may be down; the link keeps retrying with backoff.

        Raises:
            MqttConnectError: The broker refused the first connection (bad credentials,
                not authorised, client id refused): retrying would not help, so the link
                is stopped.
            RuntimeError: If the link was closed.
        """
        if self._closed:
            raise RuntimeError("this MqttLink was closed; create a new one")
        if not self._started:
            self._started = True
            properties = None
            if self._v5:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
                properties.SessionExpiryInterval = self.session_expiry_s
            self._client.connect_async(
                self.host,
                self.port,
                self.keepalive_s,
                clean_start=self.clean_start if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
            self._client.loop_start()
            self._flusher = threading.Thread(
                target=self._flush, name=f"mqtt-link-{self.client_id}", daemon=True
            )
            self._flusher.start()
        if timeout_s:
            self._first_result.wait(timeout_s)
        if self._first_error is not None:
            self._stop_thread()
            raise self._first_error
        return self.connected

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or ``timeout_s`` passed; return whether connected."""
        return self._connected.wait(timeout_s)

    def close(self, drain_timeout_s: float = 2.0) -> None:
        """Send what is queued (up to ``drain_timeout_s``), disconnect cleanly, stop the thread.

        A clean disconnect does not fire the last will (send an "offline" status first if
        receivers must know). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        deadline = time.monotonic() + max(0.0, drain_timeout_s)
        while self.connected and self.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop_thread()

    def _stop_thread(self) -> None:
        self._closed = True
        self._stopping.set()
        if self._flusher is not None:
            self._wake.set()
            self._flusher.join(5.0)
        try:
            self._client.disconnect()
        except Exception:  # pragma: no cover - paho raises nothing here today
            _log.debug("disconnect failed", exc_info=True)
        self._client.loop_stop()
        # paho leaves its wake-up socket pair (and the socket of a connection that never
        # got a CONNACK) open after loop_stop(); close them, or they leak until GC.
        reset = getattr(self._client, "_reset_sockets", None)
        if callable(reset):
            with contextlib.suppress(OSError):  # already closed by the OS
                reset()
        self._connected.clear()

    def __enter__(self) -> MqttLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ publish
    def publish(self, kind: str, topic: str, message: Mapping[str, Any]) -> bool:
        """Validate, encode and publish a message with its kind's QoS and retain flag.

        Args:
            kind: Message kind (``"telemetry"``, ``"status"``, ...).
            topic: Topic (see :mod:`pulsebms.core.messaging.topics`).
            message: The message; ``schema`` and ``version`` are filled in.

        Returns:
            ``True`` when paho took it (sent, or queued until the reconnect); ``False``
            when it was dropped (outgoing queue full, QoS 0 while disconnected, or an
            error), which is counted.

        Raises:
            MessageError: If the message is not valid for its kind (a sender's bug: a
                receiver would drop it).
        """
        return self.publish_bytes(topic, encode(kind, message), QOS[kind], RETAINED[kind])

    def publish_bytes(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> bool:
        """Publish a payload as it is (no validation): for relays and tests.

        Returns:
            As :meth:`publish`.
        """
        if qos > 0:
            with self._backlog_lock:
                if self._backlog or not self._flowing:
                    # Disconnected, or paho is still re-sending what it held across the
                    # outage: wait in order behind it (see _flush).
                    if self._max_backlog and len(self._backlog) >= self._max_backlog:
                        self._count("dropped_queue_full")
                        return False
                    self._backlog.append((topic, payload, qos, retain))
                    with self._lock:
                        self._counts["published"] += 1
                        if not self.connected:
                            self._counts["published_offline"] += 1
                    self._wake.set()
                    return True
        return self._send(topic, payload, qos, retain)

    def _send(
        self, topic: str, payload: bytes, qos: int, retain: bool, *, counted: bool = False
    ) -> bool:
        """Hand one message to paho (counted unless it was counted when backlogged)."""
        try:
            info = self._client.publish(topic, payload, qos, retain)
        except (ValueError, OSError) as exc:
            self._count("publish_errors")
            self.last_error = f"publish: {exc}"
            return False
        rc = info.rc
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._count("dropped_queue_full")
            return False
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            self._count("dropped_qos0_offline")
            return False
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._count("publish_errors")
            self.last_error = f"publish: {paho.error_string(rc)}"
            return False
        if not counted:
            with self._lock:
                self._counts["published"] += 1
                if rc == MQTTErrorCode.MQTT_ERR_NO_CONN or not self.connected:
                    self._counts["published_offline"] += 1
        return True

    def _paho_resending(self) -> bool:
        """Whether paho still holds messages from before the outage that it has not re-sent.

        Reads paho's outgoing store (no public accessor): after a reconnect paho re-sends
        the QoS≥1 messages it kept (state ``PUBLISH``; ``QUEUED`` beyond the in-flight
        bound) in their original order; anything published meanwhile would overtake them.
        """
        client: Any = self._client
        waiting = (MessageState.MQTT_MS_PUBLISH, MessageState.MQTT_MS_QUEUED)
        with client._out_message_mutex:
            return any(m.state in waiting for m in client._out_messages.values())

    def _flush(self) -> None:
        """Backlog thread: once paho has re-sent its own store, send the backlog in order."""
        while not self._stopping.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            if not self.connected or self._paho_resending():
                continue
            with self._backlog_lock:
                while self._backlog and self.connected:
                    topic, payload, qos, retain = self._backlog[0]
                    sent = self._send(topic, payload, qos, retain, counted=True)
                    if not sent and not self.connected:
                        break
                    self._backlog.popleft()
                if not self._backlog and self.connected:
                    self._flowing = True

    def pending(self) -> int:
        """QoS≥1 messages published and not yet acknowledged (in flight, queued, backlog)."""
        # paho's outgoing store (no public accessor); len() of a dict/deque is atomic.
        return len(self._client._out_messages) + len(self._backlog)

    # ------------------------------------------------------------------ subscribe
    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int | None = None) -> None:
        """Deliver validated messages of ``topic_filter`` to ``handler(topic, message)``.

        Each payload is decoded with :func:`pulsebms.core.messaging.decode` (kind from the
        topic, site and device checked against it); a malformed one is counted as
        ``malformed_<reason>`` and dropped. The subscription is renewed on reconnect when
        the broker lost the session.

        Args:
            topic_filter: MQTT filter (``pulsebms/s1/+/telemetry``).
            handler: Called on paho's network thread; exceptions are counted, not raised.
            qos: Subscription QoS; the kind's QoS by default (:func:`subscription_qos`).
        """

        def deliver(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            self._count("received")
            topic = msg.topic
            if not msg.payload:  # a retained message being cleared: not a message
                self._count("empty")
                return
            try:
                message = decode(msg.payload, topic=topic)
            except MessageError as err:
                self._count(f"malformed_{err.reason}")
                return
            except Exception:
                self._count("malformed_field")
                return
            self._call(handler, topic, message)

        self._add(topic_filter, subscription_qos(topic_filter) if qos is None else qos, deliver)

    def subscribe_raw(self, topic_filter: str, handler: RawHandler, *, qos: int = 1) -> None:
        """Deliver raw payloads of ``topic_filter`` to ``handler(topic, payload)``.

        For receivers that validate themselves, relays and tests; exceptions are counted.
        """

        def deliver(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            self._count("received")
            self._call(handler, msg.topic, bytes(msg.payload))

        self._add(topic_filter, qos, deliver)

    def _add(
        self,
        topic_filter: str,
        qos: int,
        deliver: Callable[[paho.Client, Any, paho.MQTTMessage], None],
    ) -> None:
        sub = _Subscription(topic_filter, int(qos), deliver)
        with self._lock:
            self._subs[topic_filter] = sub
        self._client.message_callback_add(topic_filter, deliver)
        if self.connected:
            self._send_subscribe([sub])

    def _send_subscribe(self, subs: list[_Subscription]) -> None:
        if not subs:
            return
        rc, mid = self._client.subscribe([(s.topic_filter, s.qos) for s in subs])
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            with self._lock:
                self._sub_mids[mid] = ", ".join(s.topic_filter for s in subs)

    def _call(self, handler: Callable[[str, Any], None], topic: str, payload: Any) -> None:
        try:
            handler(topic, payload)
        except Exception:
            with self._lock:
                self._counts["handler_errors"] += 1
                n = self._counts["handler_errors"]
            if n <= _LOG_FIRST or n % 1000 == 0:
                _log.exception("MQTT handler for %s raised (error %d, counted)", topic, n)
        else:
            self._count("delivered")

    # ------------------------------------------------------------------ counters
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> dict[str, int]:
        """Counters (a snapshot): connections, publishes, drops, receipts, errors.

        Keys: ``connects``, ``disconnects``, ``connect_failures`` (no TCP connection),
        ``connect_refused`` (CONNACK refused), ``published``, ``published_offline``
        (queued while disconnected), ``dropped_queue_full``, ``dropped_qos0_offline``,
        ``publish_errors``, ``publish_refused`` (MQTT 5 broker refusal, e.g. ACL),
        ``pending``, ``received``, ``delivered`` (handler returned),
        ``handler_errors``, ``subscribe_denied``, ``unrouted`` (no handler matched),
        ``empty`` (zero-length payloads: a retained message being cleared, not handed on)
        and one ``malformed_<reason>`` per reason seen.
        """
        with self._lock:
            out = dict(self._counts)
        out["pending"] = self.pending()
        return out

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._count("connect_refused")
                self.last_error = f"refused: {reason_code.getName()}"
                if not self._first_result.is_set():
                    self._first_error = MqttConnectError(
                        str(reason_code.getName()),
                        f"broker {self.host}:{self.port} refused client {self.client_id!r}: "
                        f"{reason_code.getName()}",
                    )
                    self._first_result.set()
                return
            self._count("connects")
            self.last_error = None
            with self._lock:
                subs = list(self._subs.values())
            if not flags.session_present or self.clean_start:
                self._send_subscribe(subs)
            self._connected.set()
            self._first_result.set()
            self._wake.set()  # the backlog thread sends what waited
        except Exception:  # pragma: no cover - defensive: never into paho's thread
            _log.exception("MqttLink on_connect failed")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._count("connect_failures")
        self.last_error = f"cannot reach {self.host}:{self.port}"

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._flowing = False
        if self._connected.is_set() and not self._closed:
            self._count("disconnects")
            if not self._closed:
                self.last_error = f"disconnected: {reason_code.getName()}"
        self._connected.clear()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._count("publish_refused")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            filters = self._sub_mids.pop(mid, "?")
            denied = sum(1 for rc in reason_codes if rc.is_failure)
            self._counts["subscribe_denied"] += denied
        if denied:
            self.last_error = f"subscription refused: {filters}"
            _log.warning("broker refused %d subscription(s) of %s", denied, filters)

    def _on_unrouted(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._count("unrouted")
