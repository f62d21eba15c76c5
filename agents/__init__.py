"""Agents of PulseBMS: one :class:`Policy` protocol and everything that satisfies it.

* :mod:`pulsebms.agents.policy`: the protocol and adapters (SB3, ONNX, constant).
* :mod:`pulsebms.agents.rules`: rule baselines (equal split, SoC-proportional, health-aware).
* :mod:`pulsebms.agents.mpc`: MPC in cvxpy and its oracle variant.
* :mod:`pulsebms.agents.sb3`: shielded PPO / SAC builders, training, save / load.
* :mod:`pulsebms.agents.lagrangian`: the Lagrangian safe variant (penalty wrapper, dual ascent).
* :mod:`pulsebms.agents.sb3_logging`: SB3 logger and wandb writer.
* :mod:`pulsebms.agents.rllib`: shielded PPO on Ray RLlib (training).
* :mod:`pulsebms.agents.rllib_policy`: an RLlib checkpoint as a policy / torch module (export).
* :mod:`pulsebms.agents.evaluation`: the KPI harness and plots.
* :mod:`pulsebms.agents.workflow`: plain-Python train / compare functions.

Importing this package is cheap (numpy only); the heavy modules (torch, cvxpy, gymnasium)
load when one of their names is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from pulsebms.agents.policy import (
    ConstantPolicy,
    FunctionPolicy,
    OnnxPolicy,
    SB3Policy,
    reset_policy,
)
from pulsebms.agents.type_aliases import Policy, ResettablePolicy

__all__ = [
    "ConstantPolicy",
    "EqualSplitPolicy",
    "FunctionPolicy",
    "HealthAwarePolicy",
    "KPITable",
    "MPCConfig",
    "MPCPolicy",
    "OnnxPolicy",
    "PPOConfig",
    "Policy",
    "ResettablePolicy",
    "SACConfig",
    "SB3Policy",
    "SocProportionalPolicy",
    "baseline_factories",
    "compare_with_baselines",
    "evaluate_policies",
    "load_agent",
    "make_env",
    "make_mpc",
    "make_oracle_mpc",
    "make_rule_policy",
    "policy_from_run",
    "reset_policy",
    "rollout",
    "save_agent",
    "train_agent",
    "train_shielded_agent",
]

_LAZY = {
    "EqualSplitPolicy": "rules",
    "HealthAwarePolicy": "rules",
    "SocProportionalPolicy": "rules",
    "make_rule_policy": "rules",
    "MPCConfig": "mpc",
    "MPCPolicy": "mpc",
    "make_mpc": "mpc",
    "make_oracle_mpc": "mpc",
    "PPOConfig": "sb3",
    "SACConfig": "sb3",
    "train_agent": "sb3",
    "save_agent": "sb3",
    "load_agent": "sb3",
    "policy_from_run": "sb3",
    "KPITable": "evaluation",
    "evaluate_policies": "evaluation",
    "rollout": "evaluation",
    "make_env": "env_factory",
    "baseline_factories": "workflow",
    "compare_with_baselines": "workflow",
    "train_shielded_agent": "workflow",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"pulsebms.agents.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'pulsebms.agents' has no attribute {name!r}")
