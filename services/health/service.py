"""The health service: telemetry store in, ``pulsebms/{site}/{device}/health`` out.

:class:`HealthService` reads each pack's new telemetry from a
:class:`~pulsebms.services.store.TelemetryStore` (SQLite or PostgreSQL: only the protocol is
used), keeps its cycle summaries up to date (:func:`~pulsebms.services.health.cycles.
summarise_cycles`, the same code the training data went through), and every ``period_s``
of its clock:

1. scores each pack: health score (:class:`~pulsebms.services.health.score.
   HealthScoreModel`, or its ONNX export from a saved model folder) from the features of
   its latest cycle — until a pack has completed a cycle, the SoH its BMS reports, marked
   ``score_source: "bms"`` in the message (else ``"model"``); SoH forecast from the last
   ``lookback`` cycles (the ONNX forecaster on onnxruntime,
   :class:`~pulsebms.services.health.forecast_onnx.OnnxForecaster`), published as the
   health score minus the fade the forecaster foresees (never a rise); anomalies from the
   windows of the last ``anomaly_lookback_s`` (:class:`~pulsebms.services.health.anomaly.
   AnomalyDetector`; a pack without a baseline gets one from its first ``reference_s`` of
   telemetry, its commissioning period); usage in cycles per day;
2. orders the site's maintenance queue (:func:`~pulsebms.services.health.priority.
   maintenance_queue`);
3. publishes one ``health`` message per device (retained, QoS 1, the schema of
   :mod:`pulsebms.core.messaging`) through its publisher — an
   :class:`~pulsebms.edge_runtime.mqtt_link.MqttLink` or anything with the same
   ``publish(kind, topic, message) -> bool``.

:meth:`HealthService.attach` wires it to a link (publishing, and learning the site's packs
from their telemetry: :meth:`HealthService.handle_telemetry`); :meth:`HealthService.start`
runs it on a background thread (``pulsebms-fleet up``), :meth:`HealthService.run` on the
caller's (``pulsebms-health serve``).

The clock is injected (``clock``: simulated time in tests and accelerated runs). The loop
never dies on its input: a pack whose data cannot be read or scored (a store error, no
cycle and no BMS SoH yet, a model failure) is left out of that round's message and counted
(:attr:`HealthService.counters`), and the others are published.

Example:
    >>> from pulsebms.services.store import SqliteTelemetryStore
    >>> store = SqliteTelemetryStore(":memory:")
    >>> service = HealthService(store, [], models=None, site="s1")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from pulsebms.core.messaging import health_topic
from pulsebms.core.types import FloatArray
from pulsebms.services.health.anomaly import AnomalyDetector, persistent_anomalies
from pulsebms.services.health.cycles import (
    CycleTable,
    concat_tables,
    rest_threshold_a,
    summarise_cycles,
)
from pulsebms.services.health.features import pack_features
from pulsebms.services.health.fleet import PackInfo
from pulsebms.services.health.forecast import pack_inputs
from pulsebms.services.health.forecast_onnx import OnnxForecaster
from pulsebms.services.health.priority import (
    PackHealth,
    PriorityWeights,
    QueueEntry,
    maintenance_queue,
)
from pulsebms.services.store.base import TelemetryStore

__all__ = ["HealthModels", "HealthService", "PackAssessment", "Publisher", "ScoreModel"]

_log = logging.getLogger(__name__)
_SECONDS_PER_DAY = 86400.0
_MAX_PENDING = 200_000


class Publisher(Protocol):
    """What the service publishes through (``MqttLink`` satisfies it)."""

    def publish(self, kind: str, topic: str, message: Mapping[str, Any]) -> bool:
        """Validate, encode and publish one message; ``False`` when it was dropped."""
        ...


class ScoreModel(Protocol):
    """A health-score model: features per cycle in, SoH out.

    The fitted :class:`~pulsebms.services.health.score.HealthScoreModel` or its ONNX export,
    :class:`~pulsebms.services.health.score_onnx.OnnxHealthScore`.
    """

    def predict(self, x: FloatArray) -> FloatArray:
        """Estimated SoH per row of features."""
        ...


@dataclass(frozen=True)
class HealthModels:
    """The fitted models a service scores with.

    Attributes:
        score: Health-score model (scikit-learn's, or its ONNX export as a saved model
            folder gives it: :func:`pulsebms.services.health.persist.load_models`).
        forecaster: The exported forecaster (its horizon, lookback, prior, fill travel with it).
        detector: A fitted anomaly detector (baselines for the service's packs).
        weights: Priority weights.
        version: Model version string (the message's ``model`` field).
        feature_window: Rolling window of the features [cycles] (as trained).
    """

    score: ScoreModel
    forecaster: OnnxForecaster
    detector: AnomalyDetector
    weights: PriorityWeights = field(default_factory=PriorityWeights)
    version: str = "pulsebms-health-0"
    feature_window: int = 5


@dataclass(frozen=True)
class PackAssessment:
    """One pack's scores in one round (what its message entry is built from).

    Attributes:
        health: The priority engine's input (score, forecast, anomalies, usage).
        priority: Its priority score.
        rank: Its place in the site queue (0 = first).
    """

    health: PackHealth
    priority: float
    rank: int


@dataclass
class _PackData:
    info: PackInfo
    last_t_s: float
    pending: dict[str, list[float]] = field(default_factory=dict)
    tables: list[CycleTable] = field(default_factory=list)
    n_cycles: int = 0
    first_t_s: float = math.nan


_TELEMETRY_KEYS = ("t_s", "current_a", "voltage_v", "temperature_c", "soc")


class HealthService:
    """Scores a site's packs from the telemetry store and publishes per device.

    Args:
        store: The telemetry store.
        packs: The packs served (ids, devices, chemistry, nominal capacity).
        models: The fitted models.
        site: Site name (topic level).
        publisher: Where messages go (None: scored but not published).
        clock: Time source [UNIX s] (simulated in tests).
        period_s: Time between rounds [s].
        start_s: Earliest telemetry read [s] (commissioning).
        anomaly_lookback_s: Telemetry the anomaly verdict of a round looks at [s].
        session: Sender session id (default: a fresh one).
        initial_cycles: Cycle summaries each pack already has (a restart, or a history
            imported from elsewhere); the store is then read from ``start_s`` on.
        min_anomaly_windows: Windows of the lookback an anomaly must be flagged in to be
            reported (:func:`~pulsebms.services.health.anomaly.persistent_anomalies`).
        reference_s: Commissioning period of a pack the detector has no baseline for: once
            the store holds this much of its telemetry after its first row, the baseline is
            learnt from it (assumed healthy; ``robust_z`` baselines are per pack, so others
            are untouched) and its windows are scored from then on. ``None``: only the
            detector's own baselines.
        known_packs: Packs that may join from telemetry (:meth:`handle_telemetry`) without
            stating chemistry and capacity themselves, by pack id; the device comes from
            the telemetry.
    """

    def __init__(
        self,
        store: TelemetryStore,
        packs: Sequence[PackInfo],
        models: HealthModels,
        *,
        site: str,
        publisher: Publisher | None = None,
        clock: Callable[[], float] = time.time,
        period_s: float = 3600.0,
        start_s: float = 0.0,
        anomaly_lookback_s: float = 86400.0,
        session: str | None = None,
        initial_cycles: Mapping[str, CycleTable] | None = None,
        min_anomaly_windows: int = 2,
        reference_s: float | None = 86400.0,
        known_packs: Mapping[str, PackInfo] | None = None,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.store = store
        self.models = models
        self.site = site
        self.publisher = publisher
        self.clock = clock
        self.period_s = float(period_s)
        self.anomaly_lookback_s = float(anomaly_lookback_s)
        self.min_anomaly_windows = int(min_anomaly_windows)
        if reference_s is not None and not reference_s > 0:
            raise ValueError(f"reference_s must be > 0 (or None), got {reference_s}")
        self.reference_s = reference_s
        self.start_s = float(start_s)
        self.known_packs = dict(known_packs or {})
        self.session = session or uuid.uuid4().hex[:12]
        self._lock = threading.Lock()  # the pack table: telemetry adds packs on another thread
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._packs = {p.pack_id: _PackData(p, float(start_s)) for p in packs}
        for pid, table in (initial_cycles or {}).items():
            if pid in self._packs and len(table):
                self._packs[pid].tables.append(table)
                self._packs[pid].n_cycles = len(table)
        self._seq = 0
        self._next_s = -math.inf
        self.counters: Counter[str] = Counter()
        """Rounds, messages published/dropped, packs skipped by reason."""
        self.last_round: dict[str, PackAssessment] = {}
        """The latest round's assessments by pack id."""
        self.last_queue: list[QueueEntry] = []
        """The latest round's maintenance queue."""
        self._score_source: dict[str, str] = {}

    # ------------------------------------------------------------------ ingestion
    def _ingest(self, data: _PackData, now_s: float) -> None:
        cols = self.store.query(data.info.pack_id, data.last_t_s, now_s)
        t = np.asarray(cols["t_s"], dtype=np.float64)
        if t.size:
            if not math.isfinite(data.first_t_s):
                data.first_t_s = float(t[0])
            for key in _TELEMETRY_KEYS:
                data.pending.setdefault(key, []).extend(np.asarray(cols[key]).tolist())
            data.last_t_s = float(t[-1]) + 1e-6
        if not data.pending.get("t_s"):
            return
        arr = {k: np.asarray(v, dtype=np.float64) for k, v in data.pending.items()}
        ok = np.isfinite(arr["t_s"]) & np.isfinite(arr["current_a"])
        ok &= np.isfinite(arr["voltage_v"]) & np.isfinite(arr["temperature_c"])
        if not ok.all():
            self.counters["rows_dropped_non_finite"] += int(np.count_nonzero(~ok))
            arr = {k: v[ok] for k, v in arr.items()}
        table, tail = summarise_cycles(
            arr["t_s"],
            arr["current_a"],
            arr["voltage_v"],
            arr["temperature_c"],
            arr["soc"],
            current_threshold_a=rest_threshold_a(data.info.nominal_capacity_ah),
            first_cycle=data.n_cycles,
        )
        if len(table):
            data.tables.append(table)
            data.n_cycles += len(table)
        # Keep the unfinished cycle (and the rest sample before it, for ΔV/ΔI and SoC).
        keep_from = max(tail - 1, 0) if len(table) else 0
        n_kept = arr["t_s"].size - keep_from
        if n_kept > _MAX_PENDING:  # a pack that never completes a cycle: bound the memory
            self.counters["rows_dropped_no_cycle"] += n_kept - _MAX_PENDING
            keep_from = arr["t_s"].size - _MAX_PENDING
        data.pending = {k: v[keep_from:].tolist() for k, v in arr.items()}

    # ------------------------------------------------------------------ scoring
    def _assess(self, data: _PackData, now_s: float) -> PackHealth | None:
        info = data.info
        table = concat_tables(data.tables)
        models = self.models
        fc = models.forecaster
        forecast: float | None = None
        if len(table) == 0:
            # No completed cycle yet (a new pack, or hours of one-way use): the BMS's own
            # SoH stands in for the score, said so in the message; no forecast.
            latest = self.store.latest(info.pack_id)
            score = math.nan if latest is None else float(latest.get("soh", math.nan))
            if not (math.isfinite(score) and 0.0 < score <= 1.5):
                self.counters["skipped_no_cycle"] += 1
                return None
            self.counters["scored_from_bms"] += 1
            self._score_source[info.pack_id] = "bms"
            cycles_per_day = 1.0
        else:
            feats = pack_features(
                table,
                nominal_capacity_ah=info.nominal_capacity_ah,
                chemistry=info.chemistry,
                window=models.feature_window,
            )
            score = float(models.score.predict(feats[-1:])[0])
            if not math.isfinite(score):
                self.counters["skipped_score_not_finite"] += 1
                return None
            self._score_source[info.pack_id] = "model"
            if len(table) >= fc.lookback:
                inputs = pack_inputs(
                    feats, fc.fill, prior=fc.prior, horizon=fc.horizon, lookback=fc.lookback
                )
                fade = float(fc.predict_fade(inputs[None, -fc.lookback :])[0])
                value = score - max(fade, 0.0)
                forecast = min(max(value, 0.0), 1.5) if math.isfinite(value) else None
            else:
                self.counters["forecast_short_history"] += 1
            span_s = float(table.t_end_s[-1] - table.t_start_s[0])
            cycles_per_day = len(table) / max(span_s / _SECONDS_PER_DAY, 1.0)
        anomalies: tuple[str, ...] = ()
        anomaly_score = 0.0
        if info.pack_id not in models.detector.packs:
            self._learn_baseline(data, now_s)
        if info.pack_id in models.detector.packs:
            recent = self.store.query(info.pack_id, now_s - self.anomaly_lookback_s, now_s)
            windows = models.detector.score(info.pack_id, recent) if recent["t_s"].size else []
            if windows:
                anomaly_score = max(w.score for w in windows)
                anomalies = persistent_anomalies(windows, min_windows=self.min_anomaly_windows)
        else:
            self.counters["anomaly_no_baseline"] += 1
        return PackHealth(
            pack_id=info.pack_id,
            health_score=score,
            soh_forecast=forecast,
            horizon_cycles=float(fc.horizon),
            anomalies=anomalies,
            anomaly_score=float(anomaly_score),
            cycles_per_day=cycles_per_day,
            device=info.device,
        )

    def _learn_baseline(self, data: _PackData, now_s: float) -> None:
        """Fit the pack's anomaly baseline from its commissioning period, once it is there."""
        first = data.first_t_s
        if self.reference_s is None or not math.isfinite(first):
            return
        end = first + self.reference_s
        if now_s < end:
            return
        reference = self.store.query(data.info.pack_id, first, end)
        try:
            with warnings.catch_warnings():
                # A feature with no value in any reference window (a pack that never rests
                # long enough for the rest slopes) has a NaN median: its z-score reads 0.
                warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
                self.models.detector.fit({data.info.pack_id: reference})
        except ValueError as exc:  # no full window in it: try again next round
            self.counters["baseline_not_learned"] += 1
            _log.info("health: no baseline for %s yet: %s", data.info.pack_id, exc)
            return
        self.counters["baselines_learned"] += 1

    # ------------------------------------------------------------------ packs
    def add_pack(self, info: PackInfo) -> bool:
        """Serve one more pack (or move a known one to another device); True if new."""
        with self._lock:
            data = self._packs.get(info.pack_id)
            if data is None:
                self._packs[info.pack_id] = _PackData(info, self.start_s)
                self.counters["packs_added"] += 1
                return True
            if data.info != info:
                data.info = info
        return False

    def handle_telemetry(self, topic: str, message: Mapping[str, Any]) -> None:
        """Learn the site's packs from a validated telemetry message (never raises).

        A pack not served yet joins when ``known_packs`` names it or its entry states
        ``chemistry`` and ``capacity_ah`` (series = pack voltage / mean cell voltage); one
        that moves to another device follows it. The readings themselves come from the
        store. An :class:`~pulsebms.edge_runtime.mqtt_link.MqttLink` handler.
        """
        try:
            device = str(message["device"])
            for entry in message.get("packs") or ():
                pid = str(entry["pack_id"])
                with self._lock:
                    data = self._packs.get(pid)
                if data is not None:
                    if data.info.device != device:
                        self.add_pack(replace(data.info, device=device))
                    continue
                info = self._pack_info(pid, device, entry)
                if info is None:
                    self.counters["unknown_pack"] += 1
                else:
                    self.add_pack(info)
        except Exception:
            self.counters["handler_errors"] += 1
            _log.exception("health: telemetry message not handled")

    def _pack_info(self, pid: str, device: str, entry: Mapping[str, Any]) -> PackInfo | None:
        known = self.known_packs.get(pid)
        if known is not None:
            return replace(known, device=device)
        chemistry = entry.get("chemistry")
        values = [
            entry.get(k)
            for k in ("capacity_ah", "voltage_v", "cell_voltage_min_v", "cell_voltage_max_v")
        ]
        numbers = [
            float(v)
            for v in values
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        ]
        if not isinstance(chemistry, str) or len(numbers) != 4:
            return None
        capacity, volts, cell_lo, cell_hi = numbers
        series = max(1, round(volts / ((cell_lo + cell_hi) / 2.0)))
        return PackInfo(pid, device, chemistry.upper(), capacity, series)

    def assess(self) -> list[QueueEntry]:
        """Run one round without publishing: ingest, score every pack, order the queue.

        Returns:
            The maintenance queue (packs that could not be scored are left out, counted).
        """
        now_s = float(self.clock())
        assessed: list[PackHealth] = []
        with self._lock:
            packs = list(self._packs.values())
        for data in packs:
            try:
                self._ingest(data, now_s)
                health = self._assess(data, now_s)
            except Exception as exc:  # one pack's failure must not stop the round
                self.counters[f"skipped_{type(exc).__name__}"] += 1
                _log.warning("health: pack %s skipped: %s", data.info.pack_id, exc)
                continue
            if health is not None:
                assessed.append(health)
        queue = maintenance_queue(assessed, self.models.weights)
        by_id = {h.pack_id: h for h in assessed}
        self.last_round = {
            e.pack_id: PackAssessment(by_id[e.pack_id], e.priority, e.rank) for e in queue
        }
        self.last_queue = queue
        self.counters["rounds"] += 1
        return queue

    def messages(self) -> dict[str, dict[str, Any]]:
        """The latest round as one ``health`` message per device (not yet sequenced)."""
        now_s = float(self.clock())
        per_device: dict[str, list[dict[str, Any]]] = {}
        for pid, a in self.last_round.items():
            h = a.health
            per_device.setdefault(h.device or self._packs[pid].info.device, []).append(
                {
                    "pack_id": pid,
                    "health_score": _clip(h.health_score),
                    "soh_forecast": None if h.soh_forecast is None else _clip(h.soh_forecast),
                    "horizon_cycles": h.horizon_cycles,
                    "anomaly_score": h.anomaly_score if math.isfinite(h.anomaly_score) else None,
                    "anomalies": list(h.anomalies),
                    "priority": a.priority,
                    "rank": a.rank,
                    # additive: "model" (the health-score model) or "bms" (no cycle yet)
                    "score_source": self._score_source.get(pid, "model"),
                }
            )
        return {
            device: {
                "site": self.site,
                "device": device,
                "session": self.session,
                "timestamp_s": max(now_s, 0.0),
                "model": self.models.version,
                "packs": sorted(entries, key=lambda e: e["rank"]),
            }
            for device, entries in sorted(per_device.items())
        }

    def publish(self) -> int:
        """Publish the latest round (one message per device); returns messages accepted."""
        if self.publisher is None:
            return 0
        sent = 0
        for device, message in self.messages().items():
            message["seq"] = self._seq
            self._seq += 1
            if self.publisher.publish("health", health_topic(self.site, device), message):
                sent += 1
                self.counters["published"] += 1
            else:
                self.counters["publish_dropped"] += 1
        return sent

    def step(self) -> bool:
        """Run a round and publish it if one is due by the clock; returns whether it ran."""
        now_s = float(self.clock())
        if now_s < self._next_s:
            return False
        self._next_s = now_s + self.period_s
        self.assess()
        self.publish()
        return True

    def run(self, stop: threading.Event, *, poll_s: float = 1.0) -> None:
        """Step until ``stop`` is set (checks the clock every ``poll_s`` of wall time).

        A round that fails as a whole (a bug, not a pack's data) is counted
        (``round_errors``) and logged; the loop goes on.
        """
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                self.counters["round_errors"] += 1
                _log.exception("health: round failed")
            stop.wait(poll_s)

    # ------------------------------------------------------------------ MQTT loop
    def attach(self, link: Any) -> None:
        """Publish through ``link`` and learn the site's packs from its telemetry.

        Args:
            link: An :class:`~pulsebms.edge_runtime.mqtt_link.MqttLink` (anything with
                ``publish(kind, topic, message)`` and ``subscribe(filter, handler)``); an
                injected publisher is kept.
        """
        from pulsebms.core.messaging import site_filter

        if self.publisher is None:
            self.publisher = link
        link.subscribe(site_filter(self.site, "telemetry"), self.handle_telemetry)

    def start(self, *, poll_s: float = 0.5) -> None:
        """Run :meth:`run` on a background thread until :meth:`stop`.

        Raises:
            RuntimeError: If it is already running.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the health service is already running")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), kwargs={"poll_s": poll_s},
            name=f"health-{self.site}", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the background loop (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout_s)
        self._thread = None


def _clip(value: float) -> float:
    """A SoH into the message range [0, 1.5] (a model's output can stray)."""
    return float(min(max(value, 0.0), 1.5)) if math.isfinite(value) else 0.0
