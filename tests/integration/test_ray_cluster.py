"""A real Ray cluster on localhost: ``ray start --head``, train through ``ray.address=...``, stop.

The head runs ``ray start --head --block`` in its own process group (a subprocess of this
test); it is stopped by signalling that group, not by ``ray stop``, which would stop *every*
Ray instance on the machine (other test sessions' included). Every port the head opens is
chosen free, and a start that fails (a port taken meanwhile) is retried on fresh ports; the
first attempt deliberately uses a GCS port that is already in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytestmark = pytest.mark.slow

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}
PORT_OPTIONS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--ray-client-server-port",
)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Head:
    address: str
    temp_dir: Path
    process: subprocess.Popen[bytes]
    attempts: int


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the head: SIGTERM to its process group, SIGKILL what is left after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (raylet, gcs, ...)
    proc.wait(timeout=10)


def _start_head(gcs_port: int, temp_dir: Path, log: Path) -> subprocess.Popen[bytes] | None:
    ports = _free_ports(len(PORT_OPTIONS))
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        *(f"{option}={port}" for option, port in zip(PORT_OPTIONS, ports, strict=True)),
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RAY_ENV},
            start_new_session=True,  # its own process group: stopped as one, by its id
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None  # exited: a port in use, ...
        if _listening(gcs_port) and "block forever" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.5)
    _stop(proc)
    return None


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[Head]:
    temp_dir = Path("/tmp") / f"pb-head-{os.getpid()}"  # socket paths must stay short
    log = tmp_path / "head.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = int(taken.getsockname()[1])
        candidates = [busy_port, *(_free_ports(1)[0] for _ in range(3))]
        proc = None
        attempts = 0
        for port in candidates:
            attempts += 1
            proc = _start_head(port, temp_dir, log)
            if proc is not None:
                break
    if proc is None:
        pytest.fail(f"ray start --head failed {attempts} times:\n{log.read_text()[-4000:]}")
    try:
        yield Head(f"127.0.0.1:{port}", temp_dir, proc, attempts)
    finally:
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_training_joins_a_real_cluster_by_address(ray_head: Head, tmp_path: Path) -> None:
    assert ray_head.attempts >= 2  # the busy GCS port was refused, a free one taken
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulsebms.experiments.train",
            "agent=rllib_ppo",
            f"ray.address={ray_head.address}",
            "ray.num_env_runners=1",  # a remote EnvRunner: an actor on the cluster
            "ray.num_envs_per_env_runner=2",
            "env.horizon_steps=8",
            "env.dt_s=900.0",
            "train.total_timesteps=32",
            "agent.train_batch_size=32",
            "agent.minibatch_size=16",
            "agent.num_epochs=1",
            "agent.hidden_sizes=[8,8]",
            "train.progress_bar=false",
            "evaluation.seeds=[0]",
            "evaluation.baselines=[rule_soc]",
            "evaluation.plots=false",
            "logger=none",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **RAY_ENV},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["rllib_env_steps"] >= 32
    assert (run / "rllib_checkpoint" / "rllib_checkpoint.json").is_file()
    # The remote runner built the shielded env from the id alone (a fresh worker process)
    # and its observation-filter statistics reached the checkpoint.
    from pulsebms.agents.rllib import RLlibPolicy

    policy = RLlibPolicy.from_checkpoint(run / "rllib_checkpoint")
    stats = policy.observation_stats()
    assert stats is not None
    assert np.all(np.isfinite(stats[0]))
    assert np.any(stats[1] != 1.0)
    obs = np.zeros(policy.observation_space.shape, dtype=np.float32)
    assert policy.act(obs) in gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    # The EnvRunner actor ran on the head's node (its worker log is in the head's session).
    logs = ray_head.temp_dir / "session_latest" / "logs"
    from pulsebms.agents.rllib_env_runner import PulseEnvRunner

    runner_logs = [
        p for p in logs.glob("worker-*") if PulseEnvRunner.__name__ in p.read_text(errors="replace")
    ]
    assert runner_logs, sorted(p.name for p in logs.iterdir())
    # Disconnecting the driver left the cluster running.
    port = int(ray_head.address.rsplit(":", 1)[1])
    assert ray_head.process.poll() is None
    assert _listening(port)
    # Stopping the head by its process group frees its port (the fixture's stop is then a
    # no-op): no `ray stop`, which would stop every Ray instance of the machine.
    _stop(ray_head.process)
    assert ray_head.process.returncode is not None
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _listening(port)
