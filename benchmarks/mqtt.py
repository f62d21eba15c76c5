"""``pulsebms-bench mqtt``: telemetry → coordinator latency and sustained throughput on Mosquitto.

A real Mosquitto (:class:`~pulsebms.services.broker.MosquittoBroker`, ACL and passwords
on), a real :class:`~pulsebms.services.coordinator.Coordinator` (its :class:`MqttLink`
decodes and validates every message, its :class:`FleetState` applies it; it re-plans the
whole fleet every ``--plan-period-s`` through the rule policy and the shield, as in
service) and a load generator in **another process** (so its CPU is not the
coordinator's): ``--links`` MQTT connections publishing each device's telemetry message
(every pack of the device in one message, QoS 1, validated by ``encode``) at ``rate``
Hz, the devices spread evenly over the period.

Per stage (devices × packs per device at a rate):

* **latency**: coordinator receipt time − the message's ``timestamp_s`` (set by the
  publisher with ``time.time()`` just before ``publish``; one machine, one clock): p50,
  p99, max [ms]. It covers encode → paho → Mosquitto → paho → decode/validate → state;
* **throughput**: pack readings per second offered and received; ``lost`` = sent −
  received (distinct); the coordinator keeps up when nothing is lost and p99 stays low;
* **CPU**: the coordinator process's CPU [% of one core] (paho thread, decoding, state,
  planning) and per message / per pack reading [µs] (``1e6 / µs per pack`` is the pack
  readings per second one core sustains: the figure that does not depend on the machine's
  load), Mosquitto's (with psutil) and the load generator's; ``late p99``: how late the
  generator published against its schedule (if large, the generator, not the coordinator,
  was the limit);
* **plan**: the coordinator's re-plan wall time (observation, policy, shield) [ms].

Default stages: the issue's target, 1,000 packs at 1 Hz, as 100 devices × 10 packs and as
1,000 devices × 1 pack, then 100 × 10 at 2 and 5 Hz for headroom. Target: p99 < 100 ms
with nothing lost on 2 cores. The machine's load average is printed with every run:
compare figures only between runs on the same, quiet machine.

    pulsebms-bench mqtt [--duration-s 15] [--stages 100x10@1,1000x1@1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

SITE = "bench"
DEFAULT_STAGES = "100x10@1,1000x1@1,100x10@2,100x10@5"
QUICK_STAGES = "4x3@5,12x1@5"


@dataclass(frozen=True)
class Stage:
    """One load level: ``devices`` × ``packs`` packs, each device publishing at ``rate_hz``."""

    devices: int
    packs: int
    rate_hz: float

    @property
    def name(self) -> str:
        """``100x10@1``."""
        return f"{self.devices}x{self.packs}@{self.rate_hz:g}"

    @property
    def packs_per_s(self) -> float:
        """Pack readings per second offered."""
        return self.devices * self.packs * self.rate_hz

    @classmethod
    def parse(cls, text: str) -> Stage:
        """``DEVICESxPACKS@RATE`` (rate in Hz)."""
        sizes, _, rate = text.partition("@")
        devices, _, packs = sizes.partition("x")
        stage = cls(int(devices), int(packs or 1), float(rate or 1.0))
        if stage.devices < 1 or stage.packs < 1 or not stage.rate_hz > 0:
            raise ValueError(f"bad stage {text!r}")
        return stage


def _pack(pack_id: str, k: int) -> dict[str, Any]:
    return {
        "pack_id": pack_id, "soc": 0.5 + 0.001 * (k % 100), "soh": 0.97, "current_a": 12.5,
        "voltage_v": 52.8, "cell_voltage_min_v": 3.28, "cell_voltage_max_v": 3.31,
        "temperature_min_c": 24.5, "temperature_max_c": 26.0, "setpoint_w": 640.0,
        "safe": False, "reasons": 0, "fresh": True,
    }  # fmt: skip


def _pack_ids(stage: Stage) -> list[list[str]]:
    return [[f"d{d:04d}-p{p:02d}" for p in range(stage.packs)] for d in range(stage.devices)]


def _publisher(
    address: tuple[str, int],
    username: str,
    password: str,
    stage: Stage,
    n_links: int,
    duration_s: float,
    conn: Connection,
) -> None:
    """Load generator (own process): publish every device's telemetry on schedule."""
    from pulsebms.core.messaging import telemetry_topic
    from pulsebms.edge_runtime.mqtt_link import MqttLink

    host, port = address
    links = [
        MqttLink(
            f"bench-pub-{i}", host, port, username=username, password=password, clean_start=True
        )
        for i in range(n_links)
    ]
    for link in links:
        link.connect(30.0)
    ids = _pack_ids(stage)
    devices = [f"d{d:04d}" for d in range(stage.devices)]
    topics = [telemetry_topic(SITE, d) for d in devices]
    messages = [
        {
            "site": SITE,
            "device": d,
            "session": "bench",
            "seq": 0,
            "timestamp_s": 0.0,
            "period_s": 1.0 / stage.rate_hz,
            "site_values": {"demand_w": 1000.0 * len(ids)},
            "packs": [_pack(p, i) for i, p in enumerate(ids[k])],
        }
        for k, d in enumerate(devices)
    ]
    conn.send("ready")
    start_at = float(conn.recv())
    rounds = max(1, round(duration_s * stage.rate_hz))
    period = 1.0 / stage.rate_hz
    step = period / stage.devices
    late: list[float] = []
    sent = 0
    cpu0 = time.process_time()
    for k in range(rounds):
        for d in range(stage.devices):
            due = start_at + k * period + d * step
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            else:
                late.append(-wait)
            msg = messages[d]
            msg["seq"] = k
            msg["timestamp_s"] = time.time()
            if links[d % n_links].publish("telemetry", topics[d], msg):
                sent += 1
    cpu_s = time.process_time() - cpu0
    for link in links:
        link.close(drain_timeout_s=10.0)
    late_ms = np.asarray(late) * 1e3 if late else np.zeros(1)
    conn.send(
        {
            "sent": sent,
            "cpu_s": cpu_s,
            "late_p99_ms": float(np.percentile(late_ms, 99)),
            "late_share": len(late) / max(1, rounds * stage.devices),
            "dropped": sum(link.stats()["dropped_queue_full"] for link in links),
        }
    )


def _fleet(stage: Stage) -> Any:
    from pulsebms.core.observation import fleet_observation_layout
    from pulsebms.safety.state import PackRatings
    from pulsebms.services.coordinator import SiteFleet

    names = [p for device in _pack_ids(stage) for p in device]
    n = len(names)
    ratings = PackRatings(
        ("LFP",) * n, np.full(n, 16), np.full(n, 16), np.full(n, 2.5), np.full(n, 1000.0)
    )
    return SiteFleet(fleet_observation_layout(names, 4, 1000.0 * n), ratings, dt_s=60.0)


def _cpu_of(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        import psutil
    except ImportError:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(t.user + t.system)


def run_stage(
    broker: Any, stage: Stage, duration_s: float, n_links: int, plan_period_s: float
) -> dict[str, Any]:
    """One stage: coordinator up, generator runs, figures collected."""
    from pulsebms.services.coordinator import Coordinator, CoordinatorSettings, make_policy

    fleet = _fleet(stage)
    policy, name = make_policy("equal", fleet)
    settings = CoordinatorSettings(
        period_s=plan_period_s, rebalance_debounce_s=0.2, stale_after_s=3600.0, tick_s=0.05
    )
    # clean sessions: a stage's coordinator leaves no session queuing the next stage's traffic
    link = broker.link(f"coordinator-{SITE}", f"bench-coordinator-{stage.name}", clean_start=True)
    coordinator = Coordinator(SITE, fleet, policy, name, link=link, settings=settings)
    latencies: list[float] = []
    lock = threading.Lock()

    def on_receipt(kind: str, message: Any, received_s: float) -> None:
        if kind == "telemetry":
            lag = time.time() - float(message["timestamp_s"])
            with lock:
                latencies.append(lag)

    coordinator.on_receipt = on_receipt
    plan_ms: list[float] = []
    plan = coordinator.plan

    def timed_plan(reason: str = "manual", now: float | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = plan(reason, now)
        plan_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    coordinator.plan = timed_plan  # type: ignore[method-assign]  # timing wrapper
    coordinator.attach()
    if not link.connect(30.0):
        raise RuntimeError("the coordinator cannot connect to the benchmark broker")
    coordinator.start()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    user = broker.users[f"edge-{SITE}"]
    proc = ctx.Process(
        target=_publisher,
        args=((broker.host, broker.port), user.username, user.password, stage, n_links,
              duration_s, child),
    )  # fmt: skip
    proc.start()
    if not parent.poll(120.0) or parent.recv() != "ready":
        proc.kill()
        raise RuntimeError("the load generator did not start")
    broker_cpu0 = _cpu_of(getattr(broker, "pid", None))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    parent.send(time.time() + 0.5)
    if not parent.poll(duration_s + 120.0):
        proc.kill()
        raise RuntimeError("the load generator did not finish")
    pub = parent.recv()
    proc.join(30.0)
    expected = pub["sent"]
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with lock:
            if len(latencies) >= expected:
                break
        time.sleep(0.05)
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    broker_cpu1 = _cpu_of(getattr(broker, "pid", None))
    coordinator.stop()
    link.close()
    seq = coordinator.state.sequence_counts("telemetry")
    received = seq["accepted"]
    lat_ms = np.asarray(latencies) * 1e3 if latencies else np.full(1, np.nan)
    out: dict[str, Any] = {
        "devices": stage.devices,
        "packs_per_device": stage.packs,
        "rate_hz": stage.rate_hz,
        "packs_per_s": stage.packs_per_s,
        "msgs_per_s": stage.devices * stage.rate_hz,
        "sent": expected,
        "received": received,
        "lost": expected - received,
        "duplicates": seq["duplicates"],
        "latency_p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "latency_p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "latency_max_ms": round(float(lat_ms.max()), 2),
        "coordinator_cpu_pct": round(100.0 * cpu_s / wall_s, 1),
        # CPU per message and per pack reading: what the coordinator costs whatever the
        # machine's load (wall latency is the scheduler's on a busy machine)
        "coordinator_cpu_us_per_msg": round(1e6 * cpu_s / max(1, received), 1),
        "coordinator_cpu_us_per_pack": round(1e6 * cpu_s / max(1, received * stage.packs), 1),
        "generator_cpu_pct": round(100.0 * pub["cpu_s"] / max(duration_s, 1e-9), 1),
        "generator_late_p99_ms": round(pub["late_p99_ms"], 2),
        "generator_dropped": pub["dropped"],
        "plans": len(plan_ms),
        "plan_ms_median": round(float(np.median(plan_ms)), 2) if plan_ms else None,
    }
    if broker_cpu0 is not None and broker_cpu1 is not None:
        out["broker_cpu_pct"] = round(100.0 * (broker_cpu1 - broker_cpu0) / wall_s, 1)
    out["keeps_up"] = bool(out["lost"] == 0 and out["latency_p99_ms"] < 100.0)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the stages and print a table and ``RESULT {json}``."""
    parser = argparse.ArgumentParser(
        prog="pulsebms-bench mqtt", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--stages", help=f"DEVICESxPACKS@RATE,... (default {DEFAULT_STAGES})")
    parser.add_argument("--duration-s", type=float, help="seconds per stage (default 15)")
    parser.add_argument("--links", type=int, default=4, help="generator MQTT connections")
    parser.add_argument("--plan-period-s", type=float, default=5.0, help="coordinator period")
    parser.add_argument("--quick", action="store_true", help="tiny stages, 2 s (smoke)")
    args = parser.parse_args(argv)
    from pulsebms.services.broker import MosquittoBroker, site_users

    stages = [
        Stage.parse(s)
        for s in (args.stages or (QUICK_STAGES if args.quick else DEFAULT_STAGES)).split(",")
    ]
    duration_s = args.duration_s or (2.0 if args.quick else 15.0)
    load = os.getloadavg()
    print(
        f"mqtt: Mosquitto, {len(stages)} stage(s) × {duration_s:g} s, {args.links} generator "
        f"link(s), plan every {args.plan_period_s:g} s; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    header = (
        f"{'stage':>12} {'packs/s':>8} {'msg/s':>7} {'lost':>5} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'coord%':>7} {'µs/pack':>8} {'broker%':>8} {'gen%':>5} {'late99':>7} "
        f"{'plan ms':>8}"
    )
    print(header)
    results: dict[str, Any] = {}
    with MosquittoBroker(site_users([SITE])) as broker:
        for stage in stages:
            r = run_stage(broker, stage, duration_s, args.links, args.plan_period_s)
            results[stage.name] = r
            print(
                f"{stage.name:>12} {r['packs_per_s']:>8.0f} {r['msgs_per_s']:>7.0f} "
                f"{r['lost']:>5d} {r['latency_p50_ms']:>7.2f} {r['latency_p99_ms']:>7.2f} "
                f"{r['latency_max_ms']:>7.1f} {r['coordinator_cpu_pct']:>7.1f} "
                f"{r['coordinator_cpu_us_per_pack']:>8.1f} "
                f"{r.get('broker_cpu_pct', float('nan')):>8.1f} {r['generator_cpu_pct']:>5.0f} "
                f"{r['generator_late_p99_ms']:>7.1f} {r['plan_ms_median'] or float('nan'):>8.1f}",
                flush=True,
            )
    load_after = os.getloadavg()
    target = [r for r in results.values() if r["packs_per_s"] >= 1000 and r["rate_hz"] == 1]
    summary = {
        "stages": results,
        "duration_s": duration_s,
        "links": args.links,
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "target_1000_packs_1hz_met": bool(target) and all(r["keeps_up"] for r in target),
        "max_packs_per_s_kept_up": max(
            (r["packs_per_s"] for r in results.values() if r["keeps_up"]), default=0.0
        ),
        "packs_per_s_per_core": {
            k: round(1e6 / r["coordinator_cpu_us_per_pack"])
            if r["coordinator_cpu_us_per_pack"]
            else None
            for k, r in results.items()
        },
    }
    print("RESULT " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
