"""One HIL run: the edge runtime and the twin interleaved on a python-can bus.

:func:`run_hil` runs :class:`~pulsebms.edge_runtime.runtime.EdgeRuntime` and a
:class:`~pulsebms.hil.simulator.HilSimulator` in one process, tick by tick on a simulated
clock (one control interval of the environment per tick, no real waiting), and returns a
:class:`HilReport`: the runtime's KPIs, the twin's, and whether the runtime's observation
matched the twin's (:mod:`pulsebms.hil.parity`). A run whose parity fails says so in
``parity_ok`` / ``parity``; the command line exits non-zero on it. With the runtime's
estimator on (the default), ``estimation`` rates its SoC estimate against the twin's truth
per pack; where the signal map has no SoC/SoH the runtime runs on that estimate and the
parity leaves those entries out. ``noise`` puts seeded sensor errors on the twin's readings.

Example:
    >>> report = run_hil("deploy/manifest.json", n_ticks=50)  # doctest: +SKIP
    >>> report.parity_ok, report.obs_mismatch_ticks  # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import can
import gymnasium as gym
import numpy as np

import pulsebms.envs  # noqa: F401 - registers the PulseBMS ids
from pulsebms.edge_runtime.codec import CanCodec, SignalMap
from pulsebms.edge_runtime.manifest import load_manifest
from pulsebms.edge_runtime.runtime import EdgeRuntime
from pulsebms.hil.noise import SensorNoise
from pulsebms.hil.parity import DEFAULT_OBS_TOLERANCE, ObservationParity
from pulsebms.hil.simulator import HilFaults, HilSimulator, SimClock

__all__ = ["EstimationSummary", "HilReport", "TwinSite", "lockstep_watchdog", "run_hil"]

LOCKSTEP_STALE_FRACTION = 0.5
"""Watchdog timeout of a lockstep run, as a fraction of the control step (see
:func:`lockstep_watchdog`)."""


def lockstep_watchdog(step_s: float) -> dict[str, float]:
    """The runtime's watchdog settings for a lockstep run (telemetry once per tick).

    In a lockstep run (:func:`run_hil`, ``pulsebms-fleet``) every pack's telemetry is sent
    at the tick's time on the simulated clock and the runtime ticks at that same time: a
    pack's readings are 0 s old when this tick's telemetry arrived and at least one step
    old when it did not. Any ``stale_after_s`` in ``(0, step_s)`` tells the two apart
    exactly; half a step keeps clear of rounding of the clock's sums. A longer timeout
    (e.g. the usual two telemetry periods) would let the shield plan, for a tick or two,
    on the last tick's readings of a pack that stopped reporting.

    Args:
        step_s: Control step, also the telemetry period [s].

    Returns:
        ``stale_after_s`` (half a step) and ``recovery_hold_s`` (two steps: a pack put
        safe for bad telemetry runs again after two clean ticks), as
        :class:`~pulsebms.edge_runtime.runtime.EdgeRuntime` keyword arguments.

    Raises:
        ValueError: If ``step_s`` is not finite and > 0.

    Example:
        >>> lockstep_watchdog(300.0)
        {'stale_after_s': 150.0, 'recovery_hold_s': 600.0}
    """
    step = float(step_s)
    if not (math.isfinite(step) and step > 0.0):
        raise ValueError(f"step_s must be finite and > 0, got {step_s}")
    return {"stale_after_s": LOCKSTEP_STALE_FRACTION * step, "recovery_hold_s": 2.0 * step}


class TwinSite:
    """Site values straight from the twin, for signal maps without a site frame on CAN.

    A :class:`~pulsebms.edge_runtime.site.SiteSource` (``poll(now_s)``): the runtime asks
    it every tick, as it would ask a site meter or a CSV schedule.

    Args:
        sim: The simulator whose site values to give; ``None`` until it exists.
    """

    def __init__(self, sim: HilSimulator | None = None) -> None:
        self.sim = sim

    def poll(self, now_s: float) -> Mapping[str, float] | None:
        """The twin's site values now, or ``None`` before the simulator exists."""
        return None if self.sim is None else self.sim.site_values()


@dataclass(frozen=True)
class EstimationSummary:
    """How well the runtime's state estimate followed the twin's truth (per pack).

    Sampled each tick after the runtime's tick (the estimate from that tick's telemetry)
    against the twin's SoC/SoH of the same state.

    Attributes:
        estimated: Quantities the runtime ran on from its estimate (the map lacks them).
        soc_rmse: SoC RMSE over every tick with an estimate (fraction, NaN: none).
        soc_rmse_settled: SoC RMSE over the second half of the ticks (after convergence).
        soc_final_error: Estimate − truth at the last tick.
        soh_final_error: SoH estimate − truth at the last tick.
        soc_max_rmse_settled: Largest ``soc_rmse_settled`` over the packs.
        disagreements: The runtime's ``estimate_disagreements`` counter.
    """

    estimated: tuple[str, ...]
    soc_rmse: list[float]
    soc_rmse_settled: list[float]
    soc_final_error: list[float]
    soh_final_error: list[float]
    soc_max_rmse_settled: float
    disagreements: int


class _EstimationTracker:
    def __init__(self, n_packs: int) -> None:
        self.errors: list[np.ndarray[Any, Any]] = []
        self.soh_error = np.full(n_packs, np.nan)

    def update(self, runtime: EdgeRuntime, sim: HilSimulator) -> None:
        est = runtime.estimator
        if est is None:
            return
        truth = sim.base.fleet_state()
        self.errors.append(np.asarray(est.soc - truth.soc, dtype=np.float64))
        self.soh_error = np.asarray(est.soh - truth.soh, dtype=np.float64)

    def summary(self, runtime: EdgeRuntime) -> EstimationSummary | None:
        if runtime.estimator is None:
            return None

        def rmse(rows: list[np.ndarray[Any, Any]]) -> list[float]:
            if not rows:
                return [math.nan] * runtime.n_packs
            err = np.vstack(rows)
            out = []
            for col in err.T:
                ok = col[np.isfinite(col)]
                out.append(float(np.sqrt(np.mean(ok**2))) if ok.size else math.nan)
            return out

        settled = rmse(self.errors[len(self.errors) // 2 :])
        final = self.errors[-1] if self.errors else np.full(runtime.n_packs, np.nan)
        return EstimationSummary(
            estimated=runtime.estimated_quantities,
            soc_rmse=rmse(self.errors),
            soc_rmse_settled=settled,
            soc_final_error=[float(v) for v in final],
            soh_final_error=[float(v) for v in self.soh_error],
            soc_max_rmse_settled=float(np.nanmax(settled))
            if np.isfinite(settled).any()
            else math.nan,
            disagreements=runtime.metrics.estimate_disagreements,
        )


@dataclass(frozen=True)
class HilReport:
    """KPIs of a hardware-in-the-loop run.

    Attributes:
        ticks: Control ticks run.
        episodes: Environment episodes started.
        frames_to_runtime: Frames the simulator sent.
        frames_from_runtime: Set-point frames the simulator received.
        runtime: The runtime's counters (see ``RuntimeMetrics.to_dict``).
        telemetry_violations: Limit violations the runtime found in telemetry.
        twin_violations: Limit violations the twin itself reported after its steps.
        interventions: Ticks on which the shield changed a set-point.
        safe_pack_ticks: Sum over ticks of packs held in the safe state.
        stale_controlled_ticks: Sum over ticks of packs that sent no telemetry for the tick
            and were still commanded to run (driven on old readings); 0 with the lockstep
            watchdog (:func:`lockstep_watchdog`).
        latency_p50_ms: Median runtime tick latency [ms].
        latency_p99_ms: 99th-percentile runtime tick latency [ms].
        total_reward: Sum of the environment's rewards.
        unserved_energy_kwh: Load the site could not serve [kWh].
        observation_max_abs_diff: Largest |runtime observation − env observation| over the
            non-forecast entries (CAN quantisation) of the compared ticks.
        obs_compared_ticks: Ticks whose observations were compared (no pack in the safe
            state).
        obs_mismatch_ticks: Compared ticks whose observations differed: another shape, a
            non-finite entry, or an entry beyond ``obs_tolerance``.
        obs_safe_ticks: Ticks not compared because some pack was in the safe state (its
            observation entries are then held values, not the twin's).
        obs_tolerance: Largest per-entry difference counted as equal.
        parity_ok: Whether the observation parity held: ``obs_compared_ticks > 0`` and
            ``obs_mismatch_ticks == 0``.
        parity: One sentence: the verdict, the counts and the first mismatch.
        events: Runtime event counts by kind.
        estimation: The runtime's state estimate against the twin's truth (``None`` with
            the estimator off).
    """

    ticks: int
    episodes: int
    frames_to_runtime: int
    frames_from_runtime: int
    runtime: dict[str, float]
    telemetry_violations: int
    twin_violations: int
    interventions: int
    safe_pack_ticks: int
    stale_controlled_ticks: int
    latency_p50_ms: float
    latency_p99_ms: float
    total_reward: float
    unserved_energy_kwh: float
    observation_max_abs_diff: float
    obs_compared_ticks: int
    obs_mismatch_ticks: int
    obs_safe_ticks: int
    obs_tolerance: float
    parity_ok: bool
    parity: str
    events: dict[str, int]
    estimation: EstimationSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def run_hil(
    manifest_path: str | Path,
    model_path: str | Path | None = None,
    *,
    n_ticks: int = 100,
    interface: str = "virtual",
    channel: str = "pulsebms-hil",
    env_id: str = "PulseBMS/FleetSmall-v0",
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    tick_s: float | None = None,
    faults: HilFaults | None = None,
    settle_s: float | None = None,
    bus_kwargs: Mapping[str, Any] | None = None,
    runtime_kwargs: Mapping[str, Any] | None = None,
    obs_tolerance: float = DEFAULT_OBS_TOLERANCE,
    dbc_path: str | Path | Sequence[str | Path] | None = None,
    signal_map: SignalMap | str | Path | None = None,
    codec_backend: str = "compiled",
    separate_buses: bool = False,
    noise: SensorNoise | int | None = None,
) -> HilReport:
    """Run the edge runtime against the twin on a python-can bus, in one process.

    Ticks are interleaved on a simulated clock: the simulator sends telemetry, the runtime
    reads it and ticks (policy, shield, set-points), the simulator reads the set-points and
    steps the twin by one control interval; then the clock advances by ``tick_s``.

    Args:
        manifest_path: ``manifest.json`` of the export.
        model_path: ``policy.onnx``; beside the manifest by default.
        n_ticks: Control ticks to run.
        interface: python-can interface (``virtual``, ``udp_multicast``, ``socketcan``).
        channel: Bus channel (for ``udp_multicast``, a multicast group address).
        env_id: Gymnasium id of the twin; must match the manifest's fleet and layout.
        env_kwargs: Keyword arguments of ``gymnasium.make``.
        seed: Seed of the first episode.
        tick_s: Control interval; the manifest's ``dt_s`` by default.
        faults: Faults to inject.
        settle_s: How long each side waits for the other's frames [s]; 0 on ``virtual``
            (delivery is immediate), 0.05 otherwise.
        bus_kwargs: Extra keyword arguments of ``can.Bus`` (e.g. ``port`` for
            ``udp_multicast``).
        runtime_kwargs: Extra keyword arguments of :class:`EdgeRuntime`; the watchdog is
            :func:`lockstep_watchdog` of the step unless given here.
        obs_tolerance: Largest per-entry |runtime − twin| observation difference counted
            as equal (see :data:`pulsebms.hil.parity.DEFAULT_OBS_TOLERANCE`).
        dbc_path: DBC file(s) both sides speak; the project DBC by default.
        signal_map: Signal map (or its file) of that DBC; the default map by default.
            Without a site frame in the map the runtime gets the site values from the
            twin (:class:`TwinSite`) instead of the bus.
        codec_backend: Layout backend of both codecs (``compiled`` or ``cantools``).
        separate_buses: One channel (``{channel}-{name}``) per bus name of the signal map
            instead of one for all.
        noise: Sensor noise on the twin's readings: a :class:`SensorNoise`, or its seed
            (default bounds), or ``None`` for exact readings.

    Returns:
        The KPIs, with the parity verdict (a failed parity is reported, not raised).

    Raises:
        ValueError: If the env's fleet does not match the manifest, or the signal map does
            not fit the DBC.
        TypeError: If ``env_id`` is not a FleetEnv.
    """
    smap = SignalMap.load(signal_map) if isinstance(signal_map, (str, Path)) else signal_map
    clock = SimClock()
    settle = (0.0 if interface == "virtual" else 0.05) if settle_s is None else settle_s
    kwargs = dict(bus_kwargs or {})
    n = load_manifest(manifest_path).n_packs

    def codec() -> CanCodec:
        return CanCodec(n, dbc_path=dbc_path, signal_map=smap, backend=codec_backend)

    rt_codec = codec()  # a bad map or DBC is refused before anything is opened
    env = gym.make(env_id, **dict(env_kwargs or {}))
    names = rt_codec.bus_names if separate_buses else ("",)
    channels = {name: f"{channel}-{name}" if name else channel for name in names}
    rt_buses = {k: can.Bus(interface=interface, channel=c, **kwargs) for k, c in channels.items()}
    sim_buses = {k: can.Bus(interface=interface, channel=c, **kwargs) for k, c in channels.items()}
    rt_bus: Any = rt_buses if separate_buses else rt_buses[""]
    sim_bus: Any = sim_buses if separate_buses else sim_buses[""]
    try:
        step_s = float(tick_s) if tick_s is not None else load_manifest(manifest_path).dt_s
        options: dict[str, Any] = {**lockstep_watchdog(step_s), **dict(runtime_kwargs or {})}
        options.setdefault("codec", rt_codec)
        twin_site = TwinSite()
        if not rt_codec.has_site:
            options.setdefault("site_source", twin_site)
        runtime = EdgeRuntime.from_files(
            manifest_path, model_path, bus=rt_bus, tick_s=step_s, clock=clock, **options
        )
        sensors = SensorNoise(n, seed=noise) if isinstance(noise, int) else noise
        sim = HilSimulator(env, sim_bus, codec(), faults=faults, noise=sensors)
        twin_site.sim = sim
        if sim.n_packs != n:
            raise ValueError(f"{env_id} has {sim.n_packs} packs, the manifest {n}")
        parity = ObservationParity(
            runtime.builder.fields,
            tolerance=obs_tolerance,
            not_compared=runtime.estimated_quantities,
        )
        tracker = _EstimationTracker(n)
        sim.reset(seed=seed)
        episodes = 1
        reward_sum = 0.0
        unserved_kwh = 0.0
        twin_violations = 0
        stale_controlled = 0
        for tick in range(n_ticks):
            twin_obs = sim.observation
            sim.send_telemetry(tick)
            runtime.poll(settle)
            report = runtime.tick()
            stale_controlled += int(np.count_nonzero(~sim.reported & ~report.safe))
            tracker.update(runtime, sim)
            sim.receive_setpoints(settle)
            parity.update(tick, report.observation, twin_obs, report.safe)
            reward, done, info = sim.step()
            reward_sum += reward
            unserved_kwh += float(info.get("unserved_w", 0.0)) * runtime.tick_s / 3.6e6
            twin_violations += int(info.get("n_violations", 0))
            clock.advance(runtime.tick_s)
            if done:
                sim.reset(seed=seed + episodes)
                episodes += 1
        runtime.poll(settle)
        metrics = runtime.metrics
        kinds = collections.Counter(e.kind for e in runtime.events)
        return HilReport(
            ticks=metrics.ticks,
            episodes=episodes,
            frames_to_runtime=sim.frames_sent,
            frames_from_runtime=sim.frames_received,
            runtime=metrics.to_dict(),
            telemetry_violations=metrics.violations,
            twin_violations=twin_violations,
            interventions=metrics.interventions,
            safe_pack_ticks=metrics.safe_pack_ticks,
            stale_controlled_ticks=stale_controlled,
            latency_p50_ms=1e3 * metrics.latency_percentile_s(50),
            latency_p99_ms=1e3 * metrics.latency_percentile_s(99),
            total_reward=reward_sum,
            unserved_energy_kwh=unserved_kwh,
            observation_max_abs_diff=parity.max_abs_diff,
            obs_compared_ticks=parity.compared_ticks,
            obs_mismatch_ticks=parity.mismatch_ticks,
            obs_safe_ticks=parity.safe_ticks,
            obs_tolerance=parity.tolerance,
            parity_ok=parity.ok,
            parity=parity.verdict(),
            events=dict(sorted(kinds.items())),
            estimation=tracker.summary(runtime),
        )
    finally:
        for bus in (*rt_buses.values(), *sim_buses.values()):
            bus.shutdown()
        cast(Any, env).close()  # gymnasium's Env.close is unannotated
