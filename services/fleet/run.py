"""The site loop in one process: broker, HIL fleet on virtual CAN, edges, site services.

:func:`run_fleet` starts

1. a **broker**: the embedded one (amqtt, :class:`~pulsebms.services.broker.EmbeddedBroker`,
   with per-site users) by default, or an existing broker at ``broker="host:port"``;
2. for each of ``n_edges`` edge devices, a **HIL fleet**: the FleetEnv twin playing the
   packs on its own python-can ``virtual`` bus (:class:`~pulsebms.hil.HilSimulator`), the
   **edge runtime** (:class:`~pulsebms.edge_runtime.EdgeRuntime`: ONNX policy, shield, CAN
   codec, watchdog) and its **MQTT bridge**
   (:class:`~pulsebms.edge_runtime.mqtt_bridge.MqttBridge`), which reaches the broker
   through a :class:`~pulsebms.services.fleet.netcut.CuttableLine` (so that the run can cut
   the edge off the network);
3. the **coordinator** (:mod:`pulsebms.services.coordinator`), which allocates the site's
   demand over every usable pack every ``period_s`` and rebalances when a device goes
   offline, a pack is put safe, or the health service flags a safety anomaly; it plans on
   the twin's forecasts (SoH, remaining useful life) and a demand forecast (a daily profile
   learned from the edges' telemetry by default);
4. the **digital-twin service** (:class:`~pulsebms.services.twin.service.TwinService`):
   telemetry into the **telemetry store** (SQLite in a temporary folder by default, any
   ``store`` URL otherwise, e.g. PostgreSQL), mirror, calibration every hour, and a SoH /
   RUL forecast every 5 minutes per pack under the duty its telemetry shows, published on
   ``pulsebms/{site}/twin/forecast``;
5. the **health service** (:class:`~pulsebms.services.health.service.HealthService`):
   the store's telemetry scored with a saved model folder (trained once into
   ``workdir/health`` for the edges' telemetry period, :func:`ensure_health_models`),
   anomaly baselines learned from each pack's first ``health_reference_s``, one ``health``
   message per device on ``pulsebms/{site}/{device}/health`` every ``period_s``;
6. an **audit** subscriber (monitor role) that records every telemetry sequence number
   that reaches the site, and every forecast and health message.

Each service connects with its own broker user and role (``coordinator``, ``twin``,
``health``, ``monitor``; the per-site ACL of :mod:`pulsebms.services.broker.acl`).

Everything runs on one **accelerated clock** (:class:`~pulsebms.hil.SimClock`, starting at
the wall clock's UNIX time): each control tick advances it by the manifest's ``dt_s``
(300 s for ``PulseBMS/FleetSmall-v0``), and the loop paces the ticks at ``dt_s / speed``
wall seconds, so at ``speed=600`` a 600 s coordinator period comes every second. The
edges and the twins run in lock step in the main thread, as in :func:`pulsebms.hil.run_hil`
(telemetry frames → runtime tick → set-point frames → twin step → MQTT telemetry); the
broker, the coordinator and the MQTT clients run on their own threads in real time.

**Events** (:class:`FleetEvent`, :func:`default_events`): by default the last edge's
network is cut a quarter of the way through (the broker publishes its last will: the
coordinator sees it offline and rebalances the other edges' packs; the edge keeps
controlling its packs on CAN and, once the allocation is stale, falls back), restored at
half-way (it reconnects, its queued telemetry is delivered, the coordinator rebalances
again), and at three quarters a pack of the first edge stops sending telemetry (the edge
puts it safe; the coordinator leaves it out). A network cut takes effect before the clock
moves on: the loop waits (up to :data:`LAST_WILL_WAIT_S` wall seconds) until the
coordinator has seen the edge's last will, since the broker's sub-second delivery would
otherwise stretch into simulated minutes at a high speed-up (0.3 s of wall time is a whole
300 s tick at ``speed=1000``) and the coordinator would plan a tick with the cut edge still
in it.

:class:`FleetReport` holds the summary (allocations, rebalances, violations, telemetry
sent and received, fallbacks) and per-tick traces for plots. A run is ``ok`` when no limit
was violated (neither in the twin nor in the telemetry) and every telemetry message sent
reached the site.

MQTT timing is real, so two runs with one seed give the same physics only while the
allocation messages arrive in the same ticks (they do at the default pacing on an idle
machine); the counts can differ by an allocation or so between runs.

Example:
    >>> report = run_fleet(n_edges=2, n_ticks=24)  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import can
import gymnasium as gym
import numpy as np

import pulsebms.envs  # noqa: F401 - registers the PulseBMS ids
from pulsebms.core.messaging import MessageError, decode, forecast_topic, site_filter
from pulsebms.core.observation import fleet_observation_layout
from pulsebms.edge_runtime.codec import CanCodec
from pulsebms.edge_runtime.manifest import Manifest, ManifestError, load_manifest
from pulsebms.edge_runtime.mqtt_bridge import MqttBridge
from pulsebms.edge_runtime.mqtt_link import MqttLink
from pulsebms.edge_runtime.runtime import EdgeRuntime
from pulsebms.hil.simulator import HilFaults, HilSimulator, SimClock
from pulsebms.services.coordinator import Coordinator, CoordinatorSettings, SiteFleet, make_policy
from pulsebms.services.coordinator.demand import make_demand_forecast
from pulsebms.services.fleet.netcut import CuttableLine

__all__ = [
    "DEFAULT_SITE",
    "FleetEvent",
    "FleetReport",
    "FleetTraces",
    "TelemetryAudit",
    "default_events",
    "ensure_health_models",
    "ensure_policy",
    "run_fleet",
    "site_fleet",
]

logger = logging.getLogger("pulsebms.services.fleet")

DEFAULT_SITE = "site-1"
"""Site name of ``pulsebms-fleet up``."""

EventKind = Literal["edge_offline", "edge_online", "pack_silent"]


@dataclass(frozen=True)
class FleetEvent:
    """Something that happens to the fleet at a tick.

    Attributes:
        tick: Control tick (from 0) at which it happens.
        kind: ``edge_offline``: the edge's network is cut (the broker publishes its last
            will); ``edge_online``: the network is back; ``pack_silent``: one pack's BMS
            stops sending telemetry (the edge puts it in the safe state).
        edge: Edge index (from 0).
        pack: Pack index on that edge (``pack_silent`` only).
    """

    tick: int
    kind: EventKind
    edge: int
    pack: int | None = None

    def describe(self, devices: Sequence[str]) -> str:
        """One line for the summary."""
        what = {
            "edge_offline": "network cut (last will)",
            "edge_online": "network restored",
            "pack_silent": f"pack {self.pack} stops reporting",
        }[self.kind]
        return f"tick {self.tick}: {devices[self.edge]} {what}"


def default_events(n_ticks: int, n_edges: int) -> tuple[FleetEvent, ...]:
    """The default events: last edge offline at 1/4, back at 1/2, a pack silent at 3/4.

    Example:
        >>> [(e.tick, e.kind, e.edge) for e in default_events(48, 2)]
        [(12, 'edge_offline', 1), (24, 'edge_online', 1), (36, 'pack_silent', 0)]
    """
    if n_ticks < 4 or n_edges < 1:
        return ()
    last = n_edges - 1
    return (
        FleetEvent(n_ticks // 4, "edge_offline", last),
        FleetEvent(n_ticks // 2, "edge_online", last),
        FleetEvent(3 * n_ticks // 4, "pack_silent", 0, pack=0),
    )


@dataclass
class FleetTraces:
    """Per tick and pack: what was allocated, sent, delivered, and the state of charge.

    Every list has one entry per (tick, edge, pack), in that order.

    Attributes:
        time_s: Simulated time of the tick, from the start of the run [s].
        device: Edge device.
        pack_id: Pack name.
        allocated_w: The coordinator's set-point the edge held for the pack [W]
            (NaN: none, or stale).
        setpoint_w: The set-point the edge sent on CAN, after the shield [W].
        measured_w: The power the pack delivered over the step (twin) [W].
        soc: The pack's state of charge after the step (twin).
        mode: The edge's mode (``coordinator``, ``local_policy``, ``hold``, ...).
    """

    time_s: list[float] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    pack_id: list[str] = field(default_factory=list)
    allocated_w: list[float] = field(default_factory=list)
    setpoint_w: list[float] = field(default_factory=list)
    measured_w: list[float] = field(default_factory=list)
    soc: list[float] = field(default_factory=list)
    mode: list[str] = field(default_factory=list)

    def frame(self) -> Any:
        """The traces as a ``pandas.DataFrame`` (one row per tick and pack)."""
        import pandas as pd

        return pd.DataFrame(asdict(self))


class TelemetryAudit:
    """Every telemetry ``(device, session, seq)`` that reached a subscriber of the site.

    Also keeps the twin's forecasts and the health messages it is handed
    (:meth:`handle_message`), for the report's per-pack tables.

    Args:
        site: Site name.
    """

    def __init__(self, site: str) -> None:
        self.site = site
        self._lock = threading.Lock()
        self.received: dict[str, set[int]] = {}
        """Device → telemetry seqs received (any session)."""
        self.duplicates = 0
        """Messages that arrived again (same device and seq)."""
        self.out_of_order = 0
        """Messages that arrived after one with a higher seq of the same device."""
        self.malformed = 0
        self._highest: dict[str, int] = {}
        self.forecasts: list[dict[str, Any]] = []
        """Forecast messages received, in order."""
        self.health: list[dict[str, Any]] = []
        """Health messages received, in order."""

    def handle_message(self, topic: str, message: Mapping[str, Any]) -> None:
        """One validated forecast or health message (an ``MqttLink`` handler)."""
        with self._lock:
            if topic.endswith("/forecast"):
                self.forecasts.append(dict(message))
            elif topic.endswith("/health"):
                self.health.append(dict(message))

    def handle(self, topic: str, payload: bytes) -> None:
        """One raw telemetry message (never raises)."""
        try:
            msg = decode(payload, "telemetry", topic=topic)
        except MessageError:
            with self._lock:
                self.malformed += 1
            return
        with self._lock:
            seqs = self.received.setdefault(str(msg["device"]), set())
            seq = int(msg["seq"])
            if seq in seqs:
                self.duplicates += 1
            elif seq < self._highest.get(str(msg["device"]), -1):
                self.out_of_order += 1
            seqs.add(seq)
            self._highest[str(msg["device"])] = max(seq, self._highest.get(str(msg["device"]), -1))

    def missing(self, sent: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        """Device → seqs sent that have not arrived."""
        with self._lock:
            return {
                d: sorted(set(seqs) - self.received.get(d, set()))
                for d, seqs in sent.items()
                if set(seqs) - self.received.get(d, set())
            }


@dataclass
class FleetReport:
    """Summary of one fleet run.

    Attributes:
        site: Site name.
        broker: Which broker served (``embedded host:port`` or ``external host:port``).
        edges: Edge devices.
        packs: Packs in all.
        ticks: Control ticks run.
        dt_s: Simulated time per tick [s].
        speed: Simulated seconds per wall second achieved by the tick loop.
        wall_s: Wall time of the tick loop [s].
        period_s: The coordinator's re-planning period [s].
        allocations_sent: Allocations the coordinator published.
        allocations_applied: Allocations the edges accepted (summed over edges).
        allocations_dropped: Allocations the edges dropped (stale, out of order, malformed).
        rebalances: Event-triggered re-allocations (device offline/online, pack safe).
        twin_violations: Limit violations of the twin's packs after its steps.
        telemetry_violations: Limit violations the edges found in their CAN telemetry.
        violations: Both together (must be 0).
        telemetry_sent: Telemetry messages the edges queued.
        telemetry_received: Of those, how many reached the site (audit subscriber).
        telemetry_lost: ``telemetry_sent − telemetry_received`` (must be 0).
        telemetry_duplicates: Telemetry messages that arrived more than once (QoS 1
            redeliveries after a reconnect; receivers drop them by ``seq``).
        telemetry_out_of_order: Telemetry messages that arrived after a later one of the
            same edge (a reconnect's queue overtaken; a sequence-checking receiver such as
            the coordinator keeps the newer state and counts these as out of order).
        coordinator_telemetry: Telemetry messages the coordinator accepted.
        fallbacks: Switches of an edge from the coordinator's allocation to its fallback.
        fallback_ticks: Edge ticks run on the fallback (summed over edges).
        store: The telemetry store (its URL without a password; ``""`` without services).
        rows_stored: Telemetry rows the twin service wrote to the store.
        forecasts_published: Forecasts the twin service published.
        forecasts_received: Of those, how many the coordinator accepted.
        calibrations: Calibration rounds the twin service ran.
        duties_observed: Pack forecasts made under the duty read from the pack's telemetry
            (the others: under the stated duty, too little history yet).
        health_published: Health messages the health service published (one per device
            and round).
        health_received: Of those, how many the coordinator accepted.
        anomalies_flagged: Packs the health service flagged with an anomaly at least once.
        health_excluded: Packs the coordinator excluded on a health verdict at the end.
        health_model: Version of the health models, and where they came from.
        twin: The twin service's counters.
        health: The health service's counters.
        events: What was injected, one line each.
        event_times_s: When, in the traces' time [s].
        per_edge: Counters of each edge (bridge, runtime, link).
        coordinator: The coordinator's counters.
        allocations: The allocations the coordinator sent (its last 1000), each as
            ``time_s`` (the traces' time), ``reason``, ``excluded`` and ``setpoints``
            (``device/pack_id`` → power [W]).
        traces: Per-tick traces.
        forecasts: Per forecast and pack: ``time_s``, ``device``, ``pack_id``, ``soh``,
            ``soh_std``, ``rul_days``, ``duty``, ``duty_source`` (what the audit received).
        health_rows: Per health message and pack: ``time_s``, ``device``, ``pack_id``,
            ``health_score``, ``soh_forecast``, ``anomaly_score``, ``anomalies``,
            ``priority``, ``rank``.
    """

    site: str
    broker: str
    edges: list[str]
    packs: int
    ticks: int
    dt_s: float
    speed: float
    wall_s: float
    period_s: float
    allocations_sent: int
    allocations_applied: int
    allocations_dropped: int
    rebalances: int
    twin_violations: int
    telemetry_violations: int
    violations: int
    telemetry_sent: int
    telemetry_received: int
    telemetry_lost: int
    telemetry_duplicates: int
    telemetry_out_of_order: int
    coordinator_telemetry: int
    fallbacks: int
    fallback_ticks: int
    store: str
    rows_stored: int
    forecasts_published: int
    forecasts_received: int
    calibrations: int
    duties_observed: int
    health_published: int
    health_received: int
    anomalies_flagged: int
    health_excluded: list[str]
    health_model: str
    twin: dict[str, Any]
    health: dict[str, Any]
    events: list[str]
    event_times_s: list[float]
    per_edge: dict[str, dict[str, Any]]
    coordinator: dict[str, Any]
    allocations: list[dict[str, Any]] = field(repr=False)
    traces: FleetTraces = field(repr=False)
    forecasts: list[dict[str, Any]] = field(default_factory=list, repr=False)
    health_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """No violation and no telemetry lost."""
        return self.violations == 0 and self.telemetry_lost == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, without the traces."""
        out = asdict(self)
        for name in ("traces", "allocations", "forecasts", "health_rows"):
            out.pop(name)
        out["ok"] = self.ok
        return out

    def forecast_frame(self) -> Any:
        """The twin's forecasts as a ``pandas.DataFrame`` (one row per forecast and pack)."""
        import pandas as pd

        return pd.DataFrame(
            self.forecasts,
            columns=["time_s", "device", "pack_id", "soh", "soh_std", "rul_days", "duty",
                     "duty_source"],
        )  # fmt: skip

    def health_frame(self) -> Any:
        """The health messages as a ``pandas.DataFrame`` (one row per message and pack)."""
        import pandas as pd

        return pd.DataFrame(
            self.health_rows,
            columns=["time_s", "device", "pack_id", "health_score", "soh_forecast",
                     "anomaly_score", "anomalies", "priority", "rank"],
        )  # fmt: skip

    def summary(self) -> str:
        """The summary table ``pulsebms-fleet up`` prints."""
        sim_h = self.ticks * self.dt_s / 3600.0
        lines = [
            f"site {self.site}: {len(self.edges)} edges, {self.packs} packs, broker {self.broker}",
            f"simulated {sim_h:.1f} h in {self.wall_s:.1f} s wall ({self.speed:.0f}x), "
            f"{self.ticks} ticks of {self.dt_s:g} s, coordinator period {self.period_s:g} s",
            *(f"event     {e}" for e in self.events),
            f"allocations sent        {self.allocations_sent}",
            f"allocations applied     {self.allocations_applied} (over all edges; "
            f"{self.allocations_dropped} dropped)",
            f"rebalances              {self.rebalances}",
            f"violations              {self.violations} (twin {self.twin_violations}, "
            f"telemetry {self.telemetry_violations})",
            f"telemetry delivered     {self.telemetry_received}/{self.telemetry_sent} "
            f"(lost {self.telemetry_lost}, duplicates {self.telemetry_duplicates}, "
            f"out of order {self.telemetry_out_of_order}; "
            f"coordinator accepted {self.coordinator_telemetry})",
            f"stale-allocation fallbacks {self.fallbacks} ({self.fallback_ticks} edge ticks)",
        ]
        if self.store:
            lines += [
                f"telemetry store         {self.store} ({self.rows_stored} rows)",
                f"twin forecasts          {self.forecasts_published} published, "
                f"{self.forecasts_received} received by the coordinator; "
                f"{self.calibrations} calibrations; pack forecasts under the duty read "
                f"from telemetry {self.duties_observed}/"
                f"{self.duties_observed + int(self.twin.get('duties_stated', 0))}",
                f"health messages         {self.health_published} published, "
                f"{self.health_received} received by the coordinator "
                f"(model {self.health_model})",
                f"anomalies flagged       {self.anomalies_flagged} packs "
                f"(excluded at the end: {', '.join(self.health_excluded) or 'none'})",
            ]
        lines.append("OK" if self.ok else "FAILED: violations or telemetry lost")
        return "\n".join(lines)


# ---------------------------------------------------------------- the policy


def ensure_policy(workdir: str | Path, *, env_id: str = "PulseBMS/FleetSmall-v0") -> Path:
    """A small exported policy for the edges (``manifest.json``), built once per workdir.

    Reuses ``workdir/policy/manifest.json`` when it loads and its model's sha256 matches;
    otherwise trains a tiny PPO for a few hundred steps
    (:func:`pulsebms.export.testing.tiny_sb3_checkpoint`) and exports it (ONNX parity
    checked). The edges run it only as their fallback: the coordinator's allocation
    drives them. For a real policy pass a ``pulsebms-export`` manifest instead.

    Args:
        workdir: Folder to keep it in.
        env_id: The fleet it is for.

    Returns:
        Path of ``manifest.json``.
    """
    out = Path(workdir) / "policy"
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            load_manifest(manifest_path).read_verified_model()
            return manifest_path
        except (ManifestError, OSError, RuntimeError, ValueError) as exc:
            logger.warning("rebuilding the fleet policy: %s", exc)
    from pulsebms.export import export_checkpoint
    from pulsebms.export.testing import tiny_sb3_checkpoint

    checkpoint = tiny_sb3_checkpoint(out / "checkpoint", env_id=env_id, total_timesteps=128)
    export_checkpoint(checkpoint, out, env_id=env_id, n_parity=20, overwrite=True)
    return manifest_path


def ensure_health_models(workdir: str | Path, *, dt_s: float) -> Path:
    """A health model folder for telemetry every ``dt_s``, trained once per workdir.

    Reuses ``workdir/health`` when it loads (:func:`pulsebms.services.health.persist.
    load_models`: sha256 verified) and was trained for this telemetry period; otherwise
    trains the default small models (:class:`pulsebms.services.health.train.TrainConfig`:
    12 simulated packs × 60 days, seed 0; 15–40 s on 2 cores) and saves them there.

    Args:
        workdir: Folder to keep it in.
        dt_s: The edges' telemetry period [s] (the features depend on it).

    Returns:
        The model folder.
    """
    from pulsebms.services.health.persist import MANIFEST_NAME, HealthModelError, load_models
    from pulsebms.services.health.train import TrainConfig, train_models

    out = Path(workdir) / "health"
    if (out / MANIFEST_NAME).exists():
        try:
            load_models(out)
            trained = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
            if float(trained.get("training", {}).get("dt_s", math.nan)) == float(dt_s):
                return out
            logger.warning("retraining the health models for %g s telemetry", dt_s)
        except (HealthModelError, OSError, ValueError) as exc:
            logger.warning("retraining the health models: %s", exc)
    train_models(TrainConfig(dt_s=float(dt_s)), out)
    return out


def _redact(url: str) -> str:
    """A store URL without its password."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    user, _, host = rest.rpartition("@")
    return f"{head}://{user.split(':', 1)[0]}@{host}"


# ---------------------------------------------------------------- the run


@dataclass
class _Edge:
    device: str
    sim: HilSimulator
    runtime: EdgeRuntime
    bridge: MqttBridge
    line: CuttableLine
    buses: tuple[can.BusABC, can.BusABC]
    episodes: int = 1
    twin_violations: int = 0


def _pack_names(manifest: Manifest) -> tuple[str, ...]:
    names = tuple(manifest.observation.pack_names)
    return names or tuple(f"p{i}" for i in range(manifest.n_packs))


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


LAST_WILL_WAIT_S = 5.0
"""Longest wall time the loop waits for the coordinator to see a cut edge's last will."""


def _wait_for(done: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.005) -> bool:
    """Poll ``done`` until it holds or ``timeout_s`` wall seconds pass; whether it held."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def _offline_events_above(coordinator: Coordinator, count: int) -> bool:
    """Whether the coordinator has seen more than ``count`` devices go offline."""
    return int(coordinator.summary()["offline_events"]) > count


def run_fleet(
    manifest_path: str | Path | None = None,
    *,
    n_edges: int = 2,
    n_ticks: int = 48,
    speed: float = 600.0,
    site: str = DEFAULT_SITE,
    broker: str | None = None,
    broker_username: str | None = None,
    broker_password: str | None = None,
    period_s: float = 600.0,
    allocation_timeout_s: float | None = None,
    fallback: str = "local",
    coordinator_policy: str = "proportional",
    events: Sequence[FleetEvent] | None = None,
    env_id: str = "PulseBMS/FleetSmall-v0",
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    workdir: str | Path = "runs/fleet",
    drain_timeout_s: float = 10.0,
    progress: Callable[[str], None] | None = None,
    services: bool = True,
    store: str | None = None,
    health_model: str | Path | None = None,
    demand_forecast: str = "profile",
    health_reference_s: float | None = None,
) -> FleetReport:
    """Run the site loop: broker, HIL fleets, edges with MQTT bridges, site services.

    Args:
        manifest_path: The edges' exported policy; a tiny one built in ``workdir`` when
            ``None`` (:func:`ensure_policy`).
        n_edges: Edge devices (each with the manifest's packs on its own CAN bus).
        n_ticks: Control ticks of every edge.
        speed: Simulated seconds per wall second (the loop sleeps to keep it; it cannot go
            faster than the machine).
        site: Site name.
        broker: ``"host:port"`` of an existing broker; the embedded one when ``None``.
        broker_username: User on the existing broker (every client uses it).
        broker_password: Its password.
        period_s: The coordinator's re-planning period [s, simulated].
        allocation_timeout_s: Allocation age past which an edge falls back [s, simulated];
            two periods by default.
        fallback: The edges' fallback: ``local``, ``hold`` or ``zero``.
        coordinator_policy: The coordinator's policy
            (:func:`pulsebms.services.coordinator.make_policy`: ``proportional``,
            ``equal``, ``health``, ``mpc``, ``onnx:PATH``, ...); it plans over every pack
            of the site (:func:`site_fleet`).
        events: Events to inject; :func:`default_events` when ``None`` (``()``: none).
        env_id: Gymnasium id of the twins (must match the manifest).
        env_kwargs: Keyword arguments of ``gymnasium.make``.
        seed: Seed of the twins (edge ``i`` resets with ``seed + 1000·i``).
        workdir: Folder for the built policy.
        drain_timeout_s: How long to wait at the end for telemetry still in flight [s].
        progress: Called with one line per stage (``print`` in the CLI).
        services: Run the twin and health services (``False``: edges and coordinator
            only, no store).
        store: Telemetry store URL the services share (``sqlite:///…``,
            ``postgresql://…``); SQLite in a temporary folder when ``None``.
        health_model: Health model folder (``pulsebms-health train``); one trained once
            into ``workdir/health`` when ``None`` (:func:`ensure_health_models`).
        demand_forecast: The coordinator's demand forecast (``persistence``, ``profile``:
            learned from the edges' telemetry, ``csv:PATH``;
            :func:`~pulsebms.services.coordinator.demand.make_demand_forecast`).
        health_reference_s: Each pack's commissioning period for the anomaly baseline
            [s, simulated]; half the run by default (a real site: a day).

    Returns:
        The report.

    Raises:
        ValueError: On a bad argument, or a twin that does not match the manifest.
    """
    if n_edges < 1 or n_ticks < 1:
        raise ValueError("n_edges and n_ticks must be >= 1")
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be > 0, got {speed}")
    if not (math.isfinite(period_s) and period_s > 0):
        raise ValueError(f"period_s must be > 0, got {period_s}")
    if fallback not in ("local", "hold", "zero"):
        raise ValueError(f"fallback must be local, hold or zero, got {fallback!r}")
    if health_reference_s is not None and not health_reference_s > 0:
        raise ValueError(f"health_reference_s must be > 0, got {health_reference_s}")
    planned = tuple(default_events(n_ticks, n_edges) if events is None else events)
    for ev in planned:
        if not 0 <= ev.edge < n_edges:
            raise ValueError(f"event for edge {ev.edge}, there are {n_edges}")
        if ev.kind == "pack_silent" and ev.pack is None:
            raise ValueError("a pack_silent event needs its pack")
    host_port = None if broker is None else _host_port(broker)
    say = progress or (lambda _line: None)
    if manifest_path is None:
        say(f"policy: building a tiny exported policy in {workdir} (once)")
        manifest_path = ensure_policy(workdir, env_id=env_id)
    manifest = load_manifest(manifest_path)
    dt_s = float(manifest.dt_s)
    forecast_source = make_demand_forecast(demand_forecast, dt_s)  # bad spec: ValueError now
    model_dir: Path | None = None
    if services:
        if health_model is None:
            say(f"health: models for {dt_s:g} s telemetry in {workdir}/health (trained once)")
            model_dir = ensure_health_models(workdir, dt_s=dt_s)
        else:
            model_dir = Path(health_model)
    timeout_s = 2.0 * period_s if allocation_timeout_s is None else float(allocation_timeout_s)
    devices = [f"edge-{i}" for i in range(n_edges)]
    clock = SimClock(start_s=float(int(time.time())))
    t0 = clock()
    with contextlib.ExitStack() as stack:
        # ---- broker
        credentials: dict[str, tuple[str | None, str | None]] = {}
        if host_port is None:
            from pulsebms.services.broker import EmbeddedBroker, site_users

            users = site_users([site], ("edge", "coordinator", "twin", "health", "monitor"))
            server = EmbeddedBroker(users)
            server.start()
            stack.callback(server.close)
            host, port = server.host, server.port
            for u in users:
                credentials[u.role] = (u.username, u.password)
            broker_name = f"embedded {host}:{port}"
        else:
            host, port = host_port
            for role in ("edge", "coordinator", "twin", "health", "monitor"):
                credentials[role] = (broker_username, broker_password)
            broker_name = f"external {host}:{port}"
        say(f"broker: {broker_name}")

        def link(role: str, client_id: str, **kw: Any) -> MqttLink:
            user, password = credentials[role]
            return MqttLink(client_id, host, port, username=user, password=password, **kw)

        # ---- audit subscriber
        audit = TelemetryAudit(site)
        audit_link = link("monitor", f"pulsebms-{site}-audit", reconnect_max_delay_s=1.0)
        audit_link.subscribe_raw(site_filter(site, "telemetry"), audit.handle, qos=1)
        audit_link.subscribe(forecast_topic(site), audit.handle_message)
        audit_link.subscribe(site_filter(site, "health"), audit.handle_message)
        audit_link.connect(timeout_s=15.0)
        stack.callback(audit_link.close)

        # ---- coordinator
        pack_ids = {d: tuple(f"{d}-{name}" for name in _pack_names(manifest)) for d in devices}
        fleet = site_fleet(manifest, [p for d in devices for p in pack_ids[d]], n_edges)
        policy, policy_name = make_policy(coordinator_policy, fleet)
        coordinator = Coordinator(
            site,
            fleet,
            policy,
            policy_name,
            settings=CoordinatorSettings(
                period_s=period_s,
                valid_for_s=timeout_s,
                stale_after_s=2.5 * dt_s,  # telemetry comes once per tick
            ),
            clock=clock,
            forecast=forecast_source,
        )
        coordinator_link = link(
            "coordinator", f"pulsebms-{site}-coordinator", reconnect_max_delay_s=1.0
        )
        coordinator.attach(coordinator_link)
        coordinator_link.connect(timeout_s=15.0)
        stack.callback(coordinator_link.close)
        coordinator.start()
        stack.callback(coordinator.stop)
        say(
            f"coordinator: policy {policy_name}, period {period_s:g} s, "
            f"demand forecast {demand_forecast}"
        )

        # ---- edges
        edges: list[_Edge] = []
        # back within a tick of the line's return, even at high speed-ups
        reconnect_s = min(0.5, max(0.01, 0.5 * dt_s / speed))
        for i, device in enumerate(devices):
            silent = {
                int(ev.pack or 0): ev.tick
                for ev in planned
                if ev.kind == "pack_silent" and ev.edge == i
            }
            channel = f"pulsebms-fleet-{secrets.token_hex(4)}-{device}"
            rt_bus = can.Bus(interface="virtual", channel=channel)
            sim_bus = can.Bus(interface="virtual", channel=channel)
            stack.callback(rt_bus.shutdown)
            stack.callback(sim_bus.shutdown)
            env = gym.make(env_id, **dict(env_kwargs or {}))
            stack.callback(env.close)
            codec = CanCodec(manifest.n_packs)
            sim = HilSimulator(env, sim_bus, CanCodec(manifest.n_packs), faults=HilFaults(silent))
            if sim.n_packs != manifest.n_packs:
                raise ValueError(
                    f"{env_id} has {sim.n_packs} packs, the manifest {manifest.n_packs}"
                )
            runtime = EdgeRuntime.from_files(
                manifest_path,
                bus=rt_bus,
                codec=codec,
                tick_s=dt_s,
                clock=clock,
                # The twin sends every pack's telemetry once per tick, at the tick's time:
                # a pack whose telemetry of this tick is missing is stale at this tick (a
                # longer watchdog would let the shield plan on last tick's readings).
                stale_after_s=0.5 * dt_s,
                recovery_hold_s=2.0 * dt_s,
            )
            line = CuttableLine(host, port).start()
            stack.callback(line.close)
            user, password = credentials["edge"]
            bridge = MqttBridge.connect(
                runtime,
                host=line.host,
                port=line.port,
                site=site,
                device=device,
                username=user,
                password=password,
                client_id=f"pulsebms-{site}-{device}",
                pack_ids=pack_ids[device],
                site_values=i == 0,  # edge-0 meters the site: one demand for the site
                clock=clock,
                link_options={
                    "reconnect_min_delay_s": min(0.05, reconnect_s),
                    "reconnect_max_delay_s": reconnect_s,
                    "keepalive_s": 5,
                },
                telemetry_period_s=dt_s,
                status_period_s=period_s,
                allocation_timeout_s=timeout_s,
                fallback=fallback,
                connect_timeout_s=15.0,
            )
            stack.callback(bridge.stop)
            sim.reset(seed=seed + 1000 * i)
            edges.append(_Edge(device, sim, runtime, bridge, line, (rt_bus, sim_bus)))

        # ---- site services: twin and health over one telemetry store (before any telemetry)
        twin: Any = None
        health: Any = None
        store_name = ""
        if services:
            store_url = store
            if store_url is None:
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="pulsebms-fleet-"))
                store_url = f"sqlite:///{Path(folder) / 'telemetry.db'}"
            store_name = _redact(store_url)
            twin, health = _start_services(
                stack, link, site=site, store_url=store_url, model_dir=model_dir,
                clock=clock, t0=t0, dt_s=dt_s, period_s=period_s, n_ticks=n_ticks,
                env=edges[0].sim.base, pack_ids=pack_ids,
                reference_s=health_reference_s,
            )  # fmt: skip
            say(f"services: twin + health on {store_name} (model {health.models.version})")

        for edge in edges:
            edge.bridge.start(thread=False)
        say(f"edges: {', '.join(devices)} ({manifest.n_packs} packs each, virtual CAN)")

        # ---- the loop
        traces = FleetTraces()
        by_tick: dict[int, list[FleetEvent]] = {}
        for ev in planned:
            by_tick.setdefault(ev.tick, []).append(ev)
        happened: list[str] = []
        happened_s: list[float] = []
        tick_wall_s = dt_s / speed
        start = time.monotonic()
        for tick in range(n_ticks):
            for ev in by_tick.get(tick, ()):
                if ev.kind == "edge_offline":
                    seen = int(coordinator.summary()["offline_events"])
                    edges[ev.edge].line.cut()
                    if not _wait_for(
                        partial(_offline_events_above, coordinator, seen),
                        timeout_s=LAST_WILL_WAIT_S,
                    ):
                        say(f"warning: no last will seen {LAST_WILL_WAIT_S:g} s after the cut")
                elif ev.kind == "edge_online":
                    edges[ev.edge].line.restore()
                happened.append(ev.describe(devices))
                happened_s.append(clock() - t0)
                say(f"event: {happened[-1]}")
            for edge in edges:
                _edge_tick(edge, tick, seed, traces, clock() - t0)
                edge.bridge.step()  # telemetry of this tick, stamped with its time
            clock.advance(dt_s)
            delay = start + (tick + 1) * tick_wall_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        wall_s = time.monotonic() - start
        for edge in edges:
            edge.line.restore()

        # ---- drain: every queued telemetry message delivered, or the timeout
        sent = {e.device: list(e.bridge.sent_telemetry_seqs) for e in edges}
        deadline = time.monotonic() + drain_timeout_s
        while audit.missing(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        missing = audit.missing(sent)
        if twin is not None and health is not None:
            _last_round(twin, health, coordinator, deadline_s=time.monotonic() + drain_timeout_s)
        coordinator.stop()
        coordinator_stats = coordinator.summary()
        coordinator_stats.pop("link", None)
        per_edge = {
            e.device: {
                "bridge": dict(e.bridge.counters),
                "link": e.bridge.link.stats(),
                "runtime": e.runtime.metrics.to_dict(),
                "fallbacks": e.bridge.policy.fallbacks,
                "twin_violations": e.twin_violations,
                "episodes": e.episodes,
                "telemetry_missing": missing.get(e.device, []),
            }
            for e in edges
        }
        telemetry_sent = sum(len(v) for v in sent.values())
        lost = sum(len(v) for v in missing.values())
        twin_v = sum(e.twin_violations for e in edges)
        tel_v = sum(e.runtime.metrics.violations for e in edges)
        twin_stats: dict[str, Any] = {} if twin is None else dict(twin.stats)
        health_stats: dict[str, Any] = {} if health is None else dict(health.counters)
        forecast_rows, health_rows = _service_rows(audit, t0)
        report = FleetReport(
            site=site,
            broker=broker_name,
            edges=devices,
            packs=n_edges * manifest.n_packs,
            ticks=n_ticks,
            dt_s=dt_s,
            speed=n_ticks * dt_s / wall_s if wall_s > 0 else math.inf,
            wall_s=wall_s,
            period_s=period_s,
            allocations_sent=int(coordinator_stats.get("allocations", 0)),
            allocations_applied=sum(e.bridge.counters["allocation_applied"] for e in edges),
            allocations_dropped=sum(e.bridge.counters["allocation_dropped"] for e in edges),
            rebalances=int(coordinator_stats.get("rebalance", 0)),
            twin_violations=twin_v,
            telemetry_violations=tel_v,
            violations=twin_v + tel_v,
            telemetry_sent=telemetry_sent,
            telemetry_received=telemetry_sent - lost,
            telemetry_lost=lost,
            telemetry_duplicates=audit.duplicates,
            telemetry_out_of_order=audit.out_of_order,
            coordinator_telemetry=int(coordinator_stats.get("state_telemetry_accepted", 0)),
            fallbacks=sum(e.bridge.policy.fallbacks for e in edges),
            fallback_ticks=sum(e.bridge.policy.fallback_acts for e in edges),
            store=store_name,
            rows_stored=int(twin_stats.get("rows_written", 0)),
            forecasts_published=int(twin_stats.get("forecasts_published", 0)),
            forecasts_received=int(coordinator_stats.get("forecast_received", 0)),
            calibrations=int(twin_stats.get("calibrations", 0)),
            duties_observed=int(twin_stats.get("duties_observed", 0)),
            health_published=int(health_stats.get("published", 0)),
            health_received=int(coordinator_stats.get("health_received", 0)),
            anomalies_flagged=len({r["pack_id"] for r in health_rows if r["anomalies"]}),
            health_excluded=list(coordinator_stats.get("health_excluded", [])),
            health_model="" if health is None else f"{health.models.version} ({model_dir})",
            twin=twin_stats,
            health=health_stats,
            events=happened,
            event_times_s=happened_s,
            per_edge=per_edge,
            coordinator=coordinator_stats,
            allocations=[
                {
                    "time_s": float(a["timestamp_s"]) - t0,
                    "reason": a["reason"],
                    "excluded": list(a.get("excluded", [])),
                    "setpoints": {
                        f"{sp['device']}/{sp['pack_id']}": float(sp["power_w"])
                        for sp in a["setpoints"]
                    },
                }
                for a in list(coordinator.history)
            ],
            traces=traces,
            forecasts=forecast_rows,
            health_rows=health_rows,
        )
    return report


def _start_services(
    stack: contextlib.ExitStack,
    link: Callable[..., MqttLink],
    *,
    site: str,
    store_url: str,
    model_dir: Path | None,
    clock: SimClock,
    t0: float,
    dt_s: float,
    period_s: float,
    n_ticks: int,
    env: Any,
    pack_ids: Mapping[str, Sequence[str]],
    reference_s: float | None,
) -> tuple[Any, Any]:
    """Start the twin and health services (each with its own store connection and user).

    ``env`` is an edge's (unwrapped) FleetEnv: its pack specs and fade acceleration.
    """
    from pulsebms.envs.twin.parameters import cell_facts
    from pulsebms.services.health.fleet import PackInfo
    from pulsebms.services.health.persist import load_models
    from pulsebms.services.health.service import HealthService
    from pulsebms.services.store import open_store
    from pulsebms.services.twin.service import TwinService, TwinServiceConfig
    from pulsebms.services.twin.usage import UsageSettings

    specs = tuple(getattr(env, "packs", ()))  # the edges' FleetEnv: every edge runs these
    acceleration = float(getattr(env, "degradation_acceleration", 1.0))
    packs = {
        pid: dataclasses.replace(spec, name=pid)
        for ids in pack_ids.values()
        for pid, spec in zip(ids, specs, strict=True)
    }
    devices = {pid: d for d, ids in pack_ids.items() for pid in ids}
    run_s = n_ticks * dt_s
    history_s = max(2 * 3600.0, 8 * dt_s)
    twin_store = open_store(store_url)
    stack.callback(twin_store.close)
    twin = TwinService(
        TwinServiceConfig(
            site=site,
            calibration_period_s=3600.0,
            calibration_window_s=6 * 3600.0,
            min_samples=max(6, round(3600.0 / dt_s)),
            flush_period_s=dt_s,
            step_days=30.0,
            degradation_acceleration=acceleration,
            # A demo run lasts hours: read a pack's duty once it has a couple of them.
            usage=UsageSettings(min_span_s=history_s, min_samples=8),
        ),
        twin_store,
        packs=packs,
        clock=clock,
    )
    twin_link = link("twin", f"pulsebms-{site}-twin", reconnect_max_delay_s=1.0)
    twin.attach(twin_link)
    twin_link.connect(timeout_s=15.0)
    stack.callback(twin_link.close)
    twin.start(tick_s=0.1)
    stack.callback(twin.stop)
    if model_dir is None:  # pragma: no cover - run_fleet always resolves one
        raise ValueError("no health model folder")
    models = load_models(model_dir)
    health_store = open_store(store_url)
    stack.callback(health_store.close)
    infos = [
        PackInfo(
            pid,
            devices[pid],
            spec.chemistry,
            cell_facts(spec.chemistry).capacity_ah * spec.parallel,
            spec.series,
        )
        for pid, spec in packs.items()
    ]
    health = HealthService(
        health_store,
        infos,
        models,
        site=site,
        clock=clock,
        period_s=period_s,
        start_s=t0 - 1.0,
        reference_s=0.5 * run_s if reference_s is None else reference_s,
    )
    health_link = link("health", f"pulsebms-{site}-health", reconnect_max_delay_s=1.0)
    health.attach(health_link)
    health_link.connect(timeout_s=15.0)
    stack.callback(health_link.close)
    health.start(poll_s=0.1)
    stack.callback(health.stop)
    return twin, health


def _last_round(twin: Any, health: Any, coordinator: Coordinator, *, deadline_s: float) -> None:
    """Stop the services' loops, run their last round, wait for the coordinator to have it.

    The twin flushes its buffer and forecasts every pack once more, the health service
    scores and publishes once more, both at the run's final clock; then the coordinator is
    given until ``deadline_s`` (wall) to receive every message they published.
    """
    twin.stop()
    twin.forecast()
    health.stop()
    health.assess()
    health.publish()

    def caught_up() -> bool:
        counts = coordinator.counts
        return bool(
            counts["forecast_received"] >= twin.stats["forecasts_published"]
            and counts["health_received"] >= health.counters["published"]
        )

    while not caught_up() and time.monotonic() < deadline_s:
        time.sleep(0.02)


def _service_rows(
    audit: TelemetryAudit, t0: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit's forecast and health messages as one row per message and pack."""
    forecasts = [
        {
            "time_s": float(m["timestamp_s"]) - t0,
            "device": p["device"],
            "pack_id": p["pack_id"],
            "soh": p["soh"],
            "soh_std": p.get("soh_std"),
            "rul_days": p.get("rul_days"),
            "duty": p.get("duty"),
            "duty_source": p.get("duty_source"),
        }
        for m in list(audit.forecasts)
        for p in m["packs"]
    ]
    health = [
        {
            "time_s": float(m["timestamp_s"]) - t0,
            "device": m["device"],
            "pack_id": p["pack_id"],
            "health_score": p["health_score"],
            "soh_forecast": p.get("soh_forecast"),
            "anomaly_score": p.get("anomaly_score"),
            "anomalies": list(p.get("anomalies") or ()),
            "priority": p.get("priority"),
            "rank": p.get("rank"),
        }
        for m in list(audit.health)
        for p in m["packs"]
    ]
    return forecasts, health


def _edge_tick(edge: _Edge, tick: int, seed: int, traces: FleetTraces, time_s: float) -> None:
    """One lock-step tick of one edge: frames out, runtime tick, set-points in, twin step."""
    sim, runtime = edge.sim, edge.runtime
    sim.send_telemetry(tick)
    runtime.poll(0.0)
    report = runtime.tick()
    sim.receive_setpoints(0.0)
    _, done, info = sim.step()
    edge.twin_violations += int(info.get("n_violations", 0))
    allocated = edge.bridge.allocation_w()
    mode = edge.bridge.mode()
    measured = np.asarray(info.get("pack_power_w", np.full(runtime.n_packs, np.nan)))
    soc = np.asarray(sim.base.fleet_state().soc, dtype=np.float64)
    for i, pack_id in enumerate(edge.bridge.pack_ids):
        traces.time_s.append(time_s)
        traces.device.append(edge.device)
        traces.pack_id.append(pack_id)
        traces.allocated_w.append(float(allocated[i]))
        traces.setpoint_w.append(float(report.setpoint_w[i]))
        traces.measured_w.append(float(measured[i]))
        traces.soc.append(float(soc[i]))
        traces.mode.append(mode)
    if done:
        sim.reset(seed=seed + edge.episodes)
        edge.episodes += 1


def site_fleet(manifest: Manifest, pack_ids: Sequence[str], n_edges: int) -> SiteFleet:
    """The coordinator's view of ``n_edges`` edges that each run ``manifest``'s packs.

    One observation layout over every pack of the site (``pack_ids``, edge by edge), the
    manifest's ratings and limits repeated per edge, its control interval and shield
    settings (except ``track_demand``: the coordinator serves the site demand, the
    :class:`~pulsebms.services.coordinator.SiteFleet` default).

    Args:
        manifest: The edges' manifest.
        pack_ids: Site-unique pack ids, ``n_edges × manifest.n_packs`` of them.
        n_edges: Number of edges.

    Returns:
        The site fleet.
    """
    from pulsebms.safety.state import PackRatings

    one = manifest.pack_ratings()
    ratings = PackRatings(
        tuple(one.chemistry) * n_edges,
        np.tile(np.asarray(one.series), n_edges),
        np.tile(np.asarray(one.parallel), n_edges),
        np.tile(np.asarray(one.cell_capacity_ah, dtype=np.float64), n_edges),
        np.tile(np.asarray(one.rated_power_w, dtype=np.float64), n_edges),
    )
    forecast = manifest.observation.slices.get("demand_forecast_w")
    steps = 0 if forecast is None else forecast.stop - forecast.start
    layout = fleet_observation_layout(tuple(pack_ids), steps, float(np.sum(ratings.rated_power_w)))
    shield = {k: v for k, v in manifest.shield.items() if k != "track_demand"}
    return SiteFleet(layout, ratings, manifest.pack_limits() * n_edges, manifest.dt_s, shield)
