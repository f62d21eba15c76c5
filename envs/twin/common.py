"""Machinery shared by every twin fidelity: state arrays, power → current, limits, faults.

A fidelity subclasses :class:`BatchedTwin` and implements four hooks: ``_propose`` (advance
the cells of every pack by one step without committing), ``_commit`` (keep the proposed
state of the accepted packs), ``_reinitialise`` (set packs to a SoC and temperature) and
``_power_model`` (open-circuit-like source voltage and resistance used to turn a power
set-point into a current). This base class owns the bookkeeping every fidelity shares:
SoC by charge counting, SoH, limit checks, faults and their freezing, and ageing.

Scaling: a pack is one cell scaled by its counts (pack current = ``parallel`` × cell current,
pack voltage = ``series`` × cell voltage). A pack of state of health ``s`` is simulated as a
fresh cell carrying the cell current divided by ``s`` (a capacity-scaled cell): its SoC moves
at the faded rate and its resistive drop grows as ``1/s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray
from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.base import PackStates
from pulsebms.envs.twin.degradation import EmpiricalAgeing
from pulsebms.envs.twin.parameters import cell_facts
from pulsebms.safety.state import PackRatings

__all__ = ["DEGRADATION_MODELS", "BatchedTwin", "Proposal", "nominal_cell_voltage_v"]


DEGRADATION_MODELS = ("empirical", "sei", "sei+empirical", "none")
"""Accepted ``degradation`` settings: which capacity-fade sources reach SoH."""

_SOC_TOLERANCE = 1e-9


@dataclass
class Proposal:
    """One step proposed by a fidelity, before limits are checked.

    Attributes:
        cell_voltage_v: Cell terminal voltage at the end of the step [V].
        temperature_c: Cell temperature at the end of the step [°C].
        ok: False where the fidelity itself failed (solver failure, non-finite result).
        reasons: Reason per pack where ``ok`` is False (``""`` elsewhere).
        payload: Fidelity-specific proposed internal state, handed back to ``_commit``.
        mean_voltage_v: Mean cell terminal voltage over the step [V]; None means the
            mean of the start and end voltages.
    """

    cell_voltage_v: FloatArray
    temperature_c: FloatArray
    ok: BoolArray
    reasons: list[str]
    payload: Any
    mean_voltage_v: FloatArray | None = None


def nominal_cell_voltage_v(soc_grid: FloatArray, ocv_v: FloatArray) -> float:
    """Mean open-circuit voltage over SoC 0…1 [V] (energy / capacity of a slow cycle)."""
    return float(np.trapezoid(ocv_v, soc_grid) / (soc_grid[-1] - soc_grid[0]))


class BatchedTwin:
    """Base of the fleet twins (implements :class:`pulsebms.envs.twin.base.FleetTwin`).

    Args:
        packs: The packs, in the order of every array.
        nominal_voltage_v: Nominal cell voltage per chemistry [V] (for the default rating).
        ambient_c: Ambient temperature used at reset for packs whose spec gives no
            initial temperature [°C].
        degradation_acceleration: Factor on the reported capacity fade (1 = physical).
        degradation: Fade sources reaching SoH, one of :data:`DEGRADATION_MODELS`.
    """

    packs: tuple[PackSpec, ...]
    ratings: PackRatings

    def __init__(
        self,
        packs: Sequence[PackSpec],
        *,
        nominal_voltage_v: dict[str, float],
        ambient_c: float = 25.0,
        degradation_acceleration: float = 1.0,
        degradation: str = "empirical",
    ) -> None:
        if len(packs) == 0:
            raise ValueError("a twin needs at least one pack")
        if not np.isfinite(degradation_acceleration) or degradation_acceleration < 0:
            raise ValueError(
                f"degradation_acceleration must be finite and >= 0, got {degradation_acceleration}"
            )
        if degradation not in DEGRADATION_MODELS:
            raise ValueError(
                f"degradation must be one of {DEGRADATION_MODELS}, got {degradation!r}"
            )
        self.packs = tuple(packs)
        self._chemistry = tuple(get_chemistry(p.chemistry).name for p in self.packs)
        facts = [cell_facts(c) for c in self._chemistry]
        self._series = np.array([p.series for p in self.packs], dtype=np.int64)
        self._parallel = np.array([p.parallel for p in self.packs], dtype=np.int64)
        self._capacity_ah = np.array([f.capacity_ah for f in facts])
        self.voltage_min_v = np.array([f.voltage_min_v for f in facts])
        """Lower cell voltage cut-off per pack, from its parameter set [V]."""
        self.voltage_max_v = np.array([f.voltage_max_v for f in facts])
        """Upper cell voltage cut-off per pack, from its parameter set [V]."""
        rated = [
            p.rated_power_w
            if p.rated_power_w is not None
            else float(nominal_voltage_v[c] * p.series * p.parallel * f.capacity_ah)
            for p, c, f in zip(self.packs, self._chemistry, facts, strict=True)
        ]
        self.nominal_cell_voltage_v = np.array([nominal_voltage_v[c] for c in self._chemistry])
        """Nominal cell voltage per pack [V]: mean open-circuit voltage over SoC 0…1."""
        self.ratings = PackRatings(
            chemistry=self._chemistry,
            series=self._series.copy(),
            parallel=self._parallel.copy(),
            cell_capacity_ah=self._capacity_ah.copy(),
            rated_power_w=np.array(rated, dtype=np.float64),
        )
        self.ambient_c = float(ambient_c)
        self.degradation_acceleration = float(degradation_acceleration)
        self.degradation = degradation
        self._use_empirical = degradation in ("empirical", "sei+empirical")
        self._use_sei = degradation in ("sei", "sei+empirical")
        self._ageing = EmpiricalAgeing(self._chemistry, self._capacity_ah)
        n = len(self.packs)
        self._soc = np.zeros(n)
        self._soh_ref = np.ones(n)
        self._soh = np.ones(n)
        self._temperature_c = np.zeros(n)
        self._voltage_v = np.zeros(n)
        self._current_a = np.zeros(n)
        self._power_w = np.zeros(n)
        self._faulted = np.zeros(n, dtype=bool)
        self._reasons: list[str] = [""] * n

    # ------------------------------------------------------------------ hooks
    def _propose(self, model_current_a: FloatArray, dt_s: float, ambient_c: FloatArray) -> Proposal:
        """Advance every pack's cell by ``dt_s`` at ``model_current_a`` (not committed)."""
        raise NotImplementedError

    def _commit(self, accept: BoolArray, payload: Any) -> None:
        """Keep the proposed internal state of the packs where ``accept`` is true."""
        raise NotImplementedError

    def _reinitialise(
        self, mask: BoolArray, soc: FloatArray, temperature_c: FloatArray
    ) -> FloatArray:
        """Put the masked packs at rest at ``soc``/``temperature_c``; return cell voltages."""
        raise NotImplementedError

    def _power_model(self, dt_s: float) -> tuple[FloatArray, FloatArray]:
        """Step-averaged source voltage [V] and resistance [Ω] of each model cell.

        Over a step of ``dt_s`` at constant model-cell current ``I`` the mean terminal
        voltage is approximately ``E − R·I``.
        """
        raise NotImplementedError

    def _sei_loss_fraction(self) -> FloatArray:
        """Capacity lost to SEI since the last (re)initialisation, fraction (physics only)."""
        return np.zeros(len(self.packs))

    # ------------------------------------------------------------------ API
    @property
    def n_packs(self) -> int:
        """Number of packs."""
        return len(self.packs)

    def reset(self) -> PackStates:
        """Return every pack to its spec's initial state, clear faults and report it."""
        n = self.n_packs
        soc = np.array([p.initial_soc for p in self.packs], dtype=np.float64)
        temp = np.array(
            [
                self.ambient_c if p.initial_temperature_c is None else p.initial_temperature_c
                for p in self.packs
            ],
            dtype=np.float64,
        )
        self._faulted = np.zeros(n, dtype=bool)
        self._reasons = [""] * n
        self._soh_ref = np.array([p.initial_soh for p in self.packs], dtype=np.float64)
        self._soh = self._soh_ref.copy()
        self._ageing.reset(prior_loss=1.0 - self._soh_ref)
        all_packs = np.ones(n, dtype=bool)
        self._soc = soc
        self._temperature_c = temp
        self._voltage_v = np.asarray(self._reinitialise(all_packs, soc, temp), dtype=np.float64)
        self._current_a = np.zeros(n)
        self._power_w = np.zeros(n)
        return self.state()

    def set_state(
        self,
        *,
        soc: Sequence[float] | FloatArray | None = None,
        soh: Sequence[float] | FloatArray | None = None,
        temperature_c: Sequence[float] | FloatArray | None = None,
    ) -> PackStates:
        """Synchronise pack states from measurements (digital-twin hook).

        Setting SoC or temperature puts the cells at rest in that state (internal gradients
        and RC voltages are cleared); setting SoH restarts the fade bookkeeping from it.
        Faults are kept (only :meth:`reset` clears them).

        Args:
            soc: State of charge per pack in [0, 1] (scalar broadcasts); None keeps it.
            soh: State of health per pack in (0, 1]; None keeps it.
            temperature_c: Cell temperature per pack [°C]; None keeps it.

        Returns:
            The new state.

        Raises:
            ValueError: On a wrong shape or a value out of range.
        """
        n = self.n_packs
        if soh is not None:
            soh_arr = self._as_pack_array(soh, "soh")
            if np.any(~(soh_arr > 0.0) | (soh_arr > 1.0)):
                raise ValueError(f"soh must be in (0, 1], got {soh_arr}")
            self._soh_ref = soh_arr.copy()
            self._soh = soh_arr.copy()
            self._ageing.reset(prior_loss=1.0 - self._soh_ref)
        if soc is None and temperature_c is None:
            if soh is not None:
                self._reinitialise_soh()
            return self.state()
        new_soc = self._soc.copy()
        new_temp = self._temperature_c.copy()
        if soc is not None:
            new_soc = self._as_pack_array(soc, "soc")
            if np.any(~((new_soc >= 0.0) & (new_soc <= 1.0))):
                raise ValueError(f"soc must be in [0, 1], got {new_soc}")
        if temperature_c is not None:
            new_temp = self._as_pack_array(temperature_c, "temperature_c")
            if not np.all(np.isfinite(new_temp)):
                raise ValueError(f"temperature_c must be finite, got {new_temp}")
        mask = np.ones(n, dtype=bool)
        self._soc = new_soc
        self._temperature_c = new_temp
        self._voltage_v = np.asarray(self._reinitialise(mask, new_soc, new_temp), dtype=np.float64)
        if soh is not None:
            self._reinitialise_soh()
        self._current_a = np.zeros(n)
        self._power_w = np.zeros(n)
        return self.state()

    def _reinitialise_soh(self) -> None:
        """Hook run after SoH was set (physics restarts its SEI baseline)."""

    def state(self) -> PackStates:
        """The current state of every pack (copies; no simulation)."""
        return PackStates(
            soc=self._soc.copy(),
            soh=self._soh.copy(),
            cell_voltage_v=self._voltage_v.copy(),
            pack_voltage_v=self._voltage_v * self._series,
            current_a=self._current_a.copy(),
            power_w=self._power_w.copy(),
            temperature_c=self._temperature_c.copy(),
            faulted=self._faulted.copy(),
            fault_reason=tuple(self._reasons),
        )

    def step(self, power_w: FloatArray, dt_s: float, ambient_c: float | FloatArray) -> PackStates:
        """Advance every pack by ``dt_s`` at pack power ``power_w`` (+ = discharge).

        The power is turned into the constant current whose mean power over the step is
        ``power_w`` under the fidelity's step-averaged voltage model ``E − R·I`` (a
        quadratic); a power the pack cannot deliver at any current faults the pack with
        reason ``"power not reachable"``. The reported ``power_w`` is the realised mean
        power (current × mean voltage over the step): measured within 0.01 % of the
        set-point for the ECM; for the physics twin (whose voltage model is the circuit
        fitted to it, bias-corrected) within 0.4 % at 25 °C and 2.5 % at −10 °C under
        random reversals of up to 0.7 × rated power every 10 s (median 0.05 %, 0.6 %).

        Args:
            power_w: Pack power set-point per pack [W], shape ``(n_packs,)``.
            dt_s: Step length [s] (> 0).
            ambient_c: Ambient temperature [°C], scalar or per pack.

        Returns:
            The state after the step.

        Raises:
            ValueError: On a wrong shape or a non-positive ``dt_s`` (programming errors).
        """
        dt_s = self._checked_dt(dt_s)
        p = self._as_pack_array(power_w, "power_w")
        n_cells = (self._series * self._parallel).astype(np.float64)
        p_cell = p / n_cells
        e_v, r_ohm = self._power_model(dt_s)
        # The model cell carries current / soh (see the module docstring).
        scale = self._soh_ref
        r_cell = r_ohm / scale
        disc = e_v * e_v - 4.0 * r_cell * p_cell
        reachable = np.isfinite(disc) & (disc >= 0.0) & np.isfinite(p_cell)
        root = np.sqrt(np.where(reachable, disc, 0.0))
        i_cell = np.where(reachable, 2.0 * p_cell / (e_v + root), 0.0)
        return self._step_cells(
            i_cell, dt_s, ambient_c, reachable, "power not reachable", requested_power_w=p
        )

    def step_current(
        self, current_a: FloatArray, dt_s: float, ambient_c: float | FloatArray
    ) -> PackStates:
        """Advance every pack by ``dt_s`` at constant pack current ``current_a`` (+ = discharge).

        Args:
            current_a: Pack current set-point per pack [A], shape ``(n_packs,)``.
            dt_s: Step length [s] (> 0).
            ambient_c: Ambient temperature [°C], scalar or per pack.

        Returns:
            The state after the step.

        Raises:
            ValueError: On a wrong shape or a non-positive ``dt_s`` (programming errors).
        """
        i = self._as_pack_array(current_a, "current_a")
        finite = np.isfinite(i)
        i_cell = np.where(finite, i, 0.0) / self._parallel
        return self._step_cells(
            i_cell, dt_s, ambient_c, finite, "non-finite set-point", requested_power_w=None
        )

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _checked_dt(dt_s: float) -> float:
        if not (np.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be finite and > 0, got {dt_s}")
        return float(dt_s)

    def _as_pack_array(self, value: Any, name: str) -> FloatArray:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(self.n_packs, float(arr))
        if arr.shape != (self.n_packs,):
            raise ValueError(f"{name} must have shape ({self.n_packs},), got {arr.shape}")
        return arr

    def _step_cells(
        self,
        i_cell: FloatArray,
        dt_s: float,
        ambient_c: float | FloatArray,
        pre_ok: BoolArray,
        pre_reason: str,
        requested_power_w: FloatArray | None,
    ) -> PackStates:
        dt_s = self._checked_dt(dt_s)
        amb = self._as_pack_array(ambient_c, "ambient_c")
        active = ~self._faulted & pre_ok & np.isfinite(amb)
        i_cell = np.where(active, i_cell, 0.0)
        amb_safe = np.where(np.isfinite(amb), amb, self.ambient_c)
        proposal = self._propose(i_cell / self._soh_ref, dt_s, amb_safe)
        soc_new = self._soc - i_cell * dt_s / 3600.0 / (self._capacity_ah * self._soh_ref)
        v_new = proposal.cell_voltage_v
        t_new = proposal.temperature_c
        finite = np.isfinite(v_new) & np.isfinite(t_new) & np.isfinite(soc_new)
        cut_off = (v_new < self.voltage_min_v) | (v_new > self.voltage_max_v)
        soc_out = (soc_new < -_SOC_TOLERANCE) | (soc_new > 1.0 + _SOC_TOLERANCE)
        ok = proposal.ok & finite & ~cut_off & ~soc_out
        accept = active & ok
        newly_faulted = ~self._faulted & ~accept
        for k in np.flatnonzero(newly_faulted):
            if not pre_ok[k]:
                self._reasons[k] = pre_reason
            elif not np.isfinite(amb[k]):
                self._reasons[k] = "non-finite ambient temperature"
            elif not proposal.ok[k]:
                self._reasons[k] = proposal.reasons[k] or "solver failure"
            elif not finite[k]:
                self._reasons[k] = "non-finite state"
            elif cut_off[k]:
                side = "lower" if v_new[k] < self.voltage_min_v[k] else "upper"
                self._reasons[k] = f"voltage cut-off ({side}, {v_new[k]:.4g} V)"
            else:
                self._reasons[k] = f"state of charge out of range ({soc_new[k]:.4g})"
        self._commit(accept, proposal.payload)
        v_old = self._voltage_v.copy()
        i_pack = i_cell * self._parallel
        self._soc = np.where(accept, soc_new, self._soc)
        self._temperature_c = np.where(accept, t_new, self._temperature_c)
        self._voltage_v = np.where(accept, v_new, self._voltage_v)
        self._current_a = np.where(accept, i_pack, 0.0)
        mean_v = (
            0.5 * (v_old + v_new) if proposal.mean_voltage_v is None else proposal.mean_voltage_v
        )
        self._power_w = np.where(accept, i_pack * mean_v * self._series, 0.0)
        self._faulted = self._faulted | newly_faulted
        if self._use_empirical:
            self._ageing.update(
                i_cell / self._soh_ref,
                dt_s,
                self._temperature_c,
                self._voltage_v,
                self._soc,
                active=accept,
            )
        loss = np.zeros(self.n_packs)
        if self._use_empirical:
            loss = loss + self._ageing.loss_fraction
        if self._use_sei:
            loss = loss + self._sei_loss_fraction()
        self._soh = np.maximum(self._soh_ref - self.degradation_acceleration * loss, 0.0)
        return self.state()
