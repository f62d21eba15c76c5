"""End-to-end wall time of a long RLlib PPO run: eager Learner against the compiled one.

``pulsebms-bench ray --long STEPS`` runs this instead of the throughput rounds: two RLlib
PPO algorithms of the benchmark's settings (one remote EnvRunner each, the Learner in this
process), one with the eager Learner and one with ``torch_compile_learner`` (inductor), are
built and then trained **alternately, one iteration each**, until both have sampled
``STEPS`` env steps, so a load change on a shared machine hits both alike. Each one's wall
time counts its build and every iteration (the compile happens inside its first
iterations); the remote runners of the one waiting idle meanwhile. ``--cold-cache`` gives
the compiled one a fresh, empty inductor cache (a first run on a machine), else inductor's
on-disk cache of earlier runs is used (any later run).

Example:
    $ pulsebms-bench ray --long 200000
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["long_run"]


def long_run(
    *,
    total_steps: int,
    work: Mapping[str, Any],
    loss: Mapping[str, Any],
    cold_cache: bool = False,
) -> dict[str, Any]:
    """Train eager and compiled RLlib PPO alternately to ``total_steps`` env steps each.

    Call inside a :func:`~pulsebms.agents.rllib.ray_session` with room for two runners.
    ``work``: the bench's settings (``n_envs``, ``batch``, ``minibatch``, ``epochs``,
    ``seed``).

    Returns:
        Per variant (``eager``, ``compiled``): ``build_s`` and ``train_s`` (wall), the
        iterations, the wall of the first four iterations and the median of the rest
        (``first4_s``, ``median_iter_s``), steps, the final mean episode return; and
        ``speedup`` (eager wall / compiled wall, builds included).
    """
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        EPISODE_RETURN_MEAN,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
    )

    from pulsebms.benchmarks.ray import _RLlib

    stats: dict[str, dict[str, Any]] = {}
    algos: dict[str, _RLlib] = {}
    saved_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="pb-inductor-", dir="/tmp") as cache:
        if cold_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            for name in ("eager", "compiled"):
                start = time.perf_counter()
                # the compiled one compiles in its first iterations, timed below: no warm-up
                algos[name] = _RLlib(
                    runners=1,
                    loss=loss,
                    compile_learner=name == "compiled",
                    compile_warmup_iterations=0,
                    **work,
                )
                stats[name] = {"build_s": time.perf_counter() - start, "iterations": []}
            done = dict.fromkeys(algos, 0)
            last_return: dict[str, float] = {}
            turn = 0
            while min(done.values()) < total_steps:
                names = list(algos) if turn % 2 == 0 else list(reversed(algos))
                turn += 1
                for name in names:
                    if done[name] >= total_steps:
                        continue
                    start = time.perf_counter()
                    result = algos[name].algo.train()
                    stats[name]["iterations"].append(time.perf_counter() - start)
                    done[name] = int(result[NUM_ENV_STEPS_SAMPLED_LIFETIME])
                    ret = result.get(ENV_RUNNER_RESULTS, {}).get(EPISODE_RETURN_MEAN)
                    if ret is not None:
                        last_return[name] = float(ret)
        finally:
            for algo in algos.values():
                algo.close()
            if cold_cache:
                if saved_cache is None:
                    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
                else:
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved_cache
    out: dict[str, Any] = {}
    for name, s in stats.items():
        its: list[float] = s["iterations"]
        rest = sorted(its[4:]) or [float("nan")]
        out[name] = {
            "build_s": round(s["build_s"], 2),
            "train_s": round(sum(its), 2),
            "total_s": round(s["build_s"] + sum(its), 2),
            "iterations": len(its),
            "steps": done[name],
            "first4_s": round(sum(its[:4]), 2),
            "median_iter_s": round(rest[len(rest) // 2], 4),
            "episode_return_mean": round(last_return.get(name, float("nan")), 3),
        }
    out["speedup"] = round(out["eager"]["total_s"] / out["compiled"]["total_s"], 4)
    return out
