"""The edge control loop: CAN telemetry → observation → ONNX policy → shield → CAN commands.

:class:`EdgeRuntime` has three clocks, set separately: the BMS telemetry period it expects
(``telemetry_period_s``), the safety timer (``safety_period_s``, 50 ms by default) and the
control tick (``tick_s``, the manifest's ``dt_s`` by default).

**On every received frame** (:meth:`EdgeRuntime.handle_message`) it decodes the frame,
stores the values and checks both ends of every window of the pack (min and max cell
voltage, min and max temperature, SoC, current, C-rate) at once. :meth:`EdgeRuntime.poll`
reads what is waiting on the bus in one drain and hands it to
:meth:`EdgeRuntime.handle_messages`: with a codec that batches
(:attr:`CanCodec.batch <pulsebms.edge_runtime.codec.CanCodec.batch>`) the drain's clean
telemetry is decoded, stored and checked in numpy, message by message, with the same
results per pack as frame by frame. A limit violation, a
malformed frame, rolling-counter or checksum errors beyond their tolerance, or a BMS fault
status puts *that pack* in the safe state immediately: a safe command goes out without
waiting for the tick. The pack stays safe until its telemetry has been clean for
``recovery_hold_s``.

**On the safety timer** (:meth:`EdgeRuntime.check_safety`, a thread started by
:meth:`EdgeRuntime.run`) a pack whose telemetry is older than ``stale_after_s``, or every
pack when the site is stale, gets its safe command at once: within
``stale_after_s + safety_period_s`` of its last frame whatever the tick. A stop request
(:meth:`EdgeRuntime.request_stop`, e.g. from a signal handler) is acted on by the timer
at once: every pack safe, and no enabled command is sent afterwards.

**On every control tick** (:meth:`EdgeRuntime.tick`) it builds the
:class:`~pulsebms.safety.state.FleetState` from the latest telemetry, the observation from
the manifest's layout, runs the policy (outside the lock: the safety timer keeps running),
and passes the action through :class:`pulsebms.safety.shield.Shield`, with every pack in the
safe state marked invalid (the shield then gives it zero and redistributes its share to
packs with headroom). A pack put safe while the policy ran stays safe in that tick's
commands. Non-finite policy output, a policy or shield exception, a stale site: each has a
documented fallback, is counted and reported, and never stops the loop.

Several buses (one per pack or group) come from the codec (``bus_names``, ``bus_of``);
the site demand comes from CAN or any :class:`~pulsebms.edge_runtime.site.SiteSource`.
Safe-state reasons are the bits of :class:`SafeReason`, also sent in the command frame's
``Reason`` signal.

**State estimation** (:class:`~pulsebms.edge_runtime.estimation.FleetEstimator`, on by
default, ``estimator=None`` turns it off): after a frame's safety check and any safe-state
frame it caused, a pack's filter is updated once per new (current, cell voltage) sample.
Where the signal map carries no ``soc`` / ``soh`` the store takes the estimate instead (the
pack is then complete and runs on the estimated SoC: limit check, observation, shield).
Where the BMS reports both, the estimate is a plausibility cross-check only: a reported
value outside the estimate's tolerance gives an ``estimate_disagreement`` event and counts
in ``RuntimeMetrics.estimate_disagreements``; it does **not** put the pack in the safe
state (the BMS's own values stay the ones acted on).
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import can
import numpy as np

from pulsebms.core.types import ActArray, BoolArray, FloatArray, IntArray, ObsArray
from pulsebms.edge_runtime.codec import (
    CanCodec,
    DecodedBatch,
    IgnoredFrame,
    MalformedFrame,
    SetpointFrame,
    SiteFrame,
    TelemetryBatch,
    TelemetryFrame,
)
from pulsebms.edge_runtime.estimation import FleetEstimator
from pulsebms.edge_runtime.manifest import Manifest, ManifestError, load_manifest
from pulsebms.edge_runtime.monitor import SafetyTimer
from pulsebms.edge_runtime.observation import ObservationBuilder
from pulsebms.edge_runtime.policy import OnnxPolicy
from pulsebms.edge_runtime.site import CanSite, SiteSource
from pulsebms.edge_runtime.telemetry import TelemetryStore
from pulsebms.safety.limits import PackLimits
from pulsebms.safety.settings import ShieldSettings
from pulsebms.safety.shield import Shield
from pulsebms.safety.state import FleetState, PackRatings

__all__ = [
    "DEFAULT_BUS",
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
    """A frame of this pack could not be trusted (length, range, counter, checksum, ...)."""
    POLICY_FALLBACK = 16
    """The policy failed or returned a non-finite action; zero was used."""
    BMS_FAULT = 32
    """The BMS reports a fault status."""
    SITE_STALE = 64
    """No fresh site frame: the demand is unknown, every pack is held at zero."""
    OPERATOR = 128
    """An operator's command holds the pack safe (:meth:`EdgeRuntime.hold_safe`)."""


_LATCHING = SafeReason.VIOLATION | SafeReason.MALFORMED | SafeReason.BMS_FAULT

DEFAULT_BUS = "default"
"""Bus name used when the codec names none."""


_VOLTAGE_KEYS = frozenset({"cell_voltage_v", "cell_voltage_min_v", "cell_voltage_max_v"})


def _reported_quantities(codec: object) -> frozenset[str] | None:
    """Telemetry quantities the codec's signal map carries (None: cannot tell)."""
    telemetry = getattr(getattr(codec, "signal_map", None), "telemetry", None)
    if not isinstance(telemetry, (tuple, list)):
        return None
    try:
        return frozenset(k for m in telemetry for k in m.signals)
    except (AttributeError, TypeError):
        return None


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
            ``internal_error``, ``counter_error``, ``checksum_error``, ``site_error``,
            ``stop``, ``estimate_disagreement`` (the BMS's SoC/SoH is implausible against
            the runtime's estimate: reported, the pack is not put safe).
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
        counter_errors: Telemetry frames with a repeated (stuck) rolling counter (dropped).
        checksum_errors: Telemetry frames whose checksum failed (dropped).
        timer_safe_entries: Packs the safety timer put safe (stale pack or site, stop).
        send_errors: Frames the bus refused.
        bus_errors: Failed reads from the bus.
        overruns: Ticks that started late because the previous one overran.
        estimate_updates: Samples folded into the state estimator.
        estimate_disagreements: Transitions of a pack into disagreement between its BMS's
            SoC/SoH and the estimate (events, not safe states).
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
    counter_errors: int = 0
    checksum_errors: int = 0
    timer_safe_entries: int = 0
    send_errors: int = 0
    bus_errors: int = 0
    overruns: int = 0
    estimate_updates: int = 0
    estimate_disagreements: int = 0
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


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def _check_tolerance(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


class EdgeRuntime:
    """ONNX policy + shield + CAN I/O + watchdog for one fleet.

    Args:
        manifest: The deployment manifest.
        policy: The policy (an :class:`~pulsebms.edge_runtime.policy.OnnxPolicy`).
        bus: An open python-can bus, or bus name → bus for a codec with several buses
            (``codec.bus_names``). One bus given to a codec with several names serves them
            all.
        codec: Frame codec; the project DBC with the default map by default.
        tick_s: Control interval [s]; the manifest's ``dt_s`` by default.
        telemetry_period_s: How often each BMS is expected to send its telemetry [s]
            (1 s when not given).
        stale_after_s: Watchdog timeout of pack telemetry [s]; twice the telemetry period
            by default; must exceed ``telemetry_period_s`` when that is given.
        site_stale_after_s: Watchdog timeout of the site values [s]; ``stale_after_s`` by
            default.
        safety_period_s: Period of the safety timer [s] (stale packs, stale site, stop
            requests are acted on within it); at most ``stale_after_s``; 50 ms (or
            ``stale_after_s`` if shorter) by default.
        recovery_hold_s: How long a pack's telemetry must stay clean before it leaves the
            safe state [s].
        site_source: Where the site demand comes from; CAN site frames by default.
        counter_tolerance: Consecutive telemetry frames with a stuck rolling counter that
            are dropped before the pack goes safe; the signal map's ``counter_tolerance``
            if it has one, else 0.
        checksum_tolerance: Same for failed checksums; the signal map's
            ``checksum_tolerance`` if it has one, else 0.
        shield_settings: :class:`~pulsebms.safety.settings.ShieldSettings` fields plus
            ``dt_s`` (the shield's prediction step, the manifest's ``dt_s`` when absent);
            the manifest's by default. ``track_demand`` true aims the fleet total at the
            site demand.
        clock: Monotonic clock [s] (injected in tests and the HIL simulator).
        time_of_day: Fallback source of the time of day [s since midnight] when the site
            values carry none.
        max_events: Events kept in :attr:`events`.
        estimator: State estimation: ``"auto"`` (default) builds a
            :class:`~pulsebms.edge_runtime.estimation.FleetEstimator` from the manifest's
            ratings, or give one, or ``None`` for none. It supplies SoC/SoH the signal map
            does not carry and cross-checks those it does (see the module docstring).
        estimator_interval_s: Least time between two estimator updates of a pack [s]; 0
            (default) updates on every telemetry cycle. Between updates the current is
            averaged over time (the charge count stays exact); the filter then sees one
            sample per interval (its RC and noise model at that coarser step), and an
            estimated SoC in the store moves at that rate. Cuts the estimator's CPU per
            cycle roughly by ``interval / telemetry period``.

    Raises:
        ValueError: If the codec's fleet size differs from the manifest's, a bus of the
            codec is missing, or a period, timeout or tolerance is out of range, or the
            signal map lacks SoC/SoH and no estimator can be had.
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
        bus: can.BusABC | Mapping[str, can.BusABC],
        *,
        codec: CanCodec | None = None,
        tick_s: float | None = None,
        telemetry_period_s: float | None = None,
        stale_after_s: float | None = None,
        site_stale_after_s: float | None = None,
        safety_period_s: float | None = None,
        recovery_hold_s: float = 5.0,
        site_source: SiteSource | None = None,
        counter_tolerance: int | None = None,
        checksum_tolerance: int | None = None,
        shield_settings: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        time_of_day: Callable[[], float] = local_time_of_day_s,
        max_events: int = 10_000,
        estimator: FleetEstimator | str | None = "auto",
        estimator_interval_s: float = 0.0,
    ) -> None:
        n = manifest.n_packs
        self.manifest = manifest
        self.policy = policy
        self.codec = codec if codec is not None else CanCodec(n)
        if self.codec.n_packs != n:
            raise ValueError(f"codec routes {self.codec.n_packs} packs, the manifest has {n}")
        self.tick_s = _check_positive("tick_s", manifest.dt_s if tick_s is None else tick_s)
        if not math.isclose(self.tick_s, manifest.dt_s):
            logger.warning(
                "ticking every %g s, the policy was trained with dt_s=%g s: its observations "
                "(rates, forecasts) may not mean what it learned",
                self.tick_s,
                manifest.dt_s,
            )
        period = 1.0 if telemetry_period_s is None else telemetry_period_s
        self.telemetry_period_s = _check_positive("telemetry_period_s", period)
        stale = 2.0 * self.telemetry_period_s if stale_after_s is None else stale_after_s
        self.stale_after_s = _check_positive("stale_after_s", stale)
        if telemetry_period_s is not None and self.stale_after_s <= self.telemetry_period_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s} s) must exceed the telemetry period "
                f"({self.telemetry_period_s} s), or every pack goes stale between frames"
            )
        site_stale = self.stale_after_s if site_stale_after_s is None else site_stale_after_s
        self.site_stale_after_s = _check_positive("site_stale_after_s", site_stale)
        safety = min(0.05, self.stale_after_s) if safety_period_s is None else safety_period_s
        self.safety_period_s = _check_positive("safety_period_s", safety)
        if self.safety_period_s > self.stale_after_s:
            raise ValueError(
                f"safety_period_s ({self.safety_period_s} s) must not exceed stale_after_s "
                f"({self.stale_after_s} s)"
            )
        self.recovery_hold_s = _check_positive("recovery_hold_s", recovery_hold_s, allow_zero=True)
        sm = self.codec.signal_map
        self.counter_tolerance = _check_tolerance(
            "counter_tolerance",
            getattr(sm, "counter_tolerance", 0) if counter_tolerance is None else counter_tolerance,
        )
        self.checksum_tolerance = _check_tolerance(
            "checksum_tolerance",
            getattr(sm, "checksum_tolerance", 0)
            if checksum_tolerance is None
            else checksum_tolerance,
        )
        self.site_source: SiteSource = site_source if site_source is not None else CanSite()
        self._site_from_can = isinstance(self.site_source, CanSite)
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
            n, stale_after_s=self.stale_after_s, site_stale_after_s=self.site_stale_after_s
        )
        self.builder = ObservationBuilder(manifest)
        self.metrics = RuntimeMetrics()
        self.events: collections.deque[RuntimeEvent] = collections.deque(maxlen=max_events)
        self.n_packs = n
        self._setup_buses(bus)
        self._rated_w = np.asarray(self.ratings.rated_power_w, dtype=np.float64)
        self._series = [int(s) for s in self.ratings.series]
        self._series_f = np.asarray(self._series, dtype=np.float64)
        capacity = np.asarray(self.ratings.capacity_ah, dtype=np.float64)
        self._limit_rows = [
            (
                lim.cell_voltage_min_v,
                lim.cell_voltage_max_v,
                lim.current_min_a,
                lim.current_max_a,
                lim.temperature_min_c,
                lim.temperature_max_c,
                lim.soc_min,
                lim.soc_max,
                lim.c_rate_max,
                float(capacity[i]),
            )
            for i, lim in enumerate(self.limits)
        ]
        self._limit_table = np.asarray(self._limit_rows, dtype=np.float64).T.copy()
        self._status_fault = frozenset(getattr(sm, "status_fault_values", ()))
        self._state_fault = frozenset(getattr(sm, "bms_state_fault_values", ()))
        modulus = getattr(self.codec, "counter_modulus", None)
        try:
            self._counter_mod = int(modulus("telemetry")) if modulus is not None else 0
        except (KeyError, ValueError, TypeError):
            self._counter_mod = 0
        self._encode_command: Callable[..., list[tuple[str, can.Message]]] | None = getattr(
            self.codec, "encode_command", None
        )
        # Batches (a codec that offers them): one drain of the bus decoded together, one
        # tick's commands encoded together. Without them every frame goes on its own.
        batching = bool(getattr(self.codec, "batch", False))
        self._decode_batch: Callable[..., DecodedBatch] | None = (
            getattr(self.codec, "decode_batch", None) if batching else None
        )
        self._encode_commands: Callable[..., list[tuple[str, can.Message]]] | None = (
            getattr(self.codec, "encode_commands", None)
            if batching and self._encode_command is not None
            else None
        )
        self._counter_keys: dict[str, list[tuple[int, str, int]]] = {}
        # frames read without waiting before they are handled: a flooded bus must not keep
        # the first frame (maybe a violation) waiting for thousands of reads
        self._drain_max = max(64, 2 * n)
        self._last_counter: dict[tuple[int, str, int], int] = {}
        self._counter_run = np.zeros(n, dtype=np.int64)
        self._checksum_run = np.zeros(n, dtype=np.int64)
        self._last_bad_s = np.full(n, -math.inf)
        self._bad_reason = np.zeros(n, dtype=np.int64)
        self._safe = np.ones(n, dtype=bool)  # nothing runs before telemetry arrives
        self._stale = np.ones(n, dtype=bool)
        self._forced = np.zeros(n, dtype=bool)  # put safe since the tick's snapshot
        self._forced_reason = np.zeros(n, dtype=np.int64)
        self._site_fresh = False
        self._held = np.zeros(n, dtype=bool)  # operator hold (hold_safe), until released
        self._last_action = np.zeros(n, dtype=np.float64)
        self._last_report: TickReport | None = None
        self._tx_counter = np.zeros(n, dtype=np.int64)  # rolling counter per pack
        self._tick = 0
        self._lock = threading.RLock()
        self._stopping = False
        self._stop_commanded = False
        self._timer: SafetyTimer | None = None
        self.bus_error_backoff_s = 0.05
        self.estimator_interval_s = _check_positive(
            "estimator_interval_s", estimator_interval_s, allow_zero=True
        )
        self._setup_estimator(estimator)

    def _setup_buses(self, bus: can.BusABC | Mapping[str, can.BusABC]) -> None:
        names = tuple(getattr(self.codec, "bus_names", ()) or (DEFAULT_BUS,))
        if isinstance(bus, can.BusABC):
            buses = dict.fromkeys(names, bus)
        else:
            buses = dict(bus)
            missing = [name for name in names if name not in buses]
            if missing:
                raise ValueError(f"no bus given for {missing}; the codec uses buses {list(names)}")
        self.buses: dict[str, can.BusABC] = buses
        """Bus name → bus."""
        self.bus: can.BusABC = buses[names[0]]
        """The first bus (the only one in the common case)."""
        rx: dict[int, tuple[can.BusABC, list[str]]] = {}
        for name in names:
            b = buses[name]
            rx.setdefault(id(b), (b, []))[1].append(name)
        self._rx = [(b, tuple(served)) for b, served in rx.values()]
        self._rx_next = 0
        bus_of = getattr(self.codec, "bus_of", None)
        self._pack_bus = [
            str(bus_of(i)) if bus_of is not None else names[0] for i in range(self.n_packs)
        ]
        decode_params = inspect.signature(self.codec.decode).parameters
        self._decode_takes_bus = "bus" in decode_params

    @classmethod
    def from_files(
        cls,
        manifest_path: str | Path,
        model_path: str | Path | None = None,
        *,
        bus: can.BusABC | Mapping[str, can.BusABC],
        intra_op_threads: int = 1,
        **kwargs: Any,
    ) -> EdgeRuntime:
        """Load the manifest, verify the model's sha256, and build the runtime.

        Args:
            manifest_path: ``manifest.json``.
            model_path: ``policy.onnx``; ``model.file`` beside the manifest by default.
            bus: An open python-can bus (or name → bus).
            intra_op_threads: onnxruntime threads.
            **kwargs: Other :class:`EdgeRuntime` arguments.

        Returns:
            The runtime.

        Raises:
            ManifestError: If the manifest is invalid.
            ModelIntegrityError: If the model's sha256 differs from the manifest's.
            ValueError: If the model's inputs/outputs do not match the manifest, or an
                argument is out of range.
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

    # ------------------------------------------------------------------ estimation
    def _setup_estimator(self, estimator: FleetEstimator | str | None) -> None:
        reported = _reported_quantities(self.codec)
        missing = tuple(q for q in ("soc", "soh") if reported is not None and q not in reported)
        self.estimated_quantities: tuple[str, ...] = missing
        """Quantities the store takes from the estimator (the signal map lacks them)."""
        est: FleetEstimator | None
        if isinstance(estimator, FleetEstimator):
            if estimator.n_packs != self.n_packs:
                raise ValueError(
                    f"estimator has {estimator.n_packs} packs, the manifest {self.n_packs}"
                )
            est = estimator
        elif estimator == "auto":
            try:
                est = FleetEstimator(self.ratings)
            except ValueError as exc:
                if missing:
                    raise ValueError(
                        f"the signal map carries no {'/'.join(missing)} and the estimator "
                        f"cannot be built: {exc}"
                    ) from exc
                logger.warning("no state estimator (SoC/SoH cross-check off): %s", exc)
                est = None
        elif estimator is None:
            est = None
            if missing:
                logger.warning(
                    "the signal map carries no %s and the estimator is off: every pack "
                    "stays incomplete (safe)",
                    "/".join(missing),
                )
        else:
            raise ValueError(f"estimator must be 'auto', None or a FleetEstimator: {estimator!r}")
        self.estimator: FleetEstimator | None = est
        """The state estimator, or ``None``."""
        self._est_cross_check = est is not None and len(missing) < 2
        self._est_current_seen = [False] * self.n_packs
        # with an update interval: last update and sample times, charge since the update
        self._est_update_s: list[float | None] = [None] * self.n_packs
        self._est_sample_s: list[float | None] = [None] * self.n_packs
        self._est_charge_as = [0.0] * self.n_packs
        self._est_disagree = np.zeros(self.n_packs, dtype=bool)

    @property
    def estimate_disagreement(self) -> BoolArray:
        """Per pack, whether its BMS's SoC/SoH disagrees with the estimate now."""
        return self._est_disagree.copy()

    def _update_estimate(self, frame: TelemetryFrame, t: float) -> None:
        """Fold a new (current, cell voltage) sample of the frame's pack into the estimator.

        Called after the frame's safety check. A sample is taken when a frame carrying a
        cell voltage (single, min/max or cells) arrives with or after a current since the
        last sample: once per telemetry cycle whatever the map splits into frames.
        """
        est = self.estimator
        if est is None:
            return
        pack = frame.pack
        values = frame.values
        if "current_a" in values:
            self._est_current_seen[pack] = True
        if not self._est_current_seen[pack]:
            return
        if not (getattr(frame, "cell_voltages_v", None) or values.keys() & _VOLTAGE_KEYS):
            return
        self._est_current_seen[pack] = False
        soc, soh, cur, vmin, vmax, tmin, tmax = self.store.pack_values(pack)
        if self.estimator_interval_s > 0.0:
            cur_avg = self._est_average_current(pack, t, cur)
            if cur_avg is None:
                return
            cur = cur_avg
        volt = float(values.get("cell_voltage_v", 0.5 * (vmin + vmax)))
        est.update(pack, t, cur, volt, 0.5 * (tmin + tmax))
        self.metrics.estimate_updates += 1
        if self.estimated_quantities:
            own = {"soc": float(est.soc[pack]), "soh": float(est.soh[pack])}
            out = {q: own[q] for q in self.estimated_quantities if math.isfinite(own[q])}
            if out:
                self.store.update_pack(pack, out, now_s=t)
        if self._est_cross_check and math.isfinite(soc) and math.isfinite(soh):
            self._cross_check(pack, t)

    def _est_average_current(self, pack: int, t: float, cur: float) -> float | None:
        """The current to fold in now (time average since the last update), or None: skip.

        Each sample's current is held since the previous sample (the estimator's
        convention), so the average over the skipped samples counts the same charge.
        """
        last_sample = self._est_sample_s[pack]
        last_update = self._est_update_s[pack]
        self._est_sample_s[pack] = t
        if last_sample is None or last_update is None or not t > last_sample:
            self._est_update_s[pack] = t
            self._est_charge_as[pack] = 0.0
            return cur
        self._est_charge_as[pack] += cur * (t - last_sample)
        if t - last_update < self.estimator_interval_s:
            return None
        charge = self._est_charge_as[pack]
        self._est_charge_as[pack] = 0.0
        self._est_update_s[pack] = t
        return charge / (t - last_update)

    def _cross_check(self, pack: int, t: float) -> None:
        est = self.estimator
        if est is None:
            return
        values = self.store.values
        bad = bool(est.disagreement(values["soc"], values["soh"])[pack])
        if bad and not self._est_disagree[pack]:
            self.metrics.estimate_disagreements += 1
            detail = (
                f"BMS SoC {values['soc'][pack]:.3f} SoH {values['soh'][pack]:.3f}, estimate "
                f"SoC {est.soc[pack]:.3f}±{est.soc_std[pack]:.3f} "
                f"SoH {est.soh[pack]:.3f}±{est.soh_std[pack]:.3f} (not a safe state)"
            )
            self._event("estimate_disagreement", pack, detail, now_s=t)
        elif not bad and self._est_disagree[pack]:
            logger.info("pack=%s BMS SoC/SoH agree with the estimate again", pack)
        self._est_disagree[pack] = bad

    # ------------------------------------------------------------------ reporting
    def _event(self, kind: str, pack: int | None, detail: str, *, now_s: float) -> None:
        self.events.append(RuntimeEvent(now_s, kind, pack, detail))
        level = logging.INFO if kind in ("recovered", "stop") else logging.WARNING
        logger.log(level, "%s pack=%s %s", kind, pack, detail)

    @property
    def safe(self) -> BoolArray:
        """Per pack, whether it is held in the safe state (last tick, or since)."""
        return self._safe.copy()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (no enabled command is sent any more)."""
        return self._stopping

    # ------------------------------------------------------------------ frames out
    def _send(self, bus_name: str, msg: can.Message, now_s: float) -> None:
        try:
            self.buses[bus_name].send(msg, timeout=0.05)
            self.metrics.frames_sent += 1
        except (can.CanError, OSError, ValueError, KeyError) as exc:
            self.metrics.send_errors += 1
            self._event(
                "send_error", None, f"{bus_name} 0x{msg.arbitration_id:X}: {exc}", now_s=now_s
            )

    def _send_setpoint(
        self,
        pack: int,
        power_w: float,
        *,
        safe: bool,
        reason: int,
        now_s: float,
        pack_voltage_v: float | None = None,
    ) -> None:
        if self._stopping:  # after a stop request nothing but the safe state goes out
            safe = True
        if safe:
            power_w = 0.0
        counter = int(self._tx_counter[pack])
        self._tx_counter[pack] += 1
        if self._encode_command is not None:
            frames = self._encode_command(
                pack,
                power_w,
                safe=safe,
                reason=reason,
                counter=counter,
                pack_voltage_v=self.store.pack_voltage_v(pack, self._series[pack])
                if pack_voltage_v is None
                else pack_voltage_v,
            )
        else:
            msg = self.codec.encode_setpoint(
                pack, power_w, safe=safe, reason=reason, counter=counter
            )
            frames = [(self._pack_bus[pack], msg)]
        for bus_name, frame in frames:
            self._send(bus_name, frame, now_s)

    def _send_commands(
        self, power_w: FloatArray, safe: BoolArray, reasons: IntArray, now_s: float
    ) -> None:
        """Every pack's command, in pack order: :meth:`_send_setpoint` per pack, batched.

        The rolling counters advance in one array step; with a codec that batches, every
        command is encoded in one call (:meth:`CanCodec.encode_commands`). A stop request
        makes every command the safe state, as in ``_send_setpoint``.
        """
        off = safe | self._stopping
        encode_all = self._encode_commands
        if encode_all is not None:
            counters = self._tx_counter.copy()
            self._tx_counter += 1
            frames = encode_all(
                np.where(off, 0.0, power_w),
                safe=off,
                reasons=reasons,
                counters=counters,
                pack_voltage_v=self.store.pack_voltages_array_v(self._series_f),
            )
            buses, sent = self.buses, 0
            for bus_name, frame in frames:
                try:
                    buses[bus_name].send(frame, timeout=0.05)
                    sent += 1
                except (can.CanError, OSError, ValueError, KeyError) as exc:
                    self.metrics.send_errors += 1
                    detail = f"{bus_name} 0x{frame.arbitration_id:X}: {exc}"
                    self._event("send_error", None, detail, now_s=now_s)
            self.metrics.frames_sent += sent
            return
        volts = self.store.pack_voltages_v(self._series_f)  # one pass, not one per pack
        power, off_l, reason_l = power_w.tolist(), off.tolist(), reasons.tolist()
        encode = self._encode_command
        if encode is None:
            for i in range(self.n_packs):
                self._send_setpoint(
                    i,
                    power[i],
                    safe=off_l[i],
                    reason=reason_l[i],
                    now_s=now_s,
                    pack_voltage_v=volts[i],
                )
            return
        counter_l = self._tx_counter.tolist()
        self._tx_counter += 1
        send = self._send
        for i in range(self.n_packs):
            frames = encode(
                i,
                0.0 if off_l[i] else power[i],
                safe=off_l[i],
                reason=reason_l[i],
                counter=counter_l[i],
                pack_voltage_v=volts[i],
            )
            for bus_name, frame in frames:
                send(bus_name, frame, now_s)

    def _enter_safe(self, pack: int, reason: int, now_s: float) -> None:
        """Hold ``pack`` safe from now on (this tick too); command it at once if it ran."""
        self._forced[pack] = True
        self._forced_reason[pack] |= reason
        if not self._safe[pack]:
            self._safe[pack] = True
            self.metrics.safe_entries += 1
            self._send_setpoint(pack, 0.0, safe=True, reason=reason, now_s=now_s)

    def _mark_bad(self, pack: int, reason: SafeReason, detail: str, now_s: float) -> None:
        """Put ``pack`` in the safe state now (latched for ``recovery_hold_s``)."""
        self._last_bad_s[pack] = now_s
        self._bad_reason[pack] |= int(reason)
        kind = {
            SafeReason.VIOLATION: "violation",
            SafeReason.MALFORMED: "malformed",
            SafeReason.BMS_FAULT: "bms_fault",
        }.get(reason, "safe")
        was_safe = bool(self._safe[pack])
        self._enter_safe(pack, int(self._bad_reason[pack]), now_s)  # the safe frame first
        if was_safe:
            self.events.append(RuntimeEvent(now_s, kind, pack, detail))
        else:
            self._event(kind, pack, detail, now_s=now_s)

    # ------------------------------------------------------------------ frames in
    def handle_message(
        self, msg: can.Message, now_s: float | None = None, *, bus: str | None = None
    ) -> None:
        """Process one received frame; never raises.

        Args:
            msg: The frame.
            now_s: Arrival time on the runtime clock; ``clock()`` by default.
            bus: Name of the bus it came from; the first bus by default.
        """
        t = self.clock() if now_s is None else now_s
        with self._lock:
            self.metrics.frames_received += 1
            try:
                self._handle(msg, t, (bus,) if bus is not None else self._rx[0][1])
            except Exception as exc:  # the loop must survive any input
                self._event("internal_error", None, f"handling frame: {exc!r}", now_s=t)

    def handle_messages(
        self, msgs: Sequence[can.Message], now_s: float | None = None, *, bus: str | None = None
    ) -> None:
        """Process frames received together (one drain of the bus); never raises.

        The same as :meth:`handle_message` of each frame, with one arrival time: each pack's
        frames are judged in the order received, with the same checks, safe frames, events
        and counters (events of different packs may come in another order). With a codec
        that batches (:attr:`CanCodec.batch`) the clean telemetry is decoded, stored and
        limit-checked in numpy, one pass per message; a pack with a violation is put safe
        at once, before anything else of the drain is done. Other frames, and every frame
        of a pack with anything unusual among its frames (malformed, counter or checksum
        error, BMS fault), go through :meth:`handle_message`'s path. The state estimator
        is updated last, as after every single frame.

        Args:
            msgs: The frames, in the order received.
            now_s: Arrival time on the runtime clock; ``clock()`` by default.
            bus: Name of the bus they came from; the first bus by default.
        """
        t = self.clock() if now_s is None else now_s
        names = (bus,) if bus is not None else self._rx[0][1]
        with self._lock:
            self._handle_batch(msgs, t, names)

    def _handle_one(self, msg: can.Message, t: float, names: tuple[str, ...]) -> None:
        try:
            self._handle(msg, t, names)
        except Exception as exc:  # the loop must survive any input
            self._event("internal_error", None, f"handling frame: {exc!r}", now_s=t)

    def _handle_batch(self, msgs: Sequence[can.Message], t: float, names: tuple[str, ...]) -> None:
        self.metrics.frames_received += len(msgs)
        decode_batch = self._decode_batch
        batch: DecodedBatch | None = None
        if decode_batch is not None and len(msgs) >= self._batch_min_frames():
            try:
                batch = decode_batch(msgs, names)
            except Exception as exc:  # nothing was taken: every frame goes on its own
                self._event("internal_error", None, f"batch decode: {exc!r}", now_s=t)
        if batch is None:
            for msg in msgs:
                self._handle_one(msg, t, names)
            return
        estimate: list[tuple[TelemetryBatch, IntArray]] = []
        if batch.telemetry:
            try:
                estimate = self._on_telemetry_batches(batch.telemetry, t)
            except Exception as exc:  # the loop must survive any input
                self._event("internal_error", None, f"handling telemetry: {exc!r}", now_s=t)
        for i in batch.rest:
            self._handle_one(msgs[i], t, names)
        if self.estimator is not None:  # after the checks and safe frames: not in latency
            for tb, rows in estimate:
                for j in rows.tolist():
                    try:
                        self._update_estimate(tb.frame(j), t)
                    except Exception as exc:  # as after a single frame: reported, not raised
                        pack = int(tb.packs[j])
                        self._event("internal_error", pack, f"estimator: {exc!r}", now_s=t)

    def _batch_min_frames(self) -> int:
        return max(int(getattr(self.codec, "batch_min_frames", 2)), 2)

    def _counter_key_list(self, message: str) -> list[tuple[int, str, int]]:
        keys = self._counter_keys.get(message)
        if keys is None:
            keys = self._counter_keys[message] = [(p, message, -1) for p in range(self.n_packs)]
        return keys

    def _on_telemetry_batches(
        self, batches: Sequence[TelemetryBatch], t: float
    ) -> list[tuple[TelemetryBatch, IntArray]]:
        """:meth:`_on_telemetry` of every row, in numpy where the row is routine.

        A pack with a row that is not routine (a stuck counter, a BMS fault status or
        state; with the estimator on, rows of several messages) has all its rows handled by
        :meth:`_on_telemetry` in the order received. A counter gap is routine (counted).

        Returns:
            Per batch, the rows handled here whose estimator update is still due.
        """
        last_counter = self._last_counter
        special: set[int] = set()
        gaps: list[BoolArray | None] = []
        for tb in batches:
            gap = None
            if tb.counter is not None:
                keys = self._counter_key_list(tb.message)
                last = np.fromiter(
                    (last_counter.get(keys[p], -1) for p in tb.packs.tolist()),
                    dtype=np.int64,
                    count=len(tb),
                )
                seen = last >= 0
                stuck = seen & (tb.counter == last)
                if stuck.any():
                    special.update(tb.packs[stuck].tolist())
                if self._counter_mod > 1:
                    gap = seen & (tb.counter != (last + 1) % self._counter_mod)
            gaps.append(gap)
            for codes, faults in (
                (tb.status, self._status_fault),
                (tb.bms_state, self._state_fault),
            ):
                if codes is not None and faults:
                    hit = np.zeros(len(tb), dtype=bool)
                    for fault in faults:  # a handful of codes: cheaper than np.isin
                        hit |= codes == fault
                    if hit.any():
                        special.update(tb.packs[hit].tolist())
        if self.estimator is not None and len(batches) > 1:  # the estimator's sample order
            counts = np.bincount(np.concatenate([tb.packs for tb in batches]))
            special.update(np.flatnonzero(counts > 1).tolist())
        one_by_one: list[tuple[int, TelemetryBatch, int]] = []
        done: list[tuple[TelemetryBatch, IntArray]] = []
        excluded = np.fromiter(special, dtype=np.int64, count=len(special))
        for tb, gap in zip(batches, gaps, strict=True):
            rows = np.arange(len(tb))
            if special:
                mine = np.isin(tb.packs, excluded)
                one_by_one.extend((int(tb.rows[j]), tb, j) for j in np.flatnonzero(mine).tolist())
                rows = rows[~mine]
            if len(rows):
                self._commit_batch(tb, rows, gap, t)
                done.append((tb, rows))
        for _, tb, j in sorted(one_by_one, key=lambda item: item[0]):
            try:
                self._on_telemetry(tb.frame(j), t)
            except Exception as exc:  # the loop must survive any input
                self._event("internal_error", None, f"handling telemetry: {exc!r}", now_s=t)
        return done

    def _commit_batch(
        self, tb: TelemetryBatch, rows: IntArray, gap: BoolArray | None, t: float
    ) -> None:
        """Routine rows of one message: integrity bookkeeping, store, limit check."""
        whole = len(rows) == len(tb)
        packs = tb.packs if whole else tb.packs[rows]
        if tb.checksum_ok:
            self._checksum_run[packs] = 0
        if tb.counter is not None:
            counters = tb.counter if whole else tb.counter[rows]
            keys = self._counter_key_list(tb.message)
            last_counter = self._last_counter
            for pack, value in zip(packs.tolist(), counters.tolist(), strict=True):
                last_counter[keys[pack]] = value
            self._counter_run[packs] = 0
            if gap is not None:
                self.metrics.counter_gaps += int(np.count_nonzero(gap[rows]))
        self.metrics.telemetry_frames += len(packs)
        self.store.update_packs(
            packs,
            tb.values if whole else {k: v[rows] for k, v in tb.values.items()},
            now_s=t,
            status=None if tb.status is None else tb.status if whole else tb.status[rows],
        )
        check = self.store.has_all_packs(packs) & ~self._within_limits_packs(packs)
        for pack in packs[check].tolist():
            found = self.limit_violations(pack)
            if found:
                self.metrics.violations += len(found)
                detail = ", ".join(f"{name}: {v:.4g} vs {b:.4g}" for name, v, b in found)
                self._mark_bad(pack, SafeReason.VIOLATION, detail, t)

    def _within_limits_packs(self, packs: IntArray) -> BoolArray:
        """:meth:`_within_limits` of each of ``packs`` (the same comparisons, in numpy)."""
        soc, soh, cur, vmin, vmax, tmin, tmax = self.store.pack_table(packs)
        v_lo, v_hi, i_lo, i_hi, t_lo, t_hi, s_lo, s_hi, c_max, cap = self._limit_table[:, packs]
        with np.errstate(all="ignore"):  # overflow, 0/0, inf - inf: as the scalar check
            denom = cap * soh
            ok = (v_lo <= vmin) & (vmin <= vmax) & (vmax <= v_hi)
            ok &= (i_lo <= cur) & (cur <= i_hi)
            ok &= (t_lo <= tmin) & (tmin <= tmax) & (tmax <= t_hi)
            ok &= (s_lo <= soc) & (soc <= s_hi)
            ok &= (denom != 0) & (np.abs(cur) / denom <= c_max)
            ok &= np.isfinite(vmin + vmax + cur + tmin + tmax + soc + soh)
        return np.asarray(ok, dtype=bool)

    def handle_telemetry(self, frame: TelemetryFrame, now_s: float | None = None) -> None:
        """Process one decoded telemetry frame (the codec's, or another BMS link's).

        The same checks as a received CAN frame: integrity, limits, BMS status. Never raises.

        Args:
            frame: The frame (keys of the codec's quantity contract).
            now_s: Arrival time on the runtime clock; ``clock()`` by default.
        """
        t = self.clock() if now_s is None else now_s
        with self._lock:
            try:
                self._on_telemetry(frame, t)
            except Exception as exc:  # the loop must survive any input
                self._event("internal_error", None, f"handling telemetry: {exc!r}", now_s=t)

    def _decode(self, msg: can.Message, names: tuple[str, ...]) -> object:
        if not self._decode_takes_bus:
            return self.codec.decode(msg)
        frame: object = None
        for name in names:  # one bus object serving several names: try each
            frame = self.codec.decode(msg, bus=name)  # type: ignore[call-arg, unused-ignore]
            if not isinstance(frame, IgnoredFrame):
                return frame
        return frame

    def _handle(self, msg: can.Message, t: float, names: tuple[str, ...]) -> None:
        frame = self._decode(msg, names)
        if isinstance(frame, TelemetryFrame):
            self._on_telemetry(frame, t)
        elif isinstance(frame, SiteFrame):
            self.metrics.site_frames += 1
            if self._site_from_can:
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
        else:  # a newer codec's frame kind (a command echo, ...): not telemetry
            self.metrics.ignored_frames += 1

    def _integrity_ok(self, frame: TelemetryFrame, t: float) -> bool:
        """Checksum and rolling counter; a failing frame is dropped, too many in a row latch.

        Where the codec checks a message itself (its ``integrity_errors`` > 0 on a frame it
        still passes), its tolerance rules and the runtime only counts. Otherwise the
        runtime checks: a failed checksum, or a repeated (stuck) counter, drops the frame;
        more than ``checksum_tolerance`` / ``counter_tolerance`` in a row latch the pack.
        """
        pack = frame.pack
        checksum_ok = getattr(frame, "checksum_ok", None)
        if getattr(frame, "integrity_errors", 0):
            # The codec checks this message and tolerates the error (beyond its map's
            # max_errors it sends a MalformedFrame, which latches): count, don't double-judge.
            if checksum_ok is False:
                self.metrics.checksum_errors += 1
                return False
            self.metrics.counter_errors += 1
            return True
        if checksum_ok is False:
            self.metrics.checksum_errors += 1
            self._checksum_run[pack] += 1
            run = int(self._checksum_run[pack])
            if run > self.checksum_tolerance:
                detail = f"{run} checksum errors in a row (tolerance {self.checksum_tolerance})"
                self._mark_bad(pack, SafeReason.MALFORMED, detail, t)
            else:
                self.events.append(RuntimeEvent(t, "checksum_error", pack, f"run {run}"))
            return False
        if checksum_ok is True:
            self._checksum_run[pack] = 0
        counter = frame.counter
        if counter is None:
            return True
        cells = getattr(frame, "cell_voltages_v", None)
        # multiplexed frames (one per group of cells) each keep their own counter sequence
        key = (pack, frame.message, min(cells) if cells else -1)
        last = self._last_counter.get(key, -1)
        self._last_counter[key] = counter
        if last >= 0 and counter == last:
            self.metrics.counter_errors += 1
            self._counter_run[pack] += 1
            run = int(self._counter_run[pack])
            if run > self.counter_tolerance:
                detail = (
                    f"rolling counter stuck at {last}: {run} in a row "
                    f"(tolerance {self.counter_tolerance})"
                )
                self._mark_bad(pack, SafeReason.MALFORMED, detail, t)
            else:
                self.events.append(RuntimeEvent(t, "counter_error", pack, f"stuck at {last}"))
            return False
        self._counter_run[pack] = 0
        if last >= 0 and self._counter_mod > 1 and counter != (last + 1) % self._counter_mod:
            self.metrics.counter_gaps += 1
        return True

    def _on_telemetry(self, frame: TelemetryFrame, t: float) -> None:
        pack = frame.pack
        if not self._integrity_ok(frame, t):
            return
        self.metrics.telemetry_frames += 1
        cells = getattr(frame, "cell_voltages_v", None)
        invalid = getattr(frame, "invalid_cells", ())
        self.store.update_pack(
            pack,
            frame.values,
            now_s=t,
            status=frame.status,
            cell_voltages_v=cells,
            invalid_cells=invalid,
        )
        if frame.status is not None and frame.status in self._status_fault:
            self._mark_bad(pack, SafeReason.BMS_FAULT, f"BMS status {frame.status}", t)
        state = getattr(frame, "bms_state", None)
        if state is not None and state in self._state_fault:
            self._mark_bad(pack, SafeReason.BMS_FAULT, f"BMS state {state}", t)
        if self.store.has_all(pack) and not self._within_limits(pack):
            found = self.limit_violations(pack)
            if found:
                self.metrics.violations += len(found)
                detail = ", ".join(f"{name}: {v:.4g} vs {b:.4g}" for name, v, b in found)
                self._mark_bad(pack, SafeReason.VIOLATION, detail, t)
        self._update_estimate(frame, t)  # after the check and any safe frame: not in latency

    def limit_violations(self, pack: int) -> list[tuple[str, float, float]]:
        """The limits ``pack``'s latest telemetry exceeds, as ``(limit, value, bound)``.

        Both ends of every window: the lowest cell voltage against ``cell_voltage_min_v``
        and the highest against ``cell_voltage_max_v``, likewise temperature; current, SoC
        and C-rate as :func:`pulsebms.safety.limits.check_violations` (a value on its bound
        is fine; a non-finite one is ``<quantity>_finite``). Scalar code: no
        :class:`FleetState` per frame.
        """
        soc, soh, cur, vmin, vmax, tmin, tmax = self.store.pack_values(pack)
        v_lo, v_hi, i_lo, i_hi, t_lo, t_hi, s_lo, s_hi, c_max, cap = self._limit_rows[pack]
        out: list[tuple[str, float, float]] = []
        for quantity, low, high, lo, hi, lo_name, hi_name in (
            ("cell_voltage_v", vmin, vmax, v_lo, v_hi, "cell_voltage_min_v", "cell_voltage_max_v"),
            ("current_a", cur, cur, i_lo, i_hi, "current_min_a", "current_max_a"),
            ("temperature_c", tmin, tmax, t_lo, t_hi, "temperature_min_c", "temperature_max_c"),
            ("soc", soc, soc, s_lo, s_hi, "soc_min", "soc_max"),
        ):
            if not (math.isfinite(low) and math.isfinite(high)):
                out.append((f"{quantity}_finite", low if not math.isfinite(low) else high, 0.0))
                continue
            if low < lo:
                out.append((lo_name, low, lo))
            if high > hi:
                out.append((hi_name, high, hi))
        if not math.isfinite(soh):
            out.append(("soh_finite", soh, 0.0))
        elif math.isfinite(cur):
            denom = cap * soh
            rate = abs(cur) / denom if denom != 0 else (math.inf if cur != 0 else math.nan)
            if rate > c_max:
                out.append(("c_rate_max", rate, c_max))
        return out

    def _within_limits(self, pack: int) -> bool:
        """Scalar pre-check: True only where :meth:`limit_violations` finds nothing.

        The same comparisons, all finite and inside, in one expression; anything else
        (a value out, on a non-finite bound, NaN, zero capacity) goes to the full check.
        """
        soc, soh, cur, vmin, vmax, tmin, tmax = self.store.pack_values(pack)
        v_lo, v_hi, i_lo, i_hi, t_lo, t_hi, s_lo, s_hi, c_max, cap = self._limit_rows[pack]
        denom = cap * soh
        return (
            v_lo <= vmin <= vmax <= v_hi
            and i_lo <= cur <= i_hi
            and t_lo <= tmin <= tmax <= t_hi
            and s_lo <= soc <= s_hi
            and denom != 0
            and abs(cur) / denom <= c_max
            and math.isfinite(vmin + vmax + cur + tmin + tmax + soc + soh)
        )

    def _recv(self, bus: can.BusABC, timeout_s: float) -> tuple[can.Message | None, bool]:
        try:
            return bus.recv(timeout=timeout_s), True
        except (can.CanError, OSError) as exc:
            self.metrics.bus_errors += 1
            self._event("bus_error", None, str(exc), now_s=self.clock())
            return None, False

    def poll(self, timeout_s: float, *, max_frames: int = 10_000) -> int:
        """Read and handle frames until ``timeout_s`` has passed and nothing is waiting.

        Each wait ends with the first frame; what is waiting behind it is read at once
        (without waiting, up to ``max(64, 2 * n_packs)`` frames) and handled with it
        (:meth:`handle_messages`: one batch with a codec that batches). With several
        buses they are read in turn (each drained without waiting, then a short wait on
        the next one).

        Args:
            timeout_s: How long to wait for frames [s]; 0 handles only what is waiting.
            max_frames: Stop after this many frames (a flooded bus must not starve the tick).

        Returns:
            Frames handled.
        """
        wall = time.monotonic  # a bus waits in wall time, whatever the runtime clock
        deadline = wall() + max(timeout_s, 0.0)
        handled = 0
        if len(self._rx) == 1:
            bus, names = self._rx[0]
            while handled < max_frames:
                msg, ok = self._recv(bus, max(deadline - wall(), 0.0))
                if msg is None:
                    break
                msgs = [msg]
                if ok:
                    ok = self._drain(bus, msgs, min(max_frames - handled, self._drain_max))
                self._handle_on(msgs, names)
                handled += len(msgs)
                if not ok:
                    break
            return handled
        while handled < max_frames:
            got = False
            for bus, names in self._rx:
                msgs = []
                ok = self._drain(bus, msgs, min(max_frames - handled, self._drain_max))
                if msgs:
                    got = True
                    self._handle_on(msgs, names)
                    handled += len(msgs)
                if not ok:
                    return handled
            remaining = deadline - wall()
            if got:
                continue
            if remaining <= 0.0:
                break
            bus, names = self._rx[self._rx_next]
            self._rx_next = (self._rx_next + 1) % len(self._rx)
            msg, ok = self._recv(bus, min(remaining, 0.002))
            if msg is not None:
                self._handle_on([msg], names)
                handled += 1
            elif not ok:
                break
        return handled

    def _drain(self, bus: can.BusABC, msgs: list[can.Message], limit: int) -> bool:
        """Append what ``bus`` has waiting to ``msgs`` (``limit`` in all); False: bus error."""
        recv = self._recv
        while len(msgs) < limit:
            msg, ok = recv(bus, 0.0)
            if msg is None:
                return ok
            msgs.append(msg)
        return True

    def _handle_on(self, msgs: list[can.Message], names: tuple[str, ...]) -> None:
        if self._decode_batch is None or len(msgs) < self._batch_min_frames():  # frame by frame
            for msg in msgs:
                t = self.clock()
                with self._lock:
                    self.metrics.frames_received += 1
                    self._handle_one(msg, t, names)
            return
        t = self.clock()
        with self._lock:
            self._handle_batch(msgs, t, names)

    # ------------------------------------------------------------------ safety timer
    def _poll_site(self, now: float) -> None:
        if self._site_from_can:
            return
        try:
            values = self.site_source.poll(now)
        except Exception as exc:  # a source must not stop the loop: the site ages instead
            self._event("site_error", None, f"site source failed: {exc!r}", now_s=now)
            return
        if values is not None:
            self.store.update_site(values, now_s=now)

    def _update_stale(self, now: float, stale: BoolArray) -> None:
        for i in np.flatnonzero(stale & ~self._stale):
            self.metrics.stale_events += 1
            age = float(self.store.age_s(now)[i])
            self._event("stale", int(i), f"no complete telemetry for {age:.3g} s", now_s=now)
        self._stale = stale

    def _update_site_fresh(self, now: float) -> bool:
        fresh = self.store.site_fresh(now)
        if self._site_fresh and not fresh:
            age = self.store.site(now).age_s
            self._event("site_stale", None, f"no site values for {age:.3g} s", now_s=now)
        self._site_fresh = fresh
        return fresh

    def request_stop(self) -> None:
        """Stop: from now on only safe commands; the safety timer commands every pack safe.

        Safe to call from a signal handler (takes no lock). :meth:`run` returns within one
        safety period.
        """
        self._stopping = True
        timer = self._timer
        if timer is not None:
            timer.wake()

    def check_safety(self, now_s: float | None = None) -> int:
        """The safety timer's check: stale packs, stale site, stop request → safe now.

        :meth:`run` calls it every ``safety_period_s`` from a thread; call it yourself when
        driving :meth:`poll` and :meth:`tick` by hand.

        Args:
            now_s: Time on the runtime clock; ``clock()`` by default.

        Returns:
            Packs put in the safe state by this check.
        """
        with self._lock:
            t = self.clock() if now_s is None else now_s
            before = int(np.count_nonzero(self._safe))
            if self._stopping:
                if not self._stop_commanded:
                    self._stop_commanded = True
                    self._event("stop", None, "stop requested: every pack safe", now_s=t)
                    for i in range(self.n_packs):
                        self._forced[i] = True
                        self._send_setpoint(i, 0.0, safe=True, reason=0, now_s=t)
                    self._safe[:] = True
            else:
                self._poll_site(t)
                stale = ~self.store.valid(t)
                self._update_stale(t, stale)
                for j in np.flatnonzero(stale & ~self._safe).tolist():
                    self._enter_safe(j, int(SafeReason.STALE), t)
                if not self._update_site_fresh(t):
                    for j in np.flatnonzero(~self._safe).tolist():
                        self._enter_safe(j, int(SafeReason.SITE_STALE), t)
            newly = int(np.count_nonzero(self._safe)) - before
            self.metrics.timer_safe_entries += newly
            return newly

    # ------------------------------------------------------------------ control tick
    def tick(self) -> TickReport:
        """Run one control step and send every pack's command; never raises on input."""
        start = time.perf_counter()
        with self._lock:
            now = self.clock()
            self._poll_site(now)
            state = self.store.fleet_state(now)
            safe, reasons = self._safe_mask(now, state)
            site = self.store.site(now)
            last_action = self._last_action
        # Policy and shield run outside the lock: the safety timer and frame handling go on.
        tod = site.time_of_day_s if math.isfinite(site.time_of_day_s) else self.time_of_day()
        n = self.n_packs
        policy_action = np.full(n, np.nan, dtype=np.float32)
        obs = np.full(self.builder.size, np.nan, dtype=np.float32)
        try:
            obs = self.builder.build(state, site, last_action, time_of_day_s=tod)
            policy_action = np.asarray(self.policy.act(obs), dtype=np.float32).reshape(n)
        except Exception as exc:
            self._event("policy_fallback", None, f"policy failed: {exc!r}", now_s=now)
        bad = ~np.isfinite(policy_action)
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
        shield_error: Exception | None = None
        try:
            target = state.demand_w if self.track_demand else None
            result = self.shield.project(shield_state, request, target)
            action = np.asarray(result.action, dtype=np.float64)
            intervened = np.asarray(result.intervened, dtype=bool)
            status = result.status.name or "OK"
        except Exception as exc:  # documented fallback: every pack at zero
            action = np.zeros(n)
            shield_error = exc
        with self._lock:
            if shield_error is not None:
                safe = np.ones(n, dtype=bool)
                self._event("internal_error", None, f"shield failed: {shield_error!r}", now_s=now)
            if bad.any():
                self.metrics.policy_fallbacks += 1
                reasons[bad] |= int(SafeReason.POLICY_FALLBACK)
                self.events.append(
                    RuntimeEvent(now, "policy_fallback", None, f"{int(bad.sum())} non-finite")
                )
            late = self._forced.copy()  # put safe while the policy ran
            if self._stopping:
                late[:] = True
            safe = safe | late
            reasons[late] |= self._forced_reason[late]
            action = np.where(np.isfinite(action), action, 0.0)
            action[safe] = 0.0
            if (intervened & ~safe).any():
                self.metrics.interventions += 1
            reasons[intervened & ~safe] |= int(SafeReason.INTERVENED)
            setpoint_w = action * self._rated_w
            self._send_commands(setpoint_w, safe, reasons, now)
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
            self._last_report = report
        return report

    def _safe_mask(self, now: float, state: FleetState) -> tuple[BoolArray, IntArray]:
        n = self.n_packs
        reasons = np.zeros(n, dtype=np.int64)
        stale = ~np.asarray(state.valid, dtype=bool)
        self._update_stale(now, stale)
        reasons[stale] |= int(SafeReason.STALE)
        latched = (now - self._last_bad_s) < self.recovery_hold_s
        self._bad_reason[~latched] = 0
        reasons[latched] |= self._bad_reason[latched] & int(_LATCHING)
        if not self._update_site_fresh(now):
            reasons |= int(SafeReason.SITE_STALE)
        reasons[self._held] |= int(SafeReason.OPERATOR)
        safe = (reasons != 0) | self._stopping
        for i in np.flatnonzero(self._safe & ~safe):
            self._event("recovered", int(i), "telemetry clean, pack back in operation", now_s=now)
        self.metrics.safe_entries += int(np.count_nonzero(~self._safe & safe))
        self._safe = safe.copy()
        self._forced[:] = False
        self._forced_reason[:] = 0
        return safe, reasons

    def hold_safe(self, packs: Sequence[int] | None = None, *, hold: bool = True) -> None:
        """Hold packs in the safe state until released (an operator's command), or release.

        A held pack is commanded safe at once and stays safe (reason
        :attr:`SafeReason.OPERATOR`) until ``hold_safe(..., hold=False)``; it then runs again
        from the next tick if nothing else keeps it safe. Safe to call from another thread
        (an MQTT callback) while the loop runs.

        Args:
            packs: Pack indices; every pack when ``None``.
            hold: ``True`` holds them, ``False`` releases them.

        Raises:
            ValueError: If a pack index is out of range.
        """
        idx = list(range(self.n_packs)) if packs is None else [int(p) for p in packs]
        bad = [p for p in idx if not 0 <= p < self.n_packs]
        if bad:
            raise ValueError(f"pack indices {bad} out of range for {self.n_packs} packs")
        with self._lock:
            now = self.clock()
            for i in idx:
                self._held[i] = hold
                if hold:
                    self._enter_safe(i, int(SafeReason.OPERATOR), now)

    @property
    def held(self) -> BoolArray:
        """Per pack, whether an operator's command holds it safe (:meth:`hold_safe`)."""
        return self._held.copy()

    @property
    def last_report(self) -> TickReport | None:
        """What the last tick did (set-points sent, safe packs, reasons), ``None`` before one."""
        return self._last_report

    def command_safe_state(self, reason: SafeReason = SafeReason.NONE) -> None:
        """Send the safe state (zero power, disabled) to every pack, e.g. on shutdown."""
        with self._lock:
            now = self.clock()
            for i in range(self.n_packs):
                self._send_setpoint(i, 0.0, safe=True, reason=int(reason), now_s=now)
            self._safe[:] = True

    # ------------------------------------------------------------------ loop
    def _wait_until(self, deadline_s: float, stop: threading.Event | None) -> None:
        """Handle frames until ``deadline_s`` in slices of at most one safety period."""
        while True:
            remaining = deadline_s - self.clock()
            if remaining <= 0.0 or self._should_stop(stop):
                return
            errors = self.metrics.bus_errors
            self.poll(min(remaining, self.safety_period_s))
            if self.metrics.bus_errors != errors:  # a failing bus must not spin the CPU
                time.sleep(min(remaining, self.bus_error_backoff_s))

    def _should_stop(self, stop: threading.Event | None) -> bool:
        if stop is not None and stop.is_set() and not self._stopping:
            self.request_stop()
        return self._stopping

    def run(
        self,
        *,
        n_ticks: int | None = None,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> RuntimeMetrics:
        """Run on the wall clock until told to stop; every pack is commanded safe on the way out.

        Frames are read between ticks, a tick runs every ``tick_s``, the safety timer
        runs on its own thread every ``safety_period_s``.

        Args:
            n_ticks: Stop after this many ticks.
            duration_s: Stop after this long.
            stop: Stop when set (or call :meth:`request_stop`, e.g. from a signal handler).

        Returns:
            The metrics.
        """
        start = self.clock()
        next_tick = start

        def timer_check() -> None:
            self._should_stop(stop)
            self.check_safety()

        timer = SafetyTimer(timer_check, self.safety_period_s)
        self._timer = timer
        timer.start()
        ticks = 0
        try:
            while True:
                if self._should_stop(stop):
                    break
                if n_ticks is not None and ticks >= n_ticks:
                    break
                if duration_s is not None and self.clock() - start >= duration_s:
                    break
                self._wait_until(next_tick, stop)
                if self._should_stop(stop):  # no tick after a stop request
                    break
                self.tick()
                ticks += 1
                next_tick += self.tick_s
                if next_tick < self.clock():
                    self.metrics.overruns += 1
                    next_tick = self.clock()
        finally:
            timer.stop()
            self._timer = None
            self.command_safe_state()
        return self.metrics
