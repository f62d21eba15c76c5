"""Anomaly detection on telemetry windows: robust statistics and an isolation forest.

A pack's telemetry (the store's columns) is cut into windows of ``window_s``. Each window
gets five features (:data:`WINDOW_FEATURES`), each aimed at a physical symptom. Two rest on
a per-pack lumped **thermal model** fitted on the pack's reference data,
``dT/dt = θ₀ + θ₁·T + θ₂·I² + θ₃·sin ωt + θ₄·cos ωt`` (cooling towards an ambient with a
daily cycle, ``ω = 2π/day``, plus Joule heat; :class:`ThermalModel`):

* ``thermal_excess_k`` — the mean of measured minus modelled ``dT/dt``, divided by the
  cooling rate ``−θ₁``: the steady temperature rise the model cannot explain [K] (a heat
  source of ``h·A·ΔT`` shows as ``ΔT``);
* ``stuck_temperature_k`` — the temperature excursion (highest minus lowest) the model
  predicts over the window's longest run of identical temperature readings [K]: a healthy
  sensor only repeats itself while the temperature holds still, a frozen one hides the
  rise and fall of the daily ambient and of the pack's own heat;
* ``rest_soc_slope_per_h`` and ``rest_voltage_slope_per_h`` — least-squares slopes of
  SoC and of voltage (relative to its mean) over the samples at rest, skipping the first
  ``settle_s`` after current flowed (relaxation): a pack that loses charge with no current
  has a short;
* ``voltage_flat_fraction`` — share of consecutive samples whose voltage reading did not
  change (the sensor noise makes a live reading flicker).

:meth:`AnomalyDetector.fit` learns, per pack, the thermal model and the median and MAD of
each feature over the pack's **reference** windows (a period assumed healthy, e.g. its
commissioning day), then scores windows as robust z-scores (the MAD floored per feature,
:data:`MAD_FLOOR`). Symptom groups (:data:`ANOMALY_GROUPS`) map the z-scores to named
anomalies: heat above normal → ``abnormal_heating``, charge lost at rest →
``internal_short``, readings that do not move → ``stuck_sensor``. Two decision rules:

* ``"robust_z"`` — a window is anomalous when a group's score (its largest z-score in the
  symptom's direction) exceeds ``z_threshold``;
* ``"isolation_forest"`` — scikit-learn's :class:`~sklearn.ensemble.IsolationForest` on the
  one-sided z-scores (in each feature's symptom direction, capped at 30) of every pack's
  reference windows; a window is anomalous when its score is above
  the reference scores' ``1 − contamination`` quantile; it is named after its largest group.

What it cannot see: a stuck temperature sensor while the true temperature holds still (at
rest in a steady ambient, the frozen value is the right one), a short too weak to move the
SoC beyond the BMS's SoC noise within a window, heat that rises as slowly as the seasons
(a baseline learned on one period drifts away over months: refit it on recent healthy data).

Example:
    >>> import numpy as np
    >>> t = np.arange(0.0, 4 * 3600.0, 60.0)
    >>> flat = np.zeros(t.size)
    >>> f = window_features(t, flat, flat + 50.0, flat + 25.0, flat + 0.5)
    >>> float(f[WINDOW_FEATURES.index("voltage_flat_fraction")])
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest
from threadpoolctl import threadpool_limits

from pulsebms.core.types import BoolArray, FloatArray, IntArray

__all__ = [
    "ANOMALY_GROUPS",
    "DETECTION_METHODS",
    "MAD_FLOOR",
    "WINDOW_FEATURES",
    "AnomalyDetector",
    "AnomalyReport",
    "ThermalModel",
    "WindowScore",
    "evaluate_detector",
    "persistent_anomalies",
    "window_features",
]

WINDOW_FEATURES = (
    "thermal_excess_k",
    "stuck_temperature_k",
    "rest_soc_slope_per_h",
    "rest_voltage_slope_per_h",
    "voltage_flat_fraction",
)
"""Features of one telemetry window, in order."""

ANOMALY_GROUPS: Mapping[str, tuple[tuple[str, float], ...]] = {
    "abnormal_heating": (("thermal_excess_k", 1.0),),
    "internal_short": (("rest_soc_slope_per_h", -1.0), ("rest_voltage_slope_per_h", -1.0)),
    "stuck_sensor": (("stuck_temperature_k", 1.0), ("voltage_flat_fraction", 1.0)),
}
"""Anomaly name → (feature, direction): its score is the largest ``direction × z``."""

DETECTION_METHODS = ("robust_z", "isolation_forest")
"""Decision rules of :class:`AnomalyDetector`."""

MAD_FLOOR = np.array([0.5, 0.3, 0.004, 0.0005, 0.02])
"""Least scale of each feature's z-score, in its unit (a reference that hardly varies must
not turn measurement noise into alarms): 0.5 K, 0.3 K, 0.4 %/h, 0.05 %/h, 2 %."""
_MAD_TO_SIGMA = 1.4826
_DIRECTION = np.array(
    [
        next(d for members in ANOMALY_GROUPS.values() for f, d in members if f == name)
        for name in WINDOW_FEATURES
    ]
)
_SYMPTOM_CAP = 30.0


def _symptoms(z: FloatArray) -> FloatArray:
    """One-sided z-scores in each feature's symptom direction, capped (isolation forest input)."""
    out: FloatArray = np.clip(z * _DIRECTION, 0.0, _SYMPTOM_CAP)
    return out


_OMEGA_PER_S = 2.0 * np.pi / 86400.0


@dataclass(frozen=True)
class ThermalModel:
    """Per-pack lumped thermal model (see the module docstring), rates in K/h.

    Attributes:
        theta: ``(θ₀ [K/h], θ₁ [1/h], θ₂ [K/(h·A²)], θ₃ [K/h], θ₄ [K/h])``.
    """

    theta: tuple[float, float, float, float, float]

    @staticmethod
    def _basis(t_s: FloatArray, current_a: FloatArray, temperature_c: FloatArray) -> FloatArray:
        wt = _OMEGA_PER_S * t_s[:-1]
        return np.column_stack(
            [
                np.ones(t_s.size - 1),
                temperature_c[:-1],
                current_a[1:] ** 2,
                np.sin(wt),
                np.cos(wt),
            ]
        )

    @classmethod
    def fit(cls, t_s: FloatArray, current_a: FloatArray, temperature_c: FloatArray) -> ThermalModel:
        """Least squares on consecutive samples (slightly ridge-regularised).

        A series shorter than 10 samples gives the zero model (no residual information).
        """
        if t_s.size < 10:
            return cls((0.0, 0.0, 0.0, 0.0, 0.0))
        rate = np.diff(temperature_c) / (np.diff(t_s) / 3600.0)
        basis = cls._basis(t_s, current_a, temperature_c)
        scale = np.maximum(np.sqrt(np.mean(basis**2, axis=0)), 1e-12)
        ridge = 1e-3 * np.sqrt(basis.shape[0]) * np.diag(np.ones(basis.shape[1]))
        coef, *_ = np.linalg.lstsq(
            np.vstack([basis / scale, ridge]),
            np.concatenate([rate, np.zeros(basis.shape[1])]),
            rcond=None,
        )
        c = coef / scale
        return cls((float(c[0]), float(c[1]), float(c[2]), float(c[3]), float(c[4])))

    def rate_k_per_h(
        self, t_s: FloatArray, current_a: FloatArray, temperature_c: FloatArray
    ) -> FloatArray:
        """Modelled ``dT/dt`` over each interval between samples [K/h]."""
        if t_s.size < 2:
            return np.zeros(0)
        out: FloatArray = self._basis(t_s, current_a, temperature_c) @ np.asarray(self.theta)
        return out

    def excess_k(self, t_s: FloatArray, current_a: FloatArray, temperature_c: FloatArray) -> float:
        """Mean unexplained ``dT/dt`` over ``−θ₁`` [K] (NaN: < 2 samples or no cooling)."""
        cooling = -self.theta[1]
        if t_s.size < 2 or not cooling > 1e-6:
            return float("nan")
        dt_h = np.diff(t_s) / 3600.0
        residual = np.diff(temperature_c) / dt_h - self.rate_k_per_h(t_s, current_a, temperature_c)
        return float(np.sum(residual * dt_h) / np.sum(dt_h) / cooling)

    def hidden_change_k(
        self, t_s: FloatArray, current_a: FloatArray, temperature_c: FloatArray
    ) -> float:
        """Modelled temperature excursion over the longest run of identical readings [K].

        The modelled rate is first shifted by the window's mean residual, so that a steady
        offset (a warmer ambient, a heat source: the business of ``thermal_excess_k``) does
        not count: what remains is the rise and fall the readings should have shown.
        """
        if t_s.size < 2:
            return float("nan")
        same = np.diff(temperature_c) == 0.0
        if not same.any():
            return 0.0
        dt_h = np.diff(t_s) / 3600.0
        modelled = self.rate_k_per_h(t_s, current_a, temperature_c)
        offset = np.sum((np.diff(temperature_c) / dt_h - modelled) * dt_h) / np.sum(dt_h)
        padded = np.concatenate([[False], same, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        starts, ends = edges[::2], edges[1::2]
        j = int(np.argmax(ends - starts))
        run = slice(int(starts[j]), int(ends[j]))
        path = np.concatenate([[0.0], np.cumsum((modelled[run] + offset) * dt_h[run])])
        return float(np.max(path) - np.min(path))


def _slope_per_h(t_s: FloatArray, y: FloatArray) -> float:
    t_h = (t_s - t_s[0]) / 3600.0
    if t_h[-1] - t_h[0] <= 0:
        return float("nan")
    return float(np.polyfit(t_h, y, 1)[0])


def window_features(
    t_s: FloatArray,
    current_a: FloatArray,
    voltage_v: FloatArray,
    temperature_c: FloatArray,
    soc: FloatArray,
    *,
    thermal: ThermalModel | None = None,
    current_threshold_a: float = 0.5,
    settle_s: float = 900.0,
    min_samples: int = 10,
) -> FloatArray:
    """The :data:`WINDOW_FEATURES` of one window (NaN where a window lacks the samples).

    Args:
        t_s: Sample times [s], increasing.
        current_a: Current [A], + = discharge.
        voltage_v: Pack voltage [V].
        temperature_c: Temperature [°C].
        soc: BMS SoC (NaN where not reported).
        thermal: The pack's thermal model (None: residual NaN).
        current_threshold_a: Rest means ``|current| <=`` this [A].
        settle_s: Rest samples this soon after current flowed are skipped [s].
        min_samples: Fewest samples a slope or a fraction is computed from.

    Returns:
        The feature vector.
    """
    n = t_s.size
    out = np.full(len(WINDOW_FEATURES), np.nan)
    if n == 0:
        return out
    if thermal is not None:
        out[0] = thermal.excess_k(t_s, current_a, temperature_c)
        out[1] = thermal.hidden_change_k(t_s, current_a, temperature_c)
    moving = np.abs(current_a) > current_threshold_a
    last_moving = np.where(moving, t_s, -np.inf)
    np.maximum.accumulate(last_moving, out=last_moving)
    # Before the window's first current we do not know when current last flowed: settle too.
    since = np.where(np.isfinite(last_moving), t_s - last_moving, t_s - t_s[0])
    settled = ~moving & (since >= settle_s)
    with_soc = settled & np.isfinite(soc)
    if np.count_nonzero(with_soc) >= min_samples:
        out[2] = _slope_per_h(t_s[with_soc], soc[with_soc])
    if np.count_nonzero(settled) >= min_samples:
        v_mean = float(np.mean(voltage_v[settled]))
        if v_mean > 0:
            out[3] = _slope_per_h(t_s[settled], voltage_v[settled] / v_mean)
    if n - 1 >= min_samples:
        out[4] = float(np.mean(np.diff(voltage_v) == 0.0))
    return out


def _split_windows(t_s: FloatArray, window_s: float) -> list[slice]:
    if t_s.size == 0:
        return []
    edges = np.arange(t_s[0], t_s[-1] + window_s, window_s)
    starts = np.searchsorted(t_s, edges[:-1], side="left")
    ends = np.searchsorted(t_s, edges[1:], side="left")
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b > a]


@dataclass(frozen=True)
class WindowScore:
    """The detector's verdict on one window.

    Attributes:
        t0_s: First sample time [s].
        t1_s: Last sample time [s].
        score: Anomaly score (robust_z: largest group score; isolation_forest: the
            forest's score, higher = more anomalous).
        anomalous: Whether the window is flagged.
        anomalies: Names of the flagged anomalies (empty when not flagged).
        group_scores: Score per :data:`ANOMALY_GROUPS` name.
    """

    t0_s: float
    t1_s: float
    score: float
    anomalous: bool
    anomalies: tuple[str, ...]
    group_scores: Mapping[str, float]


Columns = Mapping[str, FloatArray]


@dataclass
class _PackBaseline:
    thermal: ThermalModel
    median: FloatArray
    scale: FloatArray


class AnomalyDetector:
    """Per-pack robust baselines and a fleet-wide decision rule (see the module docstring).

    Args:
        method: One of :data:`DETECTION_METHODS`.
        window_s: Window length [s].
        z_threshold: ``robust_z`` threshold on a group score.
        contamination: ``isolation_forest``: share of reference windows above the threshold.
        current_threshold_a: Rest means ``|current| <=`` this [A].
        settle_s: Rest samples this soon after current are skipped in the rest slopes [s].
        seed: Seed of the isolation forest.

    Raises:
        ValueError: On an unknown method or non-positive window.
    """

    def __init__(
        self,
        *,
        method: str = "robust_z",
        window_s: float = 7200.0,
        z_threshold: float = 8.0,
        contamination: float = 0.01,
        current_threshold_a: float = 0.5,
        settle_s: float = 900.0,
        seed: int = 0,
    ) -> None:
        if method not in DETECTION_METHODS:
            raise ValueError(f"method must be one of {DETECTION_METHODS}, got {method!r}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.method = method
        self.window_s = float(window_s)
        self.z_threshold = float(z_threshold)
        self.contamination = float(contamination)
        self.current_threshold_a = float(current_threshold_a)
        self.settle_s = float(settle_s)
        self.seed = int(seed)
        self._baselines: dict[str, _PackBaseline] = {}
        self._forest: IsolationForest | None = None
        self._forest_threshold = float("inf")

    def _features(
        self, cols: Columns, thermal: ThermalModel | None
    ) -> list[tuple[slice, FloatArray]]:
        t = np.asarray(cols["t_s"], dtype=np.float64)
        return [
            (
                s,
                window_features(
                    t[s],
                    np.asarray(cols["current_a"])[s],
                    np.asarray(cols["voltage_v"])[s],
                    np.asarray(cols["temperature_c"])[s],
                    np.asarray(cols["soc"])[s],
                    thermal=thermal,
                    current_threshold_a=self.current_threshold_a,
                    settle_s=self.settle_s,
                ),
            )
            for s in _split_windows(t, self.window_s)
        ]

    def _z(self, baseline: _PackBaseline, features: FloatArray) -> FloatArray:
        z = (features - baseline.median) / baseline.scale
        return np.where(np.isfinite(z), z, 0.0)

    def fit(self, reference: Mapping[str, Columns]) -> AnomalyDetector:
        """Learn each pack's baseline from its reference telemetry (assumed healthy).

        Args:
            reference: Pack id → columns (``t_s``, ``current_a``, ``voltage_v``,
                ``temperature_c``, ``soc``), as :meth:`TelemetryStore.query` returns them.

        Returns:
            ``self``.

        Raises:
            ValueError: If no pack has a reference window.
        """
        all_z: list[FloatArray] = []
        for pack_id, cols in reference.items():
            t = np.asarray(cols["t_s"], dtype=np.float64)
            thermal = ThermalModel.fit(
                t, np.asarray(cols["current_a"]), np.asarray(cols["temperature_c"])
            )
            feats = np.array([f for _, f in self._features(cols, thermal)])
            if feats.size == 0:
                continue
            with np.errstate(all="ignore"):
                median = np.nanmedian(feats, axis=0) if np.isfinite(feats).any() else feats[0]
                mad = np.nanmedian(np.abs(feats - median), axis=0)
            median = np.where(np.isfinite(median), median, np.nan)
            scale = np.maximum(np.nan_to_num(_MAD_TO_SIGMA * mad), MAD_FLOOR)
            base = _PackBaseline(thermal, median, scale)
            self._baselines[pack_id] = base
            all_z.extend(self._z(base, f) for f in feats)
        if not all_z:
            raise ValueError("no reference window: give at least one window_s of telemetry")
        if self.method == "isolation_forest":
            z = _symptoms(np.array(all_z))
            self._forest = IsolationForest(n_estimators=200, random_state=self.seed)
            with threadpool_limits(limits=1):
                self._forest.fit(z)
                ref_scores = -self._forest.score_samples(z)
            self._forest_threshold = float(np.quantile(ref_scores, 1.0 - self.contamination))
        return self

    @property
    def packs(self) -> tuple[str, ...]:
        """Packs with a baseline."""
        return tuple(self._baselines)

    def score(self, pack_id: str, cols: Columns) -> list[WindowScore]:
        """Score every window of a pack's telemetry.

        Args:
            pack_id: The pack (must have a baseline).
            cols: Its telemetry columns.

        Returns:
            One :class:`WindowScore` per window, in time order.

        Raises:
            KeyError: If the pack has no baseline (:meth:`fit` did not see it).
        """
        base = self._baselines[pack_id]
        t = np.asarray(cols["t_s"], dtype=np.float64)
        out = []
        windows = self._features(cols, base.thermal)
        zs = np.array([self._z(base, f) for _, f in windows]).reshape(-1, len(WINDOW_FEATURES))
        forest_scores = np.zeros(len(windows))
        if self.method == "isolation_forest" and self._forest is not None and len(windows):
            with threadpool_limits(limits=1):
                forest_scores = -self._forest.score_samples(_symptoms(zs))
        for j, (s, _) in enumerate(windows):
            groups = {
                name: max(0.0, *(d * zs[j, WINDOW_FEATURES.index(f)] for f, d in members))
                for name, members in ANOMALY_GROUPS.items()
            }
            top = max(groups, key=lambda g: groups[g])
            if self.method == "robust_z":
                score = groups[top]
                flagged = score > self.z_threshold
            else:
                score = float(forest_scores[j])
                flagged = score > self._forest_threshold
            out.append(
                WindowScore(
                    t0_s=float(t[s][0]),
                    t1_s=float(t[s][-1]),
                    score=float(score),
                    anomalous=bool(flagged),
                    anomalies=(top,) if flagged else (),
                    group_scores=groups,
                )
            )
        return out


def persistent_anomalies(
    windows: Sequence[WindowScore], *, min_windows: int = 2
) -> tuple[str, ...]:
    """Anomaly names flagged in at least ``min_windows`` of ``windows`` (sorted).

    A persistence rule for decisions that cost a site visit: one flagged window in a day
    can be a false alarm (a few per cent of healthy windows are), a fault persists.

    Example:
        >>> w = WindowScore(0.0, 1.0, 9.0, True, ("internal_short",), {})
        >>> persistent_anomalies([w]), persistent_anomalies([w, w])
        ((), ('internal_short',))
    """
    counts: dict[str, int] = {}
    for w in windows:
        for name in w.anomalies:
            counts[name] = counts.get(name, 0) + 1
    return tuple(sorted(n for n, c in counts.items() if c >= min_windows))


@dataclass(frozen=True)
class AnomalyReport:
    """Window-level precision and recall, per fault kind and for detection as a whole.

    Attributes:
        method: Decision rule.
        precision: Per fault kind: flagged-and-named-X windows that truly are X.
        recall: Per fault kind: true-X windows flagged and named X.
        detection_precision: Flagged windows that hold any fault.
        detection_recall: Faulty windows flagged (whatever the name).
        n_windows: Windows scored (onset windows excluded).
        n_positive: Per fault kind, windows that truly hold it.
    """

    method: str
    precision: Mapping[str, float]
    recall: Mapping[str, float]
    detection_precision: float
    detection_recall: float
    n_windows: int
    n_positive: Mapping[str, int]


def _ratio(hits: BoolArray, among: BoolArray) -> float:
    """``hits.sum() / among.sum()`` (NaN when ``among`` is empty)."""
    return float(hits.sum() / among.sum()) if among.any() else float("nan")


def evaluate_detector(
    detector: AnomalyDetector,
    telemetry: Mapping[str, Columns],
    labels: Mapping[str, IntArray],
    kinds: Sequence[str],
) -> AnomalyReport:
    """Precision and recall of a fitted detector against true fault labels.

    A window's truth is the fault code its samples share; windows where the code changes
    (a fault's onset) are left out, as neither verdict is wrong there.

    Args:
        detector: A fitted detector.
        telemetry: Pack id → columns to score (after the reference period).
        labels: Pack id → true fault code per sample (0 healthy, ``i + 1`` = ``kinds[i]``).
        kinds: Fault kind names in code order.

    Returns:
        The :class:`AnomalyReport`.
    """
    truth: list[int] = []
    pred: list[str] = []
    for pack_id, cols in telemetry.items():
        t = np.asarray(cols["t_s"], dtype=np.float64)
        lab = np.asarray(labels[pack_id])
        for w in detector.score(pack_id, cols):
            sel = (t >= w.t0_s) & (t <= w.t1_s)
            codes = np.unique(lab[sel])
            if codes.size != 1:
                continue
            truth.append(int(codes[0]))
            pred.append(w.anomalies[0] if w.anomalies else "")
    truth_arr = np.array(truth, dtype=np.int64)
    pred_arr = np.array(pred, dtype=object)
    precision, recall, positives = {}, {}, {}
    for code, kind in enumerate(kinds, start=1):
        is_true = truth_arr == code
        is_pred = pred_arr == kind
        positives[kind] = int(is_true.sum())
        precision[kind] = (
            float((is_true & is_pred).sum() / is_pred.sum()) if is_pred.any() else float("nan")
        )
        recall[kind] = (
            float((is_true & is_pred).sum() / is_true.sum()) if is_true.any() else float("nan")
        )
    flagged = pred_arr != ""
    faulty = truth_arr > 0
    return AnomalyReport(
        method=detector.method,
        precision=precision,
        recall=recall,
        detection_precision=float((flagged & faulty).sum() / flagged.sum())
        if flagged.any()
        else float("nan"),
        detection_recall=float((flagged & faulty).sum() / faulty.sum())
        if faulty.any()
        else float("nan"),
        n_windows=int(truth_arr.size),
        n_positive=positives,
    )
