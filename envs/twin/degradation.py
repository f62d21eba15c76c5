"""Semi-empirical capacity fade (calendar + cycle) per chemistry, vectorised over packs.

Both twin fidelities can use it; the physics twin also reports the fade of its SEI submodel.
Losses are fractions of the cell capacity. Each law is a power law in time or charge
throughput; under changing stress the law is advanced with the usual *equivalent-time*
rule (find the time or throughput that gives the present loss at the present stress, add
the increment, read the law again), so a constant stress reproduces the published curve.

Laws (``T`` in K, ``V`` cell voltage in V, throughput ``Q`` normalised to full equivalent
cycles and rescaled to the capacity of the cell each law was fitted on):

* **NMC** — Schmalstieg, J. et al. (2014). A holistic aging model for Li(NiMnCo)O2 based
  18650 lithium-ion batteries. J. Power Sources 257, 325-334 (Sanyo UR18650E, 2.15 A.h).
  Calendar: ``α = (7.543 V − 23.75)·10⁶·exp(−6976/T)``, loss ``α·t^0.75`` (``t`` in days).
  Cycle: ``β = 7.348·10⁻³ (V − 3.667)² + 7.60·10⁻⁴ + 4.081·10⁻³ ΔDOD``, loss ``β·√Q``
  (``Q`` in A.h); ``ΔDOD`` is the depth of the present half-cycle (SoC swing since the
  last change of current direction).
* **LFP** — cycle: Wang, J. et al. (2011). Cycle-life model for graphite-LiFePO4 cells.
  J. Power Sources 196, 3942-3948 (A123 ANR26650M1, 2.2 A.h):
  ``loss[%] = B(c)·exp(−(31700 − 370.3 c)/(R T))·Q^0.55`` with the C-rate ``c`` and
  ``B = 31630, 21681, 12934, 15512`` at ``c = 0.5, 2, 6, 10`` (interpolated, clamped).
  Calendar: ``k·exp(−Eₐ/R (1/T − 1/298.15))·√t`` with ``k = 1.5·10⁻³ day^-½`` (≈2.9 % in
  a year at 25 °C) and ``Eₐ = 50 kJ/mol``: the order of magnitude reported for LFP/graphite
  storage (e.g. Naumann, M. et al. (2018), J. Energy Storage 17, 153-169), **not a fit**.
* **LCO** — no published law is shipped; the NMC law is used as a stand-in.

``degradation_acceleration`` (see :func:`pulsebms.envs.twin.make_twin`) multiplies the
reported loss, to make fade visible within a research episode; it is not physical.

**Run-in.** Each law's slope is unbounded at zero age (``√t``, ``t^0.75``, ``Q^0.55``): a
pack started at SoH 1 at the very start of its curves loses as much in its first day as a
run-in pack in weeks (an LFP pack at 38 °C: 0.32 % on day one, ~40× the average day of its
first year), and that one-off priced as degradation cost made any use of a fresh pack look
dear. A fleet in service has run in, so :meth:`EmpiricalAgeing.reset` starts the laws no
earlier than :data:`RUN_IN_LOSS` (half calendar, half cycle, like any prior loss); the loss
*since* the reset is what is reported, so a pack at SoH 1 still reports SoH 1 at the start.
Packs with ``1 − SoH ≥ RUN_IN_LOSS`` (every registered id's default fleet) are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray

__all__ = ["RUN_IN_LOSS", "EmpiricalAgeing"]


_GAS_CONSTANT_J_MOL_K = 8.314462618
_SECONDS_PER_DAY = 86400.0
_SCHMALSTIEG_CELL_AH = 2.15
_WANG_CELL_AH = 2.2
_WANG_C_RATE = np.array([0.5, 2.0, 6.0, 10.0])
_WANG_B = np.array([31630.0, 21681.0, 12934.0, 15512.0])
_LFP_CAL_K_PER_SQRT_DAY = 1.5e-3
_LFP_CAL_EA_J_MOL = 50_000.0

RUN_IN_LOSS = 0.02
"""Least capacity loss (fraction) the laws start from at a reset: a run-in pack (see the
module docstring). 2 %: past the steepest part of every law (an LFP pack then fades
≈0.011 %/day in storage at 25 °C, its first-year average being ≈0.008 %/day)."""

_LAW_BY_CHEMISTRY = {"NMC": "schmalstieg", "LCO": "schmalstieg", "LFP": "wang"}


class EmpiricalAgeing:
    """Calendar and cycle capacity fade of one cell per pack (see the module docstring).

    Args:
        chemistries: Chemistry name per pack.
        cell_capacity_ah: Cell capacity per pack [A.h] (normalises throughput).

    Example:
        >>> import numpy as np
        >>> ageing = EmpiricalAgeing(["NMC"], np.array([5.0]))
        >>> ageing.update(np.array([5.0]), 3600.0, np.array([25.0]), np.array([3.7]),
        ...               np.array([0.5]))
        >>> bool(ageing.loss_fraction[0] > 0)
        True
    """

    def __init__(self, chemistries: Sequence[str], cell_capacity_ah: FloatArray) -> None:
        laws = [_LAW_BY_CHEMISTRY[c.upper()] for c in chemistries]
        self._wang = np.array([law == "wang" for law in laws], dtype=bool)
        self._capacity_ah = np.asarray(cell_capacity_ah, dtype=np.float64)
        n = len(laws)
        self.calendar_loss = np.zeros(n)
        """Calendar loss per pack, fraction of capacity (not accelerated)."""
        self.cycle_loss = np.zeros(n)
        """Cycle loss per pack, fraction of capacity (not accelerated)."""
        self._prior_loss = np.zeros(n)
        self._soc_at_reversal = np.full(n, np.nan)
        self._last_sign = np.zeros(n)

    @property
    def loss_fraction(self) -> FloatArray:
        """Loss per pack since the last reset, fraction of capacity (not accelerated)."""
        return self.calendar_loss + self.cycle_loss - self._prior_loss

    def reset(self, mask: BoolArray | None = None, prior_loss: FloatArray | None = None) -> None:
        """Restart the laws (all packs, or those where ``mask`` is true).

        Args:
            mask: Packs to restart; all when None.
            prior_loss: Capacity already lost per pack (fraction, ``1 − SoH``), split equally
                between calendar and cycle ageing (an assumption: a pack's history is
                unknown). The laws then continue from that point of their curves, so an
                aged pack fades at the slower rate of an aged cell instead of restarting
                at the steep start of a fresh cell's √t / √Q curve; a prior loss below
                :data:`RUN_IN_LOSS` starts from the run-in loss instead (module docstring).
                :attr:`loss_fraction` counts only the loss *since* the restart.
        """
        sel = np.ones(self.calendar_loss.shape, dtype=bool) if mask is None else mask
        prior = np.zeros(self.calendar_loss.shape) if prior_loss is None else prior_loss
        prior = np.clip(np.asarray(prior, dtype=np.float64), 0.0, 1.0)
        prior = np.maximum(prior, RUN_IN_LOSS)
        self._prior_loss = np.where(sel, prior, self._prior_loss)
        self.calendar_loss[sel] = 0.5 * prior[sel]
        self.cycle_loss[sel] = 0.5 * prior[sel]
        self._soc_at_reversal[sel] = np.nan
        self._last_sign[sel] = 0.0

    def update(
        self,
        cell_current_a: FloatArray,
        dt_s: float,
        temperature_c: FloatArray,
        cell_voltage_v: FloatArray,
        soc: FloatArray,
        active: BoolArray | None = None,
    ) -> None:
        """Advance the losses over one step of constant stress.

        Args:
            cell_current_a: Cell current per pack [A], + = discharge.
            dt_s: Step length [s].
            temperature_c: Cell temperature per pack [°C].
            cell_voltage_v: Cell voltage per pack [V].
            soc: State of charge per pack at the end of the step.
            active: Packs to update (default all); others keep their losses.
        """
        t_k = np.asarray(temperature_c, dtype=np.float64) + 273.15
        v = np.asarray(cell_voltage_v, dtype=np.float64)
        i = np.asarray(cell_current_a, dtype=np.float64)
        act = np.ones(i.shape, dtype=bool) if active is None else active
        dt_days = dt_s / _SECONDS_PER_DAY
        # Half-cycle depth for Schmalstieg's ΔDOD.
        sign = np.sign(i)
        reversal = (sign != 0) & (sign != self._last_sign)
        self._soc_at_reversal = np.where(
            reversal | np.isnan(self._soc_at_reversal), soc, self._soc_at_reversal
        )
        self._last_sign = np.where(sign != 0, sign, self._last_sign)
        depth = np.abs(soc - self._soc_at_reversal)
        c_rate = np.abs(i) / self._capacity_ah
        fec = np.abs(i) * dt_s / 3600.0 / self._capacity_ah  # full equivalent cycles x 1

        # Calendar.
        alpha_nmc = np.maximum((7.543 * v - 23.75) * 1e6 * np.exp(-6976.0 / t_k), 0.0)
        k_lfp = _LFP_CAL_K_PER_SQRT_DAY * np.exp(
            -_LFP_CAL_EA_J_MOL / _GAS_CONSTANT_J_MOL_K * (1.0 / t_k - 1.0 / 298.15)
        )
        rate_cal = np.where(self._wang, k_lfp, alpha_nmc)
        expo_cal = np.where(self._wang, 0.5, 0.75)
        new_cal = _advance_power_law(self.calendar_loss, rate_cal, expo_cal, dt_days)

        # Cycle.
        beta_nmc = 7.348e-3 * (v - 3.667) ** 2 + 7.60e-4 + 4.081e-3 * depth
        c_clamped = np.clip(c_rate, _WANG_C_RATE[0], _WANG_C_RATE[-1])
        b_wang = np.interp(c_clamped, _WANG_C_RATE, _WANG_B)
        k_wang = (
            b_wang * np.exp(-(31700.0 - 370.3 * c_clamped) / (_GAS_CONSTANT_J_MOL_K * t_k)) / 100.0
        )
        rate_cyc = np.where(self._wang, k_wang, beta_nmc)
        expo_cyc = np.where(self._wang, 0.55, 0.5)
        dq_ah = fec * np.where(self._wang, _WANG_CELL_AH, _SCHMALSTIEG_CELL_AH)
        new_cyc = _advance_power_law(self.cycle_loss, rate_cyc, expo_cyc, dq_ah)

        self.calendar_loss = np.where(act, new_cal, self.calendar_loss)
        self.cycle_loss = np.where(act, new_cyc, self.cycle_loss)


def _advance_power_law(
    loss: FloatArray, rate: FloatArray, exponent: FloatArray, increment: FloatArray | float
) -> FloatArray:
    """Advance ``loss = rate · x^exponent`` by ``increment`` in ``x`` (equivalent-x rule)."""
    safe_rate = np.where(rate > 0.0, rate, 1.0)
    x_equivalent = np.where(rate > 0.0, (loss / safe_rate) ** (1.0 / exponent), 0.0)
    advanced = safe_rate * (x_equivalent + increment) ** exponent
    return np.where(rate > 0.0, np.maximum(advanced, loss), loss)
