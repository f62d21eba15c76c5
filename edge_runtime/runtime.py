"""The edge control loop: CAN telemetry → observation → ONNX policy → shield → CAN set-points.

:class:`EdgeRuntime` does two things.

**On every received frame** (:meth:`EdgeRuntime.handle_message`) it decodes the frame,
stores the values and checks the pack against its limits at once
(:func:`pulsebms.safety.check_violations`). A limit violation, a malformed frame, a stuck
rolling counter or a BMS fault status puts *that pack* in the safe state (zero set-point,
``enable`` 0) immediately: a safe set-point frame goes out without waiting for the tick.
The pack stays safe until its telemetry has been clean for ``recovery_hold_s``.

**On every control tick** (:meth:`EdgeRuntime.tick`) it builds the
:class:`~pulsebms.safety.state.FleetState` from the latest telemetry (the watchdog marks
stale packs), the observation from the manifest's layout, runs the policy, and passes the
action through :class:`pulsebms.safety.shield.Shield`, with every pack in the safe state
marked invalid (the shield then gives it zero and redistributes its share to packs with
headroom). Non-finite policy output, a policy or shield exception, a stale site frame:
each has a documented fallback, is counted and reported, and never stops the loop.

Safe-state reasons are the bits of :class:`SafeReason`, also sent in the set-point frame's
``Reason`` signal.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import can
import numpy as np

from pulsebms.core.types import ActArray, BoolArray, FloatArray, IntArray, ObsArray
from pulsebms.edge_runtime.codec import (
    CanCodec,
    IgnoredFrame,
    MalformedFrame,
    SetpointFrame,
    SiteFrame,
    TelemetryFrame,
)
from pulsebms.edge_runtime.manifest import Manifest, ManifestError, load_manifest
from pulsebms.edge_runtime.observation import ObservationBuilder
from pulsebms.edge_runtime.policy import OnnxPolicy
from pulsebms.edge_runtime.telemetry import TelemetryStore
from pulsebms.safety.limits import PackLimits, check_violations
from pulsebms.safety.settings import ShieldSettings
from pulsebms.safety.shield import Shield
from pulsebms.safety.state import FleetState, PackRatings

__all__ = [
    "ActingPolicy",
    "EdgeRuntime",
    "RuntimeEvent",
    "RuntimeMetrics",
    "SafeReason",
    "TickReport",
    "local_time_of_day_s",
]

logger = logging.getLogger("pulsebms.edge_runtime")


class SafeReason(enum.IntFlag):
    """Why a pack's set-point is not the policy's (bit field; ``NONE`` is none)."""

    NONE = 0
    INTERVENED = 1
    """The shield changed the set-point (the pack is not in the safe state for this)."""
    VIOLATION = 2
    """Telemetry outside the pack's limits."""
    STALE = 4
    """No fresh telemetry within the watchdog timeout."""
    MALFORMED = 8
    """A frame of this pack could not be trusted (length, range, stuck counter, ...)."""
    POLICY_FALLBACK = 16
    """The policy failed or returned a non-finite action; zero was used."""
    BMS_FAULT = 32
    """The BMS reports a fault status."""
    SITE_STALE = 64
    """No fresh site frame: the demand is unknown, every pack is held at zero."""


_LATCHING = SafeReason.VIOLATION | SafeReason.MALFORMED | SafeReason.BMS_FAULT


class ActingPolicy(Protocol):
    """Anything with ``act(observation) -> action`` (the ONNX policy, a test stub)."""

    def act(self, observation: ObsArray) -> ActArray:
        """Return the normalised action for one observation."""
        ...


@dataclass(frozen=True)
class RuntimeEvent:
    """Something the operator should know about.

    Attributes:
        time_s: Runtime clock time [s].
        kind: ``violation``, ``malformed``, ``stale``, ``recovered``, ``bms_fault``,
            ``policy_fallback``, ``site_stale``, ``send_error``, ``bus_error``,
            ``internal_error``, ``counter_gap``, ``unknown_frame``.
        pack: The pack concerned, if any.
        detail: Human-readable detail.
    """

    time_s: float
    kind: str
    pack: int | None
    detail: str


@dataclass
class RuntimeMetrics:
    """Counters of the runtime (monotonic) and recent tick latencies.

    Attributes:
        ticks: Control ticks run.
        frames_received: Frames read from the bus.
        frames_sent: Frames written to the bus.
        telemetry_frames: Valid pack telemetry frames.
        site_frames: Valid site frames.
        echo_frames: Set-point frames seen on the bus (our own echoes, or another sender).
        ignored_frames: Frames with ids that are not ours.
        malformed_frames: Frames rejected as malformed.
        violations: Limit violations found in telemetry (one per limit per frame).
        stale_events: Transitions of a pack to stale.
        safe_entries: Transitions of a pack into the safe state.
        interventions: Ticks on which the shield changed at least one set-point.
        policy_fallbacks: Ticks on which the policy's output was replaced.
        safe_pack_ticks: Sum over ticks of the number of packs in the safe state.
        counter_gaps: Telemetry frames whose rolling counter skipped (lost frames).
        send_errors: Frames the bus refused.
        bus_errors: Failed reads from the bus.
        overruns: Ticks that started late because the previous one overran.
        tick_latency_s: Recent tick latencies [s] (telemetry snapshot → set-points sent).
    """

    ticks: int = 0
    frames_received: int = 0
    frames_sent: int = 0
    telemetry_frames: int = 0
    site_frames: int = 0
    echo_frames: int = 0
    ignored_frames: int = 0
    malformed_frames: int = 0
    violations: int = 0
    stale_events: int = 0
    safe_entries: int = 0
    interventions: int = 0
    policy_fallbacks: int = 0
    safe_pack_ticks: int = 0
    counter_gaps: int = 0
    send_errors: int = 0
    bus_errors: int = 0
    overruns: int = 0
    tick_latency_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )

    def latency_percentile_s(self, q: float) -> float:
        """``q``-th percentile of recent tick latencies [s] (NaN before the first tick)."""
        if not self.tick_latency_s:
            return math.nan
        return float(np.percentile(np.fromiter(self.tick_latency_s, dtype=np.float64), q))

    def to_dict(self) -> dict[str, float]:
        """Counters plus latency p50/p99/max in milliseconds."""
        out: dict[str, float] = {
            k: float(v) for k, v in vars(self).items() if k != "tick_latency_s"
        }
        out["latency_p50_ms"] = 1e3 * self.latency_percentile_s(50)
        out["latency_p99_ms"] = 1e3 * self.latency_percentile_s(99)
        out["latency_max_ms"] = 1e3 * self.latency_percentile_s(100)
        return out


@dataclass(frozen=True)
class TickReport:
    """What one control tick did.

    Attributes:
        tick: Tick index (from 0).
        time_s: Runtime clock time of the telemetry snapshot [s].
        observation: The observation given to the policy (NaN if it could not be built).
        policy_action: The policy's raw output (NaN possible).
        action: The normalised set-points sent (after shield and safe state).
        setpoint_w: The power set-points sent [W], + = discharge.
        safe: Per pack, whether it is held in the safe state.
        reasons: Per pack, :class:`SafeReason` bits.
        shield_status: The shield's status name (``"OK"``, ``"PROJECTED|FALLBACK"``, ...).
        intervened: Per pack, whether the shield changed the set-point.
        latency_s: Snapshot → last set-point sent [s].
    """

    tick: int
    time_s: float
    observation: ObsArray
    policy_action: ActArray
    action: FloatArray
    setpoint_w: FloatArray
    safe: BoolArray
    reasons: IntArray
    shield_status: str
    intervened: BoolArray
    latency_s: float


def local_time_of_day_s() -> float:
    """Seconds since local midnight from the wall clock (used when no site time arrives)."""
    now = dt.datetime.now().astimezone()
    return float(now.hour * 3600 + now.minute * 60 + now.second + now.microsecond * 1e-6)


class EdgeRuntime:
    """ONNX policy + shield + CAN I/O + watchdog for one fleet.

    Args:
        manifest: The deployment manifest.
        policy: The policy (an :class:`~pulsebms.edge_runtime.policy.OnnxPolicy`).
        bus: An open python-can bus.
        codec: Frame codec; the project DBC with the default map by default.
        tick_s: Control interval [s]; the manifest's ``dt_s`` by default.
        stale_after_s: Watchdog timeout of pack telemetry [s] (BMS telemetry is expected at
            1 Hz or faster).
        site_stale_after_s: Watchdog timeout of the site frame [s]; ``stale_after_s`` by
            default.
        recovery_hold_s: How long a pack's telemetry must stay clean before it leaves the
            safe state [s].
        shield_settings: :class:`~pulsebms.safety.settings.ShieldSettings` fields plus
            ``dt_s`` (the shield's prediction step, the manifest's ``dt_s`` when absent);
            the manifest's by default. ``track_demand`` true aims the fleet total at the
            site demand.
        clock: Monotonic clock [s] (injected in tests and the HIL simulator).
        time_of_day: Fallback source of the time of day [s since midnight] when the site
            frame carries none.
        max_events: Events kept in :attr:`events`.

    Raises:
        ValueError: If the codec's fleet size differs from the manifest's.
        ManifestError: If the shield cannot be built from the manifest's settings.

    Example:
        >>> bus = can.Bus(interface="virtual", channel="demo")  # doctest: +SKIP
        >>> rt = EdgeRuntime.from_files("manifest.json", bus=bus, tick_s=1.0)  # doctest: +SKIP
        >>> rt.run(n_ticks=10).to_dict()["latency_p99_ms"]  # doctest: +SKIP
    """

    def __init__(
        self,
        manifest: Manifest,
        policy: ActingPolicy,
        bus: can.BusABC,
        *,
        codec: CanCodec | None = None,
        tick_s: float | None = None,
        stale_after_s: float = 2.0,
        site_stale_after_s: float | None = None,
        recovery_hold_s: float = 5.0,
        shield_settings: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        time_of_day: Callable[[], float] = local_time_of_day_s,
        max_events: int = 10_000,
    ) -> None:
        n = manifest.n_packs
        self.manifest = manifest
        self.policy = policy
        self.bus = bus
        self.codec = codec if codec is not None else CanCodec(n)
        if self.codec.n_packs != n:
            raise ValueError(f"codec routes {self.codec.n_packs} packs, the manifest has {n}")
        self.tick_s = float(manifest.dt_s if tick_s is None else tick_s)
        if not (math.isfinite(self.tick_s) and self.tick_s > 0):
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        if not math.isclose(self.tick_s, manifest.dt_s):
            logger.warning(
                "ticking every %g s, the policy was trained with dt_s=%g s: its observations "
                "(rates, forecasts) may not mean what it learned",
                self.tick_s,
                manifest.dt_s,
            )
        self.recovery_hold_s = float(recovery_hold_s)
        self.clock = clock
        self.time_of_day = time_of_day
        self.ratings: PackRatings = manifest.pack_ratings()
        self.limits: tuple[PackLimits, ...] = manifest.pack_limits()
        settings = dict(manifest.shield if shield_settings is None else shield_settings)
        try:
            dt_s = float(settings.pop("dt_s", manifest.dt_s))
            self.shield_settings: ShieldSettings = ShieldSettings.from_mapping(settings)
            self.shield = Shield(self.ratings, self.limits, dt_s, settings=self.shield_settings)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"cannot build the shield with settings {settings}: {exc}") from exc
        self.track_demand = self.shield_settings.track_demand
        self.store = TelemetryStore(
            n, stale_after_s=stale_after_s, site_stale_after_s=site_stale_after_s
        )
        self.builder = ObservationBuilder(manifest)
        self.metrics = RuntimeMetrics()
        self.events: collections.deque[RuntimeEvent] = collections.deque(maxlen=max_events)
        self.n_packs = n
        self._rated_w = np.asarray(self.ratings.rated_power_w, dtype=np.float64)
        self._pack_ratings = [
            PackRatings(
                chemistry=(self.ratings.chemistry[i],),
                series=self.ratings.series[i : i + 1],
                parallel=self.ratings.parallel[i : i + 1],
                cell_capacity_ah=self.ratings.cell_capacity_ah[i : i + 1],
                rated_power_w=self.ratings.rated_power_w[i : i + 1],
            )
            for i in range(n)
        ]
        self._status_fault = frozenset(self.codec.signal_map.status_fault_values)
        self._counter_mod = self.codec.counter_modulus("telemetry")
        self._last_counter = np.full(n, -1, dtype=np.int64)
        self._last_bad_s = np.full(n, -math.inf)
        self._bad_reason = np.zeros(n, dtype=np.int64)
        self._safe = np.ones(n, dtype=bool)  # nothing runs before telemetry arrives
        self._stale = np.ones(n, dtype=bool)
        self._site_fresh = False
        self._last_action = np.zeros(n, dtype=np.float64)
        self._tx_counter = np.zeros(n, dtype=np.int64)  # rolling counter per pack
        self._tick = 0
        self._lock = threading.Lock()
        self.bus_error_backoff_s = 0.05

    @classmethod
    def from_files(
        cls,
        manifest_path: str | Path,
        model_path: str | Path | None = None,
        *,
        bus: can.BusABC,
        intra_op_threads: int = 1,
        **kwargs: Any,
    ) -> EdgeRuntime:
        """Load the manifest, verify the model's sha256, and build the runtime.

        Args:
            manifest_path: ``manifest.json``.
            model_path: ``policy.onnx``; ``model.file`` beside the manifest by default.
            bus: An open python-can bus.
            intra_op_threads: onnxruntime threads.
            **kwargs: Other :class:`EdgeRuntime` arguments.

        Returns:
            The runtime.

        Raises:
            ManifestError: If the manifest is invalid.
            ModelIntegrityError: If the model's sha256 differs from the manifest's.
        """
        manifest = load_manifest(manifest_path)
        model = manifest.read_verified_model(model_path)
        policy = OnnxPolicy(
            model,
            manifest.model.observation_size,
            manifest.model.action_size,
            manifest.model.input_name,
            manifest.model.output_name,
            intra_op_threads=intra_op_threads,
        )
        return cls(manifest, policy, bus, **kwargs)

    # ------------------------------------------------------------------ reporting
    def _event(self, kind: str, pack: int | None, detail: str, *, now_s: float) -> None:
        self.events.append(RuntimeEvent(now_s, kind, pack, detail))
        level = logging.INFO if kind == "recovered" else logging.WARNING
        logger.log(level, "%s pack=%s %s", kind, pack, detail)

    @property
    def safe(self) -> BoolArray:
        """Per pack, whether it was held in the safe state on the last tick (or since)."""
        return self._safe.copy()

    # ------------------------------------------------------------------ frames
    def _send(self, msg: can.Message, now_s: float) -> None:
        try:
            self.bus.send(msg, timeout=0.05)
            self.metrics.frames_sent += 1
        except (can.CanError, OSError, ValueError) as exc:
            self.metrics.send_errors += 1
            self._event("send_error", None, f"0x{msg.arbitration_id:X}: {exc}", now_s=now_s)

    def _mark_bad(self, pack: int, reason: SafeReason, detail: str, now_s: float) -> None:
        """Put ``pack`` in the safe state now, and tell the pack at once if it was running."""
        self._last_bad_s[pack] = now_s
        self._bad_reason[pack] |= int(reason)
        kind = {
            SafeReason.VIOLATION: "violation",
            SafeReason.MALFORMED: "malformed",
            SafeReason.BMS_FAULT: "bms_fault",
        }.get(reason, "safe")
        if not self._safe[pack]:
            self._safe[pack] = True
            self.metrics.safe_entries += 1
            self._event(kind, pack, detail, now_s=now_s)
            self._send_setpoint(
                pack, 0.0, safe=True, reason=int(self._bad_reason[pack]), now_s=now_s
            )
        else:
            self.events.append(RuntimeEvent(now_s, kind, pack, detail))

    def _send_setpoint(
        self, pack: int, power_w: float, *, safe: bool, reason: int, now_s: float
    ) -> None:
        msg = self.codec.encode_setpoint(
            pack, power_w, safe=safe, reason=reason, counter=int(self._tx_counter[pack])
        )
        self._tx_counter[pack] += 1
        self._send(msg, now_s)

    def handle_message(self, msg: can.Message, now_s: float | None = None) -> None:
        """Process one received frame; never raises.

        Args:
            msg: The frame.
            now_s: Arrival time on the runtime clock; ``clock()`` by default.
        """
        t = self.clock() if now_s is None else now_s
        with self._lock:
            self.metrics.frames_received += 1
            try:
                self._handle(msg, t)
            except Exception as exc:  # the loop must survive any input
                self._event("internal_error", None, f"handling frame: {exc!r}", now_s=t)

    def _handle(self, msg: can.Message, t: float) -> None:
        frame = self.codec.decode(msg)
        if isinstance(frame, TelemetryFrame):
            self._on_telemetry(frame, t)
        elif isinstance(frame, SiteFrame):
            self.metrics.site_frames += 1
            self.store.update_site(frame.values, now_s=t)
        elif isinstance(frame, SetpointFrame):
            self.metrics.echo_frames += 1
        elif isinstance(frame, MalformedFrame):
            self.metrics.malformed_frames += 1
            if frame.pack is not None:
                self._mark_bad(frame.pack, SafeReason.MALFORMED, frame.reason, t)
            else:
                self.events.append(RuntimeEvent(t, "malformed", None, frame.reason))
        elif isinstance(frame, IgnoredFrame):
            self.metrics.ignored_frames += 1

    def _on_telemetry(self, frame: TelemetryFrame, t: float) -> None:
        pack = frame.pack
        if frame.counter is not None and self._counter_mod > 1:
            last = int(self._last_counter[pack])
            self._last_counter[pack] = frame.counter
            if last >= 0 and frame.counter == last:
                self.metrics.malformed_frames += 1
                self._mark_bad(pack, SafeReason.MALFORMED, f"rolling counter stuck at {last}", t)
                return
            if last >= 0 and frame.counter != (last + 1) % self._counter_mod:
                self.metrics.counter_gaps += 1
        self.metrics.telemetry_frames += 1
        self.store.update_pack(pack, frame.values, now_s=t, status=frame.status)
        if frame.status is not None and frame.status in self._status_fault:
            self._mark_bad(pack, SafeReason.BMS_FAULT, f"BMS status {frame.status}", t)
        if self.store.has_all(pack):
            found = check_violations(
                self.store.pack_state(pack), self._pack_ratings[pack], self.limits[pack]
            )
            if found:
                self.metrics.violations += len(found)
                detail = ", ".join(f"{v.limit}: {v.value:.4g} vs {v.bound:.4g}" for v in found)
                self._mark_bad(pack, SafeReason.VIOLATION, detail, t)

    def poll(self, timeout_s: float, *, max_frames: int = 10_000) -> int:
        """Read and handle frames until ``timeout_s`` has passed and nothing is waiting.

        Args:
            timeout_s: How long to wait for frames [s]; 0 handles only what is waiting.
            max_frames: Stop after this many frames (a flooded bus must not starve the tick).

        Returns:
            Frames handled.
        """
        deadline = self.clock() + max(timeout_s, 0.0)
        handled = 0
        while handled < max_frames:
            remaining = max(deadline - self.clock(), 0.0)
            try:
                msg = self.bus.recv(timeout=remaining)
            except (can.CanError, OSError) as exc:
                self.metrics.bus_errors += 1
                self._event("bus_error", None, str(exc), now_s=self.clock())
                break
            if msg is None:
                break
            self.handle_message(msg)
            handled += 1
        return handled

    # ------------------------------------------------------------------ control tick
    def tick(self) -> TickReport:
        """Run one control step and send every pack's set-point; never raises on input."""
        with self._lock:
            return self._tick_locked()

    def _safe_mask(self, now: float, state: FleetState) -> tuple[BoolArray, IntArray]:
        n = self.n_packs
        reasons = np.zeros(n, dtype=np.int64)
        stale = ~np.asarray(state.valid, dtype=bool)
        for i in np.flatnonzero(stale & ~self._stale):
            self.metrics.stale_events += 1
            age = float(self.store.age_s(now)[i])
            self._event("stale", int(i), f"no complete telemetry for {age:.3g} s", now_s=now)
        self._stale = stale
        reasons[stale] |= int(SafeReason.STALE)
        latched = (now - self._last_bad_s) < self.recovery_hold_s
        self._bad_reason[~latched] = 0
        reasons[latched] |= self._bad_reason[latched] & int(_LATCHING)
        site = self.store.site(now)
        if not site.fresh:
            reasons |= int(SafeReason.SITE_STALE)
            if self._site_fresh:
                self._event("site_stale", None, f"no site frame for {site.age_s:.3g} s", now_s=now)
        self._site_fresh = site.fresh
        safe = reasons != 0
        for i in np.flatnonzero(self._safe & ~safe):
            self._event("recovered", int(i), "telemetry clean, pack back in operation", now_s=now)
        self.metrics.safe_entries += int(np.count_nonzero(~self._safe & safe))
        return safe, reasons

    def _tick_locked(self) -> TickReport:
        start = time.perf_counter()
        now = self.clock()
        n = self.n_packs
        state = self.store.fleet_state(now)
        safe, reasons = self._safe_mask(now, state)
        site = self.store.site(now)
        tod = site.time_of_day_s if math.isfinite(site.time_of_day_s) else self.time_of_day()
        policy_action = np.full(n, np.nan, dtype=np.float32)
        obs = np.full(self.builder.size, np.nan, dtype=np.float32)
        try:
            obs = self.builder.build(state, site, self._last_action, time_of_day_s=tod)
            policy_action = np.asarray(self.policy.act(obs), dtype=np.float32).reshape(n)
        except Exception as exc:
            self._event("policy_fallback", None, f"policy failed: {exc!r}", now_s=now)
        bad = ~np.isfinite(policy_action)
        if bad.any():
            self.metrics.policy_fallbacks += 1
            reasons[bad] |= int(SafeReason.POLICY_FALLBACK)
            self.events.append(
                RuntimeEvent(now, "policy_fallback", None, f"{int(bad.sum())} non-finite")
            )
        # Safe packs keep their request here: the shield sees them invalid, gives them zero
        # and redistributes their share to packs with headroom (keeping the fleet total).
        request = np.where(bad, 0.0, policy_action).astype(np.float64)
        shield_state = FleetState(
            soc=state.soc,
            soh=state.soh,
            temperature_c=state.temperature_c,
            cell_voltage_v=state.cell_voltage_v,
            current_a=state.current_a,
            demand_w=state.demand_w,
            valid=np.asarray(state.valid & ~safe, dtype=bool),
        )
        status = "ERROR"
        intervened = np.zeros(n, dtype=bool)
        try:
            target = state.demand_w if self.track_demand else None
            result = self.shield.project(shield_state, request, target)
            action = np.asarray(result.action, dtype=np.float64)
            intervened = np.asarray(result.intervened, dtype=bool)
            status = result.status.name or "OK"
        except Exception as exc:  # documented fallback: every pack at zero
            action = np.zeros(n)
            safe = np.ones(n, dtype=bool)
            self._event("internal_error", None, f"shield failed: {exc!r}", now_s=now)
        action = np.where(np.isfinite(action), action, 0.0)
        action[safe] = 0.0
        if (intervened & ~safe).any():
            self.metrics.interventions += 1
        reasons[intervened & ~safe] |= int(SafeReason.INTERVENED)
        setpoint_w = action * self._rated_w
        for i in range(n):
            self._send_setpoint(
                i, float(setpoint_w[i]), safe=bool(safe[i]), reason=int(reasons[i]), now_s=now
            )
        self._safe = safe
        self._last_action = action
        latency = time.perf_counter() - start
        self.metrics.ticks += 1
        self.metrics.safe_pack_ticks += int(safe.sum())
        self.metrics.tick_latency_s.append(latency)
        report = TickReport(
            tick=self._tick,
            time_s=now,
            observation=obs,
            policy_action=policy_action,
            action=action,
            setpoint_w=setpoint_w,
            safe=safe.copy(),
            reasons=reasons,
            shield_status=status,
            intervened=intervened,
            latency_s=latency,
        )
        self._tick += 1
        return report

    def command_safe_state(self, reason: SafeReason = SafeReason.NONE) -> None:
        """Send the safe state (zero power, disabled) to every pack, e.g. on shutdown."""
        with self._lock:
            now = self.clock()
            for i in range(self.n_packs):
                self._send_setpoint(i, 0.0, safe=True, reason=int(reason), now_s=now)
            self._safe[:] = True

    # ------------------------------------------------------------------ loop
    def _wait_until(self, deadline_s: float, stop: threading.Event | None) -> None:
        """Handle frames until ``deadline_s``; back off briefly after a bus error."""
        while True:
            remaining = deadline_s - self.clock()
            if remaining <= 0.0 or (stop is not None and stop.is_set()):
                return
            errors = self.metrics.bus_errors
            self.poll(remaining)
            if self.metrics.bus_errors != errors:  # a failing bus must not spin the CPU
                time.sleep(min(remaining, self.bus_error_backoff_s))

    def run(
        self,
        *,
        n_ticks: int | None = None,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> RuntimeMetrics:
        """Run the loop on the wall clock: read frames between ticks, tick every ``tick_s``.

        Args:
            n_ticks: Stop after this many ticks.
            duration_s: Stop after this long.
            stop: Stop when set (e.g. by a signal handler).

        Returns:
            The metrics.
        """
        start = self.clock()
        next_tick = start
        ticks = 0
        while True:
            if stop is not None and stop.is_set():
                break
            if n_ticks is not None and ticks >= n_ticks:
                break
            if duration_s is not None and self.clock() - start >= duration_s:
                break
            self._wait_until(next_tick, stop)
            self.tick()
            ticks += 1
            next_tick += self.tick_s
            if next_tick < self.clock():
                self.metrics.overruns += 1
                next_tick = self.clock()
        return self.metrics
