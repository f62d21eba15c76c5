"""Seeded fleet histories from the twin: many packs, many cycles, varied duty, faster fade.

:func:`generate_fleet` runs one batched fleet twin (:func:`pulsebms.envs.twin.make_twin`,
ECM or physics fidelity) through ``n_cycles`` days. Every pack does one cycle a day:

1. constant-current **discharge** at its own C-rate from where it stands down to its
   ``soc_min`` (or until the twin refuses the step: the voltage cut-off ends a CC
   discharge as it would on a cycler);
2. one sample at rest, then constant-current **charge** at its own C-rate up to ``soc_max``;
3. **rest** to the end of the day (steps of an hour — the calendar part of ageing).

Packs differ in chemistry (LFP, NMC, LCO), C-rates, SoC window, ambient (mean, seasonal
and daily swing), cooling, initial SoH and a per-pack fade-rate multiplier; a share of them change
duty part-way (heavier use from ``duty_change_cycle``). Everything is drawn from ``seed``:
the same config gives the same history bit for bit.

**Fade.** The twin runs with ``degradation="none"``; the semi-empirical calendar + cycle
laws of :mod:`pulsebms.envs.twin.degradation` (:class:`~pulsebms.envs.twin.degradation.
EmpiricalAgeing`) are advanced here with the twin's cell current, voltage, SoC and
temperature, and their loss multiplied by the pack's fade multiplier
(``fade_acceleration`` × a log-normal spread): accelerated fade, so a few hundred cycles
cover a large part of a pack's life. At the end of each day the twin is told the new SoH
(:meth:`~pulsebms.envs.twin.base.FleetTwin.set_state`), so the next day's cycle runs on the
faded cell: less capacity between the same SoC limits and a resistive drop that grows as
``1/SoH`` (the twin's capacity-scaled cell).

**What is recorded.** The BMS readings (:class:`~pulsebms.services.health.sensors.
SensorModel`: sensor errors, SoC error, DBC quantisation) are summarised into one
:class:`~pulsebms.services.health.cycles.CycleTable` row per pack and day, with the same
:func:`~pulsebms.services.health.cycles.summarise_cycles` the health service runs on a
telemetry store; the true SoH at the end of each day is the label. The last
``telemetry_cycles`` days are also kept sample by sample (:class:`TelemetryLog`, regular
``dt_s`` rows, faults of :mod:`pulsebms.services.health.faults` injected), for anomaly
detection and for filling a :class:`~pulsebms.services.store.TelemetryStore`.

Example:
    >>> history = generate_fleet(FleetConfig(n_packs=3, n_cycles=4, seed=1))
    >>> len(history.cycles[0]), history.soh[0].shape
    (4, (4,))
    >>> bool(np.all(np.diff(history.soh[0]) < 0))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import FleetTwin, PackStates, make_twin
from pulsebms.envs.twin.degradation import EmpiricalAgeing
from pulsebms.services.health.cycles import (
    CycleTable,
    concat_tables,
    rest_threshold_a,
    summarise_cycles,
)
from pulsebms.services.health.faults import FaultInjector, InjectedFault, random_fault_plan
from pulsebms.services.health.sensors import SensorModel
from pulsebms.services.store.base import Row, TelemetryStore

__all__ = [
    "DutyProfile",
    "FleetConfig",
    "FleetHistory",
    "PackInfo",
    "TelemetryLog",
    "draw_duties",
    "generate_fleet",
]

_DISCHARGE, _PAUSE, _CHARGE, _DONE = 1, 2, 3, 0
_SECONDS_PER_DAY = 86400.0
_MAX_PHASE_S = 12 * 3600.0
_REST_STEP_S = 3600.0


@dataclass(frozen=True)
class FleetConfig:
    """What fleet to simulate and how (every field has a small default).

    Attributes:
        n_packs: Packs in the fleet.
        n_cycles: Days simulated (one cycle each).
        seed: Seed of every random draw (duties, sensors, faults).
        fidelity: Twin fidelity, ``"ecm"`` or ``"physics"`` (:func:`make_twin`).
        chemistries: Chemistries drawn from, in turn.
        fade_acceleration: Mean factor on the semi-empirical fade (1 = physical).
        fade_spread: Log-normal σ of the per-pack fade multiplier (cell-to-cell spread).
        duty_change_fraction: Share of packs whose duty gets heavier part-way.
        dt_s: Sample and step period while any pack moves current [s].
        packs_per_device: Packs per edge device (for device names and publishing).
        telemetry_cycles: Last days kept sample by sample (0: none).
        future_cycles: Days simulated after the history, kept only as the true future SoH
            (:attr:`FleetHistory.future_soh`: the oracle of the maintenance queue).
        fault_fraction: Share of packs given one fault during the telemetry days.
        site: Site name of the fleet.
        cell_level: Simulate single cells (``series = parallel = 1``) instead of the default
            14s4p packs (the public-format sample is one cell).
        soc_window: ``(soc_min, soc_max)`` of every pack instead of drawn ones (a cycler's
            full cycles: ``(0.02, 0.98)``); None draws them.
    """

    n_packs: int = 24
    n_cycles: int = 120
    seed: int = 0
    fidelity: str = "ecm"
    chemistries: tuple[str, ...] = ("LFP", "NMC", "LCO")
    fade_acceleration: float = 3.0
    fade_spread: float = 0.3
    duty_change_fraction: float = 0.3
    dt_s: float = 60.0
    packs_per_device: int = 8
    telemetry_cycles: int = 0
    future_cycles: int = 0
    fault_fraction: float = 0.3
    site: str = "site-0"
    cell_level: bool = False
    soc_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.n_packs < 1 or self.n_cycles < 1:
            raise ValueError(f"need n_packs, n_cycles >= 1, got {self.n_packs}, {self.n_cycles}")
        if not 0 <= self.telemetry_cycles <= self.n_cycles:
            raise ValueError(
                f"telemetry_cycles must be in [0, n_cycles], got {self.telemetry_cycles}"
            )
        if self.future_cycles < 0:
            raise ValueError(f"future_cycles must be >= 0, got {self.future_cycles}")
        if not (math.isfinite(self.dt_s) and 0.0 < self.dt_s <= 600.0):
            raise ValueError(f"dt_s must be in (0, 600], got {self.dt_s}")
        if not (self.fade_acceleration > 0.0 and self.fade_spread >= 0.0):
            raise ValueError("fade_acceleration must be > 0 and fade_spread >= 0")
        if self.packs_per_device < 1:
            raise ValueError(f"packs_per_device must be >= 1, got {self.packs_per_device}")


@dataclass(frozen=True)
class DutyProfile:
    """How one pack is used and kept (drawn by :func:`draw_duties`).

    Attributes:
        chemistry: Chemistry name.
        discharge_c_rate: Discharge current / nominal capacity [1/h].
        charge_c_rate: Charge current / nominal capacity [1/h].
        soc_max: Charge stops here.
        soc_min: Discharge stops here.
        ambient_mean_c: Mean ambient temperature [°C].
        ambient_swing_c: Seasonal amplitude of the ambient [K].
        season_phase: Phase of the season at day 0 [rad].
        daily_swing_c: Amplitude of the ambient's daily cycle [K] (warmest at 15:00).
        heat_transfer_coefficient_w_m2k: Cooling to ambient [W/(m².K)].
        fade_multiplier: Factor on the semi-empirical loss (acceleration × spread).
        initial_soh: SoH at day 0.
        duty_change_cycle: Day from which the late duty applies (-1: never).
        late_discharge_c_rate: Discharge C-rate from ``duty_change_cycle``.
        late_soc_min: ``soc_min`` from ``duty_change_cycle``.
    """

    chemistry: str
    discharge_c_rate: float
    charge_c_rate: float
    soc_max: float
    soc_min: float
    ambient_mean_c: float
    ambient_swing_c: float
    season_phase: float
    heat_transfer_coefficient_w_m2k: float
    fade_multiplier: float
    initial_soh: float
    daily_swing_c: float = 0.0
    duty_change_cycle: int = -1
    late_discharge_c_rate: float = 0.0
    late_soc_min: float = 0.0

    def at_cycle(self, cycle: int) -> tuple[float, float]:
        """Discharge C-rate and ``soc_min`` on day ``cycle``."""
        if 0 <= self.duty_change_cycle <= cycle:
            return self.late_discharge_c_rate, self.late_soc_min
        return self.discharge_c_rate, self.soc_min

    def ambient_c(self, cycle: int, time_of_day_s: float = 9 * 3600.0) -> float:
        """Ambient temperature on day ``cycle`` at ``time_of_day_s`` [°C]."""
        season = 2.0 * math.pi * cycle / 365.0 + self.season_phase
        day = 2.0 * math.pi * (time_of_day_s / _SECONDS_PER_DAY - 9.0 / 24.0)
        return (
            self.ambient_mean_c
            + self.ambient_swing_c * math.sin(season)
            + self.daily_swing_c * math.sin(day)
        )


@dataclass(frozen=True)
class PackInfo:
    """What the health service knows about a pack besides its telemetry.

    Attributes:
        pack_id: Pack name, unique within the site.
        device: Edge device that controls it.
        chemistry: Chemistry name.
        nominal_capacity_ah: Nominal pack capacity [A.h] (parallel × cell capacity).
        series: Cells in series.
    """

    pack_id: str
    device: str
    chemistry: str
    nominal_capacity_ah: float
    series: int


@dataclass(frozen=True)
class TelemetryLog:
    """Sample-by-sample BMS readings of the last days, with fault labels.

    Attributes:
        t_s: Sample times [s], shape ``(n_samples,)``.
        current_a: Reported current per pack and sample [A], shape ``(n_packs, n_samples)``.
        voltage_v: Reported pack voltage [V].
        temperature_c: Reported temperature [°C].
        soc: Reported SoC.
        soh: Reported (BMS) SoH.
        labels: True fault code per pack and sample (:func:`~pulsebms.services.health.
            faults.fault_code`; 0 healthy).
    """

    t_s: FloatArray
    current_a: FloatArray
    voltage_v: FloatArray
    temperature_c: FloatArray
    soc: FloatArray
    soh: FloatArray
    labels: IntArray

    def rows(self, pack_ids: Sequence[str]) -> list[Row]:
        """Store rows ``(pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c)``."""
        out: list[Row] = []
        for k, pid in enumerate(pack_ids):
            cols = zip(
                self.t_s.tolist(),
                self.soc[k].tolist(),
                self.soh[k].tolist(),
                self.current_a[k].tolist(),
                self.voltage_v[k].tolist(),
                self.temperature_c[k].tolist(),
                strict=True,
            )
            out.extend((pid, *c) for c in cols)
        return out

    def write_to(self, store: TelemetryStore, pack_ids: Sequence[str]) -> int:
        """Write every row into ``store`` (one batch per pack); returns rows written."""
        written = 0
        all_rows = self.rows(pack_ids)
        per_pack = self.t_s.size
        for k in range(len(pack_ids)):
            written += store.write_batch(all_rows[k * per_pack : (k + 1) * per_pack])
        return written


@dataclass(frozen=True)
class FleetHistory:
    """A simulated fleet: per-pack cycle summaries with true SoH, and the last days' telemetry.

    Attributes:
        config: The config that produced it.
        packs: Pack descriptions, in fleet order.
        duties: Duty per pack.
        cycles: Cycle summaries per pack (one row per day).
        soh: True SoH per pack at the end of each day.
        efc: True full equivalent cycles per pack, cumulative at the end of each day.
        telemetry: Sample-by-sample readings of the last ``telemetry_cycles`` days, or None.
        faults: The faults injected during those days (they end with the history).
        future_soh: True SoH per pack at the end of each of the ``future_cycles`` days after
            the history (same duty, no faults): for oracles only, never for training.
    """

    config: FleetConfig
    packs: tuple[PackInfo, ...]
    duties: tuple[DutyProfile, ...]
    cycles: tuple[CycleTable, ...]
    soh: tuple[FloatArray, ...]
    efc: tuple[FloatArray, ...]
    telemetry: TelemetryLog | None = None
    faults: tuple[InjectedFault, ...] = field(default_factory=tuple)
    future_soh: tuple[FloatArray, ...] = field(default_factory=tuple)

    @property
    def pack_ids(self) -> tuple[str, ...]:
        """Pack names in fleet order."""
        return tuple(p.pack_id for p in self.packs)


def draw_duties(config: FleetConfig, rng: np.random.Generator) -> tuple[DutyProfile, ...]:
    """Draw every pack's duty (the ranges are in the code, each a plausible field spread)."""
    duties = []
    for k in range(config.n_packs):
        chem = config.chemistries[k % len(config.chemistries)]
        soc_max = float(rng.uniform(0.8, 0.95))
        soc_min = float(rng.uniform(0.1, 0.35))
        if config.soc_window is not None:
            soc_min, soc_max = config.soc_window
        c_dis = float(rng.uniform(0.3, 1.0))
        change = bool(rng.uniform() < config.duty_change_fraction)
        duties.append(
            DutyProfile(
                chemistry=chem,
                discharge_c_rate=c_dis,
                charge_c_rate=float(rng.uniform(0.25, 0.6)),
                soc_max=soc_max,
                soc_min=soc_min,
                ambient_mean_c=float(rng.uniform(5.0, 35.0)),
                ambient_swing_c=float(rng.uniform(0.0, 10.0)),
                season_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
                heat_transfer_coefficient_w_m2k=float(rng.uniform(5.0, 25.0)),
                fade_multiplier=float(
                    config.fade_acceleration * rng.lognormal(0.0, config.fade_spread)
                ),
                initial_soh=float(rng.uniform(0.95, 1.0)),
                daily_swing_c=float(rng.uniform(2.0, 8.0)),
                duty_change_cycle=(
                    int(rng.integers(config.n_cycles // 4, 3 * config.n_cycles // 4 + 1))
                    if change
                    else -1
                ),
                late_discharge_c_rate=min(1.2, c_dis * float(rng.uniform(1.3, 2.0))),
                late_soc_min=max(min(0.08, soc_min), soc_min - float(rng.uniform(0.05, 0.2))),
            )
        )
    return tuple(duties)


def _guarded_step(
    twin: FleetTwin, current_a: FloatArray, dt_s: float, ambient_c: FloatArray
) -> tuple[PackStates, BoolArray]:
    """Step at ``current_a``; a pack the twin refuses (cut-off) repeats the step at rest.

    Returns:
        The states, and which packs were refused (their phase should end).

    Raises:
        RuntimeError: If a pack faults even at zero current (a twin failure).
    """
    before = twin.state()
    states = twin.step_current(current_a, dt_s, ambient_c)
    if not states.faulted.any():
        return states, states.faulted
    refused = states.faulted.copy()
    twin.reset()
    twin.set_state(soc=before.soc, soh=before.soh, temperature_c=before.temperature_c)
    states = twin.step_current(np.where(refused, 0.0, current_a), dt_s, ambient_c)
    if states.faulted.any():
        reasons = [r for r in states.fault_reason if r]
        raise RuntimeError(f"twin faulted at rest: {reasons}")
    return states, refused


def generate_fleet(config: FleetConfig = FleetConfig()) -> FleetHistory:
    """Simulate a fleet's history (see the module docstring).

    Args:
        config: What to simulate.

    Returns:
        The :class:`FleetHistory`.

    Raises:
        RuntimeError: If the twin fails at rest (not expected).
    """
    rng = np.random.default_rng(config.seed)
    duties = draw_duties(config, rng)
    n = config.n_packs
    specs = [
        PackSpec(
            d.chemistry,
            series=1 if config.cell_level else 0,
            parallel=1 if config.cell_level else 0,
            initial_soc=d.soc_max,
            initial_soh=d.initial_soh,
            heat_transfer_coefficient_w_m2k=d.heat_transfer_coefficient_w_m2k,
            initial_temperature_c=d.ambient_c(0),
            name=f"p{k:03d}",
        )
        for k, d in enumerate(duties)
    ]
    twin = make_twin(specs, config.fidelity, degradation="none")
    ratings = twin.ratings
    parallel = ratings.parallel.astype(np.float64)
    series = ratings.series.copy()
    capacity_ah = ratings.cell_capacity_ah * parallel
    packs = tuple(
        PackInfo(
            pack_id=s.name,
            device=f"edge-{k // config.packs_per_device}",
            chemistry=d.chemistry,
            nominal_capacity_ah=float(capacity_ah[k]),
            series=int(series[k]),
        )
        for k, (s, d) in enumerate(zip(specs, duties, strict=True))
    )
    multiplier = np.array([d.fade_multiplier for d in duties])
    soh0 = np.array([d.initial_soh for d in duties])
    ageing = EmpiricalAgeing([d.chemistry for d in duties], ratings.cell_capacity_ah)
    # Start each pack on its law's curve where its initial SoH puts it (unaccelerated units).
    ageing.reset(prior_loss=(1.0 - soh0) / multiplier)
    # A single cell's current sensor is a cycler channel's, not a pack BMS's: 4× finer.
    current_scale = 0.25 if config.cell_level else 1.0
    sensors = SensorModel(
        [d.chemistry for d in duties],
        seed=config.seed + 1,
        current_offset_a=0.05 * current_scale,
        current_noise_a=0.05 * current_scale,
    )
    c_chg = np.array([d.charge_c_rate for d in duties])
    soc_max = np.array([d.soc_max for d in duties])
    telemetry_start = config.n_cycles - config.telemetry_cycles
    t_tel0 = telemetry_start * _SECONDS_PER_DAY
    t_end = config.n_cycles * _SECONDS_PER_DAY
    total_cycles = config.n_cycles + config.future_cycles
    plan: tuple[InjectedFault, ...] = ()
    if config.telemetry_cycles > 0 and config.fault_fraction > 0:
        # Faults start after the first telemetry day (a healthy reference period).
        first = t_tel0 + (_SECONDS_PER_DAY if config.telemetry_cycles > 1 else 0.0)
        plan = tuple(
            replace(f, end_s=t_end + 0.5 * config.dt_s)
            for f in random_fault_plan(
                n, first, t_end, fraction=config.fault_fraction, seed=config.seed + 2
            )
        )
    injector = FaultInjector(plan, capacity_ah)

    soh = soh0.copy()
    efc = np.zeros(n)
    tables: list[list[CycleTable]] = [[] for _ in range(n)]
    soh_rows: list[FloatArray] = []
    efc_rows: list[FloatArray] = []
    tel: dict[str, list[FloatArray]] = {k: [] for k in ("t", "i", "v", "temp", "soc", "soh")}
    tel_labels: list[IntArray] = []
    state0 = twin.state()
    read0 = sensors.read(
        np.zeros(n), state0.cell_voltage_v, state0.temperature_c, state0.soc, soh, series=series
    )
    last = (0.0, read0)
    t = 0.0
    for day in range(total_cycles):
        duty_now = [d.at_cycle(day) for d in duties]
        c_dis = np.array([c for c, _ in duty_now])
        soc_min = np.array([s for _, s in duty_now])
        keep = telemetry_start <= day < config.n_cycles
        phase = np.full(n, _DISCHARGE)
        phase_t = np.zeros(n)
        buf_t = [last[0]]
        buf = [last[1]]
        day_end = (day + 1) * _SECONDS_PER_DAY
        soh_ref = soh.copy()
        while t < day_end - 1e-6:
            moving = bool(np.any(phase != _DONE))
            dt = min(config.dt_s if (moving or keep) else _REST_STEP_S, day_end - t)
            # Ambient at the middle of the step (the daily cycle is slow against any step).
            ambient = np.array(
                [d.ambient_c(day, t + 0.5 * dt - day * _SECONDS_PER_DAY) for d in duties]
            )
            current = np.where(
                phase == _DISCHARGE,
                c_dis * capacity_ah,
                np.where(phase == _CHARGE, -c_chg * capacity_ah, 0.0),
            )
            leak = injector.leak_current_a(t)
            amb = ambient + injector.ambient_offset_c(t)
            states, refused = _guarded_step(twin, current + leak, dt, amb)
            t += dt
            ageing.update(
                states.current_a / parallel / soh_ref,
                dt,
                states.temperature_c,
                states.cell_voltage_v,
                states.soc,
            )
            soh = np.maximum(soh0 - multiplier * ageing.loss_fraction, 0.05)
            measured_current = states.current_a - leak
            efc += np.abs(measured_current) * dt / 3600.0 / (2.0 * capacity_ah)
            readings = injector.apply_readings(
                t,
                sensors.read(
                    measured_current,
                    states.cell_voltage_v,
                    states.temperature_c,
                    states.soc,
                    soh,
                    series=series,
                ),
            )
            buf_t.append(t)
            buf.append(readings)
            if keep:
                tel["t"].append(np.array([t]))
                tel["i"].append(readings.current_a)
                tel["v"].append(readings.voltage_v)
                tel["temp"].append(readings.temperature_c)
                tel["soc"].append(readings.soc)
                tel["soh"].append(readings.soh)
                tel_labels.append(injector.labels(t))
            # Phase changes (a refused step ends the phase, as a cut-off ends a CC phase).
            phase_t = phase_t + dt
            timed_out = phase_t >= _MAX_PHASE_S
            end_dis = (phase == _DISCHARGE) & ((states.soc <= soc_min) | refused | timed_out)
            end_pause = phase == _PAUSE
            end_chg = (phase == _CHARGE) & ((states.soc >= soc_max) | refused | timed_out)
            phase = np.where(end_dis, _PAUSE, phase)
            phase = np.where(end_pause, _CHARGE, phase)
            phase = np.where(end_chg, _DONE, phase)
            phase_t = np.where(end_dis | end_pause | end_chg, 0.0, phase_t)
        # The day's samples → one cycle row per pack (the first sample is yesterday's last).
        times = np.array(buf_t)
        day_i = np.array([r.current_a for r in buf]).T
        day_v = np.array([r.voltage_v for r in buf]).T
        day_temp = np.array([r.temperature_c for r in buf]).T
        day_soc = np.array([r.soc for r in buf]).T
        for k in range(n):
            table, _ = summarise_cycles(
                times,
                day_i[k],
                day_v[k],
                day_temp[k],
                day_soc[k],
                current_threshold_a=rest_threshold_a(capacity_ah[k]),
                first_cycle=day,
                final=True,
            )
            tables[k].append(table if len(table) == 1 else _nan_row(day, times))
        last = (t, buf[-1])
        twin.set_state(soh=soh)
        soh_rows.append(soh.copy())
        efc_rows.append(efc.copy())

    soh_all = np.array(soh_rows).T
    soh_arr = soh_all[:, : config.n_cycles]
    efc_arr = np.array(efc_rows).T[:, : config.n_cycles]
    telemetry = None
    if config.telemetry_cycles > 0:
        telemetry = TelemetryLog(
            t_s=np.concatenate(tel["t"]),
            current_a=np.array(tel["i"]).T,
            voltage_v=np.array(tel["v"]).T,
            temperature_c=np.array(tel["temp"]).T,
            soc=np.array(tel["soc"]).T,
            soh=np.array(tel["soh"]).T,
            labels=np.array(tel_labels, dtype=np.int64).T,
        )
    return FleetHistory(
        config=config,
        packs=packs,
        duties=duties,
        cycles=tuple(concat_tables(ts[: config.n_cycles]) for ts in tables),
        soh=tuple(soh_arr[k] for k in range(n)),
        efc=tuple(efc_arr[k] for k in range(n)),
        telemetry=telemetry,
        faults=plan,
        future_soh=tuple(soh_all[k, config.n_cycles :] for k in range(n)),
    )


def _nan_row(day: int, times: FloatArray) -> CycleTable:
    """A cycle row for a pack that did not cycle on ``day`` (every summary NaN)."""
    empty = CycleTable.empty()
    values = {name: np.array([np.nan]) for name in vars(empty) if name != "cycle"}
    values["t_start_s"] = np.array([times[0]])
    values["t_end_s"] = np.array([times[-1]])
    return CycleTable(cycle=np.array([day], dtype=np.int64), **values)
