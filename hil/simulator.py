"""The fleet twin on a CAN bus: pack telemetry out, set-points in, twin stepped.

:class:`HilSimulator` owns a :class:`pulsebms.envs.FleetEnv` and a python-can bus. Each
tick it sends every pack's telemetry and the site frame (when the signal map has one),
collects the commands the runtime sent (set-points or state requests, whatever the codec's
signal map says), and steps the twin with them (a pack that received no set-point idles at
zero power, as a BMS without a command does). :class:`HilFaults` makes it lie on purpose
(silent packs, malformed frames, an overheating pack); :class:`SimClock` is the simulated
clock the runtime and the simulator share.

Example:
    >>> clock = SimClock()
    >>> clock.advance(60.0)
    >>> clock()
    60.0
    >>> HilFaults(silent_packs={2: 10}).silent_packs
    {2: 10}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import can
import gymnasium as gym
import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.edge_runtime.codec import CanCodec, IgnoredFrame, SetpointFrame
from pulsebms.envs.fleet_env import FleetEnv
from pulsebms.hil.noise import SensorNoise

__all__ = ["HilFaults", "HilSimulator", "SimClock"]


class SimClock:
    """A settable clock shared by the runtime and the simulator [s].

    Args:
        start_s: Time at creation [s].
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        """The simulated time [s]."""
        return self.now_s

    def advance(self, dt_s: float) -> None:
        """Move time forward by ``dt_s`` [s]."""
        self.now_s += dt_s


@dataclass(frozen=True)
class HilFaults:
    """Faults the simulator injects (for tests and demos).

    Attributes:
        silent_packs: Pack → first tick from which the pack sends no telemetry (stale).
        malformed_every: Every this many ticks (0: never), send a wrong-length telemetry
            frame for pack 0, a frame with an unknown id and a CAN error frame.
        overheat_packs: Pack → first tick from which its reported temperature is 75 °C.
        corrupt_packs: Pack → first tick from which byte 0 of its first telemetry frame is
            flipped on the wire (a checksum, where the map has one, catches it).
    """

    silent_packs: Mapping[int, int] = field(default_factory=dict)
    malformed_every: int = 0
    overheat_packs: Mapping[int, int] = field(default_factory=dict)
    corrupt_packs: Mapping[int, int] = field(default_factory=dict)


class HilSimulator:
    """The fleet twin on the bus: telemetry out, set-points in, twin stepped.

    Args:
        env: A FleetEnv (possibly wrapped by ``gymnasium.make``).
        bus: The simulator's bus, or one per bus name of the codec's signal map.
        codec: Frame codec for the env's number of packs.
        faults: Faults to inject.
        noise: Sensor noise added to the telemetry values before encoding (None: exact).

    Raises:
        TypeError: If ``env.unwrapped`` is not a :class:`~pulsebms.envs.FleetEnv`.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        bus: can.BusABC | Mapping[str, can.BusABC],
        codec: CanCodec,
        *,
        faults: HilFaults | None = None,
        noise: SensorNoise | None = None,
    ) -> None:
        base = env.unwrapped
        if not isinstance(base, FleetEnv):
            raise TypeError(
                f"the HIL simulator needs a FleetEnv, got {type(base).__name__} "
                "(env.unwrapped of the env given)"
            )
        self.env = env
        self.base: FleetEnv = base
        names = codec.bus_names
        self.buses: dict[str, can.BusABC] = (
            dict.fromkeys(names, bus) if isinstance(bus, can.BusABC) else dict(bus)
        )
        missing = [name for name in names if name not in self.buses]
        if missing:
            raise ValueError(f"no bus given for {missing}; the signal map uses {list(names)}")
        self.bus = self.buses[names[0]]
        served: dict[int, tuple[can.BusABC, list[str]]] = {}
        for name in names:
            served.setdefault(id(self.buses[name]), (self.buses[name], []))[1].append(name)
        self._rx = [(b, tuple(n)) for b, n in served.values()]
        self.codec = codec
        self.faults = faults or HilFaults()
        self.noise = noise
        self.n_packs = int(base.n_packs)
        self.rated_w: FloatArray = np.asarray(base.ratings.rated_power_w, dtype=np.float64)
        self.series: FloatArray = np.asarray(base.ratings.series, dtype=np.float64)
        self.frames_sent = 0
        self.frames_received = 0
        self.observation: FloatArray = np.zeros(0)
        self.reported: BoolArray = np.zeros(self.n_packs, dtype=bool)
        """Per pack, whether its telemetry went out in the last :meth:`send_telemetry`."""
        self._counters: IntArray = np.zeros(self.n_packs, dtype=np.int64)
        self._site_counter = 0
        self._setpoints: dict[int, SetpointFrame] = {}

    def reset(self, seed: int | None = None) -> None:
        """Start an episode of the twin.

        Args:
            seed: Seed of the episode.
        """
        obs, _ = self.env.reset(seed=seed)
        self.observation = np.asarray(obs, dtype=np.float64)

    def _send(self, msg: can.Message, bus: str | None = None) -> None:
        self.buses.get(bus or "", self.bus).send(msg)
        self.frames_sent += 1

    def send_telemetry(self, tick: int) -> None:
        """Send every pack's telemetry and the site frame for the present state.

        Args:
            tick: Control tick (from 0), for the faults' schedules.
        """
        state = self.base.fleet_state()
        self.reported = np.ones(self.n_packs, dtype=bool)
        for i in range(self.n_packs):
            start = self.faults.silent_packs.get(i)
            if start is not None and tick >= start:
                self.reported[i] = False
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
            values = self._with_noise(i, values)
            status = 0 if bool(state.valid[i]) else 2
            frames = self.codec.encode_telemetry(
                i, values, status=status, counter=int(self._counters[i])
            )
            corrupt = self.faults.corrupt_packs.get(i)
            if corrupt is not None and tick >= corrupt:
                first = frames[0]
                data = bytes([first.data[0] ^ 0xFF, *first.data[1:]])
                frames[0] = can.Message(
                    arbitration_id=first.arbitration_id,
                    is_extended_id=first.is_extended_id,
                    data=data,
                )
            for msg in frames:
                self._send(msg, self.codec.bus_of(i))
            self._counters[i] += 1
        if self.codec.has_site:  # else the runtime takes site_values() from another source
            site = self.site_values()
            self._send(
                self.codec.encode_site(
                    site["demand_w"],
                    price_per_kwh=site["price_per_kwh"],
                    time_of_day_s=site["time_of_day_s"],
                    ambient_c=site["ambient_c"],
                    counter=self._site_counter,
                ),
                self.codec.site_bus,
            )
            self._site_counter += 1
        every = self.faults.malformed_every
        if every and tick % every == every - 1:
            tel_id = self.codec.frame_id("telemetry", 0)
            short = can.Message(arbitration_id=tel_id, is_extended_id=False, data=b"\x01\x02")
            self._send(short, self.codec.bus_of(0))
            self._send(can.Message(arbitration_id=0x7F0, is_extended_id=False, data=bytes(8)))
            self._send(can.Message(arbitration_id=0, is_error_frame=True))

    def site_values(self) -> dict[str, float]:
        """The site's present values (demand [W], price, time of day [s], ambient [°C])."""
        series = self.base.series
        k = min(int(self.base.step_index), series.n_samples - 1)
        return {
            "demand_w": float(series.net_load_w[k]),
            "price_per_kwh": float(series.price_eur_per_kwh[k]),
            "time_of_day_s": float(series.hour_of_day[k]) * 3600.0,
            "ambient_c": float(series.ambient_c[k]),
        }

    def pack_voltage_v(self) -> FloatArray:
        """Each pack's voltage now [V]: cell voltage × cells in series."""
        cell_v = np.asarray(self.base.fleet_state().cell_voltage_v, dtype=np.float64)
        return cell_v * self.series

    def _with_noise(self, pack: int, values: dict[str, float]) -> dict[str, float]:
        """The telemetry values of ``pack`` as its sensors would read them."""
        return values if self.noise is None else self.noise.apply(pack, values)

    def receive_setpoints(self, timeout_s: float = 0.0) -> int:
        """Collect set-point frames until none arrives within ``timeout_s``.

        Args:
            timeout_s: How long to wait for each next frame [s].

        Returns:
            Set-point frames received.
        """
        got = 0
        for bus, names in self._rx:
            while (msg := bus.recv(timeout=timeout_s)) is not None:
                for name in names:  # one bus object may serve several names
                    frame = self.codec.decode(msg, bus=name)
                    if not isinstance(frame, IgnoredFrame):
                        break
                if isinstance(frame, SetpointFrame):
                    self._setpoints[frame.pack] = frame
                    self.frames_received += 1
                    got += 1
        return got

    def step(self) -> tuple[float, bool, dict[str, Any]]:
        """Step the twin with the latest commands (none received: zero).

        A set-point gives its power; a state request its limit in the requested direction
        (current limits × the pack's voltage); standby, safe or disabled gives zero.

        Returns:
            ``(reward, episode_done, info)``.
        """
        action = np.zeros(self.n_packs, dtype=np.float64)
        volts = self.pack_voltage_v()  # a state request's current limits run at this voltage
        for pack, sp in self._setpoints.items():
            enabled = sp.enabled and sp.mode != self.codec.signal_map.mode_safe
            power_w = sp.power_w_at(float(volts[pack]))
            action[pack] = power_w / self.rated_w[pack] if enabled else 0.0
        self._setpoints.clear()
        obs, reward, terminated, truncated, info = self.env.step(action.astype(np.float32))
        self.observation = np.asarray(obs, dtype=np.float64)
        return float(reward), bool(terminated or truncated), info
