"""Hardware-in-the-loop simulator: the fleet twin plays the packs on a CAN bus.

**Not on the runtime path**: this module imports Gymnasium and the PyBaMM-backed
environments, and nothing in :mod:`pulsebms.edge_runtime` imports it.

:class:`HilSimulator` owns a :class:`pulsebms.envs.FleetEnv` and a bus. Each tick it sends
every pack's telemetry and the site frame, collects the set-points the runtime sent, and
steps the twin with them (a pack that received no set-point idles at zero power, as a BMS
without a command does). :func:`run_hil` runs :class:`~pulsebms.edge_runtime.runtime.EdgeRuntime`
and the simulator in one process, interleaved tick by tick on a simulated clock (one
control interval of the environment per tick, no real waiting), and returns KPIs.

Command line: ``python -m pulsebms.edge_runtime.hil --manifest deploy/manifest.json``.

Example:
    >>> report = run_hil("deploy/manifest.json", n_ticks=50)  # doctest: +SKIP
    >>> report.latency_p99_ms < 5.0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import can
import gymnasium as gym
import numpy as np

import pulsebms.envs  # noqa: F401 - registers the PulseBMS ids
from pulsebms.edge_runtime.codec import CanCodec, SetpointFrame
from pulsebms.edge_runtime.manifest import ManifestError, ModelIntegrityError, load_manifest
from pulsebms.edge_runtime.runtime import EdgeRuntime, TickReport

__all__ = ["HilFaults", "HilReport", "HilSimulator", "SimClock", "run_hil"]

_FORECAST_SOURCES = ("demand_forecast_w", "price_forecast_per_kwh")


class SimClock:
    """A settable clock shared by the runtime and the simulator [s]."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        """The simulated time."""
        return self.now_s

    def advance(self, dt_s: float) -> None:
        """Move time forward by ``dt_s``."""
        self.now_s += dt_s


@dataclass(frozen=True)
class HilFaults:
    """Faults the simulator injects (for tests and demos).

    Attributes:
        silent_packs: Pack → first tick from which the pack sends no telemetry (stale).
        malformed_every: Every this many ticks (0: never), send a wrong-length telemetry
            frame for pack 0, a frame with an unknown id and a CAN error frame.
        overheat_packs: Pack → first tick from which its reported temperature is 75 °C.
    """

    silent_packs: Mapping[int, int] = field(default_factory=dict)
    malformed_every: int = 0
    overheat_packs: Mapping[int, int] = field(default_factory=dict)


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
        latency_p50_ms: Median runtime tick latency [ms].
        latency_p99_ms: 99th-percentile runtime tick latency [ms].
        total_reward: Sum of the environment's rewards.
        unserved_energy_kwh: Load the site could not serve [kWh].
        observation_max_abs_diff: Largest |runtime observation − env observation| over the
            non-forecast entries (CAN quantisation), on ticks where every pack was valid.
        events: Runtime event counts by kind.
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
    latency_p50_ms: float
    latency_p99_ms: float
    total_reward: float
    unserved_energy_kwh: float
    observation_max_abs_diff: float
    events: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


class HilSimulator:
    """The fleet twin on the bus: telemetry out, set-points in, twin stepped.

    Args:
        env: A FleetEnv (possibly wrapped by ``gymnasium.make``).
        bus: The simulator's bus.
        codec: Frame codec for the env's number of packs.
        faults: Faults to inject.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        bus: can.BusABC,
        codec: CanCodec,
        *,
        faults: HilFaults | None = None,
    ) -> None:
        self.env = env
        self.base = cast(Any, env.unwrapped)
        self.bus = bus
        self.codec = codec
        self.faults = faults or HilFaults()
        self.n_packs = int(self.base.n_packs)
        self.rated_w = np.asarray(self.base.ratings.rated_power_w, dtype=np.float64)
        self.frames_sent = 0
        self.frames_received = 0
        self.observation: np.ndarray[Any, Any] = np.zeros(0)
        self._counters = np.zeros(self.n_packs, dtype=np.int64)
        self._site_counter = 0
        self._setpoints: dict[int, SetpointFrame] = {}

    def reset(self, seed: int | None = None) -> None:
        """Start an episode of the twin."""
        obs, _ = self.env.reset(seed=seed)
        self.observation = np.asarray(obs, dtype=np.float64)

    def _send(self, msg: can.Message) -> None:
        self.bus.send(msg)
        self.frames_sent += 1

    def send_telemetry(self, tick: int) -> None:
        """Send every pack's telemetry and the site frame for the present state."""
        state = self.base.fleet_state()
        series = self.base.series
        k = min(int(self.base.step_index), series.n_samples - 1)
        for i in range(self.n_packs):
            start = self.faults.silent_packs.get(i)
            if start is not None and tick >= start:
                continue
            hot = self.faults.overheat_packs.get(i)
            values = {
                "soc": float(state.soc[i]),
                "soh": float(state.soh[i]),
                "temperature_c": 75.0
                if hot is not None and tick >= hot
                else float(state.temperature_c[i]),
                "cell_voltage_v": float(state.cell_voltage_v[i]),
                "current_a": float(state.current_a[i]),
            }
            status = 0 if bool(state.valid[i]) else 2
            for msg in self.codec.encode_telemetry(
                i, values, status=status, counter=int(self._counters[i])
            ):
                self._send(msg)
            self._counters[i] += 1
        self._send(
            self.codec.encode_site(
                float(series.net_load_w[k]),
                price_per_kwh=float(series.price_eur_per_kwh[k]),
                time_of_day_s=float(series.hour_of_day[k]) * 3600.0,
                ambient_c=float(series.ambient_c[k]),
                counter=self._site_counter,
            )
        )
        self._site_counter += 1
        every = self.faults.malformed_every
        if every and tick % every == every - 1:
            tel_id = self.codec.frame_id("telemetry", 0)
            self._send(can.Message(arbitration_id=tel_id, is_extended_id=False, data=b"\x01\x02"))
            self._send(can.Message(arbitration_id=0x7F0, is_extended_id=False, data=bytes(8)))
            self._send(can.Message(arbitration_id=0, is_error_frame=True))

    def receive_setpoints(self, timeout_s: float = 0.0) -> int:
        """Collect set-point frames until none arrives within ``timeout_s``.

        Returns:
            Set-point frames received.
        """
        got = 0
        while True:
            msg = self.bus.recv(timeout=timeout_s)
            if msg is None:
                return got
            frame = self.codec.decode(msg)
            if isinstance(frame, SetpointFrame):
                self._setpoints[frame.pack] = frame
                self.frames_received += 1
                got += 1

    def step(self) -> tuple[float, bool, dict[str, Any]]:
        """Step the twin with the latest set-points (none received: zero).

        Returns:
            ``(reward, episode_done, info)``.
        """
        action = np.zeros(self.n_packs, dtype=np.float64)
        for pack, sp in self._setpoints.items():
            enabled = sp.enable is not False and sp.mode != self.codec.signal_map.mode_safe
            action[pack] = sp.power_w / self.rated_w[pack] if enabled else 0.0
        self._setpoints.clear()
        obs, reward, terminated, truncated, info = self.env.step(action.astype(np.float32))
        self.observation = np.asarray(obs, dtype=np.float64)
        return float(reward), bool(terminated or truncated), info


def _obs_diff(runtime: EdgeRuntime, report: TickReport, env_obs: np.ndarray[Any, Any]) -> float:
    if report.safe.any() or env_obs.shape != report.observation.shape:
        return math.nan
    mask = np.ones(env_obs.shape, dtype=bool)
    for f in runtime.builder.fields:
        if f.source in _FORECAST_SOURCES:
            mask[f.start : f.stop] = False
    diff = np.abs(report.observation.astype(np.float64) - env_obs)[mask]
    return float(diff.max()) if diff.size else 0.0


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
        runtime_kwargs: Extra keyword arguments of :class:`EdgeRuntime`.

    Returns:
        The KPIs.

    Raises:
        ValueError: If the env's fleet does not match the manifest.
    """
    clock = SimClock()
    settle = (0.0 if interface == "virtual" else 0.05) if settle_s is None else settle_s
    kwargs = dict(bus_kwargs or {})
    env = gym.make(env_id, **dict(env_kwargs or {}))
    rt_bus = can.Bus(interface=interface, channel=channel, **kwargs)
    sim_bus = can.Bus(interface=interface, channel=channel, **kwargs)
    try:
        step_s = float(tick_s) if tick_s is not None else load_manifest(manifest_path).dt_s
        options: dict[str, Any] = {
            "stale_after_s": 2.5 * step_s,  # telemetry arrives once per tick here
            "recovery_hold_s": 2.0 * step_s,
            **dict(runtime_kwargs or {}),
        }
        runtime = EdgeRuntime.from_files(
            manifest_path, model_path, bus=rt_bus, tick_s=step_s, clock=clock, **options
        )
        n = runtime.n_packs
        if int(env.unwrapped.n_packs) != n:  # type: ignore[attr-defined]
            raise ValueError(
                f"{env_id} has {env.unwrapped.n_packs} packs, the manifest {n}"  # type: ignore[attr-defined]
            )
        sim = HilSimulator(env, sim_bus, CanCodec(n), faults=faults)
        sim.reset(seed=seed)
        episodes = 1
        reward_sum = 0.0
        unserved_kwh = 0.0
        twin_violations = 0
        obs_diff = 0.0
        for tick in range(n_ticks):
            env_obs = sim.observation
            sim.send_telemetry(tick)
            runtime.poll(settle)
            report = runtime.tick()
            sim.receive_setpoints(settle)
            d = _obs_diff(runtime, report, env_obs)
            if math.isfinite(d):
                obs_diff = max(obs_diff, d)
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
            latency_p50_ms=1e3 * metrics.latency_percentile_s(50),
            latency_p99_ms=1e3 * metrics.latency_percentile_s(99),
            total_reward=reward_sum,
            unserved_energy_kwh=unserved_kwh,
            observation_max_abs_diff=obs_diff,
            events=dict(sorted(kinds.items())),
        )
    finally:
        for bus in (rt_bus, sim_bus):
            bus.shutdown()
        cast(Any, env).close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulsebms.edge_runtime.hil``: run :func:`run_hil` and print the KPIs as JSON.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` by default).

    Returns:
        The exit status.
    """
    p = argparse.ArgumentParser(
        prog="python -m pulsebms.edge_runtime.hil",
        description="Edge runtime against the fleet twin on a python-can bus (HIL).",
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--model")
    p.add_argument("--n-ticks", type=int, default=288)
    p.add_argument("--interface", default="virtual")
    p.add_argument("--channel", default="pulsebms-hil")
    p.add_argument("--env-id", default="PulseBMS/FleetSmall-v0")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON kwargs of make")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tick-s", type=float)
    p.add_argument("--silent-pack", type=int, action="append", default=[], metavar="PACK")
    p.add_argument("--malformed-every", type=int, default=0)
    args = p.parse_args(argv)
    faults = HilFaults(
        silent_packs={pack: args.n_ticks // 2 for pack in args.silent_pack},
        malformed_every=args.malformed_every,
    )
    try:
        report = run_hil(
            args.manifest,
            args.model,
            n_ticks=args.n_ticks,
            interface=args.interface,
            channel=args.channel,
            env_id=args.env_id,
            env_kwargs=args.env_kwargs,
            seed=args.seed,
            tick_s=args.tick_s,
            faults=faults,
        )
    except (ManifestError, ModelIntegrityError, FileNotFoundError) as exc:
        print(f"{p.prog}: refusing to start: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
