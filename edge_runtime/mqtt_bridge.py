"""The edge runtime on MQTT: telemetry and status up, the coordinator's allocation down.

:class:`MqttBridge` runs beside an :class:`~pulsebms.edge_runtime.runtime.EdgeRuntime` and
talks to the site's broker through a link (:class:`~pulsebms.edge_runtime.mqtt_link.MqttLink`
on a real broker). It wraps the runtime from outside, through its public seams only:

* **Allocation through the same shield.** The bridge installs an :class:`AllocationPolicy` as
  the runtime's policy (the ``ActingPolicy`` the tick calls). While the coordinator's
  allocation (``pulsebms/{site}/coordinator/allocation``) is fresh, the policy returns this
  device's set-points from it, each divided by its pack's rated power and kept in the action
  space ``[-1, 1]``; the runtime's tick then passes them through the shield like any policy
  output, so an allocation that asks for an unsafe set-point is clipped like a policy's.
  Packs the allocation leaves out (offline, faulted, another device's) get zero.
* **Stale allocation → fallback.** An allocation is stale when it is older than
  ``allocation_timeout_s`` (or its own ``valid_for_s``) on the bridge's clock, or when none
  arrived yet. The policy then falls back as configured: ``"local"`` runs the runtime's own
  (ONNX) policy, ``"hold"`` keeps the last allocation's set-points, ``"zero"`` sends zero.
  The status says so (``mode``: ``local_policy`` or ``hold``; ``fallback``: which one), and
  each switch from the coordinator to a fallback is counted.
* **Telemetry** (QoS 1, every ``telemetry_period_s`` of the bridge's clock): one message per
  device with every pack's latest readings from the runtime's telemetry store, the
  set-point last sent, its safe state and reasons, whether its telemetry is fresh, its
  ratings, and the site values; ``seq`` +1 per message. A value the schema cannot carry
  (not finite, outside its physical range) is sent as ``null``.
* **Status** (QoS 0, retained; the link's last will is this device's ``offline`` status,
  :func:`~pulsebms.edge_runtime.mqtt_link.offline_will`): ``online`` with the mode at
  start, on every reconnect (the will replaced the retained status), on every change of
  mode or of the safe packs, and every ``status_period_s``; ``offline`` with mode
  ``stopped`` on :meth:`MqttBridge.stop`.
* **Commands** (``pulsebms/{site}/{device}/commands``, QoS 2): ``safe_state`` holds packs
  safe (:meth:`EdgeRuntime.hold_safe`), ``enable`` releases that hold, ``limit_override``
  tightens the current and/or power limit of packs (never looser than the manifest: the
  shield is rebuilt with ``min(manifest, override)`` and the action is clipped to the power
  cap; a cap above the manifest's is a no-op), ``clear_override`` drops it; an override may
  expire (``expires_after_s``). A command is applied only if it is for this site and this
  device (payload and topic), from an allowed issuer (``allowed_issuers``; any issuer of the
  site when ``None``: the broker's per-site ACL is then the authority), not older than
  ``command_max_age_s``, in sequence for its issuer, and names known packs. Anything else
  is refused and counted by reason.

Malformed, out-of-order and duplicate messages are counted (:attr:`MqttBridge.counters`)
and dropped; no MQTT input raises into the caller. The runtime never waits on the broker:
the tick only reads the allocation the bridge holds (a lock held for microseconds), and
publishing is the link's non-blocking enqueue, done by :meth:`MqttBridge.step` from the
bridge's own thread (:meth:`MqttBridge.start`) or from a driver's loop. A broker outage
therefore stops neither the CAN control nor the tick: QoS 1 telemetry waits in the link's
queue and goes out on reconnect, and the allocation goes stale and falls back.

The bridge's clock gives message timestamps and every age (allocation, command, override,
periods); UNIX time by default, a simulated clock in accelerated runs. The runtime keeps its
own clock for the CAN side.

Example:
    >>> runtime = EdgeRuntime.from_files("deploy/manifest.json", bus=bus)  # doctest: +SKIP
    >>> bridge = MqttBridge.connect(runtime, host="localhost", port=1883,
    ...                             site="site-a", device="edge-1")  # doctest: +SKIP
    >>> bridge.start()  # doctest: +SKIP
    >>> runtime.run(duration_s=3600.0)  # doctest: +SKIP
    >>> bridge.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np

from pulsebms.core.messaging import (
    QOS,
    MessageError,
    SequenceTracker,
    allocation_topic,
    commands_topic,
    decode,
    parse_topic,
    status_topic,
    telemetry_topic,
)
from pulsebms.core.messaging.topics import TopicError, check_name
from pulsebms.core.types import ActArray, FloatArray, ObsArray
from pulsebms.edge_runtime.mqtt_link import MqttLink, TlsSettings, offline_will
from pulsebms.edge_runtime.runtime import ActingPolicy, EdgeRuntime, SafeReason
from pulsebms.safety.limits import PackLimits
from pulsebms.safety.shield import Shield

__all__ = [
    "FALLBACKS",
    "AllocationPolicy",
    "BridgeLink",
    "MqttBridge",
    "PackOverride",
]

logger = logging.getLogger("pulsebms.edge_runtime.mqtt")

Fallback = Literal["local", "hold", "zero"]
FALLBACKS: tuple[str, ...] = ("local", "hold", "zero")
"""What the edge does when the allocation is stale: its own policy, the last allocation, 0."""

_FALLBACK_MODE = {"local": "local_policy", "hold": "hold", "zero": "hold"}
_LOG_FIRST = 10  # drops and refusals logged one by one before every 1000th only
_MIN_CAP_A = 1e-3  # PackLimits needs current_min_a < current_max_a: a zero cap is ±1 mA


class BridgeLink(Protocol):
    """What the bridge needs of an MQTT client (:class:`~pulsebms.edge_runtime.mqtt_link.MqttLink`).

    ``publish`` validates and enqueues without blocking on the network (``False``: dropped,
    e.g. QoS 0 while disconnected); ``subscribe_raw`` calls ``handler(topic, payload)`` with
    the raw payload on the client's thread; ``stats()["connects"]`` counts connections;
    ``pending()`` counts unacknowledged QoS≥1 messages.
    """

    def publish(self, kind: str, topic: str, message: Mapping[str, Any]) -> bool:
        """Validate ``message`` as ``kind`` and enqueue it on ``topic``."""
        ...

    def subscribe_raw(
        self, topic_filter: str, handler: Callable[[str, bytes], None], *, qos: int = 1
    ) -> None:
        """Subscribe; ``handler`` gets ``(topic, payload)``."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters, ``connects`` among them."""
        ...

    def pending(self) -> int:
        """QoS≥1 messages published and not yet acknowledged."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the link is connected now."""
        ...


# ---------------------------------------------------------------- allocation → action


@dataclass(frozen=True)
class _Allocation:
    action: FloatArray  # normalised, this device's packs (0 where left out)
    seq: int
    received_s: float
    valid_for_s: float


class AllocationPolicy:
    """The ``ActingPolicy`` the runtime's tick calls: the allocation, or the fallback.

    Args:
        n_packs: Packs of the device.
        fallback: ``"local"``, ``"hold"`` or ``"zero"`` (see :data:`FALLBACKS`).
        timeout_s: Age past which an allocation is stale [s] (bridge clock).
        local_policy: The device's own policy (used by ``"local"``).
        clock: The bridge's clock [s].

    Raises:
        ValueError: On an unknown fallback, a non-positive timeout, or ``"local"`` without
            a local policy.

    Example:
        >>> t = [0.0]
        >>> policy = AllocationPolicy(2, fallback="zero", timeout_s=60.0, clock=lambda: t[0])
        >>> policy.update(np.array([0.5, -0.25]), seq=0, valid_for_s=600.0)
        >>> policy.act(np.zeros(4, dtype=np.float32)).tolist(), policy.mode()
        ([0.5, -0.25], 'coordinator')
        >>> t[0] = 61.0
        >>> policy.act(np.zeros(4, dtype=np.float32)).tolist(), policy.mode()
        ([0.0, 0.0], 'hold')
    """

    def __init__(
        self,
        n_packs: int,
        *,
        fallback: str = "local",
        timeout_s: float = 1200.0,
        local_policy: ActingPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {list(FALLBACKS)}, got {fallback!r}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"allocation timeout must be > 0, got {timeout_s}")
        if fallback == "local" and local_policy is None:
            raise ValueError("fallback 'local' needs the device's own policy")
        self.n_packs = int(n_packs)
        self.fallback = fallback
        self.timeout_s = float(timeout_s)
        self.local_policy = local_policy
        self.clock = clock
        self._lock = threading.Lock()
        self._allocation: _Allocation | None = None
        self._cap = np.ones(self.n_packs)  # |action| cap from power overrides
        self._mode = "coordinator"
        self._was_fresh = False
        self.fallbacks = 0
        """Switches from the coordinator's allocation to the fallback."""
        self.fallback_acts = 0
        """Policy calls answered by the fallback."""
        self.coordinator_acts = 0
        """Policy calls answered by the allocation."""
        self.local_errors = 0
        """Local-policy calls that raised (the runtime then uses its own fallback)."""

    def update(self, action: FloatArray, *, seq: int, valid_for_s: float) -> None:
        """Take a new allocation (normalised set-points of this device's packs)."""
        arr = np.asarray(action, dtype=np.float64).reshape(self.n_packs)
        with self._lock:
            self._allocation = _Allocation(arr.copy(), int(seq), self.clock(), float(valid_for_s))

    def set_cap(self, cap: FloatArray) -> None:
        """Per pack, the largest |normalised action| (a power override; 1: none)."""
        with self._lock:
            self._cap = np.clip(np.asarray(cap, dtype=np.float64).reshape(self.n_packs), 0, 1)

    def allocation_age_s(self, now_s: float | None = None) -> float | None:
        """Age of the held allocation [s], ``None`` before the first."""
        alloc = self._allocation
        if alloc is None:
            return None
        return max((self.clock() if now_s is None else now_s) - alloc.received_s, 0.0)

    def allocated_action(self, now_s: float | None = None) -> FloatArray | None:
        """The fresh allocation's normalised set-points, ``None`` when stale or none."""
        alloc = self._allocation
        if alloc is None or not self.fresh(now_s):
            return None
        return alloc.action.copy()

    @property
    def allocation_seq(self) -> int | None:
        """``seq`` of the allocation held, ``None`` before the first."""
        alloc = self._allocation
        return None if alloc is None else alloc.seq

    def fresh(self, now_s: float | None = None) -> bool:
        """Whether the held allocation may be applied now."""
        alloc = self._allocation
        if alloc is None:
            return False
        age = (self.clock() if now_s is None else now_s) - alloc.received_s
        return age <= min(self.timeout_s, alloc.valid_for_s)

    def mode(self, now_s: float | None = None) -> str:
        """``coordinator`` while fresh, else the fallback's status mode."""
        return "coordinator" if self.fresh(now_s) else _FALLBACK_MODE[self.fallback]

    def act(self, observation: ObsArray) -> ActArray:
        """This device's set-points for the tick (never raises on a missing allocation)."""
        with self._lock:
            now = self.clock()
            alloc = self._allocation
            fresh = self.fresh(now)
            cap = self._cap
            if fresh:
                self.coordinator_acts += 1
            else:
                self.fallback_acts += 1
                if self._was_fresh:
                    self.fallbacks += 1
            self._was_fresh = fresh
        if alloc is not None and (fresh or self.fallback == "hold"):
            action = alloc.action
        elif self.fallback == "local" and self.local_policy is not None:
            try:
                action = np.asarray(self.local_policy.act(observation), dtype=np.float64)
            except Exception:
                with self._lock:
                    self.local_errors += 1
                raise  # the runtime counts a policy fallback and sends zero
        else:
            action = np.zeros(self.n_packs)
        out = np.clip(action.reshape(self.n_packs), -cap, cap)
        return out.astype(np.float32)


# ---------------------------------------------------------------- overrides


@dataclass(frozen=True)
class PackOverride:
    """A tightened limit of one pack (from a ``limit_override`` command).

    Attributes:
        current_limit_a: |current| cap [A] (inf: none).
        power_limit_w: |power| cap [W] (inf: none).
        expires_s: Bridge-clock time it lapses [s] (inf: until cleared).
        issuer: Who set it.
    """

    current_limit_a: float = math.inf
    power_limit_w: float = math.inf
    expires_s: float = math.inf
    issuer: str = ""


# ---------------------------------------------------------------- the bridge


def _finite_or_none(value: float, low: float | None = None, high: float | None = None) -> Any:
    if not math.isfinite(value):
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        return None
    return float(value)


class MqttBridge:
    """Telemetry, status, allocation and commands between one edge runtime and the broker.

    Args:
        runtime: The edge runtime (its policy is wrapped by :class:`AllocationPolicy`).
        site: Site name (a topic level).
        device: This edge's device name (a topic level).
        link: The MQTT link, built with ``will=offline_will(site, device, session)`` so
            that the broker announces this edge offline when it drops off (:meth:`connect`
            builds both).
        pack_ids: Pack names on the wire; the manifest's ``pack_names``, else ``p0``, ``p1``…
        allocation_timeout_s: Allocation age past which the edge falls back [s]; two
            coordinator periods is a sensible value (default 1200 s).
        fallback: ``"local"`` (the runtime's own policy, default), ``"hold"`` or ``"zero"``.
        telemetry_period_s: Telemetry period [s] of the bridge clock (default 1 s).
        status_period_s: Status refresh period [s] (default 60 s); also on every change.
        allowed_issuers: Issuers whose commands are applied; ``None``: any issuer (the
            broker's per-site ACL decides who may publish on this device's command topic).
        command_max_age_s: Commands older than this on the bridge clock are refused [s].
        backlog_wait_s: Right after a reconnect, the telemetry queued while disconnected is
            being re-sent: a new message published then could overtake it (and a receiver
            that checks sequence numbers would drop the older ones). While the link is
            connected with unacknowledged messages, a telemetry publish first waits up to
            this long [s, wall] for them (0: never wait). Steady state: no wait.
        site_values: Whether the telemetry carries the site values the edge sees (demand,
            price, ambient). ``True`` for the edge that meters the site; ``False`` for the
            others of a site with one meter, so that the coordinator reads one demand.
        clock: The bridge's clock [UNIX s]: message timestamps and every age.
        session: Run id put in every message (a fresh one by default); the will's.
        close_link: Close the link in :meth:`stop` (the bridge made it).

    Raises:
        ValueError: On a bad site/device name, a wrong number of ``pack_ids``, an unknown
            fallback, or a non-positive period or timeout.
    """

    def __init__(
        self,
        runtime: EdgeRuntime,
        link: BridgeLink,
        *,
        site: str,
        device: str,
        pack_ids: Sequence[str] | None = None,
        allocation_timeout_s: float = 1200.0,
        fallback: str = "local",
        telemetry_period_s: float = 1.0,
        status_period_s: float = 60.0,
        allowed_issuers: Collection[str] | None = None,
        command_max_age_s: float = 300.0,
        backlog_wait_s: float = 0.25,
        site_values: bool = True,
        clock: Callable[[], float] = time.time,
        session: str | None = None,
        close_link: bool = False,
    ) -> None:
        try:
            self.site = check_name(site, "site")
            self.device = check_name(device, "device")
            self.telemetry_topic = telemetry_topic(site, device)
            self.status_topic = status_topic(site, device)
            self.commands_topic = commands_topic(site, device)
            self.allocation_topic = allocation_topic(site)
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        for name, value in (
            ("telemetry_period_s", telemetry_period_s),
            ("status_period_s", status_period_s),
            ("command_max_age_s", command_max_age_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        self.runtime = runtime
        n = runtime.n_packs
        names = tuple(pack_ids or runtime.manifest.observation.pack_names or ())
        if not names:
            names = tuple(f"p{i}" for i in range(n))
        if len(names) != n or len(set(names)) != n:
            raise ValueError(f"need {n} distinct pack ids, got {list(names)}")
        for name in names:
            check_name(name, "pack id")
        self.pack_ids: tuple[str, ...] = names
        self._pack_index = {p: i for i, p in enumerate(names)}
        self.clock = clock
        self.session = session or uuid.uuid4().hex[:16]
        self.telemetry_period_s = float(telemetry_period_s)
        self.status_period_s = float(status_period_s)
        self.command_max_age_s = float(command_max_age_s)
        self.allowed_issuers = None if allowed_issuers is None else frozenset(allowed_issuers)
        self.site_values = bool(site_values)
        self.backlog_wait_s = max(float(backlog_wait_s), 0.0)
        self.policy = AllocationPolicy(
            n,
            fallback=fallback,
            timeout_s=allocation_timeout_s,
            local_policy=runtime.policy,
            clock=clock,
        )
        self.local_policy = runtime.policy
        runtime.policy = self.policy  # the tick now asks the bridge: allocation → shield
        self._rated_w = np.asarray(runtime.ratings.rated_power_w, dtype=np.float64)
        self._series = [int(s) for s in runtime.ratings.series]
        self._capacity_ah = np.asarray(runtime.ratings.capacity_ah, dtype=np.float64)
        self._chemistry = tuple(str(c) for c in runtime.ratings.chemistry)
        self._base_shield = runtime.shield
        self._base_limits = tuple(runtime.limits)
        self._overrides: dict[int, PackOverride] = {}
        self._lock = threading.RLock()
        self._alloc_seq = SequenceTracker()
        self._cmd_seq = SequenceTracker()
        self._seq = {"telemetry": 0, "status": 0}
        self.counters: collections.Counter[str] = collections.Counter()
        """Messages sent, received, applied, dropped and refused, by name."""
        self.sent_telemetry_seqs: list[int] = []
        """``seq`` of every telemetry message handed to the link (for delivery checks)."""
        self._next_telemetry_s = -math.inf
        self._next_status_s = -math.inf
        self._last_status_key: tuple[Any, ...] | None = None
        self._connects_seen = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False
        self.link = link
        self._close_link = close_link
        # Registered now, so that a link connected afterwards subscribes both in its first
        # SUBSCRIBE (a command sent right after the connection is not missed).
        link.subscribe_raw(self.allocation_topic, self.handle_allocation, qos=QOS["allocation"])
        link.subscribe_raw(self.commands_topic, self.handle_command, qos=QOS["commands"])

    @classmethod
    def connect(
        cls,
        runtime: EdgeRuntime,
        *,
        host: str,
        port: int,
        site: str,
        device: str,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        client_id: str | None = None,
        connect_timeout_s: float = 10.0,
        session: str | None = None,
        clock: Callable[[], float] = time.time,
        link_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> MqttBridge:
        """Build the link (persistent session, last will) and the bridge; connect.

        Args:
            runtime: The edge runtime.
            host: Broker host.
            port: Broker port.
            site: Site name.
            device: Device name.
            username: Broker user (the site's ACL applies).
            password: Its password.
            tls: :class:`~pulsebms.edge_runtime.mqtt_link.TlsSettings`, or ``None``.
            client_id: MQTT client id (stable across restarts: the broker keys the
                persistent session by it); ``pulsebms-{site}-{device}`` by default.
            connect_timeout_s: How long to wait for the first connection [s]; on a timeout
                the link keeps retrying in the background (the edge runs meanwhile).
            session: Run id (fresh by default).
            clock: The bridge's clock.
            link_options: Further :class:`~pulsebms.edge_runtime.mqtt_link.MqttLink`
                arguments (``reconnect_max_delay_s``, ``keepalive_s``, ...).
            **options: Other :class:`MqttBridge` arguments.

        Returns:
            The bridge (not started: call :meth:`start`).

        Raises:
            MqttConnectError: If the broker refused the connection (credentials, ACL).
            ValueError: As :class:`MqttBridge`.
        """
        run_id = session or uuid.uuid4().hex[:16]
        link = MqttLink(
            client_id or f"pulsebms-{site}-{device}",
            host,
            port,
            username=username,
            password=password,
            tls=tls,
            will=offline_will(site, device, run_id, timestamp_s=max(clock(), 0.0)),
            **dict(link_options or {}),
        )
        try:
            bridge = cls(
                runtime,
                link,
                site=site,
                device=device,
                session=run_id,
                clock=clock,
                close_link=True,
                **options,
            )
            link.connect(timeout_s=connect_timeout_s)
        except BaseException:
            link.close(drain_timeout_s=0.0)
            raise
        return bridge

    # ------------------------------------------------------------ lifecycle
    def start(self, *, thread: bool = True) -> None:
        """Announce ``online`` and (with ``thread``) publish from a thread of the bridge.

        Without ``thread`` the caller calls :meth:`step` from its loop (a lock-step driver).
        The subscriptions (allocation, commands) were registered with the link at
        construction.
        """
        self.step()
        if thread and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"mqtt-bridge-{self.device}", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        wait_s = min(self.telemetry_period_s, 0.5)
        while not self._stop.wait(wait_s):
            self.step()

    def stop(self) -> None:
        """Stop the thread and publish the ``offline`` / ``stopped`` status (retained)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if not self._stopped:
            self._stopped = True
            self._publish_status(state="offline", mode="stopped", detail="edge stopped")
            if self._close_link:
                close = getattr(self.link, "close", None)
                if callable(close):
                    close()

    # ------------------------------------------------------------ periodic work
    def step(self, now_s: float | None = None) -> None:
        """Publish what is due (telemetry, status) and expire overrides; never raises.

        Args:
            now_s: Bridge-clock time; ``clock()`` by default.
        """
        now = self.clock() if now_s is None else now_s
        try:
            self._expire_overrides(now)
            connects = int(self.link.stats().get("connects", 0))
            if connects != self._connects_seen:
                self._connects_seen = connects  # (re)connected: the will replaced the status
                self._next_status_s = -math.inf
            if now >= self._next_telemetry_s:
                self.publish_telemetry(now)
                self._next_telemetry_s = (
                    now + self.telemetry_period_s
                    if not math.isfinite(self._next_telemetry_s)
                    or now - self._next_telemetry_s >= self.telemetry_period_s
                    else self._next_telemetry_s + self.telemetry_period_s
                )
            key = self._status_key(now)
            if now >= self._next_status_s or key != self._last_status_key:
                self._publish_status(state="online", mode=key[0], now_s=now)
                self._last_status_key = key
                self._next_status_s = now + self.status_period_s
        except Exception as exc:  # the bridge must never take the edge down
            self.counters["internal_errors"] += 1
            logger.exception("mqtt bridge step failed: %r", exc)

    # ------------------------------------------------------------ outgoing
    def _header(self, kind: str, now_s: float) -> dict[str, Any]:
        return {
            "site": self.site,
            "device": self.device,
            "session": self.session,
            "seq": self._seq[kind],
            "timestamp_s": max(float(now_s), 0.0),
        }

    def _publish(self, kind: str, topic: str, message: dict[str, Any]) -> bool | None:
        """``True`` queued, ``False`` dropped by the link, ``None`` invalid (nothing sent)."""
        try:
            queued = bool(self.link.publish(kind, topic, message))
        except MessageError as exc:
            self.counters[f"{kind}_invalid"] += 1
            logger.error("%s not published (invalid: %s)", kind, exc)
            return None
        except Exception as exc:  # a link error must not stop the edge
            self.counters[f"{kind}_publish_errors"] += 1
            logger.warning("%s not published: %r", kind, exc)
            return False
        self.counters[f"{kind}_sent" if queued else f"{kind}_not_queued"] += 1
        return queued

    def telemetry_message(self, now_s: float | None = None) -> dict[str, Any]:
        """The telemetry message for the present state (not published)."""
        now = self.clock() if now_s is None else now_s
        rt = self.runtime
        t_rt = rt.clock()
        store = rt.store
        fresh = store.valid(t_rt)
        safe = rt.safe
        held = rt.held
        report = rt.last_report
        packs = []
        for i, pack_id in enumerate(self.pack_ids):
            soc, soh, cur, vmin, vmax, tmin, tmax = store.pack_values(i)
            reasons = int(report.reasons[i]) if report is not None else 0
            if held[i]:
                reasons |= int(SafeReason.OPERATOR)
            setpoint = float(report.setpoint_w[i]) if report is not None else 0.0
            packs.append(
                {
                    "pack_id": pack_id,
                    "soc": _finite_or_none(soc, 0.0, 1.0),
                    "soh": _finite_or_none(soh, 0.0, 1.5),
                    "current_a": _finite_or_none(cur),
                    "voltage_v": _finite_or_none(0.5 * (vmin + vmax) * self._series[i], 0.0),
                    "cell_voltage_min_v": _finite_or_none(vmin, 0.0),
                    "cell_voltage_max_v": _finite_or_none(vmax, 0.0),
                    "temperature_min_c": _finite_or_none(tmin, -273.15),
                    "temperature_max_c": _finite_or_none(tmax, -273.15),
                    "setpoint_w": setpoint if math.isfinite(setpoint) else 0.0,
                    "safe": bool(safe[i]),
                    "reasons": max(reasons, 0),
                    "fresh": bool(fresh[i]),
                    "rated_power_w": _finite_or_none(float(self._rated_w[i]), 0.0),
                    "capacity_ah": _finite_or_none(float(self._capacity_ah[i]), 0.0),
                    "chemistry": self._chemistry[i][:32],
                }
            )
        message = self._header("telemetry", now)
        message.update(period_s=self.telemetry_period_s, packs=packs, site_values=None)
        site = store.site(t_rt)
        if self.site_values and site.fresh:
            message["site_values"] = {
                "demand_w": _finite_or_none(site.demand_w),
                "price_per_kwh": _finite_or_none(site.price_per_kwh),
                "ambient_c": _finite_or_none(site.ambient_c, -273.15),
            }
        return message

    def _await_backlog(self) -> None:
        """After a reconnect, let the re-sent backlog go first (bounded; see the class)."""
        link = self.link
        if self.backlog_wait_s <= 0 or not link.connected or link.pending() == 0:
            return
        self.counters["backlog_waits"] += 1
        deadline = time.monotonic() + self.backlog_wait_s
        while link.connected and link.pending() > 0 and time.monotonic() < deadline:
            time.sleep(0.002)

    def publish_telemetry(self, now_s: float | None = None) -> bool:
        """Publish one telemetry message now (QoS 1); ``False`` if it could not be queued."""
        self._await_backlog()
        with self._lock:
            message = self.telemetry_message(now_s)
            queued = self._publish("telemetry", self.telemetry_topic, message)
            if queued is None:  # invalid: never sent, its seq is not used
                return False
            if queued:
                self.sent_telemetry_seqs.append(self._seq["telemetry"])
            self._seq["telemetry"] += 1  # a dropped one leaves a gap receivers count
            return queued

    def _status_key(self, now_s: float) -> tuple[Any, ...]:
        return (self.mode(now_s), tuple(self.runtime.safe.tolist()))

    @property
    def rated_power_w(self) -> FloatArray:
        """Rated power of each pack [W]."""
        return self._rated_w.copy()

    def allocation_w(self, now_s: float | None = None) -> FloatArray:
        """The coordinator's set-points for this device's packs now [W] (NaN: stale/none)."""
        action = self.policy.allocated_action(now_s)
        if action is None:
            return np.full(self.runtime.n_packs, np.nan)
        return action * self._rated_w

    def mode(self, now_s: float | None = None) -> str:
        """The status mode now (``coordinator``, ``local_policy``, ``hold``, ``safe``, ...)."""
        rt = self.runtime
        if rt.stopping:
            return "stopped"
        if bool(rt.held.all()):
            return "safe"
        return self.policy.mode(now_s)

    def status_message(
        self,
        *,
        state: str = "online",
        mode: str | None = None,
        now_s: float | None = None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """The status message (not published)."""
        now = self.clock() if now_s is None else now_s
        mode = self.mode(now) if mode is None else mode
        safe = self.runtime.safe
        held = self.runtime.held
        report = self.runtime.last_report
        age = self.policy.allocation_age_s(now)
        if detail is None:
            detail = {
                "coordinator": "applying the coordinator's allocation",
                "local_policy": "allocation stale or missing: local policy",
                "hold": (
                    "allocation stale or missing: holding zero"
                    if self.policy.fallback == "zero"
                    else "allocation stale: holding the last allocation"
                ),
                "safe": "every pack held safe by command",
                "stopped": "edge stopped",
            }[mode]
        message = self._header("status", now)
        message.update(
            state=state,
            mode=mode,
            fallback=self.policy.fallback,
            allocation_seq=self.policy.allocation_seq,
            allocation_age_s=None if age is None else float(age),
            packs=[
                {
                    "pack_id": p,
                    "safe": bool(safe[i]),
                    "reasons": (int(report.reasons[i]) if report is not None else 0)
                    | (int(SafeReason.OPERATOR) if held[i] else 0),
                }
                for i, p in enumerate(self.pack_ids)
            ],
            detail=detail[:1024],
        )
        return message

    def _publish_status(
        self,
        *,
        state: str,
        mode: str | None = None,
        now_s: float | None = None,
        detail: str | None = None,
    ) -> bool:
        with self._lock:
            message = self.status_message(state=state, mode=mode, now_s=now_s, detail=detail)
            queued = self._publish("status", self.status_topic, message)
            if queued is not None:
                self._seq["status"] += 1
            return bool(queued)

    # ------------------------------------------------------------ incoming
    def _drop(self, kind: str, reason: str, detail: str) -> None:
        self.counters[f"{kind}_dropped"] += 1
        self.counters[f"{kind}_dropped_{reason}"] += 1
        self._log(self.counters[f"{kind}_dropped"], "%s dropped (%s): %s", kind, reason, detail)

    @staticmethod
    def _log(n: int, text: str, *args: object) -> None:
        """Log the first ten of a kind, then every 1000th (a flood must not flood the log)."""
        if n <= _LOG_FIRST or n % 1000 == 0:
            logger.warning(text + (f" (#{n})" if n > _LOG_FIRST else ""), *args)

    def handle_allocation(self, topic: str, payload: bytes | bytearray | str) -> None:
        """One message from the allocation topic; applied, or counted and dropped."""
        self.counters["allocation_received"] += 1
        try:
            msg = decode(payload, "allocation", topic=topic)
        except MessageError as err:
            self._drop("allocation", err.reason, str(err))
            return
        except Exception as exc:
            self._drop("allocation", "internal", repr(exc))
            return
        try:
            self._apply_allocation(msg)
        except Exception as exc:
            self._drop("allocation", "internal", repr(exc))

    def _apply_allocation(self, msg: dict[str, Any]) -> None:
        if msg["site"] != self.site:
            self._drop("allocation", "site", f"site {msg['site']!r}")
            return
        with self._lock:
            if not self._alloc_seq.accept("coordinator", str(msg["session"]), int(msg["seq"])):
                self._drop("allocation", "sequence", f"seq {msg['seq']} of {msg['session']}")
                return
        now = self.clock()
        valid_for = float(msg["valid_for_s"])
        if now - float(msg["timestamp_s"]) > min(self.policy.timeout_s, valid_for):
            self._drop("allocation", "stale", f"sent at {msg['timestamp_s']}, now {now}")
            return
        action = np.zeros(self.runtime.n_packs)
        unknown = 0
        for entry in msg["setpoints"]:
            if entry["device"] != self.device:
                continue
            i = self._pack_index.get(str(entry["pack_id"]))
            if i is None:
                unknown += 1
                continue
            action[i] = float(entry["power_w"]) / self._rated_w[i]
        if unknown:
            self.counters["allocation_unknown_packs"] += unknown
        clipped = np.clip(action, -1.0, 1.0)
        if not np.array_equal(clipped, action):
            self.counters["allocation_beyond_rating"] += 1
        self.policy.update(clipped, seq=int(msg["seq"]), valid_for_s=valid_for)
        self.counters["allocation_applied"] += 1

    def handle_command(self, topic: str, payload: bytes | bytearray | str) -> None:
        """One message from this device's command topic; applied, or counted and refused."""
        self.counters["commands_received"] += 1
        try:
            msg = decode(payload, "commands")
        except MessageError as err:
            self._drop("commands", err.reason, str(err))
            return
        except Exception as exc:
            self._drop("commands", "internal", repr(exc))
            return
        try:
            self._apply_command(topic, msg)
        except Exception as exc:
            self._refuse("internal", repr(exc))

    def _refuse(self, reason: str, detail: str) -> None:
        self.counters["commands_refused"] += 1
        self.counters[f"commands_refused_{reason}"] += 1
        self._log(self.counters["commands_refused"], "command refused (%s): %s", reason, detail)

    def _apply_command(self, topic: str, msg: dict[str, Any]) -> None:
        try:
            t_site, t_device, _ = parse_topic(topic)
        except TopicError:
            t_site, t_device = "", ""
        if msg["site"] != self.site or t_site != self.site:
            self._refuse("site", f"command for site {msg['site']!r} on {topic!r}")
            return
        if msg["device"] != self.device or t_device != self.device:
            self._refuse("device", f"command for device {msg['device']!r} on {topic!r}")
            return
        issuer = str(msg["issuer"])
        if self.allowed_issuers is not None and issuer not in self.allowed_issuers:
            self._refuse("issuer", f"issuer {issuer!r} not allowed")
            return
        now = self.clock()
        if now - float(msg["timestamp_s"]) > self.command_max_age_s:
            self._refuse("expired", f"sent at {msg['timestamp_s']}, now {now}")
            return
        with self._lock:
            if not self._cmd_seq.accept(issuer, str(msg["session"]), int(msg["seq"])):
                self._refuse("sequence", f"seq {msg['seq']} of {issuer}/{msg['session']}")
                return
        names = msg.get("packs")
        if names is None:
            packs = list(range(self.runtime.n_packs))
        else:
            missing = [p for p in names if p not in self._pack_index]
            if missing:
                self._refuse("unknown_pack", f"unknown packs {missing}")
                return
            packs = sorted({self._pack_index[p] for p in names})
        command = msg["command"]
        if command == "safe_state":
            self.runtime.hold_safe(packs)
        elif command == "enable":
            self.runtime.hold_safe(packs, hold=False)
        elif command == "limit_override":
            cur = msg.get("current_limit_a")
            power = msg.get("power_limit_w")
            if cur is None and power is None:
                self._refuse("invalid", "limit_override without current_limit_a/power_limit_w")
                return
            expires = msg.get("expires_after_s")
            override = PackOverride(
                current_limit_a=math.inf if cur is None else float(cur),
                power_limit_w=math.inf if power is None else float(power),
                expires_s=math.inf if expires is None else now + float(expires),
                issuer=issuer,
            )
            with self._lock:
                for i in packs:
                    old = self._overrides.get(i)
                    if old is not None:  # overrides only ever tighten each other
                        override = replace(
                            override,
                            current_limit_a=min(old.current_limit_a, override.current_limit_a),
                            power_limit_w=min(old.power_limit_w, override.power_limit_w),
                        )
                    self._overrides[i] = override
                self._apply_overrides()
        elif command == "clear_override":
            with self._lock:
                for i in packs:
                    self._overrides.pop(i, None)
                self._apply_overrides()
        self.counters["commands_applied"] += 1
        self.counters[f"commands_{command}"] += 1
        logger.info("command %s from %s applied to packs %s", command, issuer, packs)
        self._next_status_s = -math.inf  # say it at once

    # ------------------------------------------------------------ overrides
    def effective_limits(self) -> tuple[PackLimits, ...]:
        """The shield's pack limits now: the manifest's, tightened by the overrides."""
        with self._lock:
            out = []
            for i, base in enumerate(self._base_limits):
                o = self._overrides.get(i)
                if o is None:
                    out.append(base)
                    continue
                cap = o.current_limit_a
                if math.isfinite(o.power_limit_w):
                    # the highest pack voltage turns the power cap into a current that
                    # keeps |P| under it at any voltage of the window
                    v_max = base.cell_voltage_max_v * self._series[i]
                    cap = min(cap, o.power_limit_w / v_max)
                cap = max(cap, _MIN_CAP_A)
                out.append(
                    replace(
                        base,
                        current_min_a=max(base.current_min_a, -cap),
                        current_max_a=min(base.current_max_a, cap),
                    )
                )
            return tuple(out)

    @property
    def overrides(self) -> dict[str, PackOverride]:
        """Pack id → its active override."""
        with self._lock:
            return {self.pack_ids[i]: o for i, o in sorted(self._overrides.items())}

    def _apply_overrides(self) -> None:
        rt = self.runtime
        cap = np.ones(rt.n_packs)
        for i, o in self._overrides.items():
            cap[i] = min(1.0, o.power_limit_w / self._rated_w[i])
        self.policy.set_cap(cap)
        if not self._overrides:
            rt.shield = self._base_shield
            return
        base = self._base_shield
        rt.shield = Shield(base.ratings, self.effective_limits(), base.dt_s, settings=base.settings)

    def _expire_overrides(self, now_s: float) -> None:
        with self._lock:
            lapsed = [i for i, o in self._overrides.items() if now_s >= o.expires_s]
            if not lapsed:
                return
            for i in lapsed:
                del self._overrides[i]
            self.counters["overrides_expired"] += len(lapsed)
            self._apply_overrides()
