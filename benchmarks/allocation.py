"""``pulsebms-bench allocation``: the shield's allocation modes compared on the quick fleet.

The quick preset's env (``PulseBMS/FleetSmall-v0``, fleet ``small_spread``, equivalent-
circuit twin, 900 s steps, one-day episodes), a rule policy (``rule_soc``) and a seeded
uniform-random policy, each shielded with ``allocation="redistribute"`` and
``"respect_split"``; per episode: interventions (pack-steps, the one count), |shortfall|
[kWh], total cost [EUR], pre-shield cost (normalised and EUR), measured violations.
Prints mean ± std over the seeds and a last line ``RESULT {json}``::

    pulsebms-bench allocation [--seeds 100 101 102] [--quick]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from pulsebms.agents.env_factory import make_env
from pulsebms.agents.rules import make_rule_policy

FLEET = [
    {"chemistry": "LFP", "series": 16, "parallel": 8, "initial_soc": 0.6, "initial_soh": 1.0,
     "name": "lfp-0"},
    {"chemistry": "NMC", "series": 14, "parallel": 4, "initial_soc": 0.5, "initial_soh": 0.92,
     "name": "nmc-1"},
    {"chemistry": "LCO", "series": 14, "parallel": 20, "initial_soc": 0.4, "initial_soh": 0.97,
     "name": "lco-2"},
]  # fmt: skip


def episode(policy: str, allocation: str, seed: int, steps: int = 96) -> dict[str, float]:
    """One shielded episode of ``policy`` with ``allocation``; totals of the KPIs."""
    env = make_env(
        "PulseBMS/FleetSmall-v0",
        shield_kwargs={"allocation": allocation},
        fleet=FLEET,
        fidelity="ecm",
        dt_s=900.0,
        horizon_steps=steps,
    )
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rule = make_rule_policy(env, "soc") if policy == "rule_soc" else None
    dt_h = 900.0 / 3600.0
    out = dict.fromkeys(
        ("interventions", "shortfall_kwh", "cost_eur", "pre_cost", "pre_cost_eur", "violations"),
        0.0,
    )
    done = False
    while not done:
        action: Any = (
            rule.act(obs)
            if rule is not None
            else rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        )
        obs, _, terminated, truncated, info = env.step(action)
        out["interventions"] += info["shield_interventions"]
        out["shortfall_kwh"] += abs(info["shield_shortfall_w"]) / 1000.0 * dt_h
        out["cost_eur"] += info["total_cost_eur"]
        out["pre_cost"] += info["cost_pre_shield"]
        out["pre_cost_eur"] += info.get("cost_pre_shield_eur", float("nan"))
        out["violations"] += len(info.get("violations", ()))
        done = terminated or truncated
    env.close()  # type: ignore[no-untyped-call]  # gymnasium leaves Env.close unannotated
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; ``--quick``: one seed, a quarter day."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    parser.add_argument("--quick", action="store_true", help="one seed, 24 steps")
    args = parser.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    steps = 24 if args.quick else 96
    result: dict[str, dict[str, float]] = {}
    keys = ("interventions", "shortfall_kwh", "cost_eur", "pre_cost", "pre_cost_eur",
            "violations")  # fmt: skip
    print("policy    allocation     " + "  ".join(f"{k:>20}" for k in keys))
    for policy in ("rule_soc", "random"):
        for allocation in ("redistribute", "respect_split"):
            rows = [episode(policy, allocation, s, steps) for s in seeds]
            cells = []
            means: dict[str, float] = {}
            for k in keys:
                v = np.array([r[k] for r in rows])
                cells.append(f"{v.mean():>11.2f} ± {v.std():>6.2f}")
                means[k] = float(v.mean())
            print(f"{policy:<9} {allocation:<14} " + "  ".join(cells), flush=True)
            result[f"{policy}/{allocation}"] = means
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
