"""Benchmark of training throughput: SB3 PPO against RLlib PPO on 1 and on 2 EnvRunners.

In one process, one after the other, on the same shielded env (``PulseBMS/FleetSmall-v0``,
equivalent-circuit twin, 15-minute steps, one-day episodes) with the same PPO settings
(train batch, minibatch, epochs, a 64-64 MLP) and the same number of envs per sampler:

* **SB3 PPO**: ``n_envs`` envs in one ``DummyVecEnv``, one batched policy call per step;
* **RLlib 1 runner**: one remote EnvRunner stepping ``n_envs`` envs as one vector (one
  batched RLModule forward pass per step), the Learner in the driver;
* **RLlib 2 runners**: two remote EnvRunners of ``n_envs`` envs each.

Two figures per row, both in env steps per second of wall time:

* ``sample``: sampling only (policy inference + env + shield) with the *untrained* policy
  (the env's cost depends on the actions through the shield, so every sampler acts with
  its freshly seeded network), best of three blocks of one train batch after a warm-up
  block; RLlib's runners sample concurrently (``foreach_env_runner``), SB3 runs a
  predict/step loop;
* ``train``: whole training iterations (sampling + PPO update), best iteration after one
  warm-up iteration (SB3: ``learn`` over one batch).

Best-of figures because other processes on a shared machine only ever slow a block down.
The shield's cost depends on the actions (interventions cost more than identity), and so
does a trained policy's env cost: ``--no-shield`` steps the bare env, whose cost does not
depend on the policy, to compare the sampling machinery alone.

Targets (issue 11): RLlib 1 runner ≥ SB3; 2 runners ≥ 1.6× 1 runner. Two runners can only
scale when two cores are free: the figures say what the machine gave (its core count and
load are printed), they are not asserted. The last line is ``RESULT {json}``.

Example:
    $ pulsebms-bench ray --quick
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["main"]

ENV_ID = "PulseBMS/FleetSmall-v0"
ENV_KWARGS: dict[str, Any] = {"dt_s": 900.0, "horizon_steps": 96, "fidelity": "ecm"}
BLOCKS = 3
"""Timed sampling blocks per sampler; the best counts (other processes only slow a block)."""


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def _sb3(
    *,
    n_envs: int,
    batch: int,
    minibatch: int,
    epochs: int,
    iterations: int,
    seed: int,
    shield: bool,
) -> dict[str, float]:
    import torch

    from pulsebms.agents.env_factory import make_env_factory
    from pulsebms.agents.sb3 import PPOConfig, build_model, make_vec_env

    torch.set_num_threads(1)
    factory = make_env_factory(ENV_ID, shield=shield, **ENV_KWARGS)
    venv = make_vec_env(factory, n_envs=n_envs)
    config = PPOConfig(n_steps=batch // n_envs, batch_size=minibatch, n_epochs=epochs)
    model = build_model(config, venv, seed=seed)
    # Sampling with the untrained policy (as for RLlib): warm-up block, then the best block.
    obs: Any = venv.reset()
    rates = []
    for block in range(1 + BLOCKS):
        start = time.perf_counter()
        for _ in range(batch // n_envs):
            actions, _ = model.predict(obs, deterministic=False)
            obs = venv.step(actions)[0]
        if block:
            rates.append(batch / (time.perf_counter() - start))
    model.learn(total_timesteps=batch)  # warm-up: one rollout and update
    train = []
    for _ in range(iterations):
        start = time.perf_counter()
        model.learn(total_timesteps=batch, reset_num_timesteps=False)
        train.append(batch / (time.perf_counter() - start))
    venv.close()
    return {"sample_steps_per_s": max(rates), "train_steps_per_s": max(train)}


def _rllib(
    *,
    runners: int,
    n_envs: int,
    batch: int,
    minibatch: int,
    epochs: int,
    iterations: int,
    seed: int,
    shield: bool,
) -> dict[str, float]:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED

    from pulsebms.agents.rllib import RllibPPOConfig, build_rllib_algorithm

    agent = RllibPPOConfig(train_batch_size=batch, minibatch_size=minibatch, num_epochs=epochs)
    algo = build_rllib_algorithm(
        f"pulsebms.envs:{ENV_ID}",
        agent,
        env_kwargs=ENV_KWARGS,
        shield=shield,
        num_env_runners=runners,
        num_envs_per_env_runner=n_envs,
        seed=seed,
    )
    per_runner = batch // runners

    def sample(runner: Any) -> int:
        episodes = runner.sample(num_timesteps=per_runner, explore=True)
        return int(sum(len(e) for e in episodes))

    try:
        group = algo.env_runner_group
        if group is None:  # pragma: no cover - built with remote env runners
            raise RuntimeError("the algorithm has no EnvRunner group")
        # Sampling with the untrained policy, all runners at once: warm-up, best block.
        rates = []
        for block in range(1 + BLOCKS):
            start = time.perf_counter()
            sampled = sum(group.foreach_env_runner(sample, local_env_runner=False))
            if block:
                rates.append(sampled / (time.perf_counter() - start))
        algo.train()  # type: ignore[no-untyped-call]  # warm-up (RLlib API is untyped)
        train = []
        for _ in range(iterations):
            start = time.perf_counter()
            result = algo.train()  # type: ignore[no-untyped-call]
            steps = int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])
            train.append(steps / (time.perf_counter() - start))
    finally:
        algo.stop()  # type: ignore[no-untyped-call]  # RLlib API is untyped
    return {"sample_steps_per_s": max(rates), "train_steps_per_s": max(train)}


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
    parser.add_argument("--iterations", type=int, default=0, help="timed iterations (0: 3/1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-shield",
        action="store_true",
        help="bare env: the shield's cost depends on the actions, so without it every "
        "sampler steps an env of the same cost (compares the sampling machinery alone)",
    )
    args = parser.parse_args(argv)
    # ---- seeding: every learner and sampler below is seeded with args.seed.
    quick = bool(args.quick)
    batch = args.batch or (384 if quick else 1536)
    iterations = args.iterations or (1 if quick else 3)
    n_envs = int(args.envs)
    if batch % (2 * n_envs):
        parser.error(f"--batch ({batch}) must be a multiple of 2 × --envs ({2 * n_envs})")
    common: dict[str, Any] = {
        "batch": batch,
        "minibatch": min(128, batch),
        "epochs": 2 if quick else 10,
        "iterations": iterations,
        "seed": int(args.seed),
        "shield": not args.no_shield,
    }
    print(
        f"ray benchmark: cpu_count={os.cpu_count()}, load={_load()}, env={ENV_ID} "
        f"{ENV_KWARGS}, envs per sampler={n_envs}, batch={batch}, epochs={common['epochs']}, "
        f"timed iterations={iterations}, shield={common['shield']}, quick={quick}"
    )
    rows: dict[str, dict[str, float]] = {"sb3_ppo": _sb3(n_envs=n_envs, **common)}
    print(f"{'sampler':>16} {'sample st/s':>12} {'train st/s':>11}")

    def show(name: str) -> None:
        row = rows[name]
        print(f"{name:>16} {row['sample_steps_per_s']:12.0f} {row['train_steps_per_s']:11.0f}")

    show("sb3_ppo")
    from pulsebms.agents.rllib import ray_session

    with (
        tempfile.TemporaryDirectory(prefix="pb-bench-", dir="/tmp") as temp,
        ray_session(num_cpus=max(2, os.cpu_count() or 2), temp_dir=temp),
    ):
        for runners in (1, 2):
            name = f"rllib_{runners}_runner" + ("s" if runners > 1 else "")
            rows[name] = _rllib(runners=runners, n_envs=n_envs, **common)
            show(name)
    one, two, sb3 = rows["rllib_1_runner"], rows["rllib_2_runners"], rows["sb3_ppo"]
    ratios = {
        f"{kind}_1_runner_over_sb3": one[f"{kind}_steps_per_s"] / sb3[f"{kind}_steps_per_s"]
        for kind in ("sample", "train")
    } | {
        f"{kind}_2_over_1_runner": two[f"{kind}_steps_per_s"] / one[f"{kind}_steps_per_s"]
        for kind in ("sample", "train")
    }
    for key, value in ratios.items():
        print(f"{key:>28}: {value:5.2f}×")
    print(
        "targets: 1 runner ≥ SB3 (ratio ≥ 1), 2 runners ≥ 1.6× 1 runner; "
        f"{os.cpu_count()} cores, load {_load()}"
    )
    result = {
        "cpu_count": os.cpu_count(),
        "load": _load(),
        "envs_per_sampler": n_envs,
        "batch": batch,
        "shield": common["shield"],
        **{name: {k: round(v, 1) for k, v in row.items()} for name, row in rows.items()},
        **{k: round(float(np.float64(v)), 3) for k, v in ratios.items()},
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
