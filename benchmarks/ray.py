"""Benchmark of training throughput: SB3 PPO against RLlib PPO on 1 and on 2 EnvRunners.

In one process, on the same shielded env (``PulseBMS/FleetSmall-v0`` with its default
3-pack fleet, equivalent-circuit twin, 15-minute steps, one-day episodes) with the same PPO
work: train batch, minibatch, epochs, a 64-64 tanh actor and critic, observation
normalisation, the same initial exploration noise (log-std −0.5, SB3's default, on both:
the shield's work depends on the actions) and the same number of envs per sampler, stepped
as one vector with one batched policy forward per step, torch on one thread everywhere.

**The same loss on both.** SB3's PPO loss has no KL term, clips the gradients' global norm
at 0.5 (``max_grad_norm``) and does not clip the value loss (``clip_range_vf=None``);
RLlib's default PPO loss adds an adaptive KL penalty (``use_kl_loss``, coefficient 0.2, one
more distribution and KL per minibatch), clips the value loss at 10 and does not clip
gradients. By default the RLlib PPO here is configured as SB3's (``use_kl_loss=False``,
``grad_clip=0.5``, ``vf_clip_param=inf``: config choices of
:class:`~pulsebms.agents.rllib_config.RllibPPOConfig`, whose defaults stay RLlib's), so both
sides do the same update work; ``--rllib-loss`` measures RLlib's default loss instead.


* **SB3 PPO**: ``n_envs`` envs in one ``DummyVecEnv`` (+ ``VecNormalize``), in this process;
* **RLlib 1 runner** (``rllib_1_runner``, the issue's "1 runner"): ``num_env_runners=1``,
  one *remote* EnvRunner (its own process, a Ray actor) stepping ``n_envs`` envs as one
  gymnasium vector; the Learner in this process. Each iteration the episodes go to the
  Learner and the weights and filter statistics back through Ray's object store;
* **RLlib local runner** (``rllib_local_runner``): ``num_env_runners=0``, the driver's
  own local EnvRunner samples the same ``n_envs`` envs in this process, as SB3 does: the
  same RLlib sampling and Learner without Ray's transfers (the difference to the 1-runner
  row is what the remote process costs, not a replacement of it);
* **RLlib 2 runners**: two remote EnvRunners of ``n_envs`` envs each.

Two phases, each measured in **interleaved rounds** (every round runs each sampler once, in
rotated order), so a load change on a shared machine hits all samplers alike:

* ``sample``: one train batch of sampling with the untrained policy: SB3's own rollout
  phase (``collect_rollouts``: forward with values, rollout buffer, callbacks) against the
  runners' ``sample()`` (all runners at once);
* ``train``: one whole training iteration (sampling + PPO update; SB3: ``learn`` over one
  batch; RLlib: ``Algorithm.train()``, episodes sent to the Learner included).

Each phase gives two throughputs in env steps per second:

* ``wall``: steps / wall time, as this machine gave it (median over rounds; ratios are the
  median of per-round ratios of blocks run back to back);
* ``busy``: steps / the CPU time of the critical path: SB3's process (and the local
  runner's: the same process); the busiest runner (sampling) plus this process (the
  Learner, after sampling). That is the wall time with a
  free core per process, a load-independent measure of the work per step; on a machine
  with fewer free cores than runners + Learner, ``wall`` is lower.

Per sampler it also prints the env's own CPU time per step (a timing wrapper in front of
the shielded env, the same in both) and the rest, the sampler's overhead per step; for
training, the update's CPU time per env step. Targets (issue 11): RLlib 1 runner ≥ SB3;
2 runners ≥ 1.6× 1 runner. They are printed, not asserted: a **verdict** per training
ratio (busy and wall) gives the median of the per-round ratios, a 95 % two-stage bootstrap
interval (:func:`bootstrap_median_interval`) and whether the target is met (the interval at
or above it), not met (below it) or not shown (inside it). ``--repeat N`` builds and runs
the samplers N times (seeds ``seed`` … ``seed+N-1``), so that the interval holds the
run-to-run spread (other policies, other shield work, other load), not only the rounds'.
A second, labelled verdict block gives the **env-equalised** ratios of samplers that step
all their envs in one process (:func:`env_equalised_round_ratios`: each round's env CPU
per step on both sides replaced by the pair's pooled one, the env's action-dependent cost
taken out); the raw ratio stays the headline. ``--ab-filter`` adds RLlib 1 runner with
RLlib's per-row observation filter (``observation_filter="per_row"``) to the same rounds,
``--ab-inference`` RLlib 1 runner with the runners' exploration pass in torch
(``runner_inference="torch"``; the default is numpy), ``--ab-adam`` RLlib 1 runner with
the Learner's foreach Adam step (``ray.fused_adam=false``; the default is torch's fused
kernel).
The last line is ``RESULT {json}``; its ``train_blocks`` let :func:`runs_from_blocks`
pool several invocations into one verdict.

Example:
    $ pulsebms-bench ray --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from pulsebms.agents.rllib_config import OBSERVATION_FILTERS, RUNNER_INFERENCE_KINDS

__all__ = [
    "Block",
    "bootstrap_median_interval",
    "env_equalised_round_ratios",
    "main",
    "round_ratios",
    "runs_from_blocks",
]

ENV_ID = "PulseBMS/FleetSmall-v0"
ENV_KWARGS: dict[str, Any] = {"dt_s": 900.0, "horizon_steps": 96, "fidelity": "ecm"}
LOG_STD_INIT = -0.5
"""Initial log-std of both PPOs (SB3's PPOConfig default)."""
COMPILE_WARMUP_ITERATIONS = 4
"""Training iterations run before the rounds with ``--compile-learner``: the first update
runs eagerly, the second compiles, the next recompile once for a counter dynamo guards."""

SB3_LOSS: dict[str, Any] = {"use_kl_loss": False, "grad_clip": 0.5, "vf_clip_param": float("inf")}
"""RLlib PPO settings of SB3's PPO loss (no KL term, grad-norm clip 0.5, no value clip)."""
BENCH_ENV_NAME = "pulsebms-bench-fleet"
"""RLlib env creator of the benchmark: the PulseBMS creator with :class:`_EnvClock`."""

_ENV_CPU_S = [0.0]
"""CPU seconds spent inside env steps and resets in this process (see :class:`_EnvClock`)."""


class _EnvClock(gym.Wrapper[Any, Any, Any, Any]):
    """Adds the CPU time of every step and reset of the wrapped env to :data:`_ENV_CPU_S`."""

    def step(self, action: Any) -> Any:
        start = time.thread_time()
        out = self.env.step(action)
        _ENV_CPU_S[0] += time.thread_time() - start
        return out

    def reset(self, **kwargs: Any) -> Any:
        start = time.thread_time()
        out = self.env.reset(**kwargs)
        _ENV_CPU_S[0] += time.thread_time() - start
        return out


def _bench_env(config: Mapping[str, Any]) -> gym.Env[Any, Any]:
    """RLlib env creator: :func:`~pulsebms.agents.rllib_env.make_rllib_env` with a clock."""
    from pulsebms.agents.rllib_env import compact_info, make_fleet_env

    return compact_info(_EnvClock(make_fleet_env(config)), config)


def _process_clock(_: Any = None) -> tuple[float, float]:
    """(CPU time of this process, env CPU time so far) [s]; runs in EnvRunners too."""
    return time.process_time(), _ENV_CPU_S[0]


@dataclass
class Block:
    """One timed block of one sampler.

    Attributes:
        steps: Env steps done.
        wall_s: Wall time [s].
        busy_s: CPU time of the critical path [s] (see the module docstring).
        env_s: CPU time inside the env [s] (the busiest runner's, for several).
        learn_s: CPU time of the update [s] (train blocks; 0 for sampling).
    """

    steps: int
    wall_s: float
    busy_s: float
    env_s: float
    learn_s: float = 0.0


@dataclass
class _Row:
    sample: list[Block] = field(default_factory=list)
    train: list[Block] = field(default_factory=list)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class _SB3:
    """SB3 PPO sampling and training in this process."""

    def __init__(self, *, n_envs: int, batch: int, minibatch: int, epochs: int, seed: int):
        from stable_baselines3.common.callbacks import BaseCallback, CallbackList

        from pulsebms.agents.env_factory import make_env
        from pulsebms.agents.sb3 import PPOConfig, build_model, make_vec_env

        def factory() -> gym.Env[Any, Any]:
            return _EnvClock(make_env(ENV_ID, **ENV_KWARGS))

        self.venv = make_vec_env(factory, n_envs=n_envs, seed=seed)
        config = PPOConfig(
            n_steps=batch // n_envs,
            batch_size=minibatch,
            n_epochs=epochs,
            log_std_init=LOG_STD_INIT,
            net_arch=(64, 64),
        )
        self.model: Any = build_model(config, self.venv, seed=seed)
        self.batch = batch
        marks: dict[str, float] = {}

        class RolloutClock(BaseCallback):
            def _on_rollout_end(self) -> None:
                marks["rollout_end"] = time.process_time()

            def _on_step(self) -> bool:
                return True

        self.marks = marks
        self.clock = RolloutClock()
        self.model.learn(total_timesteps=batch)  # sets up the rollout state; warm-up
        self.callback = CallbackList([])
        self.callback.init_callback(self.model)

    def sample(self) -> Block:
        model = self.model
        cpu, env = _process_clock()
        start = time.perf_counter()
        model.collect_rollouts(model.env, self.callback, model.rollout_buffer, model.n_steps)
        wall = time.perf_counter() - start
        cpu2, env2 = _process_clock()
        return Block(self.batch, wall, cpu2 - cpu, env2 - env)

    def train(self) -> Block:
        cpu, env = _process_clock()
        start = time.perf_counter()
        self.model.learn(self.batch, callback=self.clock, reset_num_timesteps=False)
        wall = time.perf_counter() - start
        cpu2, env2 = _process_clock()
        learn = cpu2 - self.marks.get("rollout_end", cpu2)
        return Block(self.batch, wall, cpu2 - cpu, env2 - env, learn)

    def close(self) -> None:
        self.venv.close()


class _RLlib:
    """RLlib PPO on remote EnvRunners (or, ``runners=0``, the local one), the Learner here."""

    def __init__(
        self,
        *,
        runners: int,
        n_envs: int,
        batch: int,
        minibatch: int,
        epochs: int,
        seed: int,
        loss: Mapping[str, Any] | None = None,
        compile_learner: bool = False,
        fused_adam: bool | None = None,
        compile_warmup_iterations: int = COMPILE_WARMUP_ITERATIONS,
        learner_class: type[Any] | None = None,
        observation_filter: str = "vector_step",
        runner_inference: str = "numpy",
    ):
        from ray.tune.registry import register_env

        from pulsebms.agents.rllib import RllibPPOConfig, build_rllib_algorithm

        register_env(BENCH_ENV_NAME, _bench_env)

        def timed_env(config: Any) -> Any:
            return config.environment(BENCH_ENV_NAME, env_config=dict(config.env_config))

        agent = RllibPPOConfig(
            train_batch_size=batch,
            minibatch_size=minibatch,
            num_epochs=epochs,
            hidden_sizes=(64, 64),
            log_std_init=LOG_STD_INIT,
            observation_filter=observation_filter,
            runner_inference=runner_inference,
            **dict(loss or {}),
        )
        self.algo: Any = build_rllib_algorithm(
            f"pulsebms.envs:{ENV_ID}",
            agent,
            env_kwargs=ENV_KWARGS,
            num_env_runners=runners,
            num_envs_per_env_runner=n_envs,
            seed=seed,
            config_hook=timed_env,
            torch_compile_learner=compile_learner,
            fused_adam=fused_adam,
            learner_class=learner_class,
        )
        group = self.algo.env_runner_group
        if group is None:  # pragma: no cover - built with remote env runners
            raise RuntimeError("the algorithm has no EnvRunner group")
        self.group = group
        self.local = runners == 0
        self.per_runner = batch // max(runners, 1)
        self._local_sample_cpu_s = 0.0
        if self.local:  # time the local runner's sampling inside algo.train()
            runner = self.algo.env_runner
            sample = runner.sample

            def timed_sample(*args: Any, **kwargs: Any) -> Any:
                start = time.process_time()
                try:
                    return sample(*args, **kwargs)
                finally:
                    self._local_sample_cpu_s += time.process_time() - start

            runner.sample = timed_sample

        self.compile_warmup_s = 0.0
        if compile_learner:  # compile outside the timed rounds (the bench's warm-up is one)
            algo: Any = self.algo
            start = time.perf_counter()
            for _ in range(compile_warmup_iterations):
                algo.train()
            self.compile_warmup_s = time.perf_counter() - start

    def _runner_clocks(self) -> list[tuple[float, float]]:
        clocks: list[tuple[float, float]] = self.group.foreach_env_runner(
            _process_clock, local_env_runner=False
        )
        return clocks

    def sample(self) -> Block:
        per_runner = self.per_runner
        if self.local:
            cpu, env = _process_clock()
            start = time.perf_counter()
            episodes = self.algo.env_runner.sample(num_timesteps=per_runner, explore=True)
            wall = time.perf_counter() - start
            cpu2, env2 = _process_clock()
            return Block(int(sum(len(e) for e in episodes)), wall, cpu2 - cpu, env2 - env)

        def sample(runner: Any) -> tuple[int, float, float]:
            cpu, env = _process_clock()
            episodes = runner.sample(num_timesteps=per_runner, explore=True)
            cpu2, env2 = _process_clock()
            return int(sum(len(e) for e in episodes)), cpu2 - cpu, env2 - env

        start = time.perf_counter()
        results = self.group.foreach_env_runner(sample, local_env_runner=False)
        wall = time.perf_counter() - start
        steps = sum(r[0] for r in results)
        busiest = max(results, key=lambda r: r[1])
        return Block(steps, wall, busiest[1], busiest[2])

    def train(self) -> Block:
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED

        if self.local:
            cpu, env = _process_clock()
            self._local_sample_cpu_s = 0.0
            start = time.perf_counter()
            result = self.algo.train()
            wall = time.perf_counter() - start
            cpu2, env2 = _process_clock()
            steps = int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])
            learner = cpu2 - cpu - self._local_sample_cpu_s
            return Block(steps, wall, cpu2 - cpu, env2 - env, learner)
        before = self._runner_clocks()
        cpu = time.process_time()
        start = time.perf_counter()
        result = self.algo.train()
        wall = time.perf_counter() - start
        learner = time.process_time() - cpu
        after = self._runner_clocks()
        deltas = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
        runner_cpu, runner_env = max(deltas)
        steps = int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])
        return Block(steps, wall, runner_cpu + learner, runner_env, learner)

    def close(self) -> None:
        self.algo.stop()


def _rate(block: Block, kind: str) -> float:
    seconds = block.wall_s if kind == "wall" else block.busy_s
    return block.steps / seconds if seconds > 0 else float("nan")


def _rounds(samplers: Mapping[str, Any], phase: str, rounds: int, rows: dict[str, _Row]) -> None:
    """One warm-up round, then ``rounds`` timed rounds in rotated order."""
    names = list(samplers)
    for r in range(rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        done = []
        for name in order:
            block = getattr(samplers[name], phase)()
            if r:
                getattr(rows[name], phase).append(block)
            done.append(f"{name} {_rate(block, 'wall'):.0f}/{_rate(block, 'busy'):.0f}")
        label = f"{r}/{rounds}" if r else "warm-up"
        print(f"  {phase} {label} (st/s wall/busy): " + ", ".join(done), flush=True)


def _summary(rows: Mapping[str, _Row]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, row in rows.items():
        figures: dict[str, float] = {}
        for phase in ("sample", "train"):
            blocks: list[Block] = getattr(row, phase)
            for kind in ("wall", "busy"):
                figures[f"{phase}_{kind}_steps_per_s"] = _median([_rate(b, kind) for b in blocks])
            figures[f"{phase}_env_ms_per_step"] = _median([1e3 * b.env_s / b.steps for b in blocks])
        sample = row.sample
        figures["sample_overhead_ms_per_step"] = _median(
            [1e3 * (b.busy_s - b.env_s) / b.steps for b in sample]
        )
        figures["learn_ms_per_step"] = _median([1e3 * b.learn_s / b.steps for b in row.train])
        out[name] = figures
    return out


def _ratios(
    rows: Mapping[str, _Row], summary: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    pairs = {"1_runner_over_sb3": ("rllib_1_runner", "sb3_ppo")}
    pairs["local_runner_over_sb3"] = ("rllib_local_runner", "sb3_ppo")
    pairs["2_over_1_runner"] = ("rllib_2_runners", "rllib_1_runner")
    out: dict[str, float] = {}
    for label, (num, den) in pairs.items():
        for phase in ("sample", "train"):
            per_round = [
                _rate(a, "wall") / _rate(b, "wall")
                for a, b in zip(getattr(rows[num], phase), getattr(rows[den], phase), strict=True)
            ]
            out[f"{phase}_wall_{label}"] = _median(per_round)
            key = f"{phase}_busy_steps_per_s"
            out[f"{phase}_busy_{label}"] = summary[num][key] / summary[den][key]
    return out


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def _print_table(summary: Mapping[str, Mapping[str, float]], out: Callable[[str], None]) -> None:
    out(
        f"{'sampler':>16} | {'sample st/s':>11} {'busy st/s':>9} {'env ms':>6} "
        f"{'other ms':>8} | {'train st/s':>10} {'busy st/s':>9} {'update ms':>9}"
    )
    units = f"{'(wall)':>11} {'':>9} {'/step':>6} {'/step':>8}"
    out(f"{'':>16} | {units} | {'(wall)':>10} {'':>9} {'/step':>9}")
    for name, f in summary.items():
        out(
            f"{name:>16} | {f['sample_wall_steps_per_s']:11.0f} "
            f"{f['sample_busy_steps_per_s']:9.0f} {f['sample_env_ms_per_step']:6.3f} "
            f"{f['sample_overhead_ms_per_step']:8.3f} | {f['train_wall_steps_per_s']:10.0f} "
            f"{f['train_busy_steps_per_s']:9.0f} {f['learn_ms_per_step']:9.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the throughput benchmark and print its figures; the last line is ``RESULT {json}``.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        0 on success.
    """
    parser = argparse.ArgumentParser(prog="pulsebms-bench ray", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke settings (~2 minutes)")
    parser.add_argument("--envs", type=int, default=4, help="envs per sampler (batched)")
    parser.add_argument("--batch", type=int, default=0, help="train batch (0: 1536, quick 384)")
    parser.add_argument(
        "--rounds", type=int, default=0, help="timed rounds per phase (0: 5 sample / 3 train)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rllib-loss",
        action="store_true",
        help="RLlib's default PPO loss (KL penalty, value-loss clip 10, no grad clip) "
        "instead of SB3's",
    )
    parser.add_argument(
        "--ray-metrics",
        action="store_true",
        help="keep Ray's metrics collection on (Ray's default); off by default, as "
        "pulsebms-train's ray.metrics=false",
    )
    parser.add_argument(
        "--ray-task-events",
        action="store_true",
        help="keep Ray's task events on (Ray's default); off by default, as "
        "pulsebms-train's ray.task_events=false",
    )
    parser.add_argument(
        "--compile-learner",
        action="store_true",
        help="RLlib rows: the PPO Learner's update compiled with torch.compile (inductor; "
        "ray.torch_compile_learner=true); compile time reported, not timed",
    )
    parser.add_argument(
        "--adam",
        choices=ADAM_KERNELS,
        default="fused",
        help="RLlib rows' Adam kernel in the PPO Learner: torch's fused kernel (default, "
        "ray.fused_adam=true) or the foreach multi-tensor step (RLlib's arithmetic)",
    )
    parser.add_argument(
        "--ab-adam",
        action="store_true",
        help="add a row: RLlib 1 runner with the foreach Adam step (ray.fused_adam=false; A/B "
        "of the fused kernel, interleaved in the same rounds)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="build and run the samplers N times (seeds seed..seed+N-1) and give the verdict "
        "over all runs' per-round ratios (median, 95%% bootstrap interval over runs and "
        "rounds)",
    )
    parser.add_argument(
        "--rllib-update-loop",
        action="store_true",
        help="RLlib rows: RLlib's Learner.update loop and distribution objects "
        "(RLlibLoopPPOTorchLearner, the Learner before round 9) instead of the Learner's own",
    )
    parser.add_argument(
        "--ab-learner",
        action="store_true",
        help="add a row: RLlib 1 runner with RLlibLoopPPOTorchLearner (A/B of the Learner's "
        "own loop, interleaved in the same rounds)",
    )
    parser.add_argument(
        "--observation-filter",
        choices=OBSERVATION_FILTERS,
        default="vector_step",
        help="RLlib rows' observation filter (agent config observation_filter): statistics "
        "once per vector step (default) or RLlib's per-row MeanStdFilter arithmetic",
    )
    parser.add_argument(
        "--ab-filter",
        action="store_true",
        help="add a row: RLlib 1 runner with the per-row filter (observation_filter=per_row; "
        "A/B of the vector-step filter, interleaved in the same rounds)",
    )
    parser.add_argument(
        "--runner-inference",
        choices=RUNNER_INFERENCE_KINDS,
        default="numpy",
        help="RLlib rows' exploration pass on the runners (agent config runner_inference): "
        "the actor and the Gaussian in numpy (default) or RLlib's torch pass",
    )
    parser.add_argument(
        "--ab-inference",
        action="store_true",
        help="add a row: RLlib 1 runner with runner_inference=torch (A/B of the numpy "
        "exploration pass, interleaved in the same rounds)",
    )
    parser.add_argument(
        "--account",
        action="store_true",
        help="instead of the rounds: CPU per env step of named pieces of a training "
        "iteration, SB3 against RLlib on 1 remote runner (pulsebms.benchmarks.ray_account)",
    )
    parser.add_argument(
        "--iterations", type=int, default=8, help="--account: training iterations of each"
    )
    parser.add_argument(
        "--long",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead of the rounds: wall time of two RLlib PPO runs of STEPS env steps, "
        "eager and compiled Learner, trained alternately (pulsebms.benchmarks.ray_long)",
    )
    parser.add_argument("--cold-cache", action="store_true", help="--long: a fresh inductor cache")
    args = parser.parse_args(argv)
    # ---- seeding: every learner and sampler below is seeded with args.seed.
    import torch

    torch.set_num_threads(1)  # SB3 and the Learner here; Ray gives each runner one thread
    quick = bool(args.quick)
    batch = args.batch or (384 if quick else 1536)
    sample_rounds = args.rounds or (2 if quick else 5)
    train_rounds = args.rounds or (1 if quick else 3)
    n_envs = int(args.envs)
    if n_envs < 1 or batch % (2 * n_envs):
        parser.error(f"--batch ({batch}) must be a multiple of 2 × --envs ({2 * n_envs})")
    work = {
        "n_envs": n_envs,
        "batch": batch,
        "minibatch": min(128, batch),
        "epochs": 2 if quick else 10,
        "seed": int(args.seed),
    }
    print(
        f"ray benchmark: cpu_count={os.cpu_count()}, load={_load()}, env={ENV_ID} "
        f"{ENV_KWARGS} (shielded), envs per sampler={n_envs}, batch={batch}, minibatch="
        f"{work['minibatch']}, epochs={work['epochs']}, log_std_init={LOG_STD_INIT}, "
        f"rounds sample/train={sample_rounds}/{train_rounds}, quick={quick}"
    )
    loss = {} if args.rllib_loss else SB3_LOSS
    print(
        "RLlib PPO loss: "
        + (
            "RLlib's default (KL penalty 0.2, value-loss clip 10, no grad clip)"
            if args.rllib_loss
            else f"as SB3's PPO ({loss}; SB3: no KL term, max_grad_norm 0.5, no value clip)"
        )
    )
    metrics = bool(args.ray_metrics)
    print(
        f"Ray metrics collection: {'on' if metrics else 'off'} (ray_session(metrics="
        f"{metrics}), as pulsebms-train ray.metrics={str(metrics).lower()}"
        f"{'' if metrics else ', its default'})"
    )
    task_events = bool(args.ray_task_events)
    print(
        f"Ray task events: {'on' if task_events else 'off'} (ray_session(task_events="
        f"{task_events}), as pulsebms-train ray.task_events={str(task_events).lower()}"
        f"{'' if task_events else ', its default'})"
    )
    session = {"metrics": metrics, "task_events": task_events}
    compile_learner, fused_adam = bool(args.compile_learner), args.adam == "fused"
    print(
        f"RLlib Learner: torch.compile {'on' if compile_learner else 'off'}, Adam "
        f"{args.adam} (SB3: eager, Adam's default)"
        + (f"; A/B row {AB_ADAM_ROW}: foreach" if args.ab_adam else "")
    )
    observation_filter = str(args.observation_filter)
    print(
        f"RLlib observation filter: {observation_filter} (SB3: VecNormalize, once per vector "
        "step)" + (f"; A/B row {AB_FILTER_ROW}: per_row" if args.ab_filter else "")
    )
    runner_inference = str(args.runner_inference)
    print(
        f"RLlib runners' exploration pass: {runner_inference} (SB3: torch)"
        + (f"; A/B row {AB_INFERENCE_ROW}: torch" if args.ab_inference else "")
    )
    if args.account:
        return _account(
            args,
            work,
            loss,
            session,
            compile_learner,
            _learner_class(args.rllib_update_loop),
            observation_filter=observation_filter,
            runner_inference=runner_inference,
            fused_adam=fused_adam,
        )
    if args.long:
        return _long(args, work, loss, session)
    learner_class = _learner_class(bool(args.rllib_update_loop))
    repeats = int(args.repeat)
    if repeats < 1:
        parser.error("--repeat must be >= 1")
    runs: list[dict[str, _Row]] = []
    for index in range(repeats):
        seed = int(work["seed"]) + index
        if repeats > 1:
            print(f"run {index + 1}/{repeats}: seed {seed}, load {_load()}", flush=True)
        runs.append(
            _one_run(
                {**work, "seed": seed},
                loss=loss,
                session=session,
                compile_learner=compile_learner,
                fused_adam=fused_adam,
                learner_class=learner_class,
                ab_learner=bool(args.ab_learner),
                ab_filter=bool(args.ab_filter),
                observation_filter=observation_filter,
                ab_inference=bool(args.ab_inference),
                runner_inference=runner_inference,
                ab_adam=bool(args.ab_adam),
                rounds=(sample_rounds, train_rounds),
            )
        )
    rows = _pooled(runs)
    summary = _summary(rows)
    ratios = _ratios(rows, summary)
    _print_table(summary, print)
    for key, value in ratios.items():
        print(f"{key:>30}: {value:5.2f}×")
    verdicts = _verdicts(runs)
    for line in _verdict_lines(verdicts, repeats=repeats, rounds=train_rounds):
        print(line)
    print(
        "targets: 1 runner ≥ SB3 (ratio ≥ 1), 2 runners ≥ 1.6× 1 runner; 1 runner = one "
        "remote EnvRunner process (num_env_runners=1), the local runner row "
        "(num_env_runners=0, sampling in this process) is for reference; "
        f"{os.cpu_count()} cores, load {_load()}"
    )
    result = {
        "cpu_count": os.cpu_count(),
        "load": _load(),
        "envs_per_sampler": n_envs,
        "batch": batch,
        "epochs": work["epochs"],
        "rllib_loss": "rllib_default" if args.rllib_loss else "sb3",
        "ray_metrics": metrics,
        "ray_task_events": task_events,
        "compile_learner": compile_learner,
        "fused_adam": fused_adam,
        "learner_loop": "rllib" if args.rllib_update_loop else "own",
        "observation_filter": observation_filter,
        "runner_inference": runner_inference,
        "repeat": repeats,
        **{name: {k: round(v, 3) for k, v in f.items()} for name, f in summary.items()},
        **{k: round(v, 3) for k, v in ratios.items()},
        "verdict": verdicts,
        "train_blocks": _train_blocks(runs),
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


def _learner_class(rllib_update_loop: bool) -> type[Any] | None:
    """The RLlib rows' Learner: the default, or RLlib's loop (``--rllib-update-loop``)."""
    if not rllib_update_loop:
        return None
    from pulsebms.agents.rllib_learner import RLlibLoopPPOTorchLearner

    cls: type[Any] = RLlibLoopPPOTorchLearner
    return cls


AB_ROW = "rllib_1_runner_rllib_loop"
"""``--ab-learner``'s row: RLlib 1 runner with :class:`RLlibLoopPPOTorchLearner`."""
AB_FILTER_ROW = "rllib_1_runner_per_row_filter"
"""``--ab-filter``'s row: RLlib 1 runner with ``observation_filter="per_row"``."""
AB_INFERENCE_ROW = "rllib_1_runner_torch_inference"
"""``--ab-inference``'s row: RLlib 1 runner with ``runner_inference="torch"``."""
AB_ADAM_ROW = "rllib_1_runner_foreach_adam"
"""``--ab-adam``'s row: RLlib 1 runner with the foreach Adam step (``fused_adam=False``)."""
ADAM_KERNELS = ("fused", "foreach")
"""``--adam``'s choices: the PPO Learner's Adam kernel."""


def _one_run(
    work: Mapping[str, Any],
    *,
    loss: Mapping[str, Any],
    session: Mapping[str, bool],
    compile_learner: bool,
    fused_adam: bool,
    learner_class: type[Any] | None,
    ab_learner: bool,
    rounds: tuple[int, int],
    ab_filter: bool = False,
    observation_filter: str = "vector_step",
    ab_inference: bool = False,
    runner_inference: str = "numpy",
    ab_adam: bool = False,
) -> dict[str, _Row]:
    """Build every sampler in a private Ray, run the interleaved rounds, close them."""
    names = ["sb3_ppo", "rllib_local_runner", "rllib_1_runner", "rllib_2_runners"]
    agent: dict[str, Any] = {
        "observation_filter": observation_filter,
        "runner_inference": runner_inference,
        "fused_adam": fused_adam,
    }
    specs: list[tuple[str, int, type[Any] | None, dict[str, Any]]] = [
        ("rllib_local_runner", 0, learner_class, agent),
        ("rllib_1_runner", 1, learner_class, agent),
        ("rllib_2_runners", 2, learner_class, agent),
    ]
    if ab_learner:
        from pulsebms.agents.rllib_learner import RLlibLoopPPOTorchLearner

        specs.append((AB_ROW, 1, RLlibLoopPPOTorchLearner, agent))
    if ab_filter:
        specs.append((AB_FILTER_ROW, 1, learner_class, {**agent, "observation_filter": "per_row"}))
    if ab_inference:
        specs.append((AB_INFERENCE_ROW, 1, learner_class, {**agent, "runner_inference": "torch"}))
    if ab_adam:
        specs.append((AB_ADAM_ROW, 1, learner_class, {**agent, "fused_adam": False}))
    names += [spec[0] for spec in specs[3:]]
    rows = {name: _Row() for name in names}
    samplers: dict[str, Any] = {}
    # Runner actors of one (logical) CPU each; idle ones cost no CPU.
    with _bench_ray(session, min_cpus=len(specs)):
        try:
            samplers["sb3_ppo"] = _SB3(**work)
            for name, runners, cls, options in specs:
                samplers[name] = _RLlib(
                    runners=runners,
                    loss=loss,
                    compile_learner=compile_learner,
                    fused_adam=options["fused_adam"],
                    learner_class=cls,
                    observation_filter=options["observation_filter"],
                    runner_inference=options["runner_inference"],
                    **work,
                )
            if compile_learner:
                warmups = {n: s.compile_warmup_s for n, s in samplers.items() if n != "sb3_ppo"}
                print(
                    f"compile warm-up ({COMPILE_WARMUP_ITERATIONS} iterations each, wall s): "
                    + ", ".join(f"{n} {t:.1f}" for n, t in warmups.items())
                )
            _rounds(samplers, "sample", rounds[0], rows)
            _rounds(samplers, "train", rounds[1], rows)
        finally:
            for sampler in samplers.values():
                sampler.close()
    return rows


def _pooled(runs: list[dict[str, _Row]]) -> dict[str, _Row]:
    """Every run's blocks, per sampler, one run after the other."""
    pooled = {name: _Row() for name in runs[0]}
    for rows in runs:
        for name, row in rows.items():
            pooled[name].sample.extend(row.sample)
            pooled[name].train.extend(row.train)
    return pooled


TRAIN_BLOCK_FIELDS = ("steps", "wall_s", "busy_s", "env_s", "learn_s")
"""Fields of each training block in the ``RESULT`` line's ``train_blocks``."""


def _train_blocks(runs: list[dict[str, _Row]]) -> dict[str, list[list[list[float]]]]:
    """Per sampler, per run, per round: the training block's :data:`TRAIN_BLOCK_FIELDS`.

    In the ``RESULT`` line, so that the verdicts of several invocations can be pooled
    (``_verdicts(_runs_from_blocks(...))``) with the env-equalised ratio included.
    """
    return {
        name: [
            [[float(getattr(b, f)) for f in TRAIN_BLOCK_FIELDS] for b in run[name].train]
            for run in runs
        ]
        for name in runs[0]
    }


def runs_from_blocks(blocks: Mapping[str, list[list[list[float]]]]) -> list[dict[str, _Row]]:
    """The runs of a ``RESULT`` line's ``train_blocks`` (training blocks only), for pooling.

    Example:
        >>> rows = runs_from_blocks({"a": [[[100, 1.0, 0.9, 0.5, 0.2]]]})
        >>> rows[0]["a"].train[0].busy_s
        0.9
    """
    names = list(blocks)
    n_runs = len(blocks[names[0]]) if names else 0
    runs: list[dict[str, _Row]] = []
    for i in range(n_runs):
        run = {name: _Row() for name in names}
        for name in names:
            run[name].train = [
                Block(int(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4]))
                for b in blocks[name][i]
            ]
        runs.append(run)
    return runs


def round_ratios(num: list[Block], den: list[Block], kind: str) -> list[float]:
    """Per-round ratios of two samplers' throughputs (blocks of the same rounds, in order)."""
    return [_rate(a, kind) / _rate(b, kind) for a, b in zip(num, den, strict=True)]


def env_equalised_round_ratios(num: list[Block], den: list[Block]) -> list[float]:
    """Per-round busy ratios with both samplers' env CPU per step set to the round's pooled one.

    The env is the same code on both sides; its cost per step follows each policy's
    actions (the shield's work), the main source of run-to-run spread. Each round's env
    CPU of both blocks is replaced by ``steps × (env_num + env_den) / (steps_num +
    steps_den)``, which leaves each side's own machinery (busy − env) as measured.

    Example:
        >>> a, b = Block(100, 1.0, 1.0, 0.6), Block(100, 1.0, 1.0, 0.4)  # same busy time
        >>> round_ratios([a], [b], "busy"), round(env_equalised_round_ratios([a], [b])[0], 4)
        ([1.0], 1.2222)
    """
    out = []
    for a, b in zip(num, den, strict=True):
        env_per_step = (a.env_s + b.env_s) / (a.steps + b.steps)
        busy_a = a.busy_s - a.env_s + env_per_step * a.steps
        busy_b = b.busy_s - b.env_s + env_per_step * b.steps
        out.append((a.steps / busy_a) / (b.steps / busy_b))
    return out


def bootstrap_median_interval(
    groups: list[list[float]], *, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """The median of all values and a percentile bootstrap interval for it.

    Two-stage (cluster) bootstrap for rounds nested in runs: each resample draws the runs
    with replacement, then each drawn run's rounds with replacement, and takes the median
    of the values drawn. Run-to-run differences (another build, another seed, another
    load) then widen the interval as they should; with one run it is the ordinary
    bootstrap of that run's rounds (the run-to-run spread is then not covered). Seeded:
    the same values give the same interval.

    Args:
        groups: Per run, its per-round values (each non-empty).
        level: Coverage of the interval.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``(median, low, high)``.

    Raises:
        ValueError: Without values, or with an empty run.

    Example:
        >>> m, lo, hi = bootstrap_median_interval([[1.0, 1.1, 0.9], [1.2, 1.0, 1.05]])
        >>> m, lo <= m <= hi
        (1.025, True)
    """
    import numpy as np

    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("bootstrap_median_interval needs at least one run, each with values")
    arrays = [np.asarray(g, dtype=float) for g in groups]
    median = float(np.median(np.concatenate(arrays)))
    rng = np.random.default_rng(seed)
    medians = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(len(arrays), size=len(arrays))
        drawn = [arrays[j][rng.integers(len(arrays[j]), size=len(arrays[j]))] for j in picked]
        medians[i] = np.median(np.concatenate(drawn))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return median, float(low), float(high)


ENV_EQUALISED = "busy_env_equalised"
"""Verdict kind of :func:`env_equalised_round_ratios` (the second verdict block)."""
ENV_EQUALISED_PAIRS = frozenset(
    {
        "train_1_runner_over_sb3",
        "train_own_loop_over_rllib_loop",
        "train_vector_over_per_row_filter",
        "train_numpy_over_torch_inference",
        "train_fused_over_foreach_adam",
    }
)
"""Ratios whose two samplers step all their envs in one process each (SB3, one runner), so
that each block's env CPU is that of all its steps; with 2 runners it is the busiest
runner's, half the steps', and pooling it with one runner's would mean nothing."""

MIN_VERDICT_ROUNDS = 8
"""Fewer training rounds (over all runs) give an interval but no verdict on the target."""

VERDICT_PAIRS: dict[str, tuple[str, str, float | None]] = {
    "train_1_runner_over_sb3": ("rllib_1_runner", "sb3_ppo", 1.0),
    "train_2_over_1_runner": ("rllib_2_runners", "rllib_1_runner", 1.6),
    "train_own_loop_over_rllib_loop": ("rllib_1_runner", AB_ROW, None),
    "train_vector_over_per_row_filter": ("rllib_1_runner", AB_FILTER_ROW, None),
    "train_numpy_over_torch_inference": ("rllib_1_runner", AB_INFERENCE_ROW, None),
    "train_fused_over_foreach_adam": ("rllib_1_runner", AB_ADAM_ROW, None),
}
"""Training ratios the verdict covers: (numerator, denominator, target or None)."""


def _verdicts(runs: list[dict[str, _Row]]) -> dict[str, dict[str, Any]]:
    """Per training ratio and kind: median, 95 % interval, target and whether it is met."""
    out: dict[str, dict[str, Any]] = {}
    for label, (num, den, target) in VERDICT_PAIRS.items():
        if num not in runs[0] or den not in runs[0]:
            continue
        for kind in ("busy", "wall", ENV_EQUALISED):
            if kind == ENV_EQUALISED and label not in ENV_EQUALISED_PAIRS:
                continue
            groups = [
                env_equalised_round_ratios(r[num].train, r[den].train)
                if kind == ENV_EQUALISED
                else round_ratios(r[num].train, r[den].train, kind)
                for r in runs
            ]
            median, low, high = bootstrap_median_interval(groups)
            if target is None:
                verdict = "no target"
            elif sum(len(g) for g in groups) < MIN_VERDICT_ROUNDS:
                verdict = "too few rounds"
            elif low >= target:
                verdict = "met"
            elif high < target:
                verdict = "not met"
            else:
                verdict = "not shown"
            out[f"{label}_{kind}"] = {
                "median": round(median, 3),
                "low": round(low, 3),
                "high": round(high, 3),
                "target": target,
                "verdict": verdict,
                "rounds": sum(len(g) for g in groups),
            }
    return out


def _verdict_lines(
    verdicts: Mapping[str, Mapping[str, Any]], *, repeats: int, rounds: int
) -> list[str]:
    """The verdict, one line per ratio: median [95 % interval], target, met or not."""
    meaning = {
        "met": "met (the interval lies at or above the target)",
        "not met": "not met (the interval lies below the target)",
        "not shown": "not shown (the interval contains the target)",
        "no target": "",
        "too few rounds": f"no verdict (fewer than {MIN_VERDICT_ROUNDS} rounds in all)",
    }
    lines = [
        f"verdict: training ratios, median of per-round ratios over {repeats} run(s) × "
        f"{rounds} round(s), 95 % two-stage bootstrap interval (runs, then rounds)"
        + ("" if repeats > 1 else "; one run: the run-to-run spread is not in the interval")
    ]
    headline = {k: v for k, v in verdicts.items() if not k.endswith(ENV_EQUALISED)}
    equalised = {k: v for k, v in verdicts.items() if k.endswith(ENV_EQUALISED)}
    for block, title in ((headline, None), (equalised, ENV_EQUALISED_TITLE)):
        if title is not None and block:
            lines.append(title)
        for key, v in block.items():
            target = "" if v["target"] is None else f", target ≥ {v['target']}: "
            lines.append(
                f"  {key:>46}: {v['median']:.3f}× [{v['low']:.3f}, {v['high']:.3f}]"
                f"{target}{meaning[v['verdict']]}"
            )
    return lines


ENV_EQUALISED_TITLE = (
    "verdict, env-equalised (not the headline: each round's env CPU per step on both sides "
    "replaced by the two samplers' pooled env CPU per step; the frameworks' own machinery "
    "against the target, the env's action-dependent cost taken out)"
)


@contextlib.contextmanager
def _bench_ray(session: Mapping[str, bool], *, min_cpus: int) -> Iterator[None]:
    """A private local Ray for one bench mode, in a temp folder, always shut down.

    ``min_cpus`` logical CPUs at least (runner actors of one CPU each; idle ones cost
    nothing), the machine's count if more; ``session``: its ``metrics`` and
    ``task_events`` settings (:func:`pulsebms.agents.rllib.ray_session`).
    """
    from pulsebms.agents.rllib import ray_session

    with (
        tempfile.TemporaryDirectory(prefix="pb-bench-", dir="/tmp") as temp,
        ray_session(
            num_cpus=max(min_cpus, os.cpu_count() or min_cpus),
            temp_dir=temp,
            metrics=session["metrics"],
            task_events=session["task_events"],
        ),
    ):
        yield


def _account(
    args: argparse.Namespace,
    work: Mapping[str, Any],
    loss: Mapping[str, Any],
    session: Mapping[str, bool],
    compile_learner: bool,
    learner_class: type[Any] | None = None,
    *,
    observation_filter: str = "vector_step",
    runner_inference: str = "numpy",
    fused_adam: bool,
) -> int:
    """``--account``: :func:`pulsebms.benchmarks.ray_account.account`, printed."""
    from pulsebms.benchmarks.ray_account import account, print_account

    load_start = _load()
    with _bench_ray(session, min_cpus=2):
        out = account(
            iterations=int(args.iterations),
            work=work,
            loss=loss,
            compile_learner=compile_learner,
            learner_class=learner_class,
            observation_filter=observation_filter,
            runner_inference=runner_inference,
            fused_adam=fused_adam,
        )
    print(f"CPU ms per env step, medians of {args.iterations} iterations each, interleaved")
    print_account(out)
    print(
        f"load {load_start} → {_load()}; runner task on its main thread: "
        f"{out['runner_task_on_main_thread']}"
    )
    result = {
        "load": _load(),
        "envs_per_sampler": work["n_envs"],
        "batch": work["batch"],
        "compile_learner": compile_learner,
        "fused_adam": fused_adam,
        "learner_loop": "rllib" if learner_class is not None else "own",
        "observation_filter": observation_filter,
        "runner_inference": runner_inference,
        "iterations": int(args.iterations),
        "sb3_ms_per_step": round(out["sb3_total_ms_per_step"], 4),
        "rllib_ms_per_step": round(out["rllib_total_ms_per_step"], 4),
        "sb3_gc_ms_per_step": round(out["sb3_gc_ms_per_step"], 4),
        "rllib_gc_ms_per_step": round(out["rllib_gc_ms_per_step"], 4),
        "items": [[w, where, round(a, 4), round(b, 4)] for w, where, a, b in out["items"]],
        "spans": {
            k: {n: round(v, 4) for n, v in out[k].items()} for k in ("sb3", "driver", "runner")
        },
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


def _long(
    args: argparse.Namespace,
    work: Mapping[str, Any],
    loss: Mapping[str, Any],
    session: Mapping[str, bool],
) -> int:
    """``--long``: :func:`pulsebms.benchmarks.ray_long.long_run`, printed."""
    from pulsebms.benchmarks.ray_long import long_run

    load_start = _load()
    with _bench_ray(session, min_cpus=3):
        out = long_run(
            total_steps=int(args.long), work=work, loss=loss, cold_cache=bool(args.cold_cache)
        )
    for name in ("eager", "compiled"):
        f = out[name]
        print(
            f"{name:>9}: build {f['build_s']:.1f} s + train {f['train_s']:.1f} s = "
            f"{f['total_s']:.1f} s wall, {f['iterations']} iterations, {f['steps']} steps, "
            f"first 4 iterations {f['first4_s']:.1f} s, median iteration "
            f"{f['median_iter_s']:.3f} s, episode return {f['episode_return_mean']}"
        )
    print(
        f"eager / compiled wall (builds included): {out['speedup']:.3f}×; "
        f"inductor cache {'cold' if args.cold_cache else 'as found'}; "
        f"load {load_start} → {_load()}"
    )
    result = {
        "load": _load(),
        "envs_per_sampler": work["n_envs"],
        "batch": work["batch"],
        "cold_cache": bool(args.cold_cache),
        **out,
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    # Run the imported module's main: Ray pickles ``__main__`` functions by value, so the
    # EnvRunners' env clock would not be this module's.
    from pulsebms.benchmarks.ray import main as _main

    raise SystemExit(_main())
