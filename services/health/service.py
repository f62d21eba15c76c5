"""The health service: telemetry store in, ``pulsebms/{site}/{device}/health`` out.

:class:`HealthService` reads each pack's new telemetry from a
:class:`~pulsebms.services.store.TelemetryStore` (SQLite or PostgreSQL: only the protocol is
used), keeps its cycle summaries up to date (:func:`~pulsebms.services.health.cycles.
summarise_cycles`, the same code the training data went through), and every ``period_s``
of its clock:

1. scores each pack: health score (:class:`~pulsebms.services.health.score.
   HealthScoreModel`) from the features of its latest cycle; SoH forecast from the last
   ``lookback`` cycles (the ONNX forecaster on onnxruntime,
   :class:`~pulsebms.services.health.forecast_onnx.OnnxForecaster`), published as the
   health score minus the fade the forecaster foresees (never a rise); anomalies from the
   windows of the last ``anomaly_lookback_s`` (:class:`~pulsebms.services.health.anomaly.
   AnomalyDetector`); usage in cycles per day;
2. orders the site's maintenance queue (:func:`~pulsebms.services.health.priority.
   maintenance_queue`);
3. publishes one ``health`` message per device (retained, QoS 1, the schema of
   :mod:`pulsebms.core.messaging`) through its publisher — an
   :class:`~pulsebms.edge_runtime.mqtt_link.MqttLink` or anything with the same
   ``publish(kind, topic, message) -> bool``.

The clock is injected (``clock``: simulated time in tests and accelerated runs). The loop
never dies on its input: a pack whose data cannot be read or scored (a store error, too
few cycles yet, a model failure) is left out of that round's message and counted
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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pulsebms.core.messaging import health_topic
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
from pulsebms.services.health.score import HealthScoreModel
from pulsebms.services.store.base import TelemetryStore

__all__ = ["HealthModels", "HealthService", "PackAssessment", "Publisher"]

_log = logging.getLogger(__name__)
_SECONDS_PER_DAY = 86400.0
_MAX_PENDING = 200_000


class Publisher(Protocol):
    """What the service publishes through (``MqttLink`` satisfies it)."""

    def publish(self, kind: str, topic: str, message: Mapping[str, Any]) -> bool:
        """Validate, encode and publish one message; ``False`` when it was dropped."""
        ...


@dataclass(frozen=True)
class HealthModels:
    """The fitted models a service scores with.

    Attributes:
        score: Health-score model.
        forecaster: The exported forecaster (its horizon, lookback, prior, fill travel with it).
        detector: A fitted anomaly detector (baselines for the service's packs).
        weights: Priority weights.
        version: Model version string (the message's ``model`` field).
        feature_window: Rolling window of the features [cycles] (as trained).
    """

    score: HealthScoreModel
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
        self.session = session or uuid.uuid4().hex[:12]
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

    # ------------------------------------------------------------------ ingestion
    def _ingest(self, data: _PackData, now_s: float) -> None:
        cols = self.store.query(data.info.pack_id, data.last_t_s, now_s)
        t = np.asarray(cols["t_s"], dtype=np.float64)
        if t.size:
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
        if len(table) == 0:
            self.counters["skipped_no_cycle"] += 1
            return None
        models = self.models
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
        fc = models.forecaster
        forecast: float | None = None
        if len(table) >= fc.lookback:
            inputs = pack_inputs(
                feats, fc.fill, prior=fc.prior, horizon=fc.horizon, lookback=fc.lookback
            )
            fade = float(fc.predict_fade(inputs[None, -fc.lookback :])[0])
            value = score - max(fade, 0.0)
            forecast = min(max(value, 0.0), 1.5) if math.isfinite(value) else None
        else:
            self.counters["forecast_short_history"] += 1
        anomalies: tuple[str, ...] = ()
        anomaly_score = 0.0
        if info.pack_id in models.detector.packs:
            recent = self.store.query(info.pack_id, now_s - self.anomaly_lookback_s, now_s)
            windows = models.detector.score(info.pack_id, recent) if recent["t_s"].size else []
            if windows:
                anomaly_score = max(w.score for w in windows)
                anomalies = persistent_anomalies(windows, min_windows=self.min_anomaly_windows)
        else:
            self.counters["anomaly_no_baseline"] += 1
        span_s = float(table.t_end_s[-1] - table.t_start_s[0])
        cycles_per_day = len(table) / max(span_s / _SECONDS_PER_DAY, 1.0)
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

    def assess(self) -> list[QueueEntry]:
        """Run one round without publishing: ingest, score every pack, order the queue.

        Returns:
            The maintenance queue (packs that could not be scored are left out, counted).
        """
        now_s = float(self.clock())
        assessed: list[PackHealth] = []
        for data in self._packs.values():
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
            per_device.setdefault(self._packs[pid].info.device, []).append(
                {
                    "pack_id": pid,
                    "health_score": _clip(h.health_score),
                    "soh_forecast": None if h.soh_forecast is None else _clip(h.soh_forecast),
                    "horizon_cycles": h.horizon_cycles,
                    "anomaly_score": h.anomaly_score if math.isfinite(h.anomaly_score) else None,
                    "anomalies": list(h.anomalies),
                    "priority": a.priority,
                    "rank": a.rank,
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
        """Step until ``stop`` is set (checks the clock every ``poll_s`` of wall time)."""
        while not stop.is_set():
            self.step()
            stop.wait(poll_s)


def _clip(value: float) -> float:
    """A SoH into the message range [0, 1.5] (a model's output can stray)."""
    return float(min(max(value, 0.0), 1.5)) if math.isfinite(value) else 0.0
