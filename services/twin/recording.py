"""Recorded telemetry of a simulated fleet: the "truth" the service is tested and demoed on.

:func:`record_telemetry` drives a fleet twin (any fidelity, typically with parameters that
differ from the service's start values: aged packs) with a pack-current profile and returns
the rows a telemetry store would hold, with the HIL simulator's sensor model
(:class:`pulsebms.hil.noise.SensorNoise`) on the readings. It is what the HIL bench produces,
minus the CAN bus and the edge: the service only ever sees the store's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.envs.twin.base import FleetTwin
from pulsebms.hil.noise import SensorNoise
from pulsebms.services.store.base import Row

__all__ = ["Recording", "record_telemetry", "telemetry_messages"]


@dataclass(frozen=True)
class Recording:
    """What :func:`record_telemetry` returns.

    Attributes:
        rows: Telemetry rows ``(pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c)``
            (noisy readings; SoC and SoH are the twin's own, as a BMS reports its estimates).
        t_s: Sample times [s], ``(steps + 1,)``.
        soh: True SoH per sample and pack, ``(steps + 1, n_packs)``.
        faulted: Packs the twin faulted during the recording (their rows stop there).
    """

    rows: list[Row]
    t_s: FloatArray
    soh: FloatArray
    faulted: FloatArray


def record_telemetry(
    twin: FleetTwin,
    current_a: FloatArray,
    dt_s: float,
    pack_ids: Sequence[str],
    *,
    noise: SensorNoise | None = None,
    t0_s: float = 0.0,
    ambient_c: float = 25.0,
    every: int = 1,
) -> Recording:
    """Step ``twin`` through ``current_a`` and record telemetry rows.

    Args:
        twin: The truth twin, already in its initial state (a first row is recorded at rest).
        current_a: Pack current per step, ``(steps, n_packs)`` [A], + = discharge.
        dt_s: Step length [s].
        pack_ids: Name per pack.
        noise: Sensor model (None: exact readings).
        t0_s: Time of the initial state [s].
        ambient_c: Ambient temperature [°C].
        every: Record one row per pack every this many steps (the current reported is the
            mean over them, the voltage the one at the end).

    Returns:
        The :class:`Recording`.
    """
    current = np.asarray(current_a, dtype=np.float64)
    n = len(pack_ids)
    if current.ndim != 2 or current.shape[1] != n:
        raise ValueError(f"current_a must be (steps, {n}), got {current.shape}")
    rows: list[Row] = []
    state = twin.state()
    series = np.asarray(twin.ratings.series, dtype=np.float64)
    soh = [state.soh.copy()]
    times = [t0_s]

    def emit(t: float, mean_current: FloatArray) -> None:
        for k in range(n):
            if state.faulted[k]:
                continue
            values = {
                "cell_voltage_v": float(state.cell_voltage_v[k]),
                "current_a": float(mean_current[k]),
                "temperature_c": float(state.temperature_c[k]),
            }
            if noise is not None:
                values = noise.apply(k, values)
            rows.append(
                (
                    pack_ids[k],
                    t,
                    float(state.soc[k]),
                    float(state.soh[k]),
                    values["current_a"],
                    values["cell_voltage_v"] * float(series[k]),
                    values["temperature_c"],
                )
            )

    emit(t0_s, np.zeros(n))
    acc = np.zeros(n)
    for step in range(current.shape[0]):
        state = twin.step_current(current[step], dt_s, ambient_c)
        acc += state.current_a
        if (step + 1) % every == 0:
            t = t0_s + (step + 1) * dt_s
            emit(t, acc / every)
            acc = np.zeros(n)
            times.append(t)
            soh.append(state.soh.copy())
    return Recording(
        rows=rows,
        t_s=np.array(times),
        soh=np.array(soh),
        faulted=np.flatnonzero(state.faulted).astype(np.float64),
    )


def telemetry_messages(
    rows: Sequence[Row],
    *,
    site: str,
    device: str,
    series: Mapping[str, int],
    chemistry: Mapping[str, str] | None = None,
    capacity_ah: Mapping[str, float] | None = None,
    session: str = "rec",
    period_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Recorded rows as the telemetry messages an edge device would have published.

    One message per sample time (all packs of that time), in time order, ``seq`` from 0.

    Args:
        rows: Rows of :func:`record_telemetry` (or a store).
        site: Site name.
        device: Edge device name.
        series: Cells in series per pack id (to report cell voltages).
        chemistry: Chemistry per pack id (optional telemetry field).
        capacity_ah: Rated pack capacity per pack id (optional telemetry field).
        session: The sender's session id.
        period_s: The ``period_s`` field.

    Returns:
        Messages (``dict``), valid for :func:`pulsebms.core.messaging.encode`.
    """
    by_time: dict[float, list[Row]] = {}
    for row in rows:
        by_time.setdefault(float(row[1]), []).append(row)
    out: list[dict[str, Any]] = []
    for seq, t in enumerate(sorted(by_time)):
        packs = []
        for pid, _, soc, soh, cur, volt, temp in by_time[t]:
            cell = volt / series[pid]
            entry: dict[str, Any] = {
                "pack_id": pid,
                "soc": min(max(soc, 0.0), 1.0) if np.isfinite(soc) else None,
                "soh": min(max(soh, 0.0), 1.5) if np.isfinite(soh) else None,
                "current_a": cur,
                "voltage_v": volt,
                "cell_voltage_min_v": cell,
                "cell_voltage_max_v": cell,
                "temperature_min_c": temp,
                "temperature_max_c": temp,
                "setpoint_w": cur * volt,
                "safe": False,
                "reasons": 0,
                "fresh": True,
            }
            if chemistry is not None:
                entry["chemistry"] = chemistry[pid]
            if capacity_ah is not None:
                entry["capacity_ah"] = capacity_ah[pid]
            packs.append(entry)
        out.append(
            {
                "site": site,
                "device": device,
                "session": session,
                "seq": seq,
                "timestamp_s": t,
                "period_s": period_s,
                "packs": packs,
            }
        )
    return out
