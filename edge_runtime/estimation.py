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
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.edge_runtime.ecm import DIFFUSION_EIGENVALUES, EcmCell
from pulsebms.safety.state import PackRatings

__all__ = ["EstimatorSettings", "FleetEstimator"]

_N_STATES = 5
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
        # Per pack, plain Python floats (faster than numpy at this size): the state and its
        # covariance as 5 rows of 5.
        self._x = [
            [
                float(np.clip(soc0[k], 0.0, 1.0)),
                0.0,
                1.0,
                float(np.clip(soh0[k], *s.soh_bounds)),
                0.0,
            ]
            for k in range(n)
        ]
        self._p = []
        for k in range(n):
            offset_var = (s.initial_offset_std_c_rate * self._capacity_ah[k]) ** 2
            variances = (
                s.initial_soc_std**2,
                s.initial_v_rc_std_v**2,
                s.initial_resistance_factor_std**2,
                s.initial_soh_std**2,
                offset_var,
            )
            self._p.append(
                [
                    [variances[r] if r == c else 0.0 for c in range(_N_STATES)]
                    for r in range(_N_STATES)
                ]
            )
        # Surface-minus-average SoC modes per pack: negative electrode, then positive
        # (deterministic: driven by the current, not filtered).
        self._modes = [[0.0] * (2 * len(DIFFUSION_EIGENVALUES)) for _ in range(n)]
        self._started = ~np.isnan(soc0)
        self._last_time_s: list[float | None] = [None] * n
        self._last_temperature_c = [_REFERENCE_TEMPERATURE_C] * n
        self._innovation_var = [0.0] * n
        self._settled = [0] * n
        self.soc: FloatArray = np.where(self._started, [x[0] for x in self._x], np.nan)
        self.soc_std: FloatArray = np.sqrt([p[0][0] for p in self._p])
        self.soh: FloatArray = np.array([x[3] for x in self._x], dtype=np.float64)
        self.soh_std: FloatArray = np.sqrt([p[3][3] for p in self._p])
        self.resistance_ohm: FloatArray = np.array(
            [self._pack_resistance(k) for k in range(n)], dtype=np.float64
        )
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

    def _pack_resistance(self, k: int) -> float:
        return self._r0_ref[k] * self._x[k][2] * self._series[k] / self._parallel[k]

    def _publish(self, k: int) -> None:
        x, p = self._x[k], self._p[k]
        self.soc[k] = x[0]
        self.soc_std[k] = math.sqrt(max(p[0][0], 0.0))
        self.soh[k] = x[3]
        self.soh_std[k] = math.sqrt(max(p[3][3], 0.0))
        self.resistance_ohm[k] = self._pack_resistance(k)

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
        last = self._last_time_s[pack]
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
        temp = self._last_temperature_c[pack]
        v = float(cell_voltage_v)
        v_ok = (
            math.isfinite(v)
            and cell.voltage_min_v - s.voltage_margin_v
            <= v
            <= cell.voltage_max_v + s.voltage_margin_v
        )
        partial = not (t_ok and v_ok)
        x, p = self._x[pack], self._p[pack]
        self._last_time_s[pack] = now
        if not self._started[pack]:
            if not v_ok:
                self.rejected[pack] += 1
                self._last_time_s[pack] = None
                return
            r0, _, _ = cell.circuit(0.5, temp)
            x[0] = cell.soc_from_ocv(v + r0 * i)
            p[0][0] = s.unknown_soc_std**2
            self._started[pack] = True
            self.updates[pack] += 1
            if partial:
                self.rejected[pack] += 1
            self._publish(pack)
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
            r_var = max(floor, self._innovation_var[pack])
            self._innovation_var[pack] += s.innovation_smoothing * (
                innovation * innovation - self._innovation_var[pack]
            )
            consistent = innovation * innovation <= 9.0 * (predicted_var + floor)
            # Robust (Huber-like) step: an innovation beyond 3 standard deviations is
            # taken with the noise that would make it 3 (model error, not information).
            r_var = max(r_var, innovation * innovation / 9.0 - predicted_var)
            innovation_var = predicted_var + r_var
            gain = [v_ / innovation_var for v_ in ph]
            self._settled[pack] = self._settled[pack] + 1 if consistent else 0
            if p[0][0] > s.learning_soc_std**2 or self._settled[pack] < s.learning_settle_updates:
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
        self._publish(pack)

    def _step_diffusion(
        self, pack: int, cell: EcmCell, temperature_c: float, dt_s: float, rate: float
    ) -> tuple[float, float]:
        """Advance ``pack``'s diffusion modes by a step at SoC ``rate``; its offsets (n, p)."""
        modes = self._modes[pack]
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
