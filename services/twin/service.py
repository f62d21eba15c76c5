"""The digital-twin service loop: telemetry in, store, state sync, calibration, forecasts out.

:class:`TwinService` is transport-agnostic at its core:

* :meth:`TwinService.handle_telemetry` takes one validated telemetry message (the handler
  signature of :class:`pulsebms.edge_runtime.mqtt_link.MqttLink`; it runs on the link's
  network thread); :meth:`handle_payload` takes raw bytes and validates them with
  :func:`pulsebms.core.messaging.decode`. Rows are buffered; the fleet mirror is stepped
  and synced.
* :meth:`TwinService.tick` (the loop's thread) runs what is due by the injected clock:
  the buffered rows written to the :class:`~pulsebms.services.store.TelemetryStore` in one
  batch (at ``flush_rows`` rows or every ``flush_period_s``), calibration every
  ``calibration_period_s`` (batched over every pack with a usable window), forecast every
  ``period_s`` (default 300 s) — published on ``pulsebms/{site}/twin/forecast`` (schema
  ``forecast``) through the injected ``publish`` callable and stored.
* :meth:`TwinService.attach` wires them to an MQTT link; :meth:`TwinService.start` /
  :meth:`TwinService.stop` tick on a background thread (the coordinator's pattern, for
  ``pulsebms-fleet up``), :meth:`TwinService.run` on the caller's thread (the CLI).

Nothing a message holds can crash it: a malformed message is counted by reason and dropped,
a pack quantity that is ``null`` or non-finite is left out of the row (the row is dropped if
voltage, current or temperature is missing), an unknown pack is counted, a failing
calibration or forecast is logged, counted and retried at its next period. The counters
are in :attr:`TwinService.stats`.

Pack specs: a pack must be known to be mirrored, calibrated and forecast. They come from the
constructor (``packs``: pack id → :class:`~pulsebms.envs.pack.PackSpec`), or, with
``infer_packs=True`` (default), from the telemetry itself when it carries ``chemistry`` and
``capacity_ah`` (series = pack voltage / cell voltage, parallel = capacity / cell capacity).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pulsebms.core.messaging import MessageError, decode, encode, forecast_topic
from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.parameters import cell_facts
from pulsebms.services.store.base import Row, StoreError, TelemetryStore
from pulsebms.services.twin.calibration import EcmCalibrator
from pulsebms.services.twin.duty import DEFAULT_DUTY, Duty
from pulsebms.services.twin.electrode import ElectrodeCalibrator
from pulsebms.services.twin.forecast import forecast_soh
from pulsebms.services.twin.sync import FleetMirror
from pulsebms.services.twin.usage import ObservedDuty, UsageSettings, observed_duty
from pulsebms.services.twin.window import PackWindow

__all__ = ["PackState", "Publish", "TwinService", "TwinServiceConfig"]

_log = logging.getLogger(__name__)

Publish = Callable[[str, str, dict[str, Any]], None]
"""``publish(kind, topic, message)``: :meth:`MqttLink.publish`'s signature."""


@dataclass(frozen=True)
class TwinServiceConfig:
    """Settings of the twin service (all times in seconds of the injected clock).

    Attributes:
        site: Site name (topic level).
        period_s: Forecast period (the design's 5 minutes).
        calibration_period_s: Time between calibrations.
        calibration_window_s: Telemetry window each calibration reads.
        min_samples: Least samples a pack's window needs to be calibrated.
        min_throughput: Least charge a window must move, as a fraction of the pack's
            capacity (capacity is not identifiable from a pack at rest).
        flush_rows: Buffered rows that trigger a store write.
        flush_period_s: Longest time a row stays buffered.
        max_buffer_rows: Most rows kept while the store is failing (oldest dropped first).
        resync_period_s: Time between synchronisations of the mirror.
        fidelity: Fidelity of the mirror (``"ecm"`` or ``"physics"``).
        duty: The stated duty: what a forecast assumes for a pack with too little
            telemetry to read its own (:meth:`TwinService.set_duty` replaces it), and for
            every pack when ``duty_from_telemetry`` is off.
        duty_from_telemetry: Forecast each pack under the duty its recent telemetry in the
            store shows (:func:`~pulsebms.services.twin.usage.observed_duty`: cycles per
            day, depth, C-rate, mean SoC, temperature).
        usage: How that duty is read (window, least history, rest threshold).
        horizon_days: Forecast horizon.
        step_days: Forecast resolution.
        trajectory_points: Most points of a published trajectory (evenly thinned).
        end_of_life_soh: SoH that ends a pack's useful life.
        degradation_acceleration: Factor on the forecast's fade (1 = physical; an
            accelerated HIL run sets its own).
        infer_packs: Build specs of unknown packs from their telemetry when it says
            chemistry and capacity.
        electrode_calibration: Also fit each pack's active-material fractions on PyBaMM's
            SPM (:mod:`~pulsebms.services.twin.electrode`; the physics fidelity) from the
            part of its window after its latest rest of ``rest_s`` (|I| ≤ C/100).
        rest_s: Least rest before a physics calibration window [s].
    """

    site: str
    period_s: float = 300.0
    calibration_period_s: float = 3600.0
    calibration_window_s: float = 6 * 3600.0
    min_samples: int = 60
    min_throughput: float = 0.2
    flush_rows: int = 5000
    flush_period_s: float = 10.0
    max_buffer_rows: int = 1_000_000
    resync_period_s: float = 300.0
    fidelity: str = "ecm"
    duty: Duty = field(default_factory=lambda: DEFAULT_DUTY)
    duty_from_telemetry: bool = True
    usage: UsageSettings = field(default_factory=UsageSettings)
    horizon_days: float = 3650.0
    step_days: float = 7.0
    trajectory_points: int = 120
    end_of_life_soh: float = 0.8
    degradation_acceleration: float = 1.0
    infer_packs: bool = True
    electrode_calibration: bool = False
    rest_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("period_s", "calibration_period_s", "calibration_window_s", "flush_period_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")


@dataclass
class PackState:
    """What the service knows about one pack.

    Attributes:
        device: Edge device that reports it.
        spec: Its pack spec.
        soh: Calibrated SoH (NaN: not calibrated yet).
        soh_std: Its standard deviation.
        resistance_factor: Calibrated resistance factor.
        resistance_ohm: Calibrated pack resistance [Ω].
        capacity_ah: Calibrated pack capacity [A.h].
        calibrated_at_s: When it was last calibrated.
        electrode_fractions: Fitted active-material fractions (negative, positive), or None.
        electrode_std: Their standard deviations.
    """

    device: str
    spec: PackSpec
    soh: float = math.nan
    soh_std: float = math.nan
    resistance_factor: float = math.nan
    resistance_ohm: float = math.nan
    capacity_ah: float = math.nan
    calibrated_at_s: float = math.nan
    electrode_fractions: tuple[float, float] | None = None
    electrode_std: tuple[float, float] | None = None


def _electrode_fields(state: PackState) -> dict[str, Any]:
    """Extra forecast fields (additive: receivers ignore what they do not know)."""
    if state.electrode_fractions is None:
        return {}
    std = state.electrode_std or (math.nan, math.nan)
    return {
        "active_material_fractions": list(state.electrode_fractions),
        "active_material_fractions_std": [v if math.isfinite(v) else None for v in std],
    }


def _duty_text(stated: Duty, duties: list[ObservedDuty], config: TwinServiceConfig) -> str:
    """The message's ``duty`` field: the one duty, or how the per-pack duties were chosen."""
    if all(d.source == "stated" for d in duties):
        return stated.describe()
    days = config.usage.window_s / 86400.0
    n_observed = sum(d.source == "observed" for d in duties)
    text = (
        f"per pack, observed over the last {days:g} days ({n_observed} of {len(duties)}); "
        f"else {stated.describe()}"
    )
    return text[:256]


def _or(value: float, default: float) -> float:
    """``value`` unless it is NaN."""
    return value if math.isfinite(value) else default


def _finite(value: Any) -> float:
    """``value`` as a float, NaN when null, non-numeric or non-finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    v = float(value)
    return v if math.isfinite(v) else math.nan


class TwinService:
    """Mirror, calibrate and forecast every pack of a site (see the module docstring).

    Args:
        config: Settings.
        store: Telemetry store (also a forecast store when it has ``write_forecast``).
        packs: Known packs, pack id → spec (more may be inferred from telemetry).
        clock: Time source [s] (UNIX time by default; a simulated clock in tests and
            accelerated runs).
        publish: Sends a message: ``publish(kind, topic, message)`` (None: not published).
    """

    def __init__(
        self,
        config: TwinServiceConfig,
        store: TelemetryStore,
        *,
        packs: Mapping[str, PackSpec] | None = None,
        clock: Callable[[], float] = time.time,
        publish: Publish | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.publish = publish
        self.stats: Counter[str] = Counter()
        self.packs: dict[str, PackState] = {}
        self._specs: dict[str, PackSpec] = dict(packs or {})
        self._buffer: list[Row] = []
        self._last_flush_s = clock()
        self._next_calibration_s = clock() + config.calibration_period_s
        self._next_forecast_s = clock() + config.period_s
        self._mirror: FleetMirror | None = None
        self._mirror_ids: tuple[str, ...] = ()
        self.session = uuid.uuid4().hex[:12]
        self._seq = 0
        self.duty = config.duty
        self.last_forecast: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def reset_schedule(self) -> None:
        """Restart the flush, calibration and forecast periods from the clock's now.

        Call it after replacing :attr:`clock` (a replay's simulated clock).
        """
        now = self.clock()
        self._last_flush_s = now
        self._next_calibration_s = now + self.config.calibration_period_s
        self._next_forecast_s = now + self.config.period_s

    # ------------------------------------------------------------------ inputs
    def set_duty(self, duty: Duty) -> None:
        """State ``duty`` from now on (e.g. the coordinator's planned duty).

        With ``duty_from_telemetry`` it is the fallback of packs with too little history;
        otherwise every pack's.
        """
        with self._lock:
            self.duty = duty

    def handle_payload(self, topic: str, payload: bytes) -> None:
        """Validate a raw MQTT payload and handle it (malformed: counted, dropped)."""
        try:
            message = decode(payload, topic=topic)
        except MessageError as exc:
            self.stats[f"malformed_{exc.reason}"] += 1
            return
        if message.get("schema") == "pulsebms.telemetry":
            self.handle_telemetry(topic, message)
        else:
            self.stats["ignored_kind"] += 1

    def handle_telemetry(self, topic: str, message: Mapping[str, Any]) -> None:
        """Take one validated telemetry message (never raises)."""
        try:
            with self._lock:
                self._handle_telemetry(message)
        except Exception:
            self.stats["handler_errors"] += 1
            _log.exception("twin service: telemetry message not handled")

    def _spec_for(self, pack: Mapping[str, Any]) -> PackSpec | None:
        pid = pack["pack_id"]
        if pid in self._specs:
            return self._specs[pid]
        if not self.config.infer_packs:
            return None
        chem, cap = pack.get("chemistry"), _finite(pack.get("capacity_ah"))
        volt = _finite(pack.get("voltage_v"))
        cell = np.nanmean([_finite(pack.get("cell_voltage_min_v")),
                           _finite(pack.get("cell_voltage_max_v"))])  # fmt: skip
        if not isinstance(chem, str) or not math.isfinite(cap) or not math.isfinite(volt):
            return None
        if not (math.isfinite(cell) and cell > 0):
            return None
        try:
            facts = cell_facts(get_chemistry(chem).name)
        except (KeyError, ValueError):
            return None
        series = max(1, round(volt / cell))
        parallel = max(1, round(cap / facts.capacity_ah))
        spec = PackSpec(facts.chemistry, series=series, parallel=parallel, name=pid)
        self._specs[pid] = spec
        self.stats["packs_inferred"] += 1
        return spec

    def _handle_telemetry(self, message: Mapping[str, Any]) -> None:
        t_s = _finite(message.get("timestamp_s"))
        device = message.get("device")
        packs = message.get("packs")
        if not math.isfinite(t_s) or not isinstance(device, str) or not isinstance(packs, list):
            self.stats["malformed_fields"] += 1
            return
        self.stats["messages"] += 1
        ids: list[str] = []
        cols: dict[str, list[float]] = {k: [] for k in ("soc", "soh", "cur", "volt", "temp")}
        for pack in packs:
            if not isinstance(pack, Mapping) or not isinstance(pack.get("pack_id"), str):
                self.stats["malformed_pack"] += 1
                continue
            pid = pack["pack_id"]
            spec = self._spec_for(pack)
            if spec is None:
                self.stats["unknown_pack"] += 1
                continue
            if pid not in self.packs:
                self.packs[pid] = PackState(device=device, spec=spec)
            self.packs[pid].device = device
            soc, soh = _finite(pack.get("soc")), _finite(pack.get("soh"))
            cur, volt = _finite(pack.get("current_a")), _finite(pack.get("voltage_v"))
            t_lo = _finite(pack.get("temperature_min_c"))
            t_hi = _finite(pack.get("temperature_max_c"))
            temp = (
                float(np.nanmean([t_lo, t_hi]))
                if math.isfinite(t_lo) or math.isfinite(t_hi)
                else math.nan
            )
            ids.append(pid)
            for key, value in zip(cols, (soc, soh, cur, volt, temp), strict=True):
                cols[key].append(value)
            if math.isfinite(cur) and math.isfinite(volt) and math.isfinite(temp):
                self._buffer.append((pid, t_s, soc, soh, cur, volt, temp))
                self.stats["rows"] += 1
            else:
                self.stats["rows_incomplete"] += 1
        if ids:
            mirror = self._ensure_mirror()
            if mirror is not None:
                mirror.observe(
                    t_s, ids, soc=cols["soc"], soh=cols["soh"], current_a=cols["cur"],
                    voltage_v=cols["volt"], temperature_c=cols["temp"],
                )  # fmt: skip

    def _ensure_mirror(self) -> FleetMirror | None:
        """The mirror over every known pack (rebuilt when a pack joins)."""
        ids = tuple(sorted(self.packs))
        if ids != self._mirror_ids:
            old = self._mirror
            self._mirror = FleetMirror(
                {pid: self.packs[pid].spec for pid in ids},
                fidelity=self.config.fidelity,
                resync_period_s=self.config.resync_period_s,
            )
            self._mirror_ids = ids
            if old is not None:  # keep what the old mirror knew
                for pid, k in old.index.items():
                    j = self._mirror.index[pid]
                    self._mirror.calibrated_soh[j] = old.calibrated_soh[k]
            for pid, state in self.packs.items():
                self._mirror.calibrated_soh[self._mirror.index[pid]] = state.soh
        return self._mirror

    # ------------------------------------------------------------------ schedule
    def flush(self) -> int:
        """Write the buffered rows to the store (one batch); returns rows written.

        When the store fails (server down, disk full), the rows stay buffered and are
        retried at the next flush; beyond ``max_buffer_rows`` the oldest are dropped and
        counted (``rows_dropped_store``).
        """
        with self._lock:
            rows, self._buffer = self._buffer, []
            self._last_flush_s = self.clock()
        if not rows:
            return 0
        try:
            written = self.store.write_batch(rows)
        except StoreError as exc:
            self.stats["store_errors"] += 1
            with self._lock:  # keep them for the next flush, up to max_buffer_rows
                kept = rows + self._buffer
                excess = max(0, len(kept) - self.config.max_buffer_rows)
                self._buffer = kept[excess:]
            self.stats["rows_dropped_store"] += excess
            _log.warning("twin service: store write failed (%s); %d rows kept", exc, len(kept))
            return 0
        self.stats["rows_written"] += written
        return written

    def tick(self) -> None:
        """Run what is due now: flush, calibration, forecast (never raises)."""
        now = self.clock()
        try:
            if len(self._buffer) >= self.config.flush_rows or (
                self._buffer and now - self._last_flush_s >= self.config.flush_period_s
            ):
                self.flush()
            if now >= self._next_calibration_s:
                self._next_calibration_s = now + self.config.calibration_period_s
                self.flush()
                self.calibrate()
            if now >= self._next_forecast_s:
                self._next_forecast_s = now + self.config.period_s
                self.flush()
                self.forecast()
        except Exception:
            self.stats["tick_errors"] += 1
            _log.exception("twin service: tick failed")

    def calibrate(self) -> list[str]:
        """Calibrate every pack with a usable window now; returns the packs calibrated."""
        now = self.clock()
        t0 = now - self.config.calibration_window_s
        with self._lock:
            ids = sorted(self.packs)
            specs = [self.packs[p].spec for p in ids]
        if not ids:
            return []
        windows: list[PackWindow] = []
        chosen: list[int] = []
        for k, pid in enumerate(ids):
            window = PackWindow.from_columns(self.store.query(pid, t0, now + 1e-6))
            spec = specs[k]
            capacity = cell_facts(spec.chemistry).capacity_ah * spec.parallel
            if window.n_samples < self.config.min_samples:
                self.stats["calibration_skipped_short"] += 1
                continue
            if window.throughput_ah() < self.config.min_throughput * capacity:
                self.stats["calibration_skipped_idle"] += 1
                continue
            windows.append(window)
            chosen.append(k)
        if not windows:
            return []
        calibrator = EcmCalibrator(specs)
        previous = np.array([self.packs[ids[k]].soh for k in chosen])
        start = np.where(np.isfinite(previous), previous, 1.0)
        started = time.perf_counter()
        result = calibrator.calibrate(windows, chosen, start_soh=start)
        self.stats["calibrations"] += 1
        self.stats["calibration_ms_total"] += int(1e3 * (time.perf_counter() - started))
        done: list[str] = []
        with self._lock:
            for j, k in enumerate(chosen):
                pid = ids[k]
                if not (result.converged[j] and np.isfinite(result.soh[j])):
                    self.stats["calibration_not_converged"] += 1
                    continue
                state = self.packs[pid]
                state.soh = float(result.soh[j])
                state.soh_std = float(result.soh_std[j])
                state.resistance_factor = float(result.resistance_factor[j])
                state.resistance_ohm = float(result.resistance_ohm[j])
                state.capacity_ah = float(result.capacity_ah[j])
                state.calibrated_at_s = now
                done.append(pid)
            mirror = self._ensure_mirror()
            if mirror is not None:
                for pid in done:
                    mirror.calibrated_soh[mirror.index[pid]] = self.packs[pid].soh
        if self.config.electrode_calibration:
            self._calibrate_electrodes(ids, specs, chosen, windows)
        return done

    def _calibrate_electrodes(
        self,
        ids: list[str],
        specs: list[PackSpec],
        chosen: list[int],
        windows: list[PackWindow],
    ) -> None:
        """Fit active-material fractions where a window holds a long enough rest."""
        parts: list[PackWindow] = []
        which: list[int] = []
        for k, window in zip(chosen, windows, strict=True):
            spec = specs[k]
            threshold = 0.01 * cell_facts(spec.chemistry).capacity_ah * spec.parallel
            part = window.since_rest(self.config.rest_s, threshold, self.config.min_samples)
            if part is None:
                self.stats["electrode_skipped_no_rest"] += 1
                continue
            parts.append(part)
            which.append(k)
        if not parts:
            return
        result = ElectrodeCalibrator(specs).calibrate(parts, which)
        self.stats["electrode_calibrations"] += 1
        with self._lock:
            for j, k in enumerate(which):
                if not result.converged[j]:
                    self.stats["electrode_not_converged"] += 1
                    continue
                state = self.packs[ids[k]]
                state.electrode_fractions = (float(result.x[j, 0]), float(result.x[j, 1]))
                state.electrode_std = (float(result.std[j, 0]), float(result.std[j, 1]))

    def pack_duty(
        self, pack_id: str, state: PackState, soh: float, now_s: float | None = None
    ) -> ObservedDuty:
        """The duty a pack's forecast assumes now.

        With ``duty_from_telemetry``: the duty of its telemetry in the store over the last
        ``usage.window_s`` (:func:`~pulsebms.services.twin.usage.observed_duty`, at its
        present capacity: calibrated, else nominal × ``soh``); the stated duty when the
        history is too short or the store cannot be read (counted, ``duty_store_errors``).

        Args:
            pack_id: The pack.
            state: What the service knows of it.
            soh: Its SoH now.
            now_s: Now [s] (the clock when None).
        """
        stated = self.duty
        if not self.config.duty_from_telemetry:
            return ObservedDuty(stated, "stated", 0.0, math.nan)
        now = self.clock() if now_s is None else now_s
        nominal = cell_facts(state.spec.chemistry).capacity_ah * state.spec.parallel
        capacity = _or(state.capacity_ah, nominal * soh)
        try:
            cols = self.store.query(pack_id, now - self.config.usage.window_s, now + 1e-6)
            return observed_duty(cols, capacity, stated=stated, settings=self.config.usage)
        except (StoreError, ValueError) as exc:
            self.stats["duty_store_errors"] += 1
            _log.warning("twin service: %s forecast under the stated duty (%s)", pack_id, exc)
            return ObservedDuty(stated, "stated", 0.0, math.nan)

    def forecast(self) -> dict[str, Any] | None:
        """Forecast every pack with a SoH, publish and store the message; returns it."""
        now = self.clock()
        with self._lock:
            ids = sorted(self.packs)
            mirror = self._ensure_mirror()
            entries = []
            for pid in ids:
                state = self.packs[pid]
                soh, std = state.soh, state.soh_std
                if not math.isfinite(soh) and mirror is not None:
                    soh = float(mirror.measured_soh[mirror.index[pid]])  # the BMS's own
                    std = math.nan
                if not (math.isfinite(soh) and 0.0 < soh <= 1.5):
                    continue
                temp = (
                    float(mirror.measured_temperature_c[mirror.index[pid]])
                    if mirror is not None
                    else math.nan
                )
                rmse = float(mirror.voltage_rmse_v[mirror.index[pid]]) if mirror else math.nan
                entries.append((pid, state, min(soh, 1.0), std, temp, rmse))
            duty = self.duty
        if not entries:
            return None
        duties = [self.pack_duty(e[0], e[1], e[2], now) for e in entries]
        temps = np.array(
            [
                d.duty.temperature_c if d.source == "observed" or not math.isfinite(e[4]) else e[4]
                for d, e in zip(duties, entries, strict=True)
            ]
        )
        fc = forecast_soh(
            [e[1].spec.chemistry for e in entries],
            np.array([e[2] for e in entries]),
            soh_std=np.array([e[3] for e in entries]),
            resistance_factor=np.array([_or(e[1].resistance_factor, 1.0) for e in entries]),
            duty=[d.duty for d in duties],
            horizon_days=self.config.horizon_days,
            step_days=self.config.step_days,
            end_of_life_soh=self.config.end_of_life_soh,
            degradation_acceleration=self.config.degradation_acceleration,
            temperature_c=temps,
        )
        self.stats["duties_observed"] += sum(d.source == "observed" for d in duties)
        self.stats["duties_stated"] += sum(d.source == "stated" for d in duties)
        keep = np.unique(
            np.linspace(0, fc.t_days.size - 1, min(self.config.trajectory_points, fc.t_days.size))
            .round()
            .astype(np.int64)
        )
        packs_out = []
        for j, (pid, state, soh, std, _, rmse) in enumerate(entries):
            packs_out.append(
                {
                    "device": state.device,
                    "pack_id": pid,
                    "soh": float(soh),
                    "soh_std": None if not math.isfinite(std) else float(std),
                    "capacity_ah": None
                    if not math.isfinite(state.capacity_ah)
                    else state.capacity_ah,
                    "resistance_ohm": None
                    if not math.isfinite(state.resistance_ohm)
                    else state.resistance_ohm,
                    "voltage_rmse_v": None if not math.isfinite(rmse) else rmse,
                    "rul_days": None
                    if not math.isfinite(fc.rul_days[j])
                    else float(fc.rul_days[j]),
                    "end_of_life_soh": fc.end_of_life_soh,
                    "duty": duties[j].duty.describe(),
                    "duty_source": duties[j].source,
                    **_electrode_fields(state),
                    "trajectory": [
                        {
                            "t_days": float(fc.t_days[i]),
                            "soh": float(min(fc.soh[j, i], 1.5)),
                            "soh_std": float(fc.soh_std[j, i]),
                        }
                        for i in keep
                    ],
                }
            )
        message = {
            "site": self.config.site,
            "session": self.session,
            "seq": self._seq,
            "timestamp_s": max(0.0, float(now)),
            "period_s": self.config.period_s,
            "duty": _duty_text(duty, duties, self.config),
            "horizon_days": self.config.horizon_days,
            "packs": packs_out,
        }
        payload = encode("forecast", message)  # validates: never publish what others drop
        self._seq += 1
        self.last_forecast = message
        self.stats["forecasts"] += 1
        topic = forecast_topic(self.config.site)
        if self.publish is not None:
            try:
                self.publish("forecast", topic, message)
                self.stats["forecasts_published"] += 1
            except Exception:
                self.stats["publish_errors"] += 1
                _log.exception("twin service: forecast not published")
        writer = getattr(self.store, "write_forecast", None)
        if writer is not None:
            writer(now, self.config.site, payload.decode())
        return message

    # ------------------------------------------------------------------ MQTT loop
    def attach(self, link: Any) -> None:
        """Subscribe to the site's telemetry on ``link`` and publish through it.

        Args:
            link: An MQTT link with ``subscribe(topic_filter, handler)`` and
                ``publish(kind, topic, message)`` (:class:`pulsebms.edge_runtime.mqtt_link.
                MqttLink`); subscribe before or after it connects (the link renews its
                subscriptions). An injected ``publish`` is kept.
        """
        from pulsebms.core.messaging import site_filter

        if self.publish is None:
            self.publish = link.publish
        link.subscribe(site_filter(self.config.site, "telemetry"), self.handle_telemetry)

    def start(self, *, tick_s: float = 0.5) -> None:
        """Tick on a background thread until :meth:`stop` (after :meth:`attach`).

        Raises:
            RuntimeError: If it is already running.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the twin service is already running")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(self._stop, tick_s), name="twin-service", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the background loop (buffered rows are flushed)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout_s)
        self._thread = None

    def _loop(self, stop: threading.Event, tick_s: float, max_ticks: int | None = None) -> None:
        ticks = 0
        while not stop.is_set():
            self.tick()
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            stop.wait(tick_s)
        self.flush()

    def run(
        self,
        link: Any,
        *,
        stop: threading.Event | None = None,
        tick_s: float = 1.0,
        max_ticks: int | None = None,
    ) -> None:
        """:meth:`attach` to ``link`` and tick on this thread until ``stop`` is set.

        Args:
            link: See :meth:`attach`.
            stop: Set it to end the loop (e.g. from a signal handler).
            tick_s: Wall-clock time between ticks [s].
            max_ticks: Stop after this many ticks (tests).
        """
        self.attach(link)
        self._loop(stop or threading.Event(), tick_s, max_ticks)

    def summary(self) -> str:
        """One line of counters, for logs."""
        return json.dumps(dict(sorted(self.stats.items())), separators=(",", ":"))
