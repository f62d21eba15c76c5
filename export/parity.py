"""Parity check: the ONNX model must act like the source policy, or it is not written.

Observations are the ones the caller gives (e.g. recorded from the env) plus ``n`` drawn
within the observation space: uniform where the space is bounded, else Gaussian around the
training statistics (``VecNormalize``), clipped to the space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from pulsebms.edge_runtime.policy import session_options
from pulsebms.export.graph import INPUT_NAME, OUTPUT_NAME
from pulsebms.export.source import PolicySource

__all__ = ["ParityReport", "check_parity", "onnx_actions", "parity_observations"]


@dataclass(frozen=True)
class ParityReport:
    """Outcome of a parity check.

    Attributes:
        n_observations: Observations compared.
        max_abs_diff: Largest |onnxruntime − source| over every action entry.
        tolerance: The bound it is checked against.
        worst_index: Row of the observation with the largest difference.
    """

    n_observations: int
    max_abs_diff: float
    tolerance: float
    worst_index: int

    @property
    def passed(self) -> bool:
        """Whether ``max_abs_diff <= tolerance``."""
        return self.max_abs_diff <= self.tolerance


def parity_observations(
    source: PolicySource,
    n: int,
    *,
    seed: int = 0,
    given: NDArray[np.floating] | Sequence[Sequence[float]] | None = None,
) -> NDArray[np.float32]:
    """Observations for the parity check: ``given`` rows, then ``n`` sampled in the space.

    Args:
        source: The policy source (its observation space and statistics).
        n: Number of sampled observations.
        seed: Seed of the sampler.
        given: Extra observations ``[k, obs]`` to include first.

    Returns:
        ``[k + n, obs]`` float32 observations.

    Raises:
        ValueError: If ``given`` has the wrong width.
    """
    rng = np.random.default_rng(seed)
    low = np.asarray(source.observation_low, dtype=np.float64)
    high = np.asarray(source.observation_high, dtype=np.float64)
    stats = source.observation_stats()
    mean, std = stats if stats is not None else (np.zeros_like(low), np.ones_like(low))
    bounded = np.isfinite(low) & np.isfinite(high)
    uniform = rng.uniform(np.where(bounded, low, 0.0), np.where(bounded, high, 1.0), (n, low.size))
    gauss = rng.normal(mean, np.maximum(std, 1e-6), (n, low.size))
    sampled = np.clip(np.where(bounded, uniform, gauss), low, high)
    rows = [sampled]
    if given is not None:
        extra = np.asarray(given, dtype=np.float64).reshape(-1, low.size)
        rows.insert(0, extra)
    return np.concatenate(rows).astype(np.float32)


def onnx_actions(model: bytes, observations: NDArray[np.float32]) -> NDArray[np.float32]:
    """Run the ONNX model on a batch of observations with onnxruntime (CPU).

    The session has the edge runtime's options
    (:func:`pulsebms.edge_runtime.policy.session_options`), so the parity gate checks the
    numbers the device will compute.
    """
    session = ort.InferenceSession(
        model, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(observations, dtype=np.float32)})
    return np.asarray(out, dtype=np.float32)


def check_parity(
    model: bytes,
    source: PolicySource,
    observations: NDArray[np.float32],
    *,
    tolerance: float = 1e-5,
) -> ParityReport:
    """Compare onnxruntime's actions with the source policy's on ``observations``.

    A NaN on one side only counts as an infinite difference.

    Args:
        model: ONNX bytes.
        source: The policy it was exported from.
        observations: ``[batch, obs]`` raw observations.
        tolerance: Largest admissible absolute difference.

    Returns:
        The report (check :attr:`ParityReport.passed`).
    """
    got = onnx_actions(model, observations).astype(np.float64)
    want = np.asarray(source.predict(observations), dtype=np.float64).reshape(got.shape)
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, np.abs(got - want))
    diff = np.where(np.isnan(diff), np.inf, diff)
    per_row = diff.max(axis=1) if diff.size else np.zeros(0)
    worst = int(np.argmax(per_row)) if per_row.size else 0
    return ParityReport(
        n_observations=int(observations.shape[0]),
        max_abs_diff=float(per_row.max()) if per_row.size else 0.0,
        tolerance=float(tolerance),
        worst_index=worst,
    )
