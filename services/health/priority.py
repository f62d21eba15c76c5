"""Maintenance prioritisation: a priority score per pack and the ordered maintenance queue.

The score (higher = sooner) adds tiers, so that what endangers people comes first:

* **safety anomalies** (``internal_short``, ``abnormal_heating``): ``safety_weight`` (4);
* **sensor anomalies** (``stuck_sensor``: the protection is blind): ``sensor_weight`` (2);
* **remaining useful life** from health score, forecast and usage:
  ``exp(−RUL_days / rul_scale_days)`` (≤ 1), with the RUL read off the straight line from
  the health score now to the forecast ``horizon_cycles`` ahead, down to ``end_of_life_soh``,
  converted to days with the pack's cycles per day (:func:`remaining_useful_life_days`);
* **health now**: ``health_weight × (1 − SoH)/(1 − end_of_life_soh)`` clipped to [0, 1]
  (≤ 0.5), which breaks ties between packs far from their end of life.

:func:`compare_with_oracle` scores a queue against the ordering the truth would give
(true faults and true RUL, through the same formula): Kendall's τ-b between the two scores,
NDCG@k of the queue with the oracle scores as gains, and precision@k (overlap of the two
top-k sets).

Example:
    >>> packs = [
    ...     PackHealth("a", health_score=0.95, soh_forecast=0.94, horizon_cycles=30),
    ...     PackHealth("b", health_score=0.82, soh_forecast=0.80, horizon_cycles=30),
    ...     PackHealth("c", health_score=0.97, soh_forecast=0.96, horizon_cycles=30,
    ...                anomalies=("internal_short",)),
    ... ]
    >>> [p.pack_id for p in maintenance_queue(packs)]
    ['c', 'b', 'a']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import kendalltau

from pulsebms.core.types import FloatArray

__all__ = [
    "PackHealth",
    "PriorityWeights",
    "QueueEntry",
    "RankingReport",
    "compare_with_oracle",
    "maintenance_queue",
    "priority_score",
    "remaining_useful_life_days",
]

SAFETY_ANOMALIES = ("internal_short", "abnormal_heating")
SENSOR_ANOMALIES = ("stuck_sensor",)
_MAX_RUL_DAYS = 36500.0


@dataclass(frozen=True)
class PackHealth:
    """What the queue knows about one pack.

    Attributes:
        pack_id: Pack name.
        health_score: Estimated SoH now.
        soh_forecast: Forecast SoH ``horizon_cycles`` ahead (None: unknown, no fade assumed
            beyond the score).
        horizon_cycles: Forecast horizon [cycles].
        anomalies: Names of the anomalies detected.
        anomaly_score: The detector's score (reported, not used by the formula).
        cycles_per_day: Usage [cycles/day].
        device: Edge device of the pack.
    """

    pack_id: str
    health_score: float
    soh_forecast: float | None = None
    horizon_cycles: float = 30.0
    anomalies: tuple[str, ...] = ()
    anomaly_score: float = 0.0
    cycles_per_day: float = 1.0
    device: str = ""


@dataclass(frozen=True)
class PriorityWeights:
    """Weights and thresholds of the priority score (see the module docstring).

    Attributes:
        end_of_life_soh: SoH that ends a pack's useful life.
        rul_scale_days: RUL at which its term has fallen to 1/e [days].
        safety_weight: Added for a safety anomaly.
        sensor_weight: Added for a sensor anomaly.
        health_weight: Weight of the health-now term.
    """

    end_of_life_soh: float = 0.8
    rul_scale_days: float = 180.0
    safety_weight: float = 4.0
    sensor_weight: float = 2.0
    health_weight: float = 0.5


def remaining_useful_life_days(
    health_score: float,
    soh_forecast: float | None,
    horizon_cycles: float,
    cycles_per_day: float,
    end_of_life_soh: float = 0.8,
) -> float:
    """Days until the SoH line from now through the forecast reaches ``end_of_life_soh``.

    Returns 0 for a pack at or below the end of life and :data:`_MAX_RUL_DAYS` (100 years)
    when the forecast shows no fade or is missing.

    Example:
        >>> round(remaining_useful_life_days(0.90, 0.88, 30, 2.0), 6)
        75.0
    """
    if not math.isfinite(health_score) or health_score <= end_of_life_soh:
        return 0.0
    if soh_forecast is None or not math.isfinite(soh_forecast) or horizon_cycles <= 0:
        return _MAX_RUL_DAYS
    fade_per_cycle = (health_score - soh_forecast) / horizon_cycles
    if fade_per_cycle <= 0 or cycles_per_day <= 0:
        return _MAX_RUL_DAYS
    days = (health_score - end_of_life_soh) / fade_per_cycle / cycles_per_day
    return float(min(days, _MAX_RUL_DAYS))


def priority_score(pack: PackHealth, weights: PriorityWeights = PriorityWeights()) -> float:
    """The pack's maintenance priority (higher = sooner; see the module docstring)."""
    eol = weights.end_of_life_soh
    rul = remaining_useful_life_days(
        pack.health_score, pack.soh_forecast, pack.horizon_cycles, pack.cycles_per_day, eol
    )
    health = pack.health_score if math.isfinite(pack.health_score) else eol
    score = math.exp(-rul / weights.rul_scale_days)
    score += weights.health_weight * min(max((1.0 - health) / (1.0 - eol), 0.0), 1.0)
    if any(a in SAFETY_ANOMALIES for a in pack.anomalies):
        score += weights.safety_weight
    if any(a in SENSOR_ANOMALIES for a in pack.anomalies):
        score += weights.sensor_weight
    return float(score)


@dataclass(frozen=True)
class QueueEntry:
    """One place in the maintenance queue.

    Attributes:
        rank: 0 = first.
        pack_id: Pack name.
        priority: Its priority score.
        rul_days: Its estimated remaining useful life [days].
        reasons: Anomalies found, and ``"end_of_life"`` when the RUL is under the scale.
        device: Its edge device.
    """

    rank: int
    pack_id: str
    priority: float
    rul_days: float
    reasons: tuple[str, ...] = field(default_factory=tuple)
    device: str = ""


def maintenance_queue(
    packs: Sequence[PackHealth], weights: PriorityWeights = PriorityWeights()
) -> list[QueueEntry]:
    """Packs ordered by priority, highest first (ties: lower health first, then name)."""
    scored = []
    for p in packs:
        rul = remaining_useful_life_days(
            p.health_score,
            p.soh_forecast,
            p.horizon_cycles,
            p.cycles_per_day,
            weights.end_of_life_soh,
        )
        reasons = tuple(p.anomalies) + (("end_of_life",) if rul < weights.rul_scale_days else ())
        scored.append((priority_score(p, weights), p, rul, reasons))
    scored.sort(key=lambda s: (-s[0], s[1].health_score, s[1].pack_id))
    return [
        QueueEntry(
            rank=r, pack_id=p.pack_id, priority=s, rul_days=rul, reasons=why, device=p.device
        )
        for r, (s, p, rul, why) in enumerate(scored)
    ]


@dataclass(frozen=True)
class RankingReport:
    """A queue against the oracle ordering.

    Attributes:
        kendall_tau: Kendall's τ-b between queue and oracle priorities (1 = same order).
        ndcg_at_k: NDCG@k of the queue, oracle priorities as gains.
        precision_at_k: Share of the queue's top k that are in the oracle's top k.
        k: The k.
        n_packs: Packs ranked.
    """

    kendall_tau: float
    ndcg_at_k: float
    precision_at_k: float
    k: int
    n_packs: int


def _ndcg(order: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    got = np.array([gains[p] for p in order[:k]])
    ideal = np.sort(np.array(list(gains.values())))[::-1][:k]
    best = float(np.sum(ideal * discount[: ideal.size]))
    return float(np.sum(got * discount[: got.size]) / best) if best > 0 else float("nan")


def compare_with_oracle(
    queue: Sequence[QueueEntry], oracle: Mapping[str, float], k: int = 5
) -> RankingReport:
    """Compare a queue with oracle priorities (see the module docstring).

    Args:
        queue: The queue (its ``priority`` per pack is compared).
        oracle: True priority per pack id (same packs as the queue).
        k: Length of the head compared by NDCG and precision.

    Returns:
        The :class:`RankingReport`.

    Raises:
        ValueError: If queue and oracle name different packs.
    """
    ids = [e.pack_id for e in queue]
    if set(ids) != set(oracle):
        raise ValueError("queue and oracle must rank the same packs")
    k = max(1, min(k, len(ids)))
    ours: FloatArray = np.array([e.priority for e in queue])
    truth: FloatArray = np.array([oracle[p] for p in ids])
    tau = float(kendalltau(ours, truth).statistic) if len(ids) > 1 else float("nan")
    oracle_top = sorted(oracle, key=lambda p: (-oracle[p], p))[:k]
    precision = len(set(ids[:k]) & set(oracle_top)) / k
    return RankingReport(
        kendall_tau=tau,
        ndcg_at_k=_ndcg(ids, oracle, k),
        precision_at_k=float(precision),
        k=k,
        n_packs=len(ids),
    )
