"""Per-pack state estimation on the edge: SoC by an EKF, capacity (SoH) and resistance slower.

:class:`FleetEstimator` keeps one extended Kalman filter per pack on the one-RC equivalent
circuit of :mod:`pulsebms.edge_runtime.ecm` (numpy only; tables from the project's PyBaMM
parameter sets). Each filter's state is::

    x = [SoC, v_rc, g, h, b]

* ``SoC`` (fraction of the present capacity) and ``v_rc`` (RC-pair voltage [V]): the fast
  states, moved by the measured current every update;
* ``g``: resistance factor on the tabulated R0 and R1 (1 = the fresh cell of the table);
* ``h``: capacity factor, SoH (present / nominal capacity);
* ``b``: current-sensor offset [A per cell] (the true current is ``i − b``): a small offset
  is invisible in one step but biases charge counting over hours.

``g``, ``h`` and ``b`` are slow states: random walks with a small process noise, so they move over
many updates as the voltage keeps disagreeing with the circuit (the *joint* EKF of
Plett, G. L. (2004), J. Power Sources 134, 277-292, §4, written from the equations here).
The capacity is learned through the SoC–capacity cross-covariance that charge counting
builds up and the OCV slope makes visible: it needs SoC swings that reach the steep parts
of the OCV curve (an LFP pack cycled only on its plateau keeps its prior SoH). The
resistance is learned from current changes (the ``R0·I`` step). All three start only once
the SoC has settled (``learning_soc_std``, ``learning_settle_updates``).

Per update (cell current ``i`` = pack current / parallel, held since the last update)::

    predict:  SoC -= (i − b)·dt/(3600·Q·h);  v_rc = a·v_rc + g·R1·(1 − a)·(i − b)
              δ_n, δ_p: the electrodes' diffusion modes stepped at (i − b)/(3600·Q·h)
    correct:  V = U_p(SoC − δ_p) − U_n(SoC − δ_n) − v_rc − g·R0·f·(i − b) + A·|i − b|
              (a = exp(−dt/τ); R0, R1, τ, the rate factor f and the charge/discharge
              asymmetry A at SoC, T; ``OCV(SoC)`` for the first two terms where the
              chemistry's table has no diffusion part)

The diffusion offsets ``δ`` (surface minus average SoC of each electrode's particles,
:mod:`pulsebms.edge_runtime.ecm`) are not filter states: they follow from the measured
current, like a deterministic input. Their relative error (``diffusion_error_fraction``)
enters the measurement noise through the local slope of each electrode's potential, so
the voltage counts for less where a small error in ``δ`` moves it a lot (an LFP cell near
empty, where its graphite's surface runs ahead of the average). On a flat OCV (LFP's
plateau) the voltage carries little information: the SoC then moves by charge counting
with the estimated offset and capacity, and is corrected where the OCV is steep.

Bad input never raises: a non-finite or implausible current skips the update (the next
accepted one integrates the whole gap); a bad voltage keeps the prediction (charge
counting) without correction; a bad temperature uses the last good one (25 °C before any).
Each rejection is counted in :attr:`FleetEstimator.rejected`.

Example:
    >>> import numpy as np
    >>> from pulsebms.safety.state import PackRatings
    >>> ratings = PackRatings(("NMC",), np.array([14]), np.array([4]), np.array([5.0]),
    ...                       np.array([5000.0]))
    >>> est = FleetEstimator(ratings, initial_soc=np.array([0.5]))
    >>> est.update(0, 0.0, 0.0, 3.70, 25.0)
    >>> est.update(0, 10.0, 10.0, 3.68, 25.0)
    >>> bool(0.0 < est.soc[0] < 1.0), est.soh.shape
    (True, (1,))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.edge_runtime.ecm import DIFFUSION_EIGENVALUES, EcmCell
from pulsebms.safety.state import PackRatings

__all__ = ["EstimatorSettings", "FleetEstimator"]

_N_STATES = 5
_UPPER = np.triu_indices(_N_STATES)
_EIGENVALUES = DIFFUSION_EIGENVALUES
_N_MODES = len(DIFFUSION_EIGENVALUES)
_MODE_WEIGHTS_15 = tuple(10.0 / lam2 / 15.0 for lam2 in DIFFUSION_EIGENVALUES)
_INSTANT_WEIGHT_15 = (1.0 - sum(10.0 / lam2 for lam2 in DIFFUSION_EIGENVALUES)) / 15.0
_REFERENCE_SOC = 0.5
_REFERENCE_TEMPERATURE_C = 25.0


@dataclass(frozen=True)
class EstimatorSettings:
    """Noise levels and bounds of the per-pack filters.

    Attributes:
        initial_soc_std: Standard deviation of the initial SoC when it is given.
        unknown_soc_std: Standard deviation of the SoC read from the first voltage when no
            initial SoC is given.
        initial_v_rc_std_v: Standard deviation of the initial RC voltage [V].
        initial_resistance_factor_std: Standard deviation of the initial resistance factor.
        initial_soh_std: Standard deviation of the initial SoH.
        voltage_std_v: Cell-voltage measurement plus model error, one standard deviation [V].
        voltage_std_per_c_rate_v: Model error growing with the current, added (in
            quadrature) per unit C-rate [V]: the circuit is linear, a cell is not. The
            chemistry's own model-error table (:meth:`EcmCell.model_error_ohm_at` × current)
            is added too.
        current_std_c_rate: Current error, one standard deviation, as a C-rate.
        current_std_relative: Current error, one standard deviation, relative to the reading.
        v_rc_walk_v: Random walk of the RC voltage [V/√s].
        resistance_walk: Random walk of the resistance factor [1/√s].
        soh_walk: Random walk of the SoH [1/√s].
        initial_offset_std_c_rate: Standard deviation of the initial current offset (C-rate).
        offset_walk_c_rate: Random walk of the current offset (C-rate) [1/√s].
        max_offset_c_rate: The current-offset estimate is clamped to ± this C-rate.
        diffusion_error_fraction: Relative error of the diffusion offsets ``δ``: adds
            ``(fraction·δ·dU/dSoC)²`` per electrode to the measurement variance.
        learning_soc_std: Resistance, capacity and current offset are corrected only once the SoC
            standard deviation is below this (a wrong initial SoC would otherwise be
            explained as a wrong capacity or resistance). 1.5 %: at 3 % an LFP filter
            started 25 points wrong locked onto a graphite staging step of its plateau
            with 2.5 % spread while 19 points off, and learned a resistance 1.8× too high
            (benchmark at 5 °C, seed 0).
        learning_settle_updates: ... and only after this many consecutive updates whose
            voltage innovation was within 3 standard deviations of its predicted spread with
            the floor measurement noise (a linearised filter can be confident and wrong on
            a curved OCV).
        innovation_smoothing: Weight of each new squared voltage innovation in the running
            estimate of the model error (the measurement variance is the larger of
            ``voltage_std_v²`` and that estimate).
        max_c_rate: Currents beyond this C-rate are rejected as implausible.
        voltage_margin_v: Voltages further than this outside the cell's window are rejected [V].
        soh_bounds: The SoH estimate is clamped to this range.
        resistance_factor_bounds: The resistance factor is clamped to this range.
    """

    initial_soc_std: float = 0.2
    unknown_soc_std: float = 0.3
    initial_v_rc_std_v: float = 0.02
    initial_resistance_factor_std: float = 0.3
    initial_soh_std: float = 0.1
    voltage_std_v: float = 0.01
    voltage_std_per_c_rate_v: float = 0.0
    current_std_c_rate: float = 0.005
    current_std_relative: float = 0.005
    v_rc_walk_v: float = 1e-4
    resistance_walk: float = 2e-4
    soh_walk: float = 2e-5
    initial_offset_std_c_rate: float = 0.01
    offset_walk_c_rate: float = 1e-5
    max_offset_c_rate: float = 0.1
    diffusion_error_fraction: float = 0.1
    learning_soc_std: float = 0.015
    innovation_smoothing: float = 0.01
    learning_settle_updates: int = 60
    max_c_rate: float = 20.0
    voltage_margin_v: float = 0.5
    soh_bounds: tuple[float, float] = (0.3, 1.2)
    resistance_factor_bounds: tuple[float, float] = (0.2, 10.0)


class FleetEstimator:
    """SoC, SoH and resistance of every pack of a fleet from current, voltage and temperature.

    :meth:`update` folds in one pack's sample (the runtime's per-frame path, plain Python
    floats); :meth:`update_many` folds in one sample of each of several packs at once with
    the same result, vectorised over the packs: cheaper from about 30 packs a call on
    (≈3× less CPU per pack at 100 packs, ≈5× at 300; its fixed cost is that of ~20–30 scalar
    updates).

    Args:
        ratings: The fleet's pack ratings (chemistry, counts, cell capacity).
        initial_soc: Initial SoC per pack (None: read from each pack's first voltage).
        initial_soh: Initial SoH per pack (None: 1).
        settings: Filter noise levels and bounds.
        cells: Circuit model per chemistry (default: the shipped tables).

    Attributes:
        soc: SoC estimate per pack (NaN until a pack's first accepted update when no initial
            SoC was given). The arrays are updated in place: copy them to keep a snapshot.
        soc_std: SoC standard deviation per pack.
        soh: SoH estimate per pack (capacity / nominal).
        soh_std: SoH standard deviation per pack.
        resistance_ohm: Pack ohmic resistance estimate at 50 % SoC and 25 °C [Ω]
            (tabulated cell R0 × resistance factor × series / parallel).
        updates: Accepted updates per pack.
        rejected: Rejected or partly rejected updates per pack (bad input).

    Raises:
        ValueError: On a chemistry without circuit table or arrays of the wrong shape.
    """

    def __init__(
        self,
        ratings: PackRatings,
        *,
        initial_soc: FloatArray | None = None,
        initial_soh: FloatArray | None = None,
        settings: EstimatorSettings | None = None,
        cells: Mapping[str, EcmCell] | None = None,
    ) -> None:
        n = ratings.n_packs
        self.ratings = ratings
        self.settings = settings or EstimatorSettings()
        given = dict(cells or {})
        self._cells = [
            given[c] if c in given else EcmCell.load(c)
            for c in (ch.upper() for ch in ratings.chemistry)
        ]
        self._series = [int(s) for s in ratings.series]
        self._parallel = [int(p) for p in ratings.parallel]
        self._capacity_ah = [float(q) for q in ratings.cell_capacity_ah]
        if any(not (q > 0 and math.isfinite(q)) for q in self._capacity_ah):
            raise ValueError(f"cell_capacity_ah must be finite and > 0, got {self._capacity_ah}")
        soc0 = self._pack_array(initial_soc, "initial_soc", np.nan)
        soh0 = self._pack_array(initial_soh, "initial_soh", 1.0)
        s = self.settings
        self._r0_ref = [c.circuit(_REFERENCE_SOC, _REFERENCE_TEMPERATURE_C)[0] for c in self._cells]
        # Per pack: the state, its covariance, the diffusion modes (surface-minus-average SoC
        # per electrode: negative, then positive; deterministic, driven by the current), the
        # last accepted sample's time (NaN: none) and temperature, the running model-error
        # variance and the count of consistent updates. The scalar update works on one pack's
        # rows as Python floats (faster than numpy at this size), the batch on all at once.
        self._x = np.zeros((n, _N_STATES))
        self._x[:, 0] = np.clip(soc0, 0.0, 1.0)
        self._x[:, 2] = 1.0
        self._x[:, 3] = np.clip(soh0, *s.soh_bounds)
        self._p = np.zeros((n, _N_STATES, _N_STATES))
        diagonal = np.arange(_N_STATES)
        self._p[:, diagonal, diagonal] = [
            (
                s.initial_soc_std**2,
                s.initial_v_rc_std_v**2,
                s.initial_resistance_factor_std**2,
                s.initial_soh_std**2,
                (s.initial_offset_std_c_rate * q) ** 2,
            )
            for q in self._capacity_ah
        ]
        self._modes = np.zeros((n, 2 * _N_MODES))
        self._started = ~np.isnan(soc0)
        self._last_time_s = np.full(n, np.nan)
        self._last_temperature_c = np.full(n, _REFERENCE_TEMPERATURE_C)
        self._innovation_var = np.zeros(n)
        self._settled = np.zeros(n, dtype=np.int64)
        # Per-pack constants as arrays, and the packs of each distinct circuit (batch path).
        self._parallel_a = np.asarray(self._parallel, dtype=np.float64)
        self._capacity_a = np.asarray(self._capacity_ah, dtype=np.float64)
        self._resistance_scale = np.asarray(
            [
                r * se / pa
                for r, se, pa in zip(self._r0_ref, self._series, self._parallel, strict=True)
            ]
        )
        self._voltage_window = np.array(
            [(c.voltage_min_v, c.voltage_max_v) for c in self._cells], dtype=np.float64
        ).reshape(n, 2)
        distinct: dict[int, int] = {}
        self._group_cells: list[EcmCell] = []
        for c in self._cells:
            if id(c) not in distinct:
                distinct[id(c)] = len(self._group_cells)
                self._group_cells.append(c)
        self._group = np.array([distinct[id(c)] for c in self._cells], dtype=np.int64)
        self.soc: FloatArray = np.where(self._started, self._x[:, 0], np.nan)
        self.soc_std: FloatArray = np.sqrt(self._p[:, 0, 0])
        self.soh: FloatArray = self._x[:, 3].copy()
        self.soh_std: FloatArray = np.sqrt(self._p[:, 3, 3])
        self.resistance_ohm: FloatArray = self._resistance_scale * self._x[:, 2]
        self.updates: IntArray = np.zeros(n, dtype=np.int64)
        self.rejected: IntArray = np.zeros(n, dtype=np.int64)

    # ------------------------------------------------------------------ helpers
    def _pack_array(self, value: FloatArray | None, name: str, default: float) -> FloatArray:
        n = self.ratings.n_packs
        if value is None:
            return np.full(n, default)
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
        return arr

    def _publish(self, k: int, x: list[float], p: list[list[float]]) -> None:
        """Store pack ``k``'s state and covariance and publish its estimates."""
        self._x[k] = x
        self._p[k] = p
        self.soc[k] = x[0]
        self.soc_std[k] = math.sqrt(max(p[0][0], 0.0))
        self.soh[k] = x[3]
        self.soh_std[k] = math.sqrt(max(p[3][3], 0.0))
        self.resistance_ohm[k] = self._resistance_scale[k] * x[2]

    # ------------------------------------------------------------------ API
    @property
    def n_packs(self) -> int:
        """Number of packs."""
        return self.ratings.n_packs

    def update(
        self,
        pack: int,
        now_s: float,
        current_a: float,
        cell_voltage_v: float,
        temperature_c: float,
    ) -> None:
        """Fold one telemetry sample of ``pack`` into its filter.

        Args:
            pack: Pack index (0 … n_packs − 1).
            now_s: Sample time [s] (monotonic per pack; a sample not after the last accepted
                one is rejected).
            current_a: Pack current held since the previous sample [A], + = discharge.
            cell_voltage_v: Cell terminal voltage now [V].
            temperature_c: Cell temperature now [°C].

        Raises:
            IndexError: If ``pack`` is out of range (a programming error, not bad data).
        """
        if not 0 <= pack < self.n_packs:
            raise IndexError(f"pack {pack} out of range for {self.n_packs} packs")
        s = self.settings
        cell = self._cells[pack]
        q_ah = self._capacity_ah[pack]
        i = float(current_a) / self._parallel[pack] if math.isfinite(current_a) else math.nan
        now = float(now_s)
        last_s = float(self._last_time_s[pack])
        last = None if math.isnan(last_s) else last_s
        if (
            not math.isfinite(i)
            or abs(i) > s.max_c_rate * q_ah
            or not math.isfinite(now)
            or (last is not None and now <= last)
        ):
            self.rejected[pack] += 1
            return
        t_ok = math.isfinite(temperature_c) and -60.0 <= temperature_c <= 120.0
        if t_ok:
            self._last_temperature_c[pack] = float(temperature_c)
        temp = float(self._last_temperature_c[pack])
        v = float(cell_voltage_v)
        v_ok = (
            math.isfinite(v)
            and cell.voltage_min_v - s.voltage_margin_v
            <= v
            <= cell.voltage_max_v + s.voltage_margin_v
        )
        partial = not (t_ok and v_ok)
        x, p = self._x[pack].tolist(), self._p[pack].tolist()
        self._last_time_s[pack] = now
        if not self._started[pack]:
            if not v_ok:
                self.rejected[pack] += 1
                self._last_time_s[pack] = math.nan
                return
            r0, _, _ = cell.circuit(0.5, temp)
            x[0] = cell.soc_from_ocv(v + r0 * i)
            p[0][0] = s.unknown_soc_std**2
            self._started[pack] = True
            self.updates[pack] += 1
            if partial:
                self.rejected[pack] += 1
            self._publish(pack, x, p)
            return
        if last is None:
            # First sample with a given initial SoC: it only starts the clock.
            self.updates[pack] += 1
            if partial:
                self.rejected[pack] += 1
            return
        dt = now - last
        soc, v_rc, g, h, b = x
        i_c = i - b
        # ---- predict: x' = f(x), P' = F P Fᵀ + Q with F = I except rows 0 and 1
        per_ah = dt / (3600.0 * q_ah)
        soc_p = soc - i_c * per_ah / h
        # The circuit at the predicted SoC serves the step and the correction.
        r0_p, r1, tau, asym = cell.circuit_and_asymmetry(soc_p, temp)
        a = math.exp(-dt / tau)
        v_rc_p = a * v_rc + g * r1 * (1.0 - a) * i_c
        surface = (0.0, 0.0)
        if cell.has_diffusion:
            surface = self._step_diffusion(pack, cell, temp, dt, i_c / (3600.0 * q_ah * h))
        f03 = i_c * per_ah / (h * h)
        f04 = per_ah / h
        f12 = r1 * (1.0 - a) * i_c
        f14 = -g * r1 * (1.0 - a)
        p0, p1, p2, p3, p4 = p
        row0 = [p0[c] + f03 * p3[c] + f04 * p4[c] for c in range(5)]
        row1 = [a * p1[c] + f12 * p2[c] + f14 * p4[c] for c in range(5)]
        rows = (row0, row1, p2, p3, p4)
        i_std = s.current_std_c_rate * q_ah + s.current_std_relative * abs(i)
        q = (
            (i_std * per_ah / h) ** 2,
            s.v_rc_walk_v**2 * dt,
            s.resistance_walk**2 * dt,
            s.soh_walk**2 * dt,
            (s.offset_walk_c_rate * q_ah) ** 2 * dt,
        )
        for r in range(5):
            m = rows[r]
            p[r] = [
                m[0] + f03 * m[3] + f04 * m[4],
                a * m[1] + f12 * m[2] + f14 * m[4],
                m[2],
                m[3],
                m[4],
            ]
            p[r][r] += q[r]
        x[0], x[1] = soc_p, v_rc_p
        # ---- correct
        if v_ok:
            diffusion_v2 = 0.0
            if cell.has_diffusion:
                ocv, slope_p, slope_n = cell.surface_ocv(soc_p - surface[0], soc_p - surface[1])
                slope = slope_p - slope_n
                kappa = s.diffusion_error_fraction
                diffusion_v2 = (kappa * slope_n * surface[0]) ** 2 + (
                    kappa * slope_p * surface[1]
                ) ** 2
            else:
                ocv, slope = cell.ocv_and_slope(soc_p)
            r0_p *= cell.rate_factor(abs(i_c) / q_ah, temp)
            predicted_v = ocv - v_rc_p - g * r0_p * i_c + asym * abs(i_c)
            d_asym = asym if i_c < 0.0 else -asym
            # H = [slope, −1, −R0·i, 0, g·R0 + dA]: P·H over the rows of P.
            h2, h4 = -r0_p * i_c, g * r0_p + d_asym
            ph = [slope * pr[0] - pr[1] + h2 * pr[2] + h4 * pr[4] for pr in p]
            predicted_var = slope * ph[0] - ph[1] + h2 * ph[2] + h4 * ph[4]
            innovation = v - predicted_v
            # Measurement variance: the floor, or what the recent innovations say the
            # model error is (covariance matching), whichever is larger.
            c_rate = abs(i_c) / q_ah
            model_v = (s.voltage_std_per_c_rate_v * c_rate) ** 2 + (
                cell.model_error_ohm_at(soc_p) * i_c
            ) ** 2
            floor = s.voltage_std_v**2 + model_v + diffusion_v2
            previous = float(self._innovation_var[pack])
            r_var = max(floor, previous)
            self._innovation_var[pack] = previous + s.innovation_smoothing * (
                innovation * innovation - previous
            )
            consistent = innovation * innovation <= 9.0 * (predicted_var + floor)
            # Robust (Huber-like) step: an innovation beyond 3 standard deviations is
            # taken with the noise that would make it 3 (model error, not information).
            r_var = max(r_var, innovation * innovation / 9.0 - predicted_var)
            innovation_var = predicted_var + r_var
            gain = [v_ / innovation_var for v_ in ph]
            settled = int(self._settled[pack]) + 1 if consistent else 0
            self._settled[pack] = settled
            if p[0][0] > s.learning_soc_std**2 or settled < s.learning_settle_updates:
                # SoC not settled yet: its error would leak into the slow states.
                gain[2] = gain[3] = gain[4] = 0.0
            for r in range(5):
                x[r] += gain[r] * innovation
            # Joseph form (valid for the gated, suboptimal gain), expanded:
            # P' = P − K·(PH)ᵀ − (PH)·Kᵀ + (HᵀPH + r)·K·Kᵀ, kept symmetric.
            for r in range(5):
                kr, phr, pr = gain[r], ph[r], p[r]
                skr = innovation_var * kr
                for c in range(r, 5):
                    value = pr[c] - kr * ph[c] - phr * gain[c] + skr * gain[c]
                    pr[c] = value
                    p[c][r] = value
        x[0] = min(max(x[0], 0.0), 1.0)
        x[1] = min(max(x[1], -1.0), 1.0)
        x[2] = min(max(x[2], s.resistance_factor_bounds[0]), s.resistance_factor_bounds[1])
        x[3] = min(max(x[3], s.soh_bounds[0]), s.soh_bounds[1])
        b_max = s.max_offset_c_rate * q_ah
        x[4] = min(max(x[4], -b_max), b_max)
        self.updates[pack] += 1
        if partial:
            self.rejected[pack] += 1
        self._publish(pack, x, p)

    def update_many(
        self,
        packs: IntArray | Sequence[int],
        now_s: FloatArray | float,
        current_a: FloatArray,
        cell_voltage_v: FloatArray,
        temperature_c: FloatArray,
    ) -> None:
        """Fold one sample of each of several packs in at once, vectorised over the packs.

        The result is that of :meth:`update` called for each pack in turn (to rounding:
        the same arithmetic, in numpy); the cost is about that of a few scalar updates
        whatever the number of packs. Samples that :meth:`update` would reject or only
        partly accept, and a pack's first samples, go through :meth:`update`.

        Args:
            packs: Pack indices, each at most once.
            now_s: Sample time per pack [s] (a scalar broadcasts).
            current_a: Pack current per pack [A] (see :meth:`update`).
            cell_voltage_v: Cell terminal voltage per pack [V].
            temperature_c: Cell temperature per pack [°C].

        Raises:
            IndexError: If a pack is out of range.
            ValueError: If a pack repeats or the arrays do not match ``packs``.

        Example:
            >>> from pulsebms.safety.state import PackRatings
            >>> ratings = PackRatings(("NMC", "LFP"), np.array([14, 14]), np.array([4, 4]),
            ...                       np.array([5.0, 2.3]), np.array([5000.0, 5000.0]))
            >>> est = FleetEstimator(ratings, initial_soc=np.array([0.5, 0.5]))
            >>> temps = np.full(2, 25.0)
            >>> est.update_many([0, 1], 0.0, np.zeros(2), np.array([3.70, 3.26]), temps)
            >>> est.update_many([0, 1], 10.0, np.full(2, 8.0), np.array([3.68, 3.24]), temps)
            >>> est.updates.tolist()
            [2, 2]
        """
        idx = np.asarray(packs, dtype=np.int64)
        n = idx.size
        if idx.ndim != 1:
            raise ValueError(f"packs must be one-dimensional, got shape {idx.shape}")
        if n and (idx.min() < 0 or idx.max() >= self.n_packs):
            raise IndexError(f"packs {idx.tolist()} out of range for {self.n_packs} packs")
        if len(set(idx.tolist())) != n:
            raise ValueError(f"each pack at most once per call, got {idx.tolist()}")
        arrays = []
        for name, value in (
            ("now_s", now_s),
            ("current_a", current_a),
            ("cell_voltage_v", cell_voltage_v),
            ("temperature_c", temperature_c),
        ):
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim == 0 and name == "now_s":
                arr = np.full(n, float(arr))
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
            arrays.append(arr)
        now, current, volt, temp = arrays
        s = self.settings
        q_ah = self._capacity_a[idx]
        last = self._last_time_s[idx]
        v_lo = self._voltage_window[idx, 0] - s.voltage_margin_v
        v_hi = self._voltage_window[idx, 1] + s.voltage_margin_v
        with np.errstate(invalid="ignore"):
            i = current / self._parallel_a[idx]
            fast = (
                self._started[idx]
                & np.isfinite(i)
                & (np.abs(i) <= s.max_c_rate * q_ah)
                & np.isfinite(now)
                & (now > last)
                & np.isfinite(temp)
                & (temp >= -60.0)
                & (temp <= 120.0)
                & np.isfinite(volt)
                & (volt >= v_lo)
                & (volt <= v_hi)
            )
        for j in np.flatnonzero(~fast):
            self.update(int(idx[j]), now[j], current[j], volt[j], temp[j])
        if np.any(fast):
            sel = idx[fast]
            self._update_batch(sel, now[fast] - last[fast], i[fast], volt[fast], temp[fast])
            self._last_time_s[sel] = now[fast]
            self._last_temperature_c[sel] = temp[fast]

    def _update_batch(
        self, idx: IntArray, dt: FloatArray, i: FloatArray, v: FloatArray, temp: FloatArray
    ) -> None:
        """:meth:`update`'s predict and correct for accepted samples, vectorised over packs."""
        s = self.settings
        n = idx.size
        q_ah = self._capacity_a[idx]
        x = self._x[idx]
        p = self._p[idx]
        soc, v_rc, g, h, b = x.T
        i_c = i - b
        per_ah = dt / (3600.0 * q_ah)
        soc_p = soc - i_c * per_ah / h
        circuit = np.zeros((4, n))
        ocv = np.zeros(n)
        slope = np.zeros(n)
        diffusion_v2 = np.zeros(n)
        rate_factor = np.ones(n)
        model_error = np.zeros(n)
        rate = i_c / (3600.0 * q_ah * h)
        abs_c = np.abs(i_c) / q_ah
        group = self._group[idx]
        for gid in sorted(set(group.tolist())):
            sel = np.flatnonzero(group == gid)
            cell = self._group_cells[gid]
            sp, tp = soc_p[sel], temp[sel]
            circuit[:, sel] = cell.circuit_arrays(sp, tp)
            rate_factor[sel] = cell.rate_factor_array(abs_c[sel], tp)
            model_error[sel] = cell.model_error_array(sp)
            if cell.has_diffusion:
                offsets = self._step_diffusion_many(
                    idx[sel], cell.diffusion_times_array(tp), dt[sel], rate[sel]
                )
                surface_ocv, slope_p, slope_n = cell.surface_ocv_arrays(
                    sp - offsets[0], sp - offsets[1]
                )
                ocv[sel] = surface_ocv
                slope[sel] = slope_p - slope_n
                kappa = s.diffusion_error_fraction
                diffusion_v2[sel] = (kappa * slope_n * offsets[0]) ** 2 + (
                    kappa * slope_p * offsets[1]
                ) ** 2
            else:
                ocv[sel], slope[sel] = cell.ocv_and_slope_arrays(sp)
        r0_p, r1, tau, asym = circuit
        # ---- predict (as update())
        a = np.exp(-dt / tau)
        v_rc_p = a * v_rc + g * r1 * (1.0 - a) * i_c
        f03 = i_c * per_ah / (h * h)
        f04 = per_ah / h
        f12 = r1 * (1.0 - a) * i_c
        f14 = -g * r1 * (1.0 - a)
        m = p.copy()
        m[:, 0] = p[:, 0] + f03[:, None] * p[:, 3] + f04[:, None] * p[:, 4]
        m[:, 1] = a[:, None] * p[:, 1] + f12[:, None] * p[:, 2] + f14[:, None] * p[:, 4]
        p = m.copy()
        p[:, :, 0] = m[:, :, 0] + f03[:, None] * m[:, :, 3] + f04[:, None] * m[:, :, 4]
        p[:, :, 1] = a[:, None] * m[:, :, 1] + f12[:, None] * m[:, :, 2] + f14[:, None] * m[:, :, 4]
        i_std = s.current_std_c_rate * q_ah + s.current_std_relative * np.abs(i)
        diag = np.arange(_N_STATES)
        p[:, diag, diag] += np.stack(
            [
                (i_std * per_ah / h) ** 2,
                np.full(n, s.v_rc_walk_v**2) * dt,
                np.full(n, s.resistance_walk**2) * dt,
                np.full(n, s.soh_walk**2) * dt,
                (s.offset_walk_c_rate * q_ah) ** 2 * dt,
            ],
            axis=1,
        )
        x[:, 0], x[:, 1] = soc_p, v_rc_p
        # ---- correct (as update())
        r0_p = r0_p * rate_factor
        predicted_v = ocv - v_rc_p - g * r0_p * i_c + asym * np.abs(i_c)
        d_asym = np.where(i_c < 0.0, asym, -asym)
        h2, h4 = -r0_p * i_c, g * r0_p + d_asym
        ph = (
            slope[:, None] * p[:, :, 0]
            - p[:, :, 1]
            + h2[:, None] * p[:, :, 2]
            + h4[:, None] * p[:, :, 4]
        )
        predicted_var = slope * ph[:, 0] - ph[:, 1] + h2 * ph[:, 2] + h4 * ph[:, 4]
        innovation = v - predicted_v
        model_v = (s.voltage_std_per_c_rate_v * abs_c) ** 2 + (model_error * i_c) ** 2
        floor = s.voltage_std_v**2 + model_v + diffusion_v2
        previous = self._innovation_var[idx]
        r_var = np.maximum(floor, previous)
        smoothed = previous + s.innovation_smoothing * (innovation * innovation - previous)
        consistent = innovation * innovation <= 9.0 * (predicted_var + floor)
        r_var = np.maximum(r_var, innovation * innovation / 9.0 - predicted_var)
        innovation_var = predicted_var + r_var
        gain = ph / innovation_var[:, None]
        settled = np.where(consistent, self._settled[idx] + 1, 0)
        gated = (p[:, 0, 0] > s.learning_soc_std**2) | (settled < s.learning_settle_updates)
        gain[gated, 2:] = 0.0
        x += gain * innovation[:, None]
        rows, cols = _UPPER
        skr = innovation_var[:, None] * gain[:, rows]
        upper = (
            p[:, rows, cols]
            - gain[:, rows] * ph[:, cols]
            - ph[:, rows] * gain[:, cols]
            + skr * gain[:, cols]
        )
        p[:, rows, cols] = upper
        p[:, cols, rows] = upper
        x[:, 0] = np.minimum(np.maximum(x[:, 0], 0.0), 1.0)
        x[:, 1] = np.minimum(np.maximum(x[:, 1], -1.0), 1.0)
        lo, hi = s.resistance_factor_bounds
        x[:, 2] = np.minimum(np.maximum(x[:, 2], lo), hi)
        lo, hi = s.soh_bounds
        x[:, 3] = np.minimum(np.maximum(x[:, 3], lo), hi)
        b_max = s.max_offset_c_rate * q_ah
        x[:, 4] = np.minimum(np.maximum(x[:, 4], -b_max), b_max)
        self._x[idx] = x
        self._p[idx] = p
        self._innovation_var[idx] = smoothed
        self._settled[idx] = settled
        self.updates[idx] += 1
        self.soc[idx] = x[:, 0]
        self.soc_std[idx] = np.sqrt(np.maximum(p[:, 0, 0], 0.0))
        self.soh[idx] = x[:, 3]
        self.soh_std[idx] = np.sqrt(np.maximum(p[:, 3, 3], 0.0))
        self.resistance_ohm[idx] = self._resistance_scale[idx] * x[:, 2]

    def _step_diffusion_many(
        self, packs: IntArray, tau_d: FloatArray, dt_s: FloatArray, rate: FloatArray
    ) -> FloatArray:
        """:meth:`_step_diffusion` for several packs of one circuit; offsets ``(2, n)``."""
        modes = self._modes[packs].reshape(packs.size, 2, _N_MODES)
        lam = np.asarray(_EIGENVALUES)
        weights = np.asarray(_MODE_WEIGHTS_15)
        decay = np.exp(-lam[None, None, :] * dt_s[:, None, None] / tau_d.T[:, :, None])
        scale = tau_d.T * rate[:, None]  # (pack, electrode)
        modes = decay * modes + (1.0 - decay) * weights * scale[:, :, None]
        self._modes[packs] = modes.reshape(packs.size, -1)
        offsets = _INSTANT_WEIGHT_15 * scale + modes.sum(axis=2)
        return np.asarray(offsets.T, dtype=np.float64)

    def _step_diffusion(
        self, pack: int, cell: EcmCell, temperature_c: float, dt_s: float, rate: float
    ) -> tuple[float, float]:
        """Advance ``pack``'s diffusion modes by a step at SoC ``rate``; its offsets (n, p)."""
        modes = self._modes[pack].tolist()
        offsets = [0.0, 0.0]
        for e, tau in enumerate(cell.diffusion_times_s(temperature_c)):
            scale = tau * rate
            total = _INSTANT_WEIGHT_15 * scale
            base = e * _N_MODES
            for j in range(_N_MODES):
                decay = math.exp(-_EIGENVALUES[j] * dt_s / tau)
                m = decay * modes[base + j] + (1.0 - decay) * _MODE_WEIGHTS_15[j] * scale
                modes[base + j] = m
                total += m
            offsets[e] = total
        self._modes[pack] = modes
        return offsets[0], offsets[1]

    def disagreement(
        self,
        reported_soc: FloatArray,
        reported_soh: FloatArray,
        *,
        soc_tolerance: float = 0.05,
        soh_tolerance: float = 0.05,
        n_std: float = 3.0,
    ) -> BoolArray:
        """Packs whose BMS-reported SoC or SoH is implausible against the estimate.

        A pack disagrees where ``|reported − estimate|`` exceeds the tolerance plus
        ``n_std`` standard deviations of the estimate, for SoC or SoH, or where a reported
        value is not finite. Packs without an estimate yet never disagree.

        Args:
            reported_soc: SoC per pack as the BMS reports it (fraction).
            reported_soh: SoH per pack as the BMS reports it (fraction).
            soc_tolerance: Allowed SoC difference beyond the estimate's uncertainty.
            soh_tolerance: Allowed SoH difference beyond the estimate's uncertainty.
            n_std: Standard deviations of the estimate added to each tolerance.

        Returns:
            One flag per pack.

        Raises:
            ValueError: If an array does not have shape ``(n_packs,)``.
        """
        soc_r = self._pack_array(reported_soc, "reported_soc", np.nan)
        soh_r = self._pack_array(reported_soh, "reported_soh", np.nan)
        with np.errstate(invalid="ignore"):
            bad_soc = ~(np.abs(soc_r - self.soc) <= soc_tolerance + n_std * self.soc_std)
            bad_soh = ~(np.abs(soh_r - self.soh) <= soh_tolerance + n_std * self.soh_std)
        return np.asarray(self._started & (bad_soc | bad_soh), dtype=np.bool_)
